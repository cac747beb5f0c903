"""Runs page: the run folders found in RUNS_DIR, a summary table, and picking one or two runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from attnexplain.dashboard import run_access
from attnexplain.dashboard.app import page_path
from attnexplain.dashboard.csv_export import to_safe_csv
from attnexplain.dashboard.widgets import escape_md

st.title("Runs")
root = run_access.runs_dir()
runs = run_access.list_runs_cached(root)


def _size_mb(path) -> float:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total / 1e6


@st.cache_data(show_spinner=False, max_entries=128)
def _summary(path: str, sig: tuple) -> dict:
    """One row of the runs table (read through the Run accessors, cached per folder state)."""
    run = run_access._open_cached(path, sig)
    m = run.manifest
    cols = ["example_id", "correct"] + [f"{p}_aopc__{meth}" for meth in run.methods for p in ("comp", "suff")]
    try:
        ex = run.examples(columns=cols)
    except Exception:  # an unfinished run with an odd shard: show what the manifest says
        ex = pd.DataFrame(columns=cols)
    correct = ex["correct"].dropna() if "correct" in ex else pd.Series(dtype=bool)
    dataset = str(m.get("dataset"))
    row = {
        "run": run.name, "status": run.status, "model": m.get("model"),
        "dataset": Path(dataset).name if ("/" in dataset or "\\" in dataset) else dataset,
        "backend": m.get("backend"),
        "examples": f"{len(ex)}" + (f" / {m.get('n_examples')}" if m.get("n_examples") not in (None, len(ex)) else ""),
        "accuracy": float(correct.astype(float).mean()) if len(correct) else np.nan,
    }
    for meth in run.methods:
        for p, label in (("comp", "comprehensiveness AOPC"), ("suff", "sufficiency AOPC")):
            c = f"{p}_aopc__{meth}"
            row[f"{label}: {meth}"] = float(ex[c].mean()) if c in ex and len(ex) else np.nan
    row.update({"with arrays": len(run.stored_examples()), "size (MB)": round(_size_mb(run.path), 2),
                "split": m.get("split"), "created": m.get("created")})
    return row


if not runs:
    st.subheader("No runs found")
    st.markdown(f"The dashboard reads run folders from {escape_md(root)} (set by `attnexplain dashboard RUNS_DIR` "
                f"or the `{run_access.RUNS_ENV}` environment variable). {'That folder does not exist yet.' if not root.exists() else 'It holds no run folder.'}")
    st.markdown("Make a run with:")
    st.code(run_access.analyze_command(), language="bash")
    st.markdown("then reload this page. The **Live** page works without any run.")
    st.stop()

outside = {r.name: run_access.refused_link(r.path) for r in runs}
for r in runs:
    if outside[r.name] is not None:
        st.error(f"Refused run **{escape_md(r.name)}**: {escape_md(outside[r.name])} is a symlink that leads "
                 f"outside the runs folder {escape_md(root)}.", icon=":material/block:")
runs = [r for r in runs if outside[r.name] is None]
good = [r for r in runs if r.ok]
broken = [r for r in runs if not r.ok]
for r in broken:
    st.error(f"Run **{escape_md(r.name)}** cannot be read: {escape_md(r.error)}", icon=":material/error:")

if not good:
    st.warning("None of the run folders can be read. Make a new run with:")
    st.code(run_access.analyze_command(), language="bash")
    st.stop()

rows = []
for r in good:
    try:
        rows.append(_summary(str(r.path), run_access.signature(r.path)))
    except Exception as exc:  # noqa: BLE001 - one bad run must not hide the others
        st.error(f"Run **{escape_md(r.name)}** cannot be summarised: {escape_md(exc)}", icon=":material/error:")
table = pd.DataFrame(rows)
if table.empty:
    st.stop()

st.caption(f"{len(table)} run(s) in {escape_md(root)}. AOPC: comprehensiveness (higher = more necessary tokens) and "
           "sufficiency (lower = more sufficient), averaged over examples.")
# the key columns fit without horizontal scrolling; the AOPC columns (two per method) and the rest are chosen
KEY_COLUMNS = ["run", "model", "dataset", "backend", "examples", "accuracy"]
EXTRA_COLUMNS = ["status", "with arrays", "size (MB)", "split", "created"]
c1, c2 = st.columns([2, 3])
aopc_kinds = c1.pills("AOPC columns", ["comprehensiveness", "sufficiency"], selection_mode="multi",
                      default=["comprehensiveness"], key="runs_aopc_kinds")
extras = c2.multiselect("More columns", EXTRA_COLUMNS, default=[], key="runs_extra_cols")
aopc_cols = [c for c in table.columns if "AOPC" in c and any(c.startswith(k) for k in (aopc_kinds or []))]
shown_cols = [c for c in KEY_COLUMNS + extras if c in table.columns] + aopc_cols
col_cfg = {"accuracy": st.column_config.NumberColumn(format="%.3f")}
for c in aopc_cols:
    kind, meth = c.split(" AOPC: ", 1)
    col_cfg[c] = st.column_config.NumberColumn(f"{'comp.' if kind.startswith('comp') else 'suff.'} {meth}",
                                               format="%.3f", help=c)
st.dataframe(table[shown_cols], hide_index=True, column_config=col_cfg, key="runs_table")
st.download_button("CSV of this table", data=lambda: to_safe_csv(table), file_name="runs.csv",
                   mime="text/csv", on_click="ignore", icon=":material/table:", key="runs_csv")

st.subheader("Open")
names = table["run"].tolist()
default = [n for n in [st.session_state.get("ax_run")] if n in names] or names[:1]
picked = st.multiselect("Select one run (explore) or two (compare)", names, default=default,
                        max_selections=2, key="runs_pick")
if picked:
    st.session_state["ax_run"] = picked[0]
    st.session_state.pop("ax_run_url_ok", None)
c1, c2, c3 = st.columns(3)
if len(picked) >= 1:
    c1.page_link(page_path("explorer"), label=f"Explore examples of {escape_md(picked[0])}", icon=":material/search:",
                 query_params={"run": picked[0]})
    c2.page_link(page_path("ablations"), label=f"Ablations of {escape_md(picked[0])}", icon=":material/content_cut:",
                 query_params={"run": picked[0]})
if len(picked) == 2:
    st.session_state["ax_run2"] = picked[1]
    st.session_state.pop("ax_run2_url_ok", None)
    c3.page_link(page_path("compare"), label=f"Compare {escape_md(picked[0])} vs {escape_md(picked[1])}", icon=":material/compare:",
                 query_params={"run": picked[0], "run2": picked[1]})

with st.expander("Manifests"):
    for r in good:
        st.markdown(f"**{escape_md(r.name)}**")
        st.json(r.manifest, expanded=False)

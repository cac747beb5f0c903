"""Example explorer: filter the examples of a run, read one with its token scores and attention maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from attnexplain.dashboard import example_views, run_access
from attnexplain.dashboard.csv_export import to_safe_csv
from attnexplain.dashboard.widgets import escape_md

st.title("Example explorer")
ref = run_access.pick_run()
if ref is None:
    st.stop()

ex = ref.examples()
if ex.empty:
    st.info(f"Run {escape_md(ref.name)} has no finished examples yet (status: {escape_md(ref.run.status)}).")
    st.stop()
stored = set(ref.stored())
methods = list(ref.run.methods)
labels = ref.run.labels


@st.cache_data(show_spinner="Comparing the methods' token rankings...", max_entries=16)
def _disagreement(path: str, sig: tuple, a: str, b: str) -> pd.Series:
    """Kendall tau between two methods' token scores, per example (attnexplain.metrics.kendall_tau)."""
    from attnexplain.metrics import kendall_tau

    toks = run_access.tokens_table(path, sig)
    toks = toks[toks["method"].isin([a, b])]
    # generation runs: one row of scores per generated token (step) and visible token
    index = ["example_id", "step", "position"] if "step" in toks else ["example_id", "position"]
    wide = toks.pivot_table(index=index, columns="method", values="score", aggfunc="first")
    out = {}
    for eid, part in wide.groupby(level=0, sort=False):
        if a in part and b in part and len(part) > 1:
            out[eid] = kendall_tau(part[a].to_numpy(), part[b].to_numpy())
    return pd.Series(out, name="tau", dtype=float)


# -- filters ---------------------------------------------------------------------------------
with st.expander("Filter examples", expanded=True):
    c1, c2, c3 = st.columns([2, 2, 1])
    query = c1.text_input("Search text", key="ex_search", placeholder="words in the text")
    label_values = sorted(ex["label_name"].dropna().astype(str).unique().tolist()) if "label_name" in ex else []
    chosen_labels = c2.multiselect("Gold label", label_values, key="ex_labels")
    correctness = c3.radio("Prediction", ["all", "correct", "incorrect"], key="ex_correct")
    c4, c5 = st.columns([1, 3])
    only_arrays = c4.toggle("Only with attention arrays", value=bool(stored) and len(stored) < len(ex),
                            key="ex_only_arrays", help=f"{len(stored)} of {len(ex)} examples keep their arrays")
    tau = None
    if len(methods) >= 2 and c5.toggle("Filter by how much two methods disagree", key="ex_disagree"):
        d1, d2, d3 = st.columns(3)
        ma = d1.selectbox("method A", methods, index=0, key="ex_dis_a")
        mb = d2.selectbox("method B", methods, index=1, key="ex_dis_b")
        tau = _disagreement(ref.path, ref.sig, ma, mb)
        if tau is not None:
            max_tau = d3.slider("keep rank agreement (Kendall tau) at most", -1.0, 1.0, 1.0, 0.05, key="ex_dis_tau")

view = ex
if query:
    view = view[view["text"].str.contains(query, case=False, regex=False, na=False)]
if chosen_labels:
    view = view[view["label_name"].astype(str).isin(chosen_labels)]
if correctness != "all" and "correct" in view:
    view = view[view["correct"].fillna(False).astype(bool) == (correctness == "correct")]
if only_arrays:
    view = view[view["example_id"].isin(stored)]
if tau is not None:
    view = view.assign(tau=view["example_id"].map(tau))
    view = view[view["tau"] <= max_tau + 1e-9]

st.caption(f"{len(view)} of {len(ex)} examples match.")
if view.empty:
    st.warning("No example matches these filters.")
    st.stop()

show_cols = [c for c in ["example_id", "label_name", "pred_label", "correct", "n_tokens", "tau", "text"] if c in view]
table = view[show_cols].assign(arrays=view["example_id"].isin(stored))
table_box = st.expander("Table of the matching examples", key="ex_table_open", on_change="rerun")
if table_box.open:  # drawn only when opened
    with table_box:
        st.dataframe(table.head(2000), hide_index=True, height=260, key="ex_table",
                     column_config={"text": st.column_config.TextColumn(width="large")})
        st.download_button("CSV of the matching examples", data=lambda: to_safe_csv(view.drop(columns=["probs"], errors="ignore")), file_name=f"{ref.name}-examples.csv", mime="text/csv",
                           on_click="ignore", icon=":material/table:", key="ex_table_csv")

# -- the example -------------------------------------------------------------------------------
ids = view["example_id"].tolist()
# widget keys per run: another run has other examples (and maybe other layer / head counts)
pick_key, wkey = f"ex_pick:{ref.name}", f"ex:{ref.name}"
if st.session_state.get("ex_run_seen") not in (None, ref.name):  # the run was switched: its ?example= is stale
    st.query_params.pop("example", None)
st.session_state["ex_run_seen"] = ref.name
requested = st.query_params.get("example")
if run_access.stale_url_value("example", requested, st.session_state.get(pick_key)):
    # an id this page wrote before (for another run, or before the user picked another example), sent
    # back by a rerun that raced the URL change: not a request; the URL is rewritten to the pick below
    requested = None
if requested in ids and st.session_state.get("ex_url_ok") != requested:
    st.session_state[pick_key] = requested
    st.session_state["ex_url_ok"] = requested
elif requested and requested not in ex["example_id"].values:
    st.warning(f"Example {escape_md(repr(requested))} (from the URL) is not in run {escape_md(ref.name)}.")
texts = dict(zip(view["example_id"], view["text"]))
if st.session_state.get(pick_key) not in ids:
    st.session_state.pop(pick_key, None)


def _fmt(eid: str) -> str:
    t = str(texts.get(eid, ""))
    return f"{eid}{' ◆' if eid in stored else ''} — {t[:80]}{'…' if len(t) > 80 else ''}"


eid = st.selectbox("Example (◆ = attention arrays stored)", ids, format_func=_fmt, key=pick_key,
                   persist_state="session")
if st.query_params.get("example") != eid:
    st.session_state["ex_url_ok"] = eid
run_access.write_url_param("example", eid)
row = ex[ex["example_id"] == eid].iloc[0]


def _int(v):
    try:
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or pd.isna(v) else int(v)
    except (TypeError, ValueError):
        return None


st.header(f"Example {escape_md(eid)}")
if ref.manifest.get("text_pair_column"):
    st.caption(f"Sentence pair: the text and its second segment (column {escape_md(ref.manifest['text_pair_column'])}) were "
               "tokenized together; the tokens after the first separator ([SEP] or </s>) are the second segment.")
arrays = ref.attention(eid) if eid in stored else None
if ref.manifest.get("task") == "generation":  # analyze --task generation: the generation view
    from attnexplain.dashboard import generation_views

    gen_conf = ref.manifest.get("generation") or {}
    st.caption(f"Generation run: {escape_md(gen_conf.get('max_new_tokens', '?'))} tokens generated greedily per prompt; "
               "each generated token is explained over the prompt and the tokens generated before it.")
    rows = generation_views.rows_from_run(row, ref.tokens(eid), arrays, special_tokens=ref.manifest.get("special_tokens"),
                                          exclude_special=ref.run.excludes_special_tokens)
    generation_views.render_rows(rows, key=f"gen:{ref.name}", note=(
        f"The attention arrays of {escape_md(eid)} were not stored (this run keeps them for {len(stored)} example(s); "
        "`--store-attention` sets how many): no per-head attention maps."))
    st.stop()
probs = row.get("probs")
if probs is None or (hasattr(probs, "__len__") and len(probs) == 0):
    probs = arrays.get("probs") if arrays else None
example_views.render_prediction(probs=probs, labels=labels, pred=_int(row.get("pred")), gold=_int(row.get("label")),
                     gold_name=row.get("label_name"), correct=row.get("correct"), key=wkey, name=f"{ref.name}-{eid}",
                     text=str(row.get("text", "")))
if bool(row.get("truncated", False)):
    st.caption(f"The text was truncated to {escape_md(row.get('n_tokens'))} tokens for the model.")

st.subheader("Tokens")
example_views.render_token_shading(ref.tokens(eid), key=wkey, methods=methods, name=f"{ref.name}-{eid}")

if arrays is None:
    st.info(f"The attention arrays of {escape_md(eid)} were not stored (this run keeps them for {len(stored)} example(s); "
            f"`--store-attention` sets how many). Switch on *Only with attention arrays* to pick one.")
else:
    example_views.render_attention_views(arrays, key=wkey, name=f"{ref.name}-{eid}", cache_key=f"{ref.key}|{eid}",
                                         head_dim=ref.run.manifest.get("head_dim"))

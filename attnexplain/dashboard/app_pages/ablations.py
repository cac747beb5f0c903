"""Ablations: necessity / sufficiency curves (AOPC bins) per method, and head ablation (``analyze --head-ablation``).

Top-k key sweeps (keep only the k largest keys of each attention row) are run by
``attnexplain.ablations.interventions`` and the analyses scripts, not by ``analyze``, so the page
has no section for them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from attnexplain.dashboard import figures, run_access, widgets

st.title("Ablations")
ref = run_access.pick_run()
if ref is None:
    st.stop()

faith = ref.faithfulness()
ex = ref.examples()
methods = list(ref.run.methods)
removal = (ref.manifest.get("faithfulness") or {}).get("removal", "?")

st.subheader("Necessity and sufficiency of each method's top tokens")
st.caption(f"ERASER curves, mean over {ex.shape[0]} examples; removal = {widgets.escape_md(removal)}. Comprehensiveness "
           "(necessity): probability drop when the top-k% tokens are removed, higher is better. Sufficiency: "
           "drop when only them are kept, lower is better.")
main = faith[faith["metric"].isin(["comprehensiveness", "sufficiency"])] if not faith.empty else faith
if main.empty:
    st.info("This run has no faithfulness table entries (analyze was run without faithfulness).")
else:
    curves = (main.groupby(["metric", "method", "k"], sort=False)["value"]
              .agg(["mean", "std", "count"]).reset_index())
    fig = figures.curves(curves, x="k", y="mean", color="method", facet="metric", percent_x=True,
                       x_title="top-k % of tokens", y_title="probability drop", title="faithfulness curves")
    widgets.show_figure(fig, key="abl-curves", name=f"{ref.name}-faithfulness-curves", data=curves)

@st.cache_data(show_spinner="Bootstrapping confidence intervals...", max_entries=16)
def _aopc(path: str, sig: tuple) -> pd.DataFrame:
    """AOPC per method and metric with the report's bootstrap 95 % CIs (attnexplain.runs.report.aopc_table)."""
    from attnexplain.runs.report import aopc_table

    table = aopc_table(run_access._open_cached(path, sig), n_resamples=1000)
    rows = []
    for r in table.itertuples():
        for p, label in (("comp", "comprehensiveness"), ("suff", "sufficiency")):
            rows.append({"method": r.method, "metric": label, "AOPC": getattr(r, p),
                         "ci_low": getattr(r, f"{p}_low"), "ci_high": getattr(r, f"{p}_high"), "n": r.n})
    return pd.DataFrame(rows).dropna(subset=["AOPC"])


aopc = _aopc(ref.path, ref.sig)
if not aopc.empty:
    fig = figures.bars(aopc, x="method", y="AOPC", color="metric", interval=("ci_low", "ci_high"),
                       title="AOPC per method (mean over examples, bootstrap 95 % confidence intervals)")
    widgets.show_figure(fig, key="abl-aopc", name=f"{ref.name}-aopc", data=aopc)

st.subheader("Head ablation")
heads = ref.heads()
metrics_present = sorted(heads["metric"].unique().tolist()) if not heads.empty else []
if "ablation_tvd" in metrics_present:
    st.caption("Total variation distance of the output distribution when one head is zero-ablated, "
               "mean over examples: which heads the prediction needs.")
    tvd = heads[heads["metric"] == "ablation_tvd"].groupby(["layer", "head"])["value"].mean().reset_index()
    L, H = int(tvd["layer"].max()) + 1, int(tvd["head"].max()) + 1
    mat = np.full((L, H), np.nan, dtype=np.float32)
    mat[tvd["layer"].to_numpy(), tvd["head"].to_numpy()] = tvd["value"].to_numpy()
    fig = figures.layer_head_heatmap(mat, title="head ablation: mean output TVD", colorbar_title="TVD")
    widgets.show_figure(fig, key="abl-heads", name=f"{ref.name}-head-ablation", data=tvd)
else:
    st.info("This run has no head ablation. Run analyze again with `--head-ablation` (one extra forward pass "
            "per layer and batch), e.g. `attnexplain analyze ... --head-ablation --out runs/NAME-heads`.")
others = [m for m in metrics_present if m != "ablation_tvd" and not m.startswith("topk")]
if others:
    metric = st.selectbox("Other per-head measures", others, key="abl_head_metric")
    part = heads[heads["metric"] == metric].groupby(["layer", "head"])["value"].mean().reset_index()
    L, H = int(part["layer"].max()) + 1, int(part["head"].max()) + 1
    mat = np.full((L, H), np.nan, dtype=np.float32)
    mat[part["layer"].to_numpy(), part["head"].to_numpy()] = part["value"].to_numpy()
    fig = figures.layer_head_heatmap(mat, title=f"{metric}, mean over examples", colorbar_title=metric)
    widgets.show_figure(fig, key="abl-heads-other", name=f"{ref.name}-{metric}", data=part)

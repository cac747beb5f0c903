"""Dense vs efficient: two runs on the same examples (e.g. dense vs SMYRF), side by side."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from attnexplain.dashboard import example_views, figures, run_access, widgets

st.title("Dense vs efficient")
st.caption("Two runs over the same examples, e.g. the dense model and the same model running an efficient "
           "attention backend: how often they agree, and how their attention differs.")
c1, c2 = st.columns(2)
with c1:
    a = run_access.pick_run("Run A", param="run", state="ax_run", key="cmp_a")
with c2:
    b = run_access.pick_run("Run B", param="run2", state="ax_run2", key="cmp_b", exclude=a.name if a else None)
if a is None or b is None:
    st.stop()
if a.path == b.path:
    m = a.manifest
    cmd = (f"attnexplain analyze --model {m.get('model')} --dataset {m.get('dataset')} --split {m.get('split')}"
           + (f" --limit {m.get('limit')}" if m.get("limit") else "")
           + f" --backend smyrf --out {run_access.runs_dir()}/{a.name}-smyrf")
    st.info("This page compares two runs over the same examples, and there is only one run here. Make a second "
            "one with an efficient attention backend on the same data, e.g.:")
    st.code(cmd, language="bash")
    st.caption("(`attnexplain backends` lists the backends and their options, e.g. "
               "`--backend-option q_cluster_size=16`.) Then pick it as run B.")
    st.stop()

ea, eb = a.examples(), b.examples()
shared = ea.merge(eb, on="example_id", suffixes=("_a", "_b"))
md = widgets.escape_md
st.markdown(f"**A** {md(a.name)}: {md(a.manifest.get('model'))} / backend **{md(a.manifest.get('backend'))}** — "
            f"**B** {md(b.name)}: {md(b.manifest.get('model'))} / backend **{md(b.manifest.get('backend'))}**")
if shared.empty:
    st.warning(f"The runs share no example ids ({len(ea)} and {len(eb)} examples): they were not run on the same data.")
    st.stop()
if a.manifest.get("dataset") != b.manifest.get("dataset"):
    st.warning(f"Different datasets: {md(repr(a.manifest.get('dataset')))} vs {md(repr(b.manifest.get('dataset')))}.")

agree = float((shared["pred_a"] == shared["pred_b"]).mean())
m1, m2, m3, m4 = st.columns(4)
m1.metric("shared examples", len(shared))
m2.metric("prediction agreement", f"{agree:.1%}")
if "correct_a" in shared and shared["correct_a"].notna().any():
    m3.metric("accuracy A", f"{shared['correct_a'].astype(float).mean():.1%}")
    m4.metric("accuracy B", f"{shared['correct_b'].astype(float).mean():.1%}")


@st.cache_data(show_spinner="Comparing token rankings...", max_entries=16)
def _rank_agreement(pa: str, sa: tuple, pb: str, sb: tuple, method: str) -> pd.DataFrame:
    """Per example, Kendall tau between run A's and run B's token scores of one method."""
    from attnexplain.metrics import kendall_tau

    ta = run_access.tokens_table(pa, sa)
    tb = run_access.tokens_table(pb, sb)
    ta = ta[ta["method"] == method][["example_id", "position", "score"]]
    tb = tb[tb["method"] == method][["example_id", "position", "score"]]
    both = ta.merge(tb, on=["example_id", "position"], suffixes=("_a", "_b"))
    rows = []
    for eid, part in both.groupby("example_id", sort=False):
        if len(part) > 1:
            rows.append({"example_id": eid, "n_tokens": len(part),
                         "kendall_tau": kendall_tau(part["score_a"].to_numpy(), part["score_b"].to_numpy())})
    return pd.DataFrame(rows, columns=["example_id", "kendall_tau", "n_tokens"])


st.subheader("Per-example rank agreement")
common_methods = [m for m in a.run.methods if m in b.run.methods]
if not common_methods:
    st.info("The two runs share no explanation method.")
else:
    method = st.selectbox("Method", common_methods, key="cmp_method")
    ranks = _rank_agreement(a.path, a.sig, b.path, b.sig, method)
    if ranks is not None and not ranks.empty:
        st.metric(f"mean Kendall tau ({md(method)})", f"{ranks['kendall_tau'].mean():.3f}")
        fig = figures.histogram(ranks["kendall_tau"], title=f"Kendall tau of the token rankings, A vs B ({method})",
                              x_title="Kendall tau")
        widgets.show_figure(fig, key="cmp-tau", name=f"{a.name}-vs-{b.name}-{method}-tau", data=ranks)
        worst = ranks.sort_values("kendall_tau").head(10).merge(ea[["example_id", "text"]], on="example_id")
        st.caption("Examples where the two runs rank tokens most differently:")
        st.dataframe(worst, hide_index=True, key="cmp_worst")
    elif ranks is not None:
        st.info("No example has token scores in both runs for this method.")

st.subheader("Attention maps")
both_stored = [e for e in a.stored() if e in set(b.stored())]
if not both_stored:
    st.info("No example keeps its attention arrays in both runs.")
    st.stop()
texts = dict(zip(ea["example_id"], ea["text"]))
eid = st.selectbox("Example (arrays stored in both runs)", both_stored, key="cmp_example",
                   format_func=lambda e: f"{e} — {str(texts.get(e, ''))[:80]}")
xa, xb = a.attention(eid), b.attention(eid)
ta = [str(t) for t in np.asarray(xa["tokens"]).tolist()]
tb = [str(t) for t in np.asarray(xb["tokens"]).tolist()]
if ta != tb or xa["raw"].shape != xb["raw"].shape:
    st.warning(f"Example {md(eid)} was tokenized differently or has different shapes in the two runs "
               f"({xa['raw'].shape} vs {xb['raw'].shape}); maps cannot be compared cell by cell.")
    st.stop()
L, H = xa["raw"].shape[:2]
variants = [v for v in ("raw", "effective", "distribution") if v in xa and v in xb]
d1, d2, d3 = st.columns(3)
variant = d1.selectbox("Matrix", variants, key="cmp_variant", format_func=lambda v: example_views.VARIANT_LABELS.get(v, v))
layer = d2.selectbox("Layer", list(range(L)), index=L - 1, key="cmp_layer")
head = d3.selectbox("Head", ["mean over heads", *range(H)], key="cmp_head")
if head == "mean over heads":
    ma = np.asarray(xa[variant][layer], dtype=np.float32).mean(0)
    mb = np.asarray(xb[variant][layer], dtype=np.float32).mean(0)
else:
    ma = np.asarray(xa[variant][layer, head], dtype=np.float32)
    mb = np.asarray(xb[variant][layer, head], dtype=np.float32)
mats = {f"A: {a.name} ({a.manifest.get('backend')})": ma, f"B: {b.name} ({b.manifest.get('backend')})": mb,
        "difference (B - A)": mb - ma}
fig, note = figures.side_by_side(mats, ta, mode=widgets.long_input_mode(), title=f"{variant}, layer {layer}, head {head}")
widgets.show_figure(fig, key="cmp-maps", name=f"{a.name}-vs-{b.name}-{eid}-L{layer}", note=note,
               data=lambda: figures.matrix_frame({"A": ma, "B": mb, "B_minus_A": mb - ma}, ta))
if variant != "effective":  # rows of probabilities: their total variation distance
    from attnexplain.metrics import tvd

    row_tvd = np.asarray(tvd(ma, mb))
    st.caption(f"Mean total variation distance between the rows of A and B: {row_tvd.mean():.4f} "
               f"(max {row_tvd.max():.4f}).")

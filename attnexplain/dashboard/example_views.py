"""Example views shared by the Explorer and Live pages: prediction, shaded tokens, the layer x
head grid, one head large (raw / effective / distribution and their difference), and norm,
rollout and flow across layers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from attnexplain.dashboard import figures, widgets

VARIANT_LABELS = {"raw": "raw attention", "effective": "effective attention", "distribution": "distribution"}


# ------------------------------------------------------------------------------------------
# example views (Explorer and Live)
# ------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=48)
def _grid_figure(cache_key: str, variant: str, _arr: np.ndarray) -> tuple[Any, str | None]:
    return figures.head_grid(_arr, title=f"{VARIANT_LABELS.get(variant, variant)}: layers x heads")


@st.cache_resource(show_spinner=False, max_entries=48)
def _layer_figures(cache_key: str, _arrays: Mapping[str, np.ndarray], _tokens: tuple) -> dict[str, Any]:
    out = {}
    for name, title in (("norm", "norm-based attention (heads summed)"), ("rollout", "attention rollout")):
        if name in _arrays:
            out[name] = figures.layer_strip(_arrays[name], list(_tokens), title=f"{title}, per layer")
    return out


def token_scores_wide(tokens_df: pd.DataFrame) -> pd.DataFrame:
    """position x method table of token scores (from the long tokens table)."""
    if tokens_df is None or tokens_df.empty:
        return pd.DataFrame()
    wide = tokens_df.pivot_table(index=["position", "token"], columns="method", values="score", aggfunc="first")
    return wide.reset_index().sort_values("position")


def render_prediction(*, probs: Any, labels: list[str] | None, pred: int | None, gold: int | None,
                      key: str, text: str | None = None, gold_name: str | None = None,
                      correct: bool | None = None, name: str | None = None) -> None:
    cols = st.columns([2, 3])
    if gold_name is None or (not isinstance(gold_name, str) and pd.isna(gold_name)):
        gold_name = None
        if gold is not None:
            gold_name = labels[gold] if labels and 0 <= gold < len(labels) else str(gold)
    with cols[0]:
        pred_name = (labels[pred] if labels and pred is not None and pred < len(labels) else str(pred))
        st.metric("prediction", pred_name)
        if gold_name is not None:
            ok = bool(correct) if correct is not None and not pd.isna(correct) else gold == pred
            st.markdown(f"gold label: **{widgets.escape_md(str(gold_name))}** — "
                        f"{':green[correct]' if ok else ':red[incorrect]'}")
        if text is not None:
            with st.expander("text", expanded=False):
                st.text(text)
    with cols[1]:
        if probs is not None and len(probs):
            p = np.asarray(probs, dtype=np.float32)
            fig = figures.probs_bar(p, labels, pred=pred, gold_name=gold_name)
            names = [labels[i] if labels and i < len(labels) else str(i) for i in range(len(p))]
            widgets.show_figure(fig, key=f"{key}-probs", name=f"{name or key}-probabilities",
                        data=pd.DataFrame({"class": names, "probability": p}))


def render_token_shading(tokens_df: pd.DataFrame, *, key: str, methods: list[str] | None = None,
                         name: str | None = None) -> None:
    """Text with tokens shaded by the chosen method's scores (escaped HTML spans)."""
    wide = token_scores_wide(tokens_df)
    if wide.empty:
        st.info("No token scores for this example.")
        return
    methods = [m for m in (methods or []) if m in wide.columns] or [c for c in wide.columns if c not in ("position", "token")]
    method = st.radio("Shade tokens by", methods, horizontal=True, key=f"{key}-shade")
    st.markdown(figures.token_html(wide["token"].tolist(), wide[method].to_numpy(), method=method),
                unsafe_allow_html=True)
    st.caption("Orange: positive score, blue: negative; intensity relative to the largest |score| of the example. "
               "Hover a token for its value.")
    st.download_button("CSV of all token scores", data=lambda: wide.to_csv(index=False),
                       file_name=f"{widgets.views_safe(name or key)}-token-scores.csv", mime="text/csv", key=f"{key}-tokcsv",
                       on_click="ignore", icon=":material/table:")




def render_attention_views(arrays: Mapping[str, np.ndarray], *, key: str, cache_key: str, name: str | None = None,
                           distribution_fn: Callable[[int, int], np.ndarray | None] | None = None) -> None:
    """Layer x head grid, one head large (raw / effective / distribution + difference), norm/rollout/flow.

    ``arrays`` has the keys of a run's ``attention/<id>.npz``; ``distribution_fn(layer, head)``
    supplies the distribution variant when it is not in ``arrays`` (Live page, computed on demand).
    Widget keys start with ``key`` (kept from one example to the next, so the chosen layer / head
    stay); ``name`` starts the download file names.
    """
    name = name or key
    tokens = [str(t) for t in np.asarray(arrays["tokens"]).tolist()]
    raw = arrays["raw"]
    L, H, n, _ = raw.shape
    variants = [v for v in ("raw", "effective", "distribution") if v in arrays]

    heads_tab, layers_tab = st.tabs(["Heads", "Across layers (norm, rollout, flow)"], key=f"{key}-tabs",
                                    on_change="rerun")
    # only the open tab is drawn (a page with every view at once takes seconds to draw in a browser)
    if heads_tab.open is not False:
        with heads_tab:
            variant = st.segmented_control("Grid shows", variants, default="raw", key=f"{key}-gridvar",
                                           format_func=lambda v: VARIANT_LABELS.get(v, v)) or "raw"
            fig, note = _grid_figure(cache_key, variant, arrays[variant])
            widgets.show_figure(fig, key=f"{key}-grid", name=f"{name}-{variant}-grid", note=note,
                        data=lambda: figures.grid_frame(arrays[variant], tokens))
            _head_fragment(arrays, tokens, key=key, name=name, distribution_fn=distribution_fn)
    if layers_tab.open:
        with layers_tab:
            figs = _layer_figures(cache_key, arrays, tuple(tokens))
            for what, (fig, note) in figs.items():
                widgets.show_figure(fig, key=f"{key}-{what}", name=f"{name}-{what}", note=note,
                            data=lambda what=what: pd.concat(
                                [figures.matrix_frame({what: arrays[what][l]}, tokens).assign(layer=l)
                                 for l in range(L)]))
            if "flow" in arrays and arrays["flow"] is not None and np.asarray(arrays["flow"]).size:
                flow = np.asarray(arrays["flow"], dtype=np.float32).reshape(-1)[:n]
                fig, note = figures.token_bar(flow, tokens,
                                            title="attention flow from the readout position to each input token")
                widgets.show_figure(fig, key=f"{key}-flow", name=f"{name}-flow", note=note,
                            data=pd.DataFrame({"position": np.arange(len(flow)), "token": tokens[:len(flow)],
                                               "flow": flow}))
            else:
                st.caption("Attention flow is not stored for this example.")


@st.fragment
def _head_fragment(arrays: Mapping[str, np.ndarray], tokens: list[str], *, key: str, name: str,
                   distribution_fn: Callable[[int, int], np.ndarray | None] | None) -> None:
    """One head large; a fragment, so switching heads redraws only this part of the page."""
    raw = arrays["raw"]
    L, H = raw.shape[:2]
    for k, count in ((f"{key}-layer", L), (f"{key}-head", H)):  # kept from another example / run
        if st.session_state.get(k) is not None and not 0 <= st.session_state[k] < count:
            del st.session_state[k]
    st.markdown("**One head, large**")
    c1, c2, c3 = st.columns([1, 1, 2])
    layer = c1.selectbox("Layer", list(range(L)), index=L - 1, key=f"{key}-layer")
    head = c2.selectbox("Head", list(range(H)), key=f"{key}-head")
    mats: dict[str, np.ndarray] = {"raw": np.asarray(raw[layer, head], dtype=np.float32)}
    if "effective" in arrays:
        mats["effective"] = np.asarray(arrays["effective"][layer, head], dtype=np.float32)
    dist = None
    if "distribution" in arrays:
        dist = np.asarray(arrays["distribution"][layer, head], dtype=np.float32)
    elif distribution_fn is not None:
        dist = distribution_fn(layer, head)
    if dist is not None:
        mats["distribution"] = dist
    diff_options = [v for v in mats if v != "raw"]
    against = c3.radio("Difference", diff_options, horizontal=True, key=f"{key}-diff",
                       format_func=lambda v: f"{v} - raw") if diff_options else None
    shown = {VARIANT_LABELS.get(k, k): v for k, v in mats.items()}
    if against:
        shown[f"difference ({against} - raw)"] = mats[against] - mats["raw"]
    fig, note = figures.side_by_side(shown, tokens, mode=widgets.long_input_mode(), title=f"layer {layer}, head {head}")
    widgets.show_figure(fig, key=f"{key}-head", name=f"{name}-L{layer}-H{head}", note=note,
                data=lambda: figures.matrix_frame(mats, tokens))

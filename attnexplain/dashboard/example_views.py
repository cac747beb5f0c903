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
from attnexplain.dashboard.csv_export import to_safe_csv

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


_SPECIAL_TOKEN_NAMES = {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "<s>", "</s>", "<pad>", "<mask>", "<cls>", "<sep>",
                        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|end_of_text|>"}


def special_positions(tokens_wide: pd.DataFrame, mask: Any = None) -> np.ndarray:
    """Which rows of the position x method table are special tokens: ``mask`` when the caller knows
    (the Live page asks :func:`attnexplain.methods.special_tokens.special_token_mask`), a ``special``
    column of a run's tokens table when it has one, else the tokenizers' usual special-token names."""
    if mask is not None:
        return np.asarray(mask, dtype=bool)[: len(tokens_wide)]
    if "special" in tokens_wide:
        return tokens_wide["special"].fillna(False).astype(bool).to_numpy()
    return tokens_wide["token"].astype(str).isin(_SPECIAL_TOKEN_NAMES).to_numpy()


def _styled_scores(table: pd.DataFrame, methods: list[str]):
    """Tokens x methods table, each method's column shaded like the text (ferret-style)."""
    def colour(col: pd.Series) -> list[str]:
        vals = col.to_numpy(dtype=float)
        scale = float(np.nanmax(np.abs(vals))) if len(vals) and np.isfinite(vals).any() else 1.0
        scale = scale or 1.0
        return [f"background-color: {figures._shade(v / scale)}" if np.isfinite(v) else "" for v in vals]

    return table.style.apply(colour, subset=methods).format({m: "{:.4f}" for m in methods})


def render_token_shading(tokens_df: pd.DataFrame, *, key: str, methods: list[str] | None = None,
                         name: str | None = None, special_mask: Any = None) -> None:
    """Text with tokens shaded by the chosen method's scores (escaped HTML spans), a colour legend,
    options to merge word pieces and to leave out special tokens (the library's
    ``exclude_special_tokens`` option, same default), an offline HTML export and a tokens x methods table."""
    from attnexplain.methods.special_tokens import EXCLUDE_SPECIAL_TOKENS_DEFAULT

    wide = token_scores_wide(tokens_df)
    if wide.empty:
        st.info("No token scores for this example.")
        return
    methods = [m for m in (methods or []) if m in wide.columns] or [c for c in wide.columns if c not in ("position", "token")]
    c1, c2, c3 = st.columns([4, 1.3, 1.3])
    method = c1.radio("Shade tokens by", methods, horizontal=True, key=f"{key}-shade")
    exclude = c2.toggle("Leave out special tokens", value=EXCLUDE_SPECIAL_TOKENS_DEFAULT, key=f"{key}-nospecial",
                        help="[CLS], [SEP], <s>... (and a causal model's first token, the attention sink) carry no "
                             "content but often the largest scores; the same option as `exclude_special_tokens` / "
                             "`--include-special-tokens`.")
    merge = c3.toggle("Merge word pieces", value=False, key=f"{key}-merge",
                      help="Show words instead of word pieces; a word's score is the sum of its pieces' scores.")
    shown = wide
    if exclude:
        shown = wide[~special_positions(wide, special_mask)]
    tokens = shown["token"].astype(str).tolist()
    scores = {m: shown[m].to_numpy(dtype=float) for m in methods}
    if merge:
        tokens, scores = figures.merge_word_pieces(tokens, scores)
    st.markdown(figures.token_html(tokens, scores[method], method=method, legend=True), unsafe_allow_html=True)
    st.caption("Orange: positive score, blue: negative; intensity relative to the largest |score| shown. "
               "Hover a token for its value.")
    table = pd.DataFrame({"token": tokens, **scores})
    with st.expander("Tokens x methods table"):
        st.dataframe(_styled_scores(table, methods), hide_index=True, key=f"{key}-tokxm")
    d1, d2 = st.columns(2)
    d1.download_button("HTML of the shaded text (all methods, offline)",
                       data=lambda: figures.token_document(tokens, scores, title=name or key),
                       file_name=f"{widgets.views_safe(name or key)}-tokens.html", mime="text/html",
                       key=f"{key}-tokhtml", on_click="ignore", icon=":material/download:")
    d2.download_button("CSV of all token scores", data=lambda: to_safe_csv(wide),
                       file_name=f"{widgets.views_safe(name or key)}-token-scores.csv", mime="text/csv", key=f"{key}-tokcsv",
                       on_click="ignore", icon=":material/table:")


def effective_note(arrays: Mapping[str, np.ndarray], head_dim: int | None) -> str | None:
    """"Effective attention is raw attention" when the example has at most d_head tokens (or, with d_head
    unknown, when the stored effective and raw maps agree everywhere to float16 precision)."""
    if "effective" not in arrays:
        return None
    n = int(np.asarray(arrays["raw"]).shape[-1])
    if head_dim:
        return figures.effective_equals_raw_note(n, int(head_dim))
    diff = float(np.nanmax(np.abs(np.asarray(arrays["effective"], dtype=np.float32)
                                  - np.asarray(arrays["raw"], dtype=np.float32))))
    if diff <= figures.DIFFERENCE_TOLERANCE:
        return (f"Effective attention equals raw attention in every head of this example (largest difference "
                f"{diff:.1g}): nothing is hidden in the null space (this happens when n <= d_head).")
    return None


def render_attention_views(arrays: Mapping[str, np.ndarray], *, key: str, cache_key: str, name: str | None = None,
                           distribution_fn: Callable[[int, int], np.ndarray | None] | None = None,
                           head_dim: int | None = None) -> None:
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
    note = effective_note(arrays, head_dim)
    if note:
        st.info(note, icon=":material/info:")

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
                st.caption("Attention flow is not stored in run folders (one max-flow problem per token makes it too "
                           "slow for data sets); `analyze --methods ...,flow` keeps its token scores (shade the tokens "
                           "by `flow` above), and the **Live** page draws it for a typed text of up to 128 tokens.")


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

"""Shared Streamlit helpers of the dashboard: the runs folder, cached run reading, path safety,
figure display with downloads, and the example views used by the Explorer and Live pages.

Run folders are read only through ``attnexplain.runs`` (open_run / list_runs / resolve_run and
the Run accessors). Reads are cached with keys (path, signature), where the signature holds the
modification times of the run's manifest and folders, so a run that changes on disk (a running
``analyze``) is read again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

import views

RUNS_ENV = "ATTNEXPLAIN_RUNS_DIR"
ANALYZE_EXAMPLE = ("attnexplain analyze --model minilm-rotten-tomatoes --dataset rotten-tomatoes "
                   "--split test --limit 500 --out {runs_dir}/rotten-tomatoes-dense")
VARIANT_LABELS = {"raw": "raw attention", "effective": "effective attention", "distribution": "distribution"}


# ------------------------------------------------------------------------------------------
# runs folder and cached reading
# ------------------------------------------------------------------------------------------


def runs_dir() -> Path:
    """The folder the dashboard browses: ``$ATTNEXPLAIN_RUNS_DIR`` (set by ``attnexplain dashboard``) or ./runs."""
    return Path(os.environ.get(RUNS_ENV) or "runs").expanduser()


def analyze_command() -> str:
    return ANALYZE_EXAMPLE.format(runs_dir=str(runs_dir()).rstrip("/") or ".")


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def signature(path: Path | str) -> tuple[int, ...]:
    """Cache key part that changes when a run folder changes (manifest rewritten, shards, arrays)."""
    p = Path(path)
    return (_mtime(p), _mtime(p / "manifest.json"), _mtime(p / "shards"), _mtime(p / "attention"),
            _mtime(p / "examples.parquet"))


@st.cache_resource(show_spinner=False, max_entries=64)
def _open_cached(path: str, sig: tuple) -> Any:
    from attnexplain.runs import open_run

    return open_run(path)


def open_run_cached(path: Path | str) -> Any:
    """``attnexplain.runs.open_run`` cached by (path, signature); raises RunFormatError."""
    return _open_cached(str(path), signature(path))


def list_runs_cached(root: Path | None = None) -> list[Any]:
    """``attnexplain.runs.list_runs`` (cached per folder state): Run objects, broken ones with ``.error``."""
    root = root or runs_dir()
    if not root.is_dir():
        return []
    sig = tuple((c.name, signature(c)) for c in sorted(root.iterdir()) if not c.name.startswith("."))
    return _list_cached(str(root), sig)


@st.cache_resource(show_spinner=False, max_entries=8)
def _list_cached(root: str, sig: tuple) -> list[Any]:
    from attnexplain.runs import list_runs

    return list_runs(root)


@st.cache_data(show_spinner=False, max_entries=32)
def examples_table(path: str, sig: tuple) -> pd.DataFrame:
    return _open_cached(path, sig).examples()


@st.cache_data(show_spinner=False, max_entries=256)
def tokens_table(path: str, sig: tuple, example_id: str | None = None) -> pd.DataFrame:
    return _open_cached(path, sig).tokens(example_id)


@st.cache_data(show_spinner=False, max_entries=16)
def faithfulness_table(path: str, sig: tuple) -> pd.DataFrame:
    return _open_cached(path, sig).faithfulness()


@st.cache_data(show_spinner=False, max_entries=16)
def heads_table(path: str, sig: tuple, metric: str | None = None) -> pd.DataFrame:
    return _open_cached(path, sig).heads(metric=metric)


@st.cache_data(show_spinner=False, max_entries=32)
def stored_examples(path: str, sig: tuple) -> list[str]:
    return _open_cached(path, sig).stored_examples()


@st.cache_resource(show_spinner=False, max_entries=24)
def attention_arrays(path: str, sig: tuple, example_id: str) -> dict[str, np.ndarray] | None:
    """The stored arrays of one example only (cached without copying; never modified)."""
    return _open_cached(path, sig).attention(example_id)


class RunRef:
    """A run folder the user picked, with its cache key."""

    def __init__(self, run: Any):
        self.run = run
        self.path = str(run.path)
        self.sig = signature(run.path)
        self.name = run.name

    @property
    def manifest(self) -> dict:
        return self.run.manifest

    def examples(self) -> pd.DataFrame:
        return examples_table(self.path, self.sig)

    def tokens(self, example_id: str | None = None) -> pd.DataFrame:
        return tokens_table(self.path, self.sig, example_id)

    def faithfulness(self) -> pd.DataFrame:
        return faithfulness_table(self.path, self.sig)

    def heads(self, metric: str | None = None) -> pd.DataFrame:
        return heads_table(self.path, self.sig, metric)

    def stored(self) -> list[str]:
        return stored_examples(self.path, self.sig)

    def attention(self, example_id: str) -> dict[str, np.ndarray] | None:
        return attention_arrays(self.path, self.sig, example_id)

    @property
    def key(self) -> str:
        return f"{self.path}|{self.sig}"


# ------------------------------------------------------------------------------------------
# path safety and run selection
# ------------------------------------------------------------------------------------------


def safe_open(name: str, *, where: str = "the URL") -> RunRef | None:
    """Open ``RUNS_DIR/name``; refuse names that leave RUNS_DIR, report broken runs. None on failure."""
    from attnexplain.runs import RunFormatError, RunPathError, resolve_run

    try:
        path = resolve_run(runs_dir(), name)
    except RunPathError as exc:
        st.error(f"Refused run {name!r} from {where}: it is not inside the runs folder {runs_dir()} ({exc}).",
                 icon=":material/block:")
        return None
    try:
        return RunRef(open_run_cached(path))
    except RunFormatError as exc:
        st.error(f"Run {name!r} cannot be read: {exc}", icon=":material/error:")
        return None


def readable_runs() -> list[Any]:
    return [r for r in list_runs_cached() if r.ok]


def _query_run(param: str) -> str | None:
    value = st.query_params.get(param)
    if isinstance(value, list):
        value = value[0] if value else None
    return value or None


def pick_run(label: str = "Run", *, param: str = "run", state: str = "ax_run", key: str = "run_select",
             exclude: str | None = None) -> RunRef | None:
    """Run chooser: from ``?run=NAME`` (checked against RUNS_DIR) or a select box of readable runs.

    The choice is kept in session state across pages and written back to the URL.
    """
    runs = readable_runs()
    names = [r.name for r in runs]
    requested = _query_run(param)
    if requested is not None and requested != st.session_state.get(f"{state}_url_ok"):
        ref = safe_open(requested, where=f"the URL (?{param}=)")
        if ref is not None:
            st.session_state[state] = ref.name if ref.name in names else requested
            st.session_state[f"{state}_url_ok"] = requested
        else:
            st.query_params.pop(param, None)
    if not names:
        st.info(f"No readable runs in `{runs_dir()}`. Make one with:")
        st.code(analyze_command(), language="bash")
        return None
    options = [n for n in names if n != exclude] or names
    current = st.session_state.get(state)
    index = options.index(current) if current in options else 0
    choice = st.selectbox(label, options, index=index, key=key)
    st.session_state[state] = choice
    if st.query_params.get(param) != choice:
        st.query_params[param] = choice
        st.session_state[f"{state}_url_ok"] = choice
    ref = safe_open(choice, where="the run list")
    return ref


# ------------------------------------------------------------------------------------------
# figures with downloads
# ------------------------------------------------------------------------------------------


def image_format() -> str:
    return st.session_state.get("ax_image_format", "png")


def long_input_mode() -> str:
    return st.session_state.get("ax_long_mode", "pool")


def plot_config(name: str) -> dict:
    """plotly.js config: the modebar camera button downloads ``name`` as PNG or SVG (sidebar choice)."""
    fmt = image_format()
    opts: dict[str, Any] = {"format": fmt, "filename": name}
    if fmt == "png":
        opts["scale"] = 2
    return {"displaylogo": False, "displayModeBar": True, "toImageButtonOptions": opts,
            "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120] or "figure"


def show_figure(fig: Any, *, key: str, name: str, data: pd.DataFrame | Callable[[], pd.DataFrame] | None = None,
                note: str | None = None) -> None:
    """A plotly figure, its long-input note, and HTML / CSV download buttons (generated on click)."""
    name = _safe_name(name)
    if note:
        st.caption(f":material/compress: {note}")
    config = plot_config(name)
    st.plotly_chart(fig, key=f"fig-{key}", config=config)
    row = st.container(horizontal=True, gap="small")

    def _html() -> str:
        return fig.to_html(include_plotlyjs=True, full_html=True, config=config)

    row.download_button("HTML", data=_html, file_name=f"{name}.html", mime="text/html", key=f"html-{key}",
                            on_click="ignore", icon=":material/download:")
    if data is not None:
        def _csv() -> str:
            df = data() if callable(data) else data
            return df.to_csv(index=False)

        row.download_button("CSV", data=_csv, file_name=f"{name}.csv", mime="text/csv", key=f"csv-{key}",
                                on_click="ignore", icon=":material/table:")


# ------------------------------------------------------------------------------------------
# example views (Explorer and Live)
# ------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=48)
def _grid_figure(cache_key: str, variant: str, _arr: np.ndarray) -> tuple[Any, str | None]:
    return views.head_grid(_arr, title=f"{VARIANT_LABELS.get(variant, variant)}: layers x heads")


@st.cache_resource(show_spinner=False, max_entries=48)
def _layer_figures(cache_key: str, _arrays: Mapping[str, np.ndarray], _tokens: tuple) -> dict[str, Any]:
    out = {}
    for name, title in (("norm", "norm-based attention (heads summed)"), ("rollout", "attention rollout")):
        if name in _arrays:
            out[name] = views.layer_strip(_arrays[name], list(_tokens), title=f"{title}, per layer")
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
            st.markdown(f"gold label: **{escape_md(str(gold_name))}** — "
                        f"{':green[correct]' if ok else ':red[incorrect]'}")
        if text is not None:
            with st.expander("text", expanded=False):
                st.text(text)
    with cols[1]:
        if probs is not None and len(probs):
            p = np.asarray(probs, dtype=np.float32)
            fig = views.probs_bar(p, labels, pred=pred, gold_name=gold_name)
            names = [labels[i] if labels and i < len(labels) else str(i) for i in range(len(p))]
            show_figure(fig, key=f"{key}-probs", name=f"{name or key}-probabilities",
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
    st.markdown(views.token_html(wide["token"].tolist(), wide[method].to_numpy(), method=method),
                unsafe_allow_html=True)
    st.caption("Orange: positive score, blue: negative; intensity relative to the largest |score| of the example. "
               "Hover a token for its value.")
    st.download_button("CSV of all token scores", data=lambda: wide.to_csv(index=False),
                       file_name=f"{views_safe(name or key)}-token-scores.csv", mime="text/csv", key=f"{key}-tokcsv",
                       on_click="ignore", icon=":material/table:")


def escape_md(s: str) -> str:
    """Text shown inside markdown (no HTML allowed there): markdown specials backslashed."""
    out = s
    for ch in "\\`*_{}[]<>()#+-.!|~$":
        out = out.replace(ch, "\\" + ch)
    return out


def views_safe(s: str) -> str:
    return _safe_name(s)


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
            show_figure(fig, key=f"{key}-grid", name=f"{name}-{variant}-grid", note=note,
                        data=lambda: views.grid_frame(arrays[variant], tokens))
            _head_fragment(arrays, tokens, key=key, name=name, distribution_fn=distribution_fn)
    if layers_tab.open:
        with layers_tab:
            figs = _layer_figures(cache_key, arrays, tuple(tokens))
            for what, (fig, note) in figs.items():
                show_figure(fig, key=f"{key}-{what}", name=f"{name}-{what}", note=note,
                            data=lambda what=what: pd.concat(
                                [views.matrix_frame({what: arrays[what][l]}, tokens).assign(layer=l)
                                 for l in range(L)]))
            if "flow" in arrays and arrays["flow"] is not None and np.asarray(arrays["flow"]).size:
                flow = np.asarray(arrays["flow"], dtype=np.float32).reshape(-1)[:n]
                fig, note = views.token_bar(flow, tokens,
                                            title="attention flow from the readout position to each input token")
                show_figure(fig, key=f"{key}-flow", name=f"{name}-flow", note=note,
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
    fig, note = views.side_by_side(shown, tokens, mode=long_input_mode(), title=f"layer {layer}, head {head}")
    show_figure(fig, key=f"{key}-head", name=f"{name}-L{layer}-H{head}", note=note,
                data=lambda: views.matrix_frame(mats, tokens))

"""Plotly figure builders for the dashboard (presentation only).

Everything here takes arrays / tables that were already computed (read from a run folder, or
returned by attnexplain's public functions on the Live page) and only reshapes them for display:
selecting, pooling blocks of a long matrix, sparsifying to the top-k entries of each row,
averaging a long table for a curve. No attention analysis happens here.

Long inputs: a heatmap over more than ``MAX_TOKENS`` tokens is shown pooled (mean over blocks of
consecutive tokens) or sparsified (top-k keys per query row); :func:`fit_matrix` returns a note
saying which, and the pages show it next to the figure.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

#: heatmaps above this many tokens per side are pooled or sparsified
MAX_TOKENS = 256
#: side of each small map in the layer x head grid
GRID_THUMB = 32

def _scale(colors: list[str]) -> list[list]:
    """An explicit plotly colour scale (named scales differ between plotly.py and plotly.js)."""
    return [[i / (len(colors) - 1), c] for i, c in enumerate(colors)]


#: light (0) to dark blue; diverging blue (negative) - white (0) - red (positive)
SEQ_SCALE = _scale(["rgb(247,251,255)", "rgb(222,235,247)", "rgb(198,219,239)", "rgb(158,202,225)",
                    "rgb(107,174,214)", "rgb(66,146,198)", "rgb(33,113,181)", "rgb(8,81,156)", "rgb(8,48,107)"])
SIGNED_SCALE = _scale(["rgb(5,48,97)", "rgb(33,102,172)", "rgb(67,147,195)", "rgb(146,197,222)",
                       "rgb(209,229,240)", "rgb(247,247,247)", "rgb(253,219,199)", "rgb(244,165,130)",
                       "rgb(214,96,77)", "rgb(178,24,43)", "rgb(103,0,31)"])

_MARGIN = dict(l=10, r=10, t=40, b=10)


# ------------------------------------------------------------------------------------------
# reshaping long matrices
# ------------------------------------------------------------------------------------------


def _blocks(n: int, max_size: int) -> tuple[np.ndarray, int]:
    size = max(1, math.ceil(n / max_size))
    return np.arange(0, n, size), size


def pool_matrix(m: np.ndarray, max_size: int) -> tuple[np.ndarray, int]:
    """Mean over square blocks of consecutive rows/columns so that each side is <= max_size.

    Works on (..., n, m) arrays; returns the pooled array and the block size (1: unchanged).
    """
    m = np.asarray(m, dtype=np.float32)
    r_starts, r_size = _blocks(m.shape[-2], max_size)
    c_starts, c_size = _blocks(m.shape[-1], max_size)
    if r_size == 1 and c_size == 1:
        return m, 1
    summed = np.add.reduceat(np.add.reduceat(m, r_starts, axis=-2), c_starts, axis=-1)
    r_counts = np.diff(np.append(r_starts, m.shape[-2]))
    c_counts = np.diff(np.append(c_starts, m.shape[-1]))
    return summed / (r_counts[:, None] * c_counts[None, :]), max(r_size, c_size)


def pool_vector(v: np.ndarray, max_size: int) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    starts, size = _blocks(v.shape[-1], max_size)
    if size == 1:
        return v
    counts = np.diff(np.append(starts, v.shape[-1]))
    return np.add.reduceat(v, starts, axis=-1) / counts


def pool_labels(tokens: Sequence[str], max_size: int) -> list[str]:
    """Axis labels: ``"i tok"`` per token, or ``"i-j tok..tok"`` per pooled block."""
    tokens = [str(t) for t in tokens]
    starts, size = _blocks(len(tokens), max_size)
    if size == 1:
        return [f"{i} {t}" for i, t in enumerate(tokens)]
    out = []
    for s in starts:
        e = min(s + size, len(tokens)) - 1
        out.append(f"{s}-{e} {tokens[s]}..{tokens[e]}")
    return out


def topk_rows(m: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest entries (by absolute value) of each row, NaN elsewhere (drawn blank)."""
    m = np.asarray(m, dtype=np.float32)
    if k >= m.shape[-1]:
        return m
    idx = np.argpartition(-np.abs(m), k - 1, axis=-1)[..., :k]
    out = np.full_like(m, np.nan)
    np.put_along_axis(out, idx, np.take_along_axis(m, idx, axis=-1), axis=-1)
    return out


def fit_matrix(m: np.ndarray, tokens: Sequence[str], *, mode: str = "pool", max_tokens: int = MAX_TOKENS,
               topk: int = 8) -> tuple[np.ndarray, list[str], str | None]:
    """Make an (n, n) matrix drawable: pooled (``mode="pool"``) or top-k sparsified above max_tokens.

    Returns the matrix to draw, its axis labels and a note for the page (None when unchanged).
    Sparsified matrices above ~1000 tokens are pooled too (the browser draws every cell).
    """
    n = int(np.asarray(m).shape[-1])
    if n <= max_tokens:
        return np.asarray(m, dtype=np.float32), pool_labels(tokens, n), None
    if mode == "topk":
        sparse = topk_rows(m, topk)
        if n <= 4 * max_tokens:
            return sparse, pool_labels(tokens, n), (
                f"{n} tokens: showing only the top {topk} keys of each query row (the rest blank).")
        pooled, size = pool_matrix(np.nan_to_num(sparse), max_tokens)
        return pooled, pool_labels(tokens, max_tokens), (
            f"{n} tokens: top {topk} keys per row, then mean-pooled in blocks of {size} tokens.")
    pooled, size = pool_matrix(m, max_tokens)
    return pooled, pool_labels(tokens, max_tokens), (
        f"{n} tokens: mean-pooled in blocks of {size} consecutive tokens ({pooled.shape[-1]} x "
        f"{pooled.shape[-2]} cells).")


# ------------------------------------------------------------------------------------------
# tables for CSV downloads
# ------------------------------------------------------------------------------------------


def matrix_frame(matrices: Mapping[str, np.ndarray], tokens: Sequence[str]) -> pd.DataFrame:
    """Long table ``query, key, query_token, key_token, <name>...`` of (n, n) matrices."""
    tokens = np.asarray([str(t) for t in tokens], dtype=object)
    first = np.asarray(next(iter(matrices.values())))
    n, m = first.shape[-2:]
    q, k = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    data = {"query": q.ravel(), "key": k.ravel()}
    if len(tokens) == n == m:
        data["query_token"] = tokens[q.ravel()]
        data["key_token"] = tokens[k.ravel()]
    for name, mat in matrices.items():
        data[name] = np.asarray(mat, dtype=np.float32).ravel()
    return pd.DataFrame(data)


def grid_frame(arr: np.ndarray, tokens: Sequence[str]) -> pd.DataFrame:
    """Long table ``layer, head, query, key, weight`` of an (L, H, n, n) array."""
    L, H, n, m = arr.shape
    idx = np.indices((L, H, n, m)).reshape(4, -1)
    df = pd.DataFrame({"layer": idx[0], "head": idx[1], "query": idx[2], "key": idx[3],
                       "weight": np.asarray(arr, dtype=np.float32).ravel()})
    toks = np.asarray([str(t) for t in tokens], dtype=object)
    if len(toks) == n == m:
        df["query_token"] = toks[df["query"].to_numpy()]
        df["key_token"] = toks[df["key"].to_numpy()]
    return df


# ------------------------------------------------------------------------------------------
# token shading (HTML)
# ------------------------------------------------------------------------------------------


def _shade(x: float) -> str:
    """Background colour for a score in [-1, 1]: orange for positive, blue for negative."""
    a = min(1.0, abs(float(x)))
    if x >= 0:
        return f"rgba(230, 110, 20, {0.08 + 0.82 * a:.3f})"
    return f"rgba(40, 110, 220, {0.08 + 0.82 * a:.3f})"


def token_html(tokens: Sequence[str], scores: Sequence[float] | None, *, method: str = "",
               legend: bool = False) -> str:
    """Tokens as HTML spans whose background shows the score (scaled by the largest |score|).

    Token text is HTML-escaped; the score is in each span's tooltip. ``legend=True`` adds a colour
    legend with the score range (blue = -max |score|, white = 0, orange = +max |score|). Inline
    styles only: no stylesheet, font or script is loaded from anywhere.
    """
    toks = [str(t) for t in tokens]
    vals = np.zeros(len(toks)) if scores is None else np.nan_to_num(np.asarray(scores, dtype=np.float64))
    scale = float(np.max(np.abs(vals))) if len(vals) else 0.0
    scale = scale if scale > 0 else 1.0
    spans = []
    for i, (tok, v) in enumerate(zip(toks, vals)):
        tip = html.escape(f"#{i} {tok}: {v:.4g}" + (f" ({method})" if method else ""), quote=True)
        spans.append(
            f'<span class="ax-tok" title="{tip}" style="background:{_shade(v / scale)};padding:1px 3px;'
            f'margin:1px;border-radius:3px;display:inline-block;font-family:monospace">{html.escape(tok)}</span>'
        )
    out = '<div class="ax-tokens" style="line-height:1.9">' + "".join(spans) + "</div>"
    if legend:
        out += token_legend(-scale if np.any(vals < 0) else 0.0, scale, method=method)
    return out


def token_legend(low: float, high: float, *, method: str = "") -> str:
    """A colour legend for :func:`token_html`: a gradient bar from ``low`` to ``high`` with its values."""
    stops = ", ".join(_shade(x) for x in np.linspace(low / high if high else 0.0, 1.0, 7))
    return ('<div class="ax-legend" style="display:flex;align-items:center;gap:6px;font-size:12px;'
            'font-family:sans-serif;margin:4px 0">'
            f'<span>{html.escape(method + " score" if method else "score")}</span>'
            f'<span>{low:.3g}</span><span style="display:inline-block;width:160px;height:12px;border:1px solid #ccc;'
            f'background:linear-gradient(to right, {stops})"></span><span>{high:.3g}</span>'
            '<span style="color:#666">(colour scaled to the largest |score| of the example)</span></div>')


def merge_word_pieces(tokens: Sequence[str], scores: Mapping[str, Sequence[float]]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Join word pieces into words for display; a word's score is the **sum** of its pieces' scores.

    A piece continues the previous word when it starts with WordPiece's ``##``, or when the
    tokenizer marks word starts (SentencePiece ``▁``, byte-level BPE ``Ġ``, or a leading space)
    and this piece has no such mark. Special tokens (``[CLS]``, ``<s>``...) stay words of their own.
    """
    toks = [str(t) for t in tokens]
    marks_starts = any(t.startswith(("\u2581", "\u0120", " ")) for t in toks)

    def special(t: str) -> bool:
        return (t.startswith("[") and t.endswith("]")) or (t.startswith("<") and t.endswith(">"))

    groups: list[list[int]] = []
    for i, t in enumerate(toks):
        cont = bool(groups) and not special(t) and not special(toks[groups[-1][-1]]) and (
            t.startswith("##") or (marks_starts and not t.startswith(("\u2581", "\u0120", " "))))
        if cont:
            groups[-1].append(i)
        else:
            groups.append([i])
    words = []
    for g in groups:
        parts = [toks[j][2:] if toks[j].startswith("##") else toks[j] for j in g]
        words.append("".join(parts).replace("\u2581", " ").replace("\u0120", " "))
    merged = {m: np.array([float(np.nansum(np.asarray(v, dtype=np.float64)[g])) for g in groups])
              for m, v in scores.items()}
    return words, merged


def token_document(tokens: Sequence[str], scores: Mapping[str, Sequence[float]], *, title: str = "") -> str:
    """A self-contained HTML page: the text shaded once per method, each with its legend (the offline
    counterpart of captum's ``visualize_text``; nothing is loaded from the network)."""
    rows = "".join(
        f'<h3 style="font-family:sans-serif;margin:14px 0 2px">{html.escape(m)}</h3>'
        + token_html(tokens, v, method=m, legend=True)
        for m, v in scores.items())
    return ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>' + html.escape(title or "token scores")
            + '</title></head><body style="max-width:1000px;margin:20px auto">'
            + (f'<h2 style="font-family:sans-serif">{html.escape(title)}</h2>' if title else "") + rows
            + "</body></html>")


# ------------------------------------------------------------------------------------------
# heatmaps
# ------------------------------------------------------------------------------------------


def _is_signed(m: np.ndarray) -> bool:
    m = np.asarray(m)
    return bool(np.nanmin(m) < -1e-6) if m.size and np.isfinite(m).any() else False


def _figure(data: list[dict], layout: dict) -> go.Figure:
    """A figure from plain trace / layout dicts, without plotly's (slow) per-property validation.

    Used by the heatmap builders, which draw up to L x H traces on every page run; the dicts are
    checked against plotly's schema by tests/test_app.py (``go.Figure(fig.to_dict())``).
    """
    return go.Figure(data=data, layout=layout, _validate=False)


def _heatmap(z: np.ndarray, labels: list[str], *, signed: bool, xaxis: str = "x", yaxis: str = "y",
             coloraxis: str | None = None, name: str = "") -> dict:
    labels = [html.escape(str(t), quote=False) for t in labels]  # tick and hover text take plotly's HTML subset
    kw: dict = dict(type="heatmap", z=np.asarray(z, dtype=np.float32), x=labels, y=labels, xaxis=xaxis, yaxis=yaxis,
                    name=name,
                    hovertemplate="query %{y}<br>key %{x}<br>%{z:.4f}<extra>" + html.escape(name) + "</extra>")
    if coloraxis:
        kw["coloraxis"] = coloraxis
    else:
        kw["colorscale"] = SIGNED_SCALE if signed else SEQ_SCALE
        if signed:
            kw["zmid"] = 0.0
    return kw


#: every token of a heatmap axis is labelled up to this many tokens; above it the labels are left
#: out (each cell's tokens are in its hover text) and above MAX_TOKENS the matrix is pooled
MAX_LABELLED_TOKENS = 64
#: a difference panel's colour range is at least +-this: differences below it are float noise
#: (e.g. effective - raw attention when n <= d_head is ~1e-8) and are drawn white, not saturated
DIFFERENCE_TOLERANCE = 1e-3


def _tick_font(n_labels: int) -> int:
    return 10 if n_labels <= 24 else 9 if n_labels <= 40 else 7


def _axis(title: str, labels: list[str], *, show: bool, **extra) -> dict:
    """A categorical heatmap axis: titled, and labelling *every* token (dtick 1: plotly would
    otherwise skip labels it thinks crowded) when ``show`` and there are at most MAX_LABELLED_TOKENS."""
    labelled = show and len(labels) <= MAX_LABELLED_TOKENS
    ax = dict(title=dict(text=title, standoff=4), showticklabels=labelled, tickfont=dict(size=_tick_font(len(labels))),
              automargin=True, **extra)
    if labelled:
        ax.update(tickmode="linear", dtick=1, type="category")
    return ax


def _height_for(n_labels: int, base: int) -> int:
    """Tall enough that every labelled row has ~11 px."""
    return max(base, 11 * n_labels + 160) if n_labels <= MAX_LABELLED_TOKENS else base


def attention_heatmap(m: np.ndarray, tokens: Sequence[str], *, title: str = "", mode: str = "pool",
                      height: int = 480) -> tuple[go.Figure, str | None]:
    """One (n, n) attention-like matrix (query rows, key columns) and the long-input note.

    Axes are titled "query" and "key"; every token is labelled up to :data:`MAX_LABELLED_TOKENS`.
    """
    z, labels, note = fit_matrix(m, tokens, mode=mode)
    tr = _heatmap(z, labels, signed=_is_signed(z), name=title)
    tr["colorbar"] = dict(thickness=12, x=1.02, xanchor="left")
    layout = dict(title=dict(text=html.escape(title)), height=_height_for(len(labels), height), margin=_MARGIN,
                  yaxis=_axis("query", labels, show=True, autorange="reversed"),
                  xaxis=_axis("key", labels, show=True, tickangle=-60))
    return _figure([tr], layout), note


def _thin_ticks(fig: go.Figure, n: int) -> None:
    if n > 60:
        fig.update_xaxes(showticklabels=False)
        fig.update_yaxes(showticklabels=False)


def side_by_side(matrices: Mapping[str, np.ndarray], tokens: Sequence[str], *, mode: str = "pool",
                 height: int | None = None, title: str = "",
                 tolerance: float = DIFFERENCE_TOLERANCE) -> tuple[go.Figure, str | None]:
    """Several (n, n) matrices in one row of square panels, comparable ones on ONE colour range.

    Panels whose name starts with ``"difference"`` are differences; all the others (raw /
    effective / distribution attention, or run A / run B) share one colour range and one colour
    bar: a sequential scale from 0 when none of them has a negative value, else a diverging one
    centred on 0, so equal matrices look equal. A difference panel has its own diverging scale of
    at least +-``tolerance`` (differences smaller than that are float noise and stay white).
    Axes are titled "query" and "key"; every token is labelled up to :data:`MAX_LABELLED_TOKENS`
    (key labels under every panel, query labels left of the first); the colour bars stand right of
    their panels, clear of the labels.
    """
    names = list(matrices)
    k = len(names)
    fitted = {}
    note = None
    labels: list[str] = []
    for name in names:
        z, labels, note_i = fit_matrix(matrices[name], tokens, mode=mode)
        fitted[name] = z
        note = note or note_i
    is_diff = {name: name.startswith("difference") for name in names}
    shared = [fitted[nm] for nm in names if not is_diff[nm]]
    shared_signed = any(_is_signed(z) for z in shared)
    finite_max = [float(np.nanmax(np.abs(z))) for z in shared if np.isfinite(z).any()]
    vmax = max(finite_max, default=1.0) or 1.0
    few = len(labels) <= MAX_LABELLED_TOKENS
    gap = 0.07 if few else 0.05
    width = (1.0 - gap * (k - 1) - 0.04) / k
    traces, layout = [], {}
    last_shared = max((i for i, nm in enumerate(names) if not is_diff[nm]), default=-1)
    for i, name in enumerate(names):
        z = fitted[name]
        s = "" if i == 0 else str(i + 1)
        x0 = i * (width + gap)
        if is_diff[name]:
            dmax = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 0.0
            tr = _heatmap(z, labels, signed=True, xaxis="x" + s, yaxis="y" + s, name=name)
            lim = max(dmax, tolerance)
            tr.update(zmin=-lim, zmax=lim, zmid=None, colorscale=SIGNED_SCALE, showscale=True)
        else:
            tr = _heatmap(z, labels, signed=shared_signed, xaxis="x" + s, yaxis="y" + s, name=name)
            tr.update(zmin=-vmax if shared_signed else 0.0, zmax=vmax, zmid=None,
                      colorscale=SIGNED_SCALE if shared_signed else SEQ_SCALE, showscale=(i == last_shared))
        tr["colorbar"] = dict(x=x0 + width + 0.005, xanchor="left", y=0.5, yanchor="middle", len=0.75, thickness=9,
                              tickfont=dict(size=9))
        traces.append(tr)
        layout["xaxis" + s] = _axis("key", labels, show=True, domain=[x0, x0 + width], anchor="y" + s, tickangle=-60,
                                    constrain="domain")
        layout["yaxis" + s] = _axis("query" if i == 0 else "", labels, show=(i == 0), domain=[0.0, 0.9],
                                    anchor="x" + s, autorange="reversed", scaleanchor="x" + s, constrain="domain")
    base = int((340 + 90 * few) * (1 if k > 2 else 1.3))
    layout.update(height=height or (_height_for(len(labels), base) if few else base),
                  margin=dict(l=10, r=10, t=60, b=10), title=dict(text=html.escape(title)),
                  annotations=[dict(text=html.escape(n), x=i * (width + gap) + width / 2, y=0.91, xref="paper",
                                    yref="paper", yanchor="bottom", showarrow=False, font=dict(size=12))
                               for i, n in enumerate(names)])
    return _figure(traces, layout), note


def effective_equals_raw_note(n_tokens: int, head_dim: int) -> str | None:
    """The page's note when effective attention is raw attention (n <= d_head), else None."""
    if n_tokens <= head_dim:
        return (f"n = {n_tokens} tokens <= d_head = {head_dim}: effective attention is raw attention; nothing is "
                "hidden in the null space (the value matrix has full row rank, so no direction of an attention "
                "row leaves the output unchanged). The difference panel is float noise.")
    return None


def _mosaic(blocks: np.ndarray, row_names: list[str], col_names: list[str], *, title: str, cell_px: int,
            gap: int = 2, label: str = "", highlight: tuple[int, int] | None = None) -> go.Figure:
    """(R, C, t, t) small maps tiled into ONE heatmap, separated by blank (NaN) gaps.

    One trace instead of R x C subplots: plotly.js draws a 6 x 12 grid this way in ~0.1 s instead
    of ~2 s (72 subplots, measured in headless Chromium on a busy 2-core machine). Hover shows the
    map (row, column) and the query / key position inside it; all maps share one colour scale.
    """
    R, C, t, _ = blocks.shape
    step = t + gap
    z = np.full((R * step - gap, C * step - gap), np.nan, dtype=np.float32)
    for r in range(R):
        for c in range(C):
            z[r * step:r * step + t, c * step:c * step + t] = blocks[r, c]
    # unique category labels per column / row (gaps get invisible distinct names)
    xs = [f"{col_names[c]} key {k}" for c in range(C) for k in range(t)]
    ys = [f"{row_names[r]} query {q}" for r in range(R) for q in range(t)]
    x = []
    for c in range(C):
        x += xs[c * t:(c + 1) * t] + ([" " * (c * gap + i + 1) for i in range(gap)] if c < C - 1 else [])
    y = []
    for r in range(R):
        y += ys[r * t:(r + 1) * t] + (["\u200b" * (r * gap + i + 1) for i in range(gap)] if r < R - 1 else [])
    signed = _is_signed(blocks)
    vmax = float(np.nanmax(np.abs(blocks))) if blocks.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    trace = dict(type="heatmap", z=z, x=x, y=y, colorscale=SIGNED_SCALE if signed else SEQ_SCALE,
                 zmin=-vmax if signed else 0.0, zmax=vmax, hoverongaps=False,
                 colorbar=dict(thickness=10, len=0.8, title=dict(text=html.escape(label))),
                 hovertemplate="%{y}<br>%{x}<br>%{z:.4f}<extra></extra>")
    annotations = [dict(text=html.escape(col_names[c]), x=(c * step + (t - 1) / 2) / (C * step - gap), y=1.0,
                        xref="paper", yref="paper", yanchor="bottom", showarrow=False, font=dict(size=10))
                   for c in range(C)]
    annotations += [dict(text=html.escape(row_names[r]), x=0, y=1 - (r * step + (t - 1) / 2) / (R * step - gap),
                         xref="paper", yref="paper", xanchor="right", showarrow=False, font=dict(size=10))
                     for r in range(R)]
    shapes = []
    if highlight is not None:
        r, c = highlight
        if 0 <= r < R and 0 <= c < C:
            shapes.append(dict(type="rect", xref="x", yref="y", x0=c * step - 0.5, x1=c * step + t - 0.5,
                               y0=r * step - 0.5, y1=r * step + t - 0.5, line=dict(color="crimson", width=2)))
    layout = dict(title=dict(text=html.escape(title)), annotations=annotations, shapes=shapes,
                  height=max(200, int(cell_px * R) + 80), margin=dict(l=40, r=10, t=60, b=10),
                  xaxis=dict(showticklabels=False, showgrid=False, zeroline=False, constrain="domain"),
                  yaxis=dict(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed",
                             scaleanchor="x", constrain="domain"),
                  plot_bgcolor="rgba(0,0,0,0)")
    return _figure([trace], layout)


def head_grid(arr: np.ndarray, *, title: str = "", thumb: int = GRID_THUMB, cell_px: int | None = None,
              highlight: tuple[int, int] | None = None) -> tuple[go.Figure, str | None]:
    """Layer x head grid of small attention maps (rows: layers, columns: heads).

    ``arr`` is (L, H, n, n); each map is mean-pooled to at most ``thumb`` x ``thumb`` cells and
    the maps are tiled into one heatmap (see :func:`_mosaic`). ``highlight`` outlines (layer, head).
    """
    arr = np.asarray(arr, dtype=np.float32)
    L, H, n, _ = arr.shape
    pooled, size = pool_matrix(arr, thumb)
    cell_px = cell_px or int(min(150, max(45, 1000 / H)))
    fig = _mosaic(pooled, [f"L{l}" for l in range(L)], [f"H{h}" for h in range(H)], title=title, cell_px=cell_px,
                  highlight=highlight)
    note = (f"Each small map is mean-pooled from {n} to {pooled.shape[-1]} tokens (blocks of {size})."
            if size > 1 else None)
    return fig, note


def layer_strip(arr: np.ndarray, tokens: Sequence[str], *, title: str = "", max_cells: int = 64,
                height: int | None = None) -> tuple[go.Figure, str | None]:
    """(L, n, n) per-layer maps (norm, rollout) side by side, one colour scale, tiled into one heatmap."""
    arr = np.asarray(arr, dtype=np.float32)
    L, n, _ = arr.shape
    pooled, size = pool_matrix(arr, max_cells)
    cell_px = height - 80 if height else int(min(220, max(60, 1000 / L)))
    fig = _mosaic(pooled[None], [""], [f"layer {l}" for l in range(L)], title=title, cell_px=cell_px)
    note = f"Layer maps mean-pooled from {n} to {pooled.shape[-1]} tokens." if size > 1 else None
    return fig, note


# ------------------------------------------------------------------------------------------
# bars and curves
# ------------------------------------------------------------------------------------------


def token_bar(values: np.ndarray, tokens: Sequence[str], *, title: str = "", height: int = 260) -> tuple[go.Figure, str | None]:
    """A bar per token (e.g. attention flow from the readout position), pooled above MAX_TOKENS."""
    values = np.asarray(values, dtype=np.float32)
    n = values.shape[-1]
    y = pool_vector(values, MAX_TOKENS)
    labels = pool_labels(tokens, MAX_TOKENS)
    fig = go.Figure(go.Bar(x=labels, y=y, marker_color="#e66e14", hovertemplate="%{x}<br>%{y:.4f}<extra></extra>"))
    fig.update_layout(title=html.escape(title), height=height, margin=_MARGIN, xaxis=dict(tickangle=-60))
    _thin_ticks(fig, len(labels))
    note = f"{n} tokens: mean over blocks of {math.ceil(n / MAX_TOKENS)} tokens." if n > MAX_TOKENS else None
    return fig, note


def probs_bar(probs: Sequence[float], labels: Sequence[str] | None, *, pred: int | None = None,
              gold_name: str | None = None, height: int = 220) -> go.Figure:
    probs = np.asarray(probs, dtype=np.float32)
    names = [str(labels[i]) if labels is not None and i < len(labels) else str(i) for i in range(len(probs))]
    colors = ["#e66e14" if i == pred else "#9bb7d4" for i in range(len(probs))]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", marker_color=colors,
                           text=[f"{p:.3f}" for p in probs], textposition="auto",
                           hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    title = "class probabilities" + (f" (gold: {html.escape(str(gold_name))})" if gold_name else "")
    fig.update_layout(title=title, height=max(height, 40 * len(probs) + 80), margin=_MARGIN,
                      xaxis=dict(range=[0, 1]), yaxis=dict(autorange="reversed"))
    return fig


def layer_head_heatmap(mat: np.ndarray, *, title: str = "", colorbar_title: str = "") -> go.Figure:
    """An (L, H) table of per-head values (e.g. mean ablation TVD) as a heatmap."""
    mat = np.asarray(mat, dtype=np.float32)
    L, H = mat.shape
    fig = go.Figure(go.Heatmap(z=mat, x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)],
                               colorscale="YlOrRd", colorbar=dict(title=dict(text=html.escape(colorbar_title))),
                               hovertemplate="%{y} %{x}<br>%{z:.4f}<extra></extra>"))
    fig.update_layout(title=html.escape(title), height=max(260, 36 * L + 110), margin=_MARGIN)
    fig.update_yaxes(autorange="reversed")
    return fig


def curves(df: pd.DataFrame, *, x: str, y: str, color: str, facet: str | None = None, title: str = "",
           x_title: str = "", y_title: str = "", height: int = 360, percent_x: bool = False) -> go.Figure:
    """Lines of ``y`` against ``x`` per ``color`` (one panel per ``facet`` value)."""
    facets = list(dict.fromkeys(df[facet])) if facet else [None]
    k = len(facets)
    gap = 0.08
    width = (1 - gap * (k - 1)) / k
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    colors = {c: palette[i % len(palette)] for i, c in enumerate(dict.fromkeys(df[color]))}
    traces, layout, annotations = [], {}, []
    for i, fv in enumerate(facets):
        s = "" if i == 0 else str(i + 1)
        sub = df if fv is None else df[df[facet] == fv]
        for c, part in sub.groupby(color, sort=False):
            part = part.sort_values(x)
            xs = part[x] * (100 if percent_x else 1)
            traces.append(go.Scatter(x=xs, y=part[y], mode="lines+markers", name=str(c), legendgroup=str(c),
                                     showlegend=(i == 0), line=dict(color=colors[c]), xaxis="x" + s, yaxis="y" + s,
                                     hovertemplate=f"{html.escape(str(c))}<br>{x_title or x} %{{x}}<br>{y_title or y} %{{y:.4f}}<extra></extra>"))
        x0 = i * (width + gap)
        layout["xaxis" + s] = dict(domain=[x0, x0 + width], anchor="y" + s, title=html.escape(str(x_title or x)))
        layout["yaxis" + s] = dict(anchor="x" + s, title=(y_title or y) if i == 0 else None)
        if fv is not None:
            annotations.append(dict(text=html.escape(str(fv)), x=x0 + width / 2, y=1.02, xref="paper", yref="paper",
                                    yanchor="bottom", showarrow=False, font=dict(size=13)))
    fig = go.Figure(traces)
    fig.update_layout(**layout, title=html.escape(title), height=height, annotations=annotations,
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


def bars(df: pd.DataFrame, *, x: str, y: str, color: str | None = None, title: str = "", height: int = 320,
         interval: tuple[str, str] | None = None) -> go.Figure:
    """Grouped bars of ``y`` per ``x`` (one series per ``color`` value); ``interval=(low, high)`` names
    the columns of a confidence interval drawn as error bars."""
    fig = go.Figure()
    groups = df.groupby(color, sort=False) if color else [(y, df)]
    for name, part in groups:
        err = None
        if interval is not None:
            lo, hi = part[interval[0]].to_numpy(dtype=float), part[interval[1]].to_numpy(dtype=float)
            val = part[y].to_numpy(dtype=float)
            err = dict(type="data", symmetric=False, array=np.maximum(hi - val, 0), arrayminus=np.maximum(val - lo, 0),
                       thickness=1.2, width=4)
        fig.add_trace(go.Bar(x=part[x].astype(str), y=part[y], name=str(name), error_y=err))
    fig.update_layout(title=html.escape(title), height=height, barmode="group", margin=_MARGIN)
    return fig


def histogram(values: pd.Series | np.ndarray, *, title: str = "", x_title: str = "", color: str | None = None,
              df: pd.DataFrame | None = None, height: int = 300) -> go.Figure:
    fig = go.Figure()
    if df is not None and color is not None:
        for name, part in df.groupby(color, sort=False):
            fig.add_trace(go.Histogram(x=part[values], name=str(name), opacity=0.7, nbinsx=30))
        fig.update_layout(barmode="overlay")
    else:
        fig.add_trace(go.Histogram(x=np.asarray(values), nbinsx=30))
    fig.update_layout(title=html.escape(title), height=height, margin=_MARGIN, xaxis_title=x_title)
    return fig

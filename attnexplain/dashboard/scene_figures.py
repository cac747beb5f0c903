"""Plotly figures of a social scene and the set decoder's queries x individuals attention (presentation only).

:func:`scene_attention` draws one scene from above: every individual at its position with a short
heading stroke, one legend entry (and marker symbol) per **gold group** (its activity in the
name), and the marker colour = the attention weight one query gives that individual (one colour
bar). :func:`query_individual_heatmap` draws every query's attention row over the individuals,
individuals ordered by gold group and labelled ``p<j> (g<k>)``. The arrays come from the set
decoder's capture (:mod:`attnexplain.set_decoder`); nothing is computed here but layout.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from .figures import SEQ_SCALE, SIGNED_SCALE

__all__ = ["scene_attention", "query_individual_heatmap", "individual_labels", "group_of"]

_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon", "pentagon",
            "triangle-down", "star-diamond", "hourglass"]
_MARGIN = dict(l=10, r=10, t=50, b=10)


def group_of(groups: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """(n,) gold group index of each individual (-1 for one in no group)."""
    out = np.full(n, -1, dtype=int)
    for g, members in enumerate(groups):
        for j in members:
            out[int(j)] = g
    return out


def individual_labels(groups: Sequence[Sequence[int]], n: int) -> list[str]:
    """``p<j> (g<k>)`` per individual: its index and its gold group (1-based)."""
    gof = group_of(groups, n)
    return [f"p{j} (g{gof[j] + 1})" if gof[j] >= 0 else f"p{j}" for j in range(n)]


def scene_attention(x: Sequence[float], y: Sequence[float], heading: Sequence[float], groups: Sequence[Sequence[int]],
                    weights: Sequence[float], *, activities: Sequence[str] | None = None, title: str = "",
                    colorbar_title: str = "attention", arena: float | None = None, height: int = 520) -> go.Figure:
    """One scene seen from above, coloured by one query's attention over the individuals.

    Args:
        x, y, heading: (N,) positions (metres) and headings (radians) of the individuals.
        groups: the gold groups (lists of individual indices); each is one legend entry
            ``gold group k: <activity> (m people)`` with its own marker symbol.
        weights: (N,) the query's attention (or any score) per individual; the marker colour.
        activities: the activity name of each gold group (legend text).
        arena: side of the square arena, if known: the view (the individuals' bounding box with a
            margin) stays inside it.
    """
    x, y, heading = (np.asarray(v, dtype=float) for v in (x, y, heading))
    w = np.asarray(weights, dtype=float)
    n = len(x)
    if not (len(y) == len(heading) == len(w) == n):
        raise ValueError(f"x, y, heading and weights must have one value per individual; got {len(x)}, {len(y)}, "
                         f"{len(heading)}, {len(w)}")
    signed = bool(np.nanmin(w) < -1e-6) if n else False
    cmin, cmax = (float(-np.nanmax(np.abs(w))), float(np.nanmax(np.abs(w)))) if signed else (0.0, float(np.nanmax(w)) or 1.0)
    step = 0.35 if arena is None else 0.035 * arena
    hx = np.ravel(np.column_stack([x, x + step * np.cos(heading), np.full(n, np.nan)]))
    hy = np.ravel(np.column_stack([y, y + step * np.sin(heading), np.full(n, np.nan)]))
    traces: list = [go.Scatter(x=hx, y=hy, mode="lines", name="heading", line=dict(color="rgba(90,90,90,0.7)", width=2),
                               hoverinfo="skip")]
    gof = group_of(groups, n)
    order = list(range(len(groups))) + ([-1] if (gof < 0).any() else [])
    for g in order:
        idx = np.flatnonzero(gof == g)
        if g >= 0:
            act = f": {activities[g]}" if activities is not None and g < len(activities) else ""
            name = f"gold group {g + 1}{act} ({len(idx)} {'person' if len(idx) == 1 else 'people'})"
        else:
            name = "no gold group"
        traces.append(go.Scatter(
            x=x[idx], y=y[idx], mode="markers+text", name=html.escape(name), text=[f"p{j}" for j in idx],
            textposition="top center", customdata=w[idx],
            marker=dict(symbol=_SYMBOLS[g % len(_SYMBOLS)] if g >= 0 else "circle-open", size=16,
                        color=w[idx], coloraxis="coloraxis", line=dict(color="black", width=1)),
            hovertemplate="%{text}<br>" + html.escape(name) + "<br>" + html.escape(colorbar_title)
                          + " %{customdata:.4f}<extra></extra>"))
    fig = go.Figure(traces)
    # the view: the individuals' bounding box with a margin (at least 4 m across), inside the arena if known
    half = max(2.0, 0.6 * max(np.ptp(x), np.ptp(y)) + 1.0) if n else 2.0
    cx, cy = (float((x.min() + x.max()) / 2), float((y.min() + y.max()) / 2)) if n else (0.0, 0.0)
    axis = dict(title="x (m)", zeroline=False, range=[cx - half, cx + half])
    yaxis = dict(title="y (m)", zeroline=False, range=[cy - half, cy + half], scaleanchor="x", scaleratio=1)
    if arena is not None:
        for ax in (axis, yaxis):
            ax["range"] = [max(ax["range"][0], -0.05 * arena), min(ax["range"][1], 1.05 * arena)]
    fig.update_layout(title=html.escape(title), height=height, margin=dict(l=10, r=10, t=50, b=60), xaxis=axis,
                      yaxis=yaxis,
                      coloraxis=dict(colorscale=SIGNED_SCALE if signed else SEQ_SCALE, cmin=cmin, cmax=cmax,
                                     colorbar=dict(title=dict(text=html.escape(colorbar_title)))),
                      legend=dict(title=dict(text="gold groups"), itemsizing="constant", orientation="h",
                                  yanchor="top", y=-0.15, xanchor="left", x=0))
    return fig


def query_individual_heatmap(att: np.ndarray, groups: Sequence[Sequence[int]], *, query_labels: Sequence[str] | None = None,
                             title: str = "", colorbar_title: str = "attention", height: int | None = None) -> go.Figure:
    """(Q, N) attention of every query over the individuals; columns ordered by gold group.

    Rows are labelled ``query <q>`` (or ``query_labels``), columns ``p<j> (g<k>)``; the x axis is
    titled "individual (gold group)", the y axis "query".
    """
    att = np.asarray(att, dtype=np.float32)
    Q, N = att.shape
    gof = group_of(groups, N)
    order = sorted(range(N), key=lambda j: (gof[j] if gof[j] >= 0 else 10**6, j))
    labels = individual_labels(groups, N)
    rows = [str(s) for s in query_labels] if query_labels is not None else [f"query {q}" for q in range(Q)]
    if len(rows) != Q:
        raise ValueError(f"{len(rows)} query labels for {Q} queries")
    signed = bool(att.size and np.nanmin(att) < -1e-6)
    tr = go.Heatmap(z=att[:, order], x=[labels[j] for j in order], y=rows,
                    colorscale=SIGNED_SCALE if signed else SEQ_SCALE, zmid=0.0 if signed else None,
                    colorbar=dict(title=dict(text=html.escape(colorbar_title))),
                    hovertemplate="%{y}<br>%{x}<br>%{z:.4f}<extra></extra>")
    fig = go.Figure(tr)
    fig.update_layout(title=html.escape(title), height=height or max(300, 22 * Q + 160), margin=_MARGIN,
                      xaxis=dict(title="individual (gold group)", type="category", tickangle=-45),
                      yaxis=dict(title="query", type="category", autorange="reversed"))
    return fig

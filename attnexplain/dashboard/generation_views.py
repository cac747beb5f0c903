"""The generation view (Live page, causal language models): prompt + generated text, each generated
token's probability and alternatives, a source x generated-token heatmap per method (inseq-style),
one generated token's row, and that step's attention map per head.

Computed with the public API only (:func:`attnexplain.explain_generation`); figures are plotly.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def step_table(ex: Any, example: int = 0):
    """pandas table: step, token, probability, entropy, top alternatives."""
    return ex.generation.steps_dataframe().query("example == @example").drop(columns=["example", "token_id"])


def heatmap_figure(ex: Any, method: str, example: int = 0):
    """Rows: generated tokens; columns: prompt + continuation tokens; NaN (blank) where a column is
    not visible to the row. Special tokens / the attention sink left out as in the explanation."""
    import plotly.graph_objects as go

    att = ex[method]
    n_steps = len(ex.generation.steps(example))
    shown = np.flatnonzero(att.shown(example))
    z = att.scores[example][:n_steps][:, shown]
    cols = [f"{j}:{att.tokens[example][j]!r}" for j in shown]
    rows = [f"{t}:{ex.generation.generated_tokens[example][t]!r}" for t in range(n_steps)]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=rows, colorscale="RdBu_r" if np.nanmin(z) < 0 else "Blues",
                               zmid=0 if np.nanmin(z) < 0 else None, hoverongaps=False,
                               colorbar={"title": method}))
    fig.update_layout(height=120 + 28 * n_steps, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      yaxis={"autorange": "reversed", "title": "generated token"},
                      xaxis={"title": "prompt + continuation", "tickangle": -60}, title=method)
    return fig


def step_attention_figure(ex: Any, step: int, layer: int, example: int = 0):
    """Heads x visible tokens: the attention row that predicted generated token ``step``."""
    import plotly.graph_objects as go

    g = ex.generation
    row = g.step_attention(step, layer)[example].float().cpu().numpy()  # (H, P + step) padded
    real = g.attention_mask[example, : row.shape[-1]].bool().cpu().numpy()
    toks = [t for t, keep in zip(g._all_tokens(example), real) if keep]
    z = row[:, real]
    fig = go.Figure(go.Heatmap(z=z, x=[f"{j}:{t!r}" for j, t in enumerate(toks)], y=[f"head {h}" for h in range(z.shape[0])],
                               colorscale="Viridis", colorbar={"title": "attention"}))
    fig.update_layout(height=120 + 22 * z.shape[0], margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title=f"layer {layer}: attention of the row predicting {g.generated_tokens[example][step]!r}",
                      xaxis={"tickangle": -60})
    return fig


def render(ex: Any, *, key: str = "gen") -> None:
    """Draw the view for example 0 of a :class:`~attnexplain.generation.GenerationExplanation`."""
    import pandas as pd
    import streamlit as st

    g = ex.generation
    from attnexplain.dashboard.widgets import escape_md

    st.markdown(f"**Prompt:** {escape_md(g.prompts[0])}")
    st.markdown(f"**{'Forced' if g.forced else 'Generated'}:** {escape_md(g.generated_texts[0])}")
    st.dataframe(step_table(ex), hide_index=True, key=f"{key}-steps")
    if not ex.methods:
        return
    method = st.selectbox("Method", ex.methods, key=f"{key}-method")
    st.plotly_chart(heatmap_figure(ex, method), key=f"{key}-heatmap")
    steps = g.steps(0)
    step = st.selectbox("Generated token", steps, key=f"{key}-step",
                        format_func=lambda t: f"{t}: {g.generated_tokens[0][t]!r} (p={float(g.step_probs[0, t]):.3f})")
    pairs = ex.top_sources(0, step, method, k=len(ex[method].tokens[0]))
    st.dataframe(pd.DataFrame(pairs, columns=["token", method]), hide_index=True, key=f"{key}-row")
    layers = g.layers()
    layer = st.selectbox("Layer", layers, index=len(layers) - 1, key=f"{key}-layer")
    st.plotly_chart(step_attention_figure(ex, step, layer), key=f"{key}-step-attention")

"""The generation view (Live page for causal language models, Explorer page for generation runs):
prompt + generated text, each generated token's probability, a source x generated-token heatmap per
method (inseq-style), one generated token's row, and that step's attention map per head.

Both pages draw the same :class:`GenerationRows`: :func:`rows_from_explanation` builds it from a
:func:`attnexplain.explain_generation` result (Live page), :func:`rows_from_run` from a generation
run folder's tables and stored arrays (``analyze --task generation``). Figures are plotly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GenerationRows:
    """One generated continuation and its per-token explanations, as the view draws them.

    Attributes:
        prompt / generated_text: the texts.
        tokens: readable tokens of prompt + continuation; ``n_prompt`` of them are the prompt.
        generated_tokens / step_probs: one per generated token (step).
        scores: method -> (steps, len(tokens)) float array, NaN where a token is not visible to the step.
        shown: (len(tokens),) bool, the tokens drawn (special tokens / the attention sink left out).
        step_rows: ``step_rows(step, layer)`` -> (heads, visible tokens) attention of the row that
            predicted the step's token, over every real visible token; None when no arrays are at hand.
        layers: the layers ``step_rows`` can give.
        forced: True when the continuation was given instead of generated.
        alternatives: per step, a text of the most probable tokens (may be empty).
        step_log_probs / step_entropy: per step, ``log p`` of the token and the entropy (nats) of
            the model's distribution; None where unknown (a stored run keeps the probabilities only).
    """

    prompt: str
    generated_text: str
    tokens: list[str]
    n_prompt: int
    generated_tokens: list[str]
    step_probs: np.ndarray
    scores: dict[str, np.ndarray]
    shown: np.ndarray
    step_rows: Callable[[int, int], np.ndarray] | None = None
    layers: list[int] = field(default_factory=list)
    forced: bool = False
    alternatives: list[str] = field(default_factory=list)
    step_log_probs: np.ndarray | None = None
    step_entropy: np.ndarray | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    @property
    def n_steps(self) -> int:
        return len(self.generated_tokens)

    def row(self, method: str, step: int):
        """pandas table of the tokens visible to ``step`` (shown ones), highest score first."""
        import pandas as pd

        n_vis = self.n_prompt + step
        s = self.scores[method][step, :n_vis]
        keep = [j for j in range(n_vis) if self.shown[j]]
        t = pd.DataFrame({"position": keep, "token": [self.tokens[j] for j in keep],
                          "part": ["prompt" if j < self.n_prompt else "generated" for j in keep],
                          method: [float(s[j]) for j in keep]})
        return t.sort_values(method, ascending=False, kind="stable").reset_index(drop=True)


def rows_from_explanation(ex: Any, example: int = 0) -> GenerationRows:
    """The view's data for example ``example`` of a :class:`~attnexplain.generation.GenerationExplanation`."""
    g = ex.generation
    steps = g.steps(example)
    first = next(iter(ex.attributions.values()), None)
    n_prompt = first.n_prompt[example] if first is not None else len(g.prompt_tokens(example))
    tokens = list(first.tokens[example]) if first is not None else list(g.tokens[example])
    shown = first.shown(example) if first is not None else np.ones(len(tokens), dtype=bool)

    def step_rows(step: int, layer: int) -> np.ndarray:
        row = g.step_attention(step, layer)[example].float().cpu().numpy()  # (H, P + step) padded
        real = g.attention_mask[example, : row.shape[-1]].bool().cpu().numpy()
        return row[:, real]

    alts = [", ".join(f"{tok!r} {p:.3f}" for tok, p in zip(g.top_tokens[example][t][:3], g.top_probs[example, t][:3].tolist()))
            for t in steps]
    return GenerationRows(
        prompt=g.prompts[example], generated_text=g.generated_texts[example], tokens=tokens, n_prompt=int(n_prompt),
        generated_tokens=[g.generated_tokens[example][t] for t in steps],
        step_probs=g.step_probs[example, steps].float().cpu().numpy(),
        scores={m: a.scores[example][: len(steps)] for m, a in ex.attributions.items()}, shown=np.asarray(shown),
        step_rows=step_rows, layers=list(g.layers()), forced=bool(g.forced), alternatives=alts,
        step_log_probs=g.step_log_probs[example, steps].float().cpu().numpy(),
        step_entropy=g.step_entropy[example, steps].float().cpu().numpy(),
    )


def rows_from_run(example: Any, tokens: Any, arrays: dict[str, np.ndarray] | None, *,
                  special_tokens: dict | None = None, exclude_special: bool = True) -> GenerationRows:
    """The view's data for one example of a generation run.

    ``example``: its row of ``Run.examples()``; ``tokens``: its rows of ``Run.tokens(example_id,
    exclude_special_tokens=False)`` (every visible token of every step); ``arrays``:
    ``Run.attention(example_id)`` or None; ``special_tokens``: the manifest's ``special_tokens``
    entry (which token strings, and whether the first token, are left out when ``exclude_special``).
    """
    gen_tokens = [str(t) for t in example["generated_tokens"]]
    n_steps = len(gen_tokens)
    n_prompt = int(example["n_tokens"])
    n = n_prompt + n_steps
    toks = [""] * n
    last = tokens[tokens["step"] == tokens["step"].max()] if len(tokens) else tokens
    for p, t in zip(last["position"], last["token"]):
        toks[int(p)] = str(t)
    for s, t in enumerate(gen_tokens):  # the last generated token is visible to no step
        if not toks[n_prompt + s]:
            toks[n_prompt + s] = t
    if arrays is not None and "tokens" in arrays and len(arrays["tokens"]) == n:
        toks = [str(t) for t in arrays["tokens"]]
    scores = {}
    for m, part in tokens.groupby("method", sort=False):
        mat = np.full((n_steps, n), np.nan)
        mat[part["step"].to_numpy(int), part["position"].to_numpy(int)] = part["score"].to_numpy(float)
        scores[str(m)] = mat
    shown = np.ones(n, dtype=bool)
    if exclude_special and special_tokens:
        specials = set(special_tokens.get("tokens") or [])
        shown &= np.asarray([t not in specials for t in toks], dtype=bool)
        if special_tokens.get("attention_sink") and n:
            shown[0] = False
    step_rows, layers = None, []
    if arrays is not None and "raw" in arrays:
        raw = arrays["raw"]  # (L, H, n, n) over prompt + continuation

        def step_rows(step: int, layer: int) -> np.ndarray:
            r = n_prompt - 1 + step
            return np.asarray(raw[layer, :, r, : r + 1], dtype=np.float32)

        layers = list(range(raw.shape[0]))
    return GenerationRows(
        prompt=str(example["text"]), generated_text=str(example["generated_text"]), tokens=toks, n_prompt=n_prompt,
        generated_tokens=gen_tokens, step_probs=np.asarray(example["step_probs"], dtype=float), scores=scores,
        shown=shown, step_rows=step_rows, layers=layers,
    )


def step_table(rows: GenerationRows):
    """pandas table: step, generated token, probability, log-probability, entropy (nats; where known)
    and the top alternatives (where known)."""
    import pandas as pd

    probs = np.asarray(rows.step_probs, dtype=float)
    log_probs = np.asarray(rows.step_log_probs, dtype=float) if rows.step_log_probs is not None else np.log(probs)
    t = pd.DataFrame({"step": range(rows.n_steps), "generated token": rows.generated_tokens,
                      "probability": probs, "log-probability": log_probs})
    if rows.step_entropy is not None:
        t["entropy"] = np.asarray(rows.step_entropy, dtype=float)
    if rows.alternatives:
        t["most probable tokens"] = rows.alternatives
    return t


def heatmap_figure(rows: GenerationRows, method: str):
    """Rows: generated tokens; columns: prompt + continuation tokens; blank where a column is not
    visible to the row. Special tokens / the attention sink left out as in the explanation."""
    import plotly.graph_objects as go

    from html import escape as esc

    shown = np.flatnonzero(rows.shown)
    z = rows.scores[method][:, shown]
    finite = z[np.isfinite(z)]
    signed = finite.size > 0 and float(finite.min()) < 0
    cols = [esc(f"{j}:{rows.tokens[j]!r}") for j in shown]
    ylab = [esc(f"{t}:{tok!r}") for t, tok in enumerate(rows.generated_tokens)]
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=ylab, colorscale="RdBu_r" if signed else "Blues",
                               zmid=0 if signed else None, hoverongaps=False,
                               colorbar={"title": {"text": esc(method)}}))
    fig.update_layout(height=140 + 28 * rows.n_steps, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      yaxis={"autorange": "reversed", "title": {"text": "generated token"}},
                      xaxis={"title": {"text": "prompt + continuation"}, "tickangle": -60},
                      title={"text": esc(f"{method}: scores of each generated token over the tokens before it")})
    return fig


def step_attention_figure(rows: GenerationRows, step: int, layer: int):
    """Heads x visible tokens: the attention row that predicted generated token ``step``."""
    import plotly.graph_objects as go

    from html import escape as esc

    z = rows.step_rows(step, layer)
    n_vis = z.shape[-1]
    fig = go.Figure(go.Heatmap(z=z, x=[esc(f"{j}:{t!r}") for j, t in enumerate(rows.tokens[:n_vis])],
                               y=[f"head {h}" for h in range(z.shape[0])],
                               colorscale="Viridis", colorbar={"title": {"text": "attention"}}))
    fig.update_layout(height=120 + 22 * z.shape[0], margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title={"text": esc(f"layer {layer}: attention of the row predicting {rows.generated_tokens[step]!r}")},
                      xaxis={"tickangle": -60}, yaxis={"title": {"text": "head"}})
    return fig


def render_rows(rows: GenerationRows, *, key: str = "gen", note: str | None = None) -> None:
    """Draw the view of one generation."""
    import streamlit as st

    from attnexplain.dashboard.widgets import escape_md

    st.markdown(f"**Prompt:** {escape_md(rows.prompt)}")
    st.markdown(f"**{'Forced' if rows.forced else 'Generated'}:** {escape_md(rows.generated_text)}")
    st.dataframe(step_table(rows), hide_index=True, key=f"{key}-steps")
    if not rows.methods or not rows.n_steps:
        return
    method = st.selectbox("Method", rows.methods, key=f"{key}-method")
    st.plotly_chart(heatmap_figure(rows, method), key=f"{key}-heatmap")
    step = st.selectbox("Generated token", list(range(rows.n_steps)), key=f"{key}-step",
                        format_func=lambda t: f"{t}: {rows.generated_tokens[t]!r} (p={float(rows.step_probs[t]):.3f})")
    st.caption(f"Scores of {method} for generated token {step} ({escape_md(repr(rows.generated_tokens[step]))}) "
               "over the prompt and the tokens generated before it, highest first.")
    st.dataframe(rows.row(method, step), hide_index=True, key=f"{key}-row")
    if rows.step_rows is None or not rows.layers:
        st.info(note or "The attention arrays of this example were not stored: no per-head attention maps.")
        return
    layer = st.selectbox("Layer", rows.layers, index=len(rows.layers) - 1, key=f"{key}-layer")
    st.plotly_chart(step_attention_figure(rows, step, layer), key=f"{key}-step-attention")


def render(ex: Any, *, key: str = "gen") -> None:
    """Draw the view for example 0 of a :class:`~attnexplain.generation.GenerationExplanation` (Live page)."""
    render_rows(rows_from_explanation(ex), key=key)

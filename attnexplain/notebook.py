"""An inline HTML view of one example for Jupyter notebooks, offline (no script, font or style sheet
is fetched: bertviz's views draw blank without network access, this one does not).

>>> from attnexplain.notebook import show_example
>>> show_example(lm, "a gorgeous, witty film")          # displays in a notebook cell

:func:`show_example` explains the text with :func:`attnexplain.explain` (special tokens left out
of the scores, the library's default) and captures one head's attention; :func:`example_html`
builds the same view from arrays you already have. The result is an :class:`ExampleView`, which a
notebook displays through ``_repr_html_``; ``str(view)`` / ``view.html`` is the HTML, and
``view.save(path)`` writes a page that opens in any browser offline.

What it shows: the prediction, the tokens shaded once per method (orange positive, blue negative,
scaled to each method's largest |score|, with a colour legend giving the range) and one head's
attention map (rows: query, columns: key; every token labelled) drawn as inline SVG.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExampleView", "example_html", "show_example"]


@dataclass
class ExampleView:
    """HTML of one example; displayed inline by Jupyter (``_repr_html_``)."""

    html: str

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html

    def save(self, path: str | Path) -> Path:
        """Write a self-contained HTML page."""
        path = Path(path)
        path.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>attnexplain</title></head><body>'
                        + self.html + "</body></html>", encoding="utf-8")
        return path


def _attention_svg(matrix: np.ndarray, tokens: Sequence[str], *, title: str, cell: int = 14) -> str:
    """An (n, n) matrix as an SVG heatmap (white 0 to dark blue max) with every token labelled."""
    m = np.nan_to_num(np.asarray(matrix, dtype=np.float64))
    n = m.shape[0]
    toks = [str(t) for t in tokens][:n]
    label_w = 8 + 7 * max((len(t) for t in toks), default=1)
    top = label_w + 20
    left = label_w + 20
    vmax = float(np.abs(m).max()) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + n * cell + 10}" height="{top + n * cell + 10}" '
             'style="font-family:monospace;font-size:10px">',
             f'<text x="{left}" y="12" style="font-size:12px;font-family:sans-serif">{html.escape(title)} '
             f'(rows: query, columns: key; darkest = {vmax:.3g})</text>']
    for i, t in enumerate(toks):
        y = top + i * cell + cell * 0.75
        parts.append(f'<text x="{left - 4}" y="{y:.1f}" text-anchor="end">{html.escape(t)}</text>')
        x = left + i * cell + cell * 0.75
        parts.append(f'<text x="{x:.1f}" y="{top - 4}" transform="rotate(-60 {x:.1f} {top - 4})">{html.escape(t)}</text>')
    for i in range(n):
        for j in range(n):
            a = min(1.0, abs(m[i, j]) / vmax)
            colour = f"rgba(8,48,107,{a:.3f})" if m[i, j] >= 0 else f"rgba(178,24,43,{a:.3f})"
            tip = html.escape(f"query {i} {toks[i] if i < len(toks) else ''} / key {j} "
                              f"{toks[j] if j < len(toks) else ''}: {m[i, j]:.4f}")
            parts.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                         f'fill="{colour}" stroke="#eee" stroke-width="0.5"><title>{tip}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def example_html(tokens_by_method: Mapping[str, Sequence[str]], scores: Mapping[str, Sequence[float]], *,
                 attention: np.ndarray | None = None, attention_tokens: Sequence[str] | None = None,
                 head_title: str = "attention", prediction: str | None = None) -> ExampleView:
    """The view from arrays: ``scores[method]`` aligned with ``tokens_by_method[method]``; optional
    ``attention`` (n, n) of one head over ``attention_tokens``."""
    from .dashboard.figures import token_html

    parts = ['<div class="attnexplain-example" style="font-family:sans-serif">']
    if prediction:
        parts.append(f"<p><b>prediction:</b> {html.escape(prediction)}</p>")
    for method, vals in scores.items():
        parts.append(f'<div style="margin:6px 0"><b>{html.escape(method)}</b>'
                     + token_html(list(tokens_by_method[method]), np.asarray(vals, dtype=np.float64), method=method,
                                  legend=True) + "</div>")
    if attention is not None:
        parts.append(_attention_svg(attention, attention_tokens or [], title=head_title))
    parts.append("</div>")
    return ExampleView("".join(parts))


def show_example(lm: Any, text: str, methods: Sequence[str] = ("raw_attention", "effective_attention", "norm"), *,
                 layer: int = -1, head: int = 0, exclude_special_tokens: bool = True) -> ExampleView:
    """Explain ``text`` with ``methods`` and show it with the attention map of (``layer``, ``head``).

    Args:
        lm: a :class:`~attnexplain.models.LoadedModel` classifier.
        layer, head: the head whose attention map is drawn (``layer=-1``: the last layer).
        exclude_special_tokens: as :func:`attnexplain.explain` (default True).
    """
    import torch

    from .capturing import capture
    from .methods import explain

    attributions = explain(lm, [text], list(methods), exclude_special_tokens=exclude_special_tokens)
    tokens = {m: a.tokens[0] for m, a in attributions.items()}
    scores = {m: np.asarray(a.scores[0]) for m, a in attributions.items()}
    enc = lm.tokenize([text])
    with torch.no_grad():
        cap = capture(lm, enc)
    layers = list(cap.layers())
    L = layers[layer]
    att = cap.attention(layer=L)[0, head].float().numpy()
    toks = [str(t) for t in cap.tokens[0]][: att.shape[-1]]
    prediction = None
    if cap.probs is not None and lm.labels:
        p = cap.probs[0]
        k = int(p.argmax())
        prediction = f"{lm.labels[k]} ({float(p[k]):.3f})"
    return example_html(tokens, scores, attention=att, attention_tokens=toks,
                        head_title=f"layer {L}, head {head}", prediction=prediction)

"""Words of a text and the model tokens in them: the unit of the synthetic rationales.

A *word* is a whitespace-separated piece of the text (``text.split()``), 0-based.
:func:`word_index_of_tokens` maps a fast tokenizer's tokens to words and :func:`word_scores`
aggregates token scores per word (for :func:`attnexplain.metrics.plausibility`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the whitespace-separated words of ``text``."""
    spans = []
    start = None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        spans.append((start, len(text)))
    return spans


def word_index_of_tokens(text: str, offsets: Sequence[Sequence[int]]) -> list[int | None]:
    """For each token, the index of the whitespace word of ``text`` it belongs to (None for specials).

    ``offsets`` is a fast tokenizer's ``offset_mapping`` for ``text`` (``return_offsets_mapping=True``);
    tokens with an empty span (``[CLS]``, ``[SEP]``, padding) map to None.
    """
    spans = word_spans(text)
    starts = [s for s, _ in spans]
    out: list[int | None] = []
    for s, e in offsets:
        if e <= s:
            out.append(None)
            continue
        k = bisect.bisect_right(starts, s) - 1
        out.append(k if k >= 0 and s < spans[k][1] else None)
    return out


def word_scores(token_scores: Sequence[float], word_index: Sequence[int | None], n_words: int, *,
                reduce: str = "sum") -> np.ndarray:
    """Aggregate token scores to words (``reduce``: ``"sum"``, ``"max"`` or ``"mean"``); specials are skipped.

    Words no token maps to get 0.
    """
    if len(token_scores) != len(word_index):
        raise ValueError(f"{len(token_scores)} token scores but {len(word_index)} word indices")
    if reduce not in ("sum", "max", "mean"):
        raise ValueError(f"reduce must be 'sum', 'max' or 'mean', got {reduce!r}")
    out = np.zeros(n_words, dtype=np.float64)
    count = np.zeros(n_words, dtype=np.int64)
    for score, w in zip(token_scores, word_index):
        if w is None:
            continue
        score = float(score)
        if reduce == "max":
            out[w] = score if count[w] == 0 else max(out[w], score)
        else:
            out[w] += score
        count[w] += 1
    if reduce == "mean":
        out = np.divide(out, np.maximum(count, 1))
    return out

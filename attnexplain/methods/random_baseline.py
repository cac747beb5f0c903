"""The random baseline: token scores that carry no information about the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import ExplanationMethod, register_method

__all__ = ["RandomBaseline"]


@register_method
@dataclass
class RandomBaseline(ExplanationMethod):
    """Random token scores: the baseline every faithfulness metric should beat.

    Formula: ``score_j ~ Uniform[0, 1)`` i.i.d., drawn from ``numpy.random.default_rng``
    seeded with ``SeedSequence([seed, n, id_1, ..., id_n])`` where ``id_1..id_n`` are the
    example's real token ids (padding removed). So the scores are deterministic per example
    (same text and seed -> same scores, in any batch, at any position, in any process), differ
    between seeds, and do not depend on the rest of the batch. Two identical texts get identical
    scores. Ties have probability 0.

    Options: ``seed`` (0).

    Reference: the random-ranking baseline of ERASER (J. DeYoung et al., ACL 2020).
    """

    name: ClassVar[str] = "random"
    description: ClassVar[str] = "uniform random scores, seeded by (seed, token ids)"
    uses_capture: ClassVar[bool] = False

    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")

    def attribute(self, lm, batch, *, target, capture=None) -> list[np.ndarray]:
        if "input_ids" not in batch:
            raise ValueError("the random baseline scores token inputs: the batch has no input_ids")
        ids = batch["input_ids"]
        am = batch.get("attention_mask")
        out = []
        for i in range(ids.shape[0]):
            row = ids[i] if am is None else ids[i][am[i].bool()]
            toks = [int(t) for t in row.tolist()]
            rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), len(toks), *toks]))
            out.append(rng.random(len(toks)))
        return out

"""Perturbation-based explanation: leave-one-out occlusion. Runs the model itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .base import ExplanationMethod, register_method
from .gradients import _model_kwargs, pad_token_id, special_token_ids, target_scores

__all__ = ["Occlusion"]

_REMOVALS = ("mask", "pad", "delete")


@register_method
@dataclass
class Occlusion(ExplanationMethod):
    """Leave-one-out occlusion: the drop in the target probability when a token is removed.

    Formula, with ``p_c`` the softmax probability of the target class ``c`` (for per-position
    logits: at the last real token)::

        score_j = p_c(x) - p_c(x with token j removed)

    Positive = the token supports the target. Removal (option ``removal``):

    * ``"mask"`` (default): token ``j`` replaced by the tokenizer's mask token ([MASK]); models
      without one (GPT-2, Llama) get the pad token instead. (GPT-2 / Llama sequence classifiers
      pool the last token that is *not* the pad id, so padding over their last token moves the
      pooled position one token back.)
    * ``"pad"``: token ``j`` replaced by the pad token id (kept visible to attention).
    * ``"delete"``: token ``j`` removed from the sequence (the example gets one token shorter).

    Special tokens ([CLS], [SEP], <s>, </s>...): by default they are **not** occluded and get
    score 0 (removing the readout token or the separator takes the input out of the model's
    distribution rather than measuring the token's content); ``occlude_special=True`` occludes
    them like any other token.

    Batching: each example is stripped of its padding and its ``n`` variants (plus the original)
    run in ``ceil((n + 1) / batch_size)`` forward passes of equal-length, unpadded sequences, so
    scores do not depend on the rest of the batch. Cost: ``n + 1`` sequences per example.

    Paper: M. D. Zeiler, R. Fergus, "Visualizing and Understanding Convolutional Networks",
    ECCV 2014 (occlusion); for text J. Li, W. Monroe, D. Jurafsky, "Understanding Neural
    Networks through Representation Erasure", 2016.
    """

    name: ClassVar[str] = "occlusion"
    description: ClassVar[str] = "leave-one-out: p_c(x) - p_c(x without token j) (mask replacement)"
    uses_capture: ClassVar[bool] = False

    removal: str = "mask"
    occlude_special: bool = False
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.removal not in _REMOVALS:
            raise ValueError(f"removal must be one of {_REMOVALS}, got {self.removal!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def replacement_id(self, lm) -> int:
        if self.removal == "mask":
            mid = getattr(getattr(lm, "tokenizer", None), "mask_token_id", None)
            if isinstance(mid, int):
                return mid
        return pad_token_id(lm)

    @torch.no_grad()
    def _probs(self, lm, rows: dict[str, torch.Tensor], target: int) -> torch.Tensor:
        """p_target for every row of an unpadded batch, ``batch_size`` rows per forward pass."""
        n_rows = rows["input_ids"].shape[0]
        out = []
        for s in range(0, n_rows, int(self.batch_size)):
            chunk = {k: v[s : s + int(self.batch_size)] for k, v in rows.items()}
            logits = lm.model(**chunk).logits
            scores = target_scores(logits, chunk.get("attention_mask")).float()
            out.append(torch.softmax(scores, dim=-1)[:, target])
        return torch.cat(out)

    def attribute(self, lm, batch, *, target, capture=None) -> list[np.ndarray]:
        if "input_ids" not in batch:
            raise ValueError("occlusion explains token inputs: the batch has no input_ids")
        kwargs = _model_kwargs(batch)
        ids = kwargs["input_ids"]
        B, n = ids.shape
        am = kwargs.get("attention_mask")
        real = torch.ones_like(ids, dtype=torch.bool) if am is None else am.bool()
        per_token = {k: v for k, v in kwargs.items() if v.dim() == 2 and v.shape == ids.shape}
        other = {k: v for k, v in kwargs.items() if k not in per_token}
        if other:
            raise ValueError(f"occlusion cannot vary per-example inputs {sorted(other)}")
        special = special_token_ids(lm)
        repl = self.replacement_id(lm)
        target = torch.as_tensor(target).reshape(-1).tolist()
        out = []
        for i in range(B):
            idx = real[i].nonzero().flatten()
            ex = {k: v[i, idx] for k, v in per_token.items()}  # (n_i,) each, padding removed
            ni = idx.numel()
            ids_i = ex["input_ids"]
            occl = [j for j in range(ni) if self.occlude_special or int(ids_i[j]) not in special]
            if self.removal == "delete":
                if ni < 2:
                    occl = []  # nothing would be left to run
                p0 = self._probs(lm, {k: v[None] for k, v in ex.items()}, int(target[i]))
                pv = p0[:0]
                if occl:
                    keep = [torch.tensor([q for q in range(ni) if q != j], dtype=torch.long, device=ids.device) for j in occl]
                    variants = {k: torch.stack([v[kp] for kp in keep]) for k, v in ex.items()}
                    pv = self._probs(lm, variants, int(target[i]))
            else:
                rows = {k: v[None].repeat(len(occl) + 1, 1) for k, v in ex.items()}
                for r, j in enumerate(occl, start=1):
                    rows["input_ids"][r, j] = repl
                p = self._probs(lm, rows, int(target[i]))
                p0, pv = p[:1], p[1:]
            s = torch.zeros(ni, dtype=torch.float64)
            if occl:
                s[torch.tensor(occl)] = (p0 - pv).double().cpu()
            out.append(s.numpy())
        return out

"""Attention matrices together with the gradient of a model output with respect to them.

Gradient-weighted attention methods (Chefer et al. 2021) need ``dy/dA`` for every attention map
``A`` (self- and cross-attention, encoder and decoder). The gradients are taken through the
attention-function interventions the ablations use: at every recorded site the intervention
keeps ``A`` (still attached to the queries and keys that made it, so that a later layer's
attention stays a function of this one's output) and the layer output is computed as ``A V``;
one backward pass gives ``dy/dA`` along every path from ``A`` to ``y``. No model code is forked; any model whose attention runs an attnexplain backend works
(grouped-query attention included: ``A`` has one map per query head).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .adapters import AttentionSite
from .attention import _model_sites, session

__all__ = ["AttentionGradients", "attention_gradients"]


@dataclass
class AttentionGradients:
    """Attention maps and their gradients, by site key (``"main.3.self"``, ``"decoder.1.cross"``).

    Attributes:
        attention: key -> list over calls (one per forward step) of ``(B, H, n, m)`` maps.
        gradient: key -> list of ``(B, H, n, m)`` ``d(sum_b score_b)/dA`` (zeros where unused).
        sites: key -> :class:`AttentionSite`.
        output: the model output of the forward pass.
        score: ``(B,)`` the differentiated scores.
    """

    attention: dict[str, list[torch.Tensor]]
    gradient: dict[str, list[torch.Tensor]]
    sites: dict[str, AttentionSite]
    output: Any
    score: torch.Tensor

    def layers(self, stack: str, kind: str) -> list[str]:
        """Site keys of one stack and kind, in layer order."""
        keys = [k for k, s in self.sites.items() if s.stack == stack and s.kind == kind and k in self.attention]
        return sorted(keys, key=lambda k: self.sites[k].layer)

    @property
    def stacks(self) -> set[str]:
        return {s.stack for k, s in self.sites.items() if k in self.attention}


def attention_gradients(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    score_fn: Callable[[Any], torch.Tensor],
    *,
    kinds: tuple[str, ...] = ("self", "cross"),
    stacks: tuple[str, ...] | None = None,
) -> AttentionGradients:
    """One forward and one backward pass of ``model`` on ``inputs``.

    Args:
        model: an HF model running an attnexplain attention backend.
        inputs: model inputs.
        score_fn: model output -> ``(B,)`` scores (e.g. the target class logit per example);
            their sum is differentiated, so each example's gradient is its own score's.
        kinds / stacks: which attention sites to record.

    Returns:
        :class:`AttentionGradients` (tensors detached).

    Raises:
        ValueError: no attention site of the requested kinds ran.
    """
    sites = {s.key: s for s in _model_sites(model).values()
             if s.kind in kinds and (stacks is None or s.stack in stacks)}
    leaves: dict[str, list[torch.Tensor]] = {k: [] for k in sites}

    def keep(key: str):
        def intervention(A, call, site):
            if not A.requires_grad:  # e.g. a model whose parameters are frozen: make it a leaf
                A = A.detach().requires_grad_(True)
            leaves[key].append(A)
            return A
        return intervention

    with torch.enable_grad(), session(model, None, {k: keep(k) for k in sites}):
        output = model(**inputs)
        score = score_fn(output)
    flat = [(k, i, t) for k, ts in leaves.items() for i, t in enumerate(ts)]
    if not flat:
        raise ValueError(f"no attention of kinds {kinds} ran in {type(model).__name__}: does it run an attnexplain backend?")
    grads = torch.autograd.grad(score.sum(), [t for _, _, t in flat], allow_unused=True)
    att: dict[str, list[torch.Tensor]] = {}
    grd: dict[str, list[torch.Tensor]] = {}
    for (k, _, t), g in zip(flat, grads):
        att.setdefault(k, []).append(t.detach())
        grd.setdefault(k, []).append(torch.zeros_like(t) if g is None else g.detach())
    return AttentionGradients(attention=att, gradient=grd, sites={k: sites[k] for k in att}, output=output,
                              score=score.detach())

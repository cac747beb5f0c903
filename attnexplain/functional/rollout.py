"""Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

Each layer's attention is averaged over heads and mixed with the residual connection::

    A_aug(l) = residual * I + (1 - residual) * reduce_h A^h(l)      (rows renormalised to 1)
    rollout(1) = A_aug(1),   rollout(l) = A_aug(l) @ rollout(l - 1)

``rollout(l)[i, j]`` is the share of input token ``j`` in position ``i`` after layer ``l``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._validation import _broadcast, _check_finite, _check_key_mask, _check_tensor, _compute_dtype

__all__ = ["augmented_attention", "attention_rollout"]

_REDUCTIONS = ("mean", "max", "min", "sum")


def _stack_layers(attentions) -> torch.Tensor:
    """(L, ..., H, n, n) tensor, or a list/tuple of (..., H, n, n) -> (L, ..., H, n, n)."""
    if isinstance(attentions, torch.Tensor):
        _check_tensor(attentions, "attentions", 4, "(L, ..., H, n, n)")
        stacked = attentions
    elif isinstance(attentions, Sequence) and not isinstance(attentions, (str, bytes)) and len(attentions) > 0:
        shapes = {tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in attentions}
        if len(shapes) != 1:
            raise ValueError(f"all layers' attentions must have the same shape (..., H, n, n), got {sorted(map(str, shapes))}")
        for i, a in enumerate(attentions):
            _check_tensor(a, f"attentions[{i}]", 3, "(..., H, n, n)")
        stacked = torch.stack(list(attentions), dim=0)
    else:
        raise TypeError(
            "attentions must be a tensor (L, ..., H, n, n) or a non-empty list/tuple of per-layer tensors "
            f"(..., H, n, n) (e.g. a model's outputs.attentions), got {type(attentions).__name__}"
        )
    if stacked.shape[-1] != stacked.shape[-2]:
        raise ValueError(
            f"rollout and flow need self-attention (n x n per layer), got {tuple(stacked.shape[-2:])}"
        )
    return stacked


def augmented_attention(
    attentions,
    *,
    residual: float = 0.5,
    head_reduction: str = "mean",
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-layer residual-augmented attention ``A_aug(l)`` (Abnar & Zuidema, ACL 2020).

    Formula: ``A_aug(l) = residual * I + (1 - residual) * reduce_h A^h(l)``, each row divided
    by its sum. With ``key_mask``, columns of padded keys are zeroed first and rows of padded
    queries are ``e_i`` (the token keeps to itself), so every row sums to 1 and real tokens never
    receive mass from padding.

    Args:
        attentions: ``(L, ..., H, n, n)`` or a list of ``L`` tensors ``(..., H, n, n)``.
        residual: weight of the identity (the residual connection), in [0, 1].
        head_reduction: ``"mean"`` (paper), ``"max"``, ``"min"`` or ``"sum"`` over heads.
        key_mask: ``(..., n)`` bool, True = real token (batch dims without L and H).

    Returns:
        ``(..., L, n, n)``, rows summing to 1.
    """
    A = _stack_layers(attentions)
    if not 0.0 <= float(residual) <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    if head_reduction not in _REDUCTIONS:
        raise ValueError(f"head_reduction must be one of {_REDUCTIONS}, got {head_reduction!r}")
    n = A.shape[-1]
    key_mask = _check_key_mask(key_mask, n)
    cdt = _compute_dtype(A.dtype)
    A = A.to(cdt)
    if key_mask is not None:
        _broadcast(
            {"attentions (without L, H, n, n)": A.shape[1:-3], "key_mask (without n)": key_mask.shape[:-1]},
            "key_mask is (..., n) for attentions (L, ..., H, n, n), e.g. (B, n) for (L, B, H, n, n)",
        )
        km = key_mask[..., None, None, :]  # add H and query dims; L broadcasts from the left
        A = torch.where(km, A, torch.zeros((), dtype=cdt, device=A.device))
    _check_finite(A, "attentions")
    if head_reduction == "mean":
        R = A.mean(-3)
    elif head_reduction == "sum":
        R = A.sum(-3)
    elif head_reduction == "max":
        R = A.amax(-3)
    else:
        R = A.amin(-3)
    eye = torch.eye(n, dtype=cdt, device=A.device)
    aug = residual * eye + (1.0 - residual) * R  # (L, ..., n, n)
    if key_mask is not None:
        pad_rows = (~key_mask)[..., :, None]  # (..., n, 1)
        aug = torch.where(pad_rows, eye, aug)
    sums = aug.sum(-1, keepdim=True)
    if bool((sums <= 0).any()):
        raise ValueError(
            "a row of the augmented attention sums to <= 0 (all its keys are masked or zero and "
            "residual = 0); use residual > 0 or check key_mask"
        )
    aug = aug / sums
    return aug.movedim(0, -3)


def attention_rollout(
    attentions,
    *,
    residual: float = 0.5,
    head_reduction: str = "mean",
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

    Formula::

        A_aug(l) = residual * I + (1 - residual) * mean_h A^h(l)   (rows renormalised)
        rollout(1) = A_aug(1),   rollout(l) = A_aug(l) @ rollout(l - 1)

    Args:
        attentions: ``(L, ..., H, n, n)`` or a list of ``L`` tensors ``(..., H, n, n)`` (layer 0
            first, e.g. ``outputs.attentions`` of a Hugging Face model).
        residual, head_reduction, key_mask: see :func:`augmented_attention`.

    Returns:
        ``(..., L, n, n)``: ``[..., l, i, j]`` = share of input token ``j`` in position ``i`` after
        layer ``l`` (cumulative). Rows sum to 1. Computed in float32 (float64 for float64 input).
    """
    aug = augmented_attention(attentions, residual=residual, head_reduction=head_reduction, key_mask=key_mask)
    L = aug.shape[-3]
    out = [aug[..., 0, :, :]]
    for layer in range(1, L):
        out.append(aug[..., layer, :, :] @ out[-1])
    return torch.stack(out, dim=-3)

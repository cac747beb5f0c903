"""Gradient-weighted attention relevance (Chefer, Gur, Wolf, ICCV 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers").

Every attention map ``A`` (self or cross) is weighted by the gradient of the explained output::

    Abar = E_h[ (grad_A (.) A)^+ ]                     (mean over heads of the positive part)

and relevance matrices start at ``R^{ss} = I`` (each stack's self relevance) and ``R^{sq} = 0``
(relevance of stack ``q``'s tokens for stack ``s``'s), updated layer by layer::

    self-attention of s:     R^{ss} += Abar R^{ss},    R^{sq} += Abar R^{sq}
    s attends to q (cross):  R^{sq} += (Rbar^{ss})^T Abar Rbar^{qq}
    Rbar^{xx} = Rhat^{xx} + I,   Rhat^{xx} = (R^{xx} - I) with rows normalised to sum 1

(the cross rule's update of ``R^{ss}`` through ``R^{qs}`` is 0 for encoder-decoders, whose
encoder never attends to the decoder, and is left out). A single self-attention stack (BERT,
GPT-2, Llama, ViT) only uses the first rule; an encoder-decoder (BART, T5) or a decoder with
learned queries (DETR-style) uses all three with ``s`` the decoder and ``q`` the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "gradient_weighted_attention",
    "self_attention_relevance",
    "normalize_self_relevance",
    "encoder_decoder_relevance",
]


def gradient_weighted_attention(A: torch.Tensor, grad: torch.Tensor, *, head_reduction: str = "mean") -> torch.Tensor:
    """``Abar = E_h[(grad (.) A)^+]``: ``(..., H, n, m)`` -> ``(..., n, m)`` (``head_reduction``
    ``"mean"`` as the paper, or ``"sum"``)."""
    if A.shape != grad.shape:
        raise ValueError(f"A {tuple(A.shape)} and its gradient {tuple(grad.shape)} must have the same shape (..., H, n, m)")
    if A.dim() < 3:
        raise ValueError(f"A must be (..., H, n, m), got shape {tuple(A.shape)}")
    w = (grad.to(A.dtype) * A).clamp_min(0)
    if head_reduction == "mean":
        return w.mean(-3)
    if head_reduction == "sum":
        return w.sum(-3)
    raise ValueError(f"head_reduction must be 'mean' or 'sum', got {head_reduction!r}")


def _eye_like(R: torch.Tensor) -> torch.Tensor:
    return torch.eye(R.shape[-1], dtype=R.dtype, device=R.device).expand_as(R)


def self_attention_relevance(abars: Sequence[torch.Tensor] | torch.Tensor, R: torch.Tensor | None = None) -> torch.Tensor:
    """``R = I; R += Abar_l @ R`` for every layer ``l`` (first layer first).

    Args:
        abars: ``(L, ..., n, n)`` or a list of ``(..., n, n)`` gradient-weighted maps.
        R: starting relevance ``(..., n, n)`` (default the identity).

    Returns:
        ``(..., n, n)``; ``R[i, j]`` = relevance of token ``j`` for position ``i``.
    """
    abars = list(abars)
    if not abars:
        raise ValueError("no attention layers given")
    if abars[0].shape[-1] != abars[0].shape[-2]:
        raise ValueError(f"self-attention maps must be square, got {tuple(abars[0].shape)}")
    R = _eye_like(abars[0]).clone() if R is None else R.clone()
    for a in abars:
        R = R + a.to(R.dtype) @ R
    return R


def normalize_self_relevance(R: torch.Tensor) -> torch.Tensor:
    """``Rbar = Rhat + I`` with ``Rhat = R - I`` rows normalised to sum 1 (rows summing to 0 stay 0)."""
    eye = _eye_like(R)
    Rh = R - eye
    s = Rh.sum(-1, keepdim=True)
    Rh = torch.where(s != 0, Rh / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(Rh))
    return Rh + eye


def encoder_decoder_relevance(
    encoder_abars: Sequence[torch.Tensor],
    decoder_abars: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]],
    *,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chefer et al.'s rules for an encoder (``e``, self-attention) and a decoder (``d``, self- and
    cross-attention per layer).

    Args:
        encoder_abars: per encoder layer ``(..., n_e, n_e)``; empty when the encoder states are
            given without self-attention (then ``R^{ee} = I``; pass ``n_e`` through the cross maps).
        decoder_abars: per decoder layer ``(self (..., n_d, n_d) or None, cross (..., n_d, n_e) or None)``.
        normalize: apply the ``Rbar`` normalisation of the cross rule (the paper's; False uses R as is).

    Returns:
        ``(R^{ee} (..., n_e, n_e), R^{dd} (..., n_d, n_d), R^{de} (..., n_d, n_e))``.
    """
    cross0 = next((c for _, c in decoder_abars if c is not None), None)
    self0 = next((s for s, _ in decoder_abars if s is not None), None)
    if cross0 is None and not encoder_abars:
        raise ValueError("need encoder self-attention or decoder cross-attention maps")
    if encoder_abars:
        R_ee = self_attention_relevance(encoder_abars)
    else:
        n_e = cross0.shape[-1]
        R_ee = torch.eye(n_e, dtype=cross0.dtype, device=cross0.device).expand(*cross0.shape[:-2], n_e, n_e).clone()
    ref = self0 if self0 is not None else cross0
    if ref is None:
        raise ValueError("no decoder attention maps given")
    n_d = ref.shape[-2]
    R_dd = torch.eye(n_d, dtype=R_ee.dtype, device=R_ee.device).expand(*ref.shape[:-2], n_d, n_d).clone()
    R_de = torch.zeros(*ref.shape[:-2], n_d, R_ee.shape[-1], dtype=R_ee.dtype, device=R_ee.device)
    Rbar_ee = normalize_self_relevance(R_ee) if normalize else R_ee
    for self_a, cross_a in decoder_abars:
        if self_a is not None:
            a = self_a.to(R_dd.dtype)
            R_dd = R_dd + a @ R_dd
            R_de = R_de + a @ R_de
        if cross_a is not None:
            Rbar_dd = normalize_self_relevance(R_dd) if normalize else R_dd
            R_de = R_de + Rbar_dd.transpose(-1, -2) @ cross_a.to(R_de.dtype) @ Rbar_ee
    return R_ee, R_dd, R_de

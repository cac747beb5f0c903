"""Norm-based attention (Kobayashi et al., EMNLP 2020, "Attention is Not Only a Weight").

The vector head ``h`` moves from key ``j`` to query ``i`` is ``A^h_ij f^h(x_j)`` with
``f^h(x_j) = (x_j W_V^h + b_V^h) W_O^h = T^h_j``; its norm, not the weight ``A^h_ij`` alone,
measures the contribution. High-weight special tokens ([CLS], [SEP], punctuation) tend to have
small ``||f(x)||``, so their norm-based attention is much lower than their raw attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import (
    _broadcast,
    _check_finite,
    _check_key_mask,
    _check_tensor,
    _mask_cols,
    _mask_rows,
    _out_dtype,
)

__all__ = ["NormAttention", "norm_based_attention", "norm_based_attention_from_values"]


@dataclass
class NormAttention:
    """Result of :func:`norm_based_attention`.

    Attributes:
        per_head: ``(..., H, n, m)`` ``||A^h_ij T^h_j|| = A^h_ij ||T^h_j||``.
        summed: ``(..., n, m)`` ``|| sum_h A^h_ij T^h_j ||`` (the whole layer's attention block).
    """

    per_head: torch.Tensor
    summed: torch.Tensor


def norm_based_attention(
    A: torch.Tensor,
    T: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    chunk_size: int = 128,
) -> NormAttention:
    """Norm-based attention (Kobayashi et al., EMNLP 2020, "Attention is Not Only a Weight").

    Formulas (``T^h_j = f^h(x_j) = (x_j W_V^h + b_V^h) W_O^h``)::

        per_head[h, i, j] = || A^h_ij T^h_j ||_2 = |A^h_ij| * ||T^h_j||_2
        summed[i, j]      = || sum_h A^h_ij T^h_j ||_2
                          = sqrt( sum_{h,h'} A^h_ij A^h'_ij <T^h_j, T^h'_j> )

    ``summed`` is evaluated ``chunk_size`` queries at a time: through the per-key Gram matrices
    ``G_j = [<T^h_j, T^h'_j>]_{hh'}`` (H x H, float64: the quadratic form cancels), which never
    materialises the ``(n, m, d)`` vectors and costs O(m H^2 d + n m H^2) instead of O(n m H d);
    with fewer query rows than heads (``n < H``, e.g. one readout row) the vectors are summed
    directly (in float32, float64 for float64 inputs), which is then cheaper.

    Args:
        A: ``(..., H, n, m)`` attention per head.
        T: ``(..., H, m, d)`` value transforms per head (:func:`value_transforms`); leading dims
            broadcast with ``A``'s.
        key_mask: ``(..., m)`` bool, True = real key (right-aligned against the batch dims of
            ``(..., H, n, m)`` without H, i.e. ``(B, m)`` for ``A`` of shape ``(B, H, n, m)``);
            masked keys contribute 0.
        chunk_size: queries per chunk for ``summed`` (bounds memory to ~H x chunk x m floats).

    Returns:
        :class:`NormAttention` in ``promote_types(A.dtype, T.dtype)``.
    """
    _check_tensor(A, "A", 3, "(..., H, n, m)")
    _check_tensor(T, "T", 3, "(..., H, m, d)")
    H, n, m = A.shape[-3:]
    if T.shape[-3] != H or T.shape[-2] != m:
        raise ValueError(
            f"T {tuple(T.shape)} must be (..., H={H}, m={m}, d) to match A {tuple(A.shape)} (..., H, n, m)"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    key_mask = _check_key_mask(key_mask, m)
    shapes = {"A": A.shape[:-3], "T": T.shape[:-3]}
    if key_mask is not None:
        shapes["key_mask"] = key_mask.shape[:-1]
        km = key_mask[..., None, :]  # add the head dim
    else:
        km = None
    _broadcast(shapes, "A (..., H, n, m), T (..., H, m, d), key_mask (..., m)")
    out_dtype = _out_dtype(A.dtype, T.dtype)
    A = _mask_cols(A, km)
    T = _mask_rows(T, km)
    _check_finite(A, "A")
    _check_finite(T, "T")

    cdt = torch.float64 if out_dtype == torch.float64 else torch.float32
    tnorm = torch.linalg.vector_norm(T.to(cdt), dim=-1)  # (..., H, m)
    per_head = (A.to(cdt).abs() * tnorm[..., None, :]).to(out_dtype)

    parts = []
    if n < H:  # few query rows (a readout row): sum the vectors directly, O(n m H d) < O(m H^2 d)
        Ac, Tc = A.to(cdt), T.to(cdt)  # a plain sum of H vectors: no cancellation-prone quadratic form
        for s in range(0, n, chunk_size):
            vec = torch.einsum("...hcm,...hmd->...cmd", Ac[..., s : s + chunk_size, :], Tc)  # (..., c, m, d)
            parts.append(torch.linalg.vector_norm(vec, dim=-1).to(out_dtype))
        return NormAttention(per_head=per_head, summed=torch.cat(parts, dim=-2))
    T64 = T.to(torch.float64)
    G = torch.einsum("...hmd,...kmd->...mhk", T64, T64)  # (..., m, H, H)
    for s in range(0, n, chunk_size):
        Ac = A[..., s : s + chunk_size, :].to(torch.float64)  # (..., H, c, m)
        B = torch.einsum("...hcm,...mhk->...kcm", Ac, G)  # (..., H, c, m)
        sq = (B * Ac).sum(-3).clamp_min(0)  # (..., c, m)
        parts.append(sq.sqrt().to(out_dtype))
    summed = torch.cat(parts, dim=-2)
    return NormAttention(per_head=per_head, summed=summed)


def norm_based_attention_from_values(
    A: torch.Tensor,
    V: torch.Tensor,
    out_proj_blocks: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
) -> NormAttention:
    """:func:`norm_based_attention` from values and output-projection blocks, for few query rows.

    Same formulas (Kobayashi et al., EMNLP 2020) without forming ``T^h = V_h W_O^h``::

        summed[i, j]      = || [A^1_ij V^1_j, ..., A^H_ij V^H_j] @ W_O ||      (one (H d_v) x d GEMM)
        per_head[h, i, j] = |A^h_ij| * sqrt( V^h_j (W_O^h W_O^h^T) V^h_j^T )

    Cost O(n m H d_v d): the cheaper route when ``n`` is small (a readout row) and ``T`` would
    otherwise be built only for it.

    Args:
        A: ``(..., H, n, m)``; V: ``(..., H, m, d_v)``; out_proj_blocks: ``(H, d_v, d)``;
        key_mask: ``(..., m)`` without the head dim; masked keys contribute 0.

    Returns:
        :class:`NormAttention` in ``promote_types(A.dtype, V.dtype, out_proj_blocks.dtype)`` (computed
        in float32, float64 for float64 inputs).
    """
    _check_tensor(A, "A", 3, "(..., H, n, m)")
    _check_tensor(V, "V", 3, "(..., H, m, d_v)")
    _check_tensor(out_proj_blocks, "out_proj_blocks", 3, "(H, d_v, d)")
    H, n, m = A.shape[-3:]
    if out_proj_blocks.ndim != 3 or V.shape[-3] != H or V.shape[-2] != m or V.shape[-1] != out_proj_blocks.shape[1] \
            or out_proj_blocks.shape[0] != H:
        raise ValueError(f"V {tuple(V.shape)} must be (..., H={H}, m={m}, d_v) and out_proj_blocks {tuple(out_proj_blocks.shape)} "
                         f"(H={H}, d_v, d) to match A {tuple(A.shape)}")
    key_mask = _check_key_mask(key_mask, m)
    km = key_mask[..., None, :] if key_mask is not None else None
    out_dtype = _out_dtype(A.dtype, V.dtype, out_proj_blocks.dtype)
    cdt = torch.float64 if out_dtype == torch.float64 else torch.float32
    A = _mask_cols(A, km).to(cdt)
    V = _mask_rows(V, km).to(cdt)
    W = out_proj_blocks.to(device=V.device, dtype=cdt)
    _check_finite(A, "A")
    _check_finite(V, "V")
    d_v, d = W.shape[-2:]
    # per head: ||V_j W_h|| from the d_v x d_v Gram matrix of W_h
    vnorm = torch.einsum("...hmv,hvw,...hmw->...hm", V, W @ W.transpose(-1, -2), V).clamp_min(0).sqrt()
    per_head = (A.abs() * vnorm[..., None, :]).to(out_dtype)
    # summed: for each query row, [A_h,ij V_h,j]_h (m x H d_v) times the stacked W_O
    X = A.unsqueeze(-1) * V.unsqueeze(-3)  # (..., H, n, m, d_v)
    X = X.movedim(-4, -2).flatten(-2)  # (..., n, m, H d_v)
    summed = torch.linalg.vector_norm(X @ W.reshape(H * d_v, d), dim=-1)  # (..., n, m)
    return NormAttention(per_head=per_head, summed=summed.to(out_dtype))

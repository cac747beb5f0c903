"""Orthonormal bases of the space effective attention projects onto (Brunner et al., ICLR 2020).

``T = V W_O`` (m x d per head) has a column space of dimension ``r <= d_v``; effective attention
is ``A U_r U_r^T`` with ``U_r`` an orthonormal basis of it. :func:`column_space_basis` takes ``T``
(thin SVD, float64); :func:`value_space_basis` takes ``V`` and ``W_O`` and never forms ``T``
(QRs of ``V`` and ``W_O^T`` and a d_v x d_v SVD, with a certified fast route for full-rank
examples). Formulas in docs/methods.md.
"""

from __future__ import annotations

import math

import torch

from ._validation import (
    _broadcast,
    _check_finite,
    _check_key_mask,
    _check_tensor,
    _default_rtol,
    _eps,
    _mask_rows,
    _out_dtype,
)

__all__ = ["column_space_basis", "value_space_basis"]


# --------------------------------------------------------------------------------------------
# bases of the column space
# --------------------------------------------------------------------------------------------


def _truncate(U: torch.Tensor, S: torch.Tensor, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the left singular vectors with s_i > rtol * s_max; zero the dropped columns.

    U: (..., m, k) float64, S: (..., k) descending. Returns U_r (..., m, r_max), rank (...).
    A matrix with s_max = 0 has rank 0.
    """
    smax = S[..., :1]
    keep = (S > rtol * smax) & (S > 0)
    rank = keep.sum(-1)
    r_max = int(rank.max()) if rank.numel() else 0
    U = U[..., :r_max] * keep[..., None, :r_max].to(U.dtype)
    return U, rank


def _append_ones(U: torch.Tensor, rank: torch.Tensor, key_mask: torch.Tensor | None, rtol: float):
    """Append the component of the (masked) all-ones vector orthogonal to span(U) to the basis."""
    ones = torch.ones(U.shape[:-1], dtype=U.dtype, device=U.device)
    if key_mask is not None:
        ones = torch.broadcast_to(ones, torch.broadcast_shapes(ones.shape, key_mask.shape)).clone()
        ones = ones * key_mask.to(U.dtype)
        U = torch.broadcast_to(U, ones.shape + U.shape[-1:])
        rank = torch.broadcast_to(rank, ones.shape[:-1])
    u = ones
    for _ in range(2):  # classical Gram-Schmidt, twice is enough
        u = u - (U @ (U.transpose(-1, -2) @ u[..., None]))[..., 0]
    onorm = torch.linalg.vector_norm(ones, dim=-1, keepdim=True)
    unorm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    keep = (unorm > max(rtol, 64 * _eps(torch.float64)) * onorm) & (onorm > 0)
    u = torch.where(keep, u / unorm.clamp_min(torch.finfo(U.dtype).tiny), torch.zeros((), dtype=U.dtype, device=U.device))
    U = torch.cat([U, u[..., None]], dim=-1)
    return U, rank + keep[..., 0].long()


def column_space_basis(
    T: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    rtol: float | None = None,
    with_ones: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis ``U_r`` of the column space of ``T`` (float64), and its rank.

    Formula: ``T = U S V^T`` (thin SVD, float64), ``U_r = U[:, s_i > rtol * s_max]`` with
    ``rtol = max(m, d) * eps(T.dtype)`` by default (Brunner et al., ICLR 2020). The basis is
    padded with zero columns to the largest rank in the batch, so ``U_r`` is ``(..., m, r_max)``
    and ``U_r U_r^T`` is the exact projector for every batch element.

    Args:
        T: ``(..., m, d)``.
        key_mask: ``(..., m)`` bool, True = real key; rows of masked keys are zeroed (excluded)
            and the basis is zero there.
        rtol: relative singular-value tolerance (default from ``T``'s dtype, see above).
        with_ones: also span the (masked) all-ones vector, i.e. the column space of ``[T, 1]``.

    Returns:
        ``(U_r, rank)``: ``(..., m, r_max)`` float64 and ``(...)`` long.
    """
    _check_tensor(T, "T", 2, "(..., m, d)")
    m, d = T.shape[-2:]
    key_mask = _check_key_mask(key_mask, m)
    tol = _default_rtol(m, d, T.dtype, rtol)
    T64 = T.to(torch.float64)
    if key_mask is not None:
        _broadcast({"T": T.shape[:-2], "key_mask": key_mask.shape[:-1]}, "T (..., m, d), key_mask (..., m)")
        T64 = _mask_rows(T64, key_mask)
    _check_finite(T64, "T")
    U, S, _ = torch.linalg.svd(T64, full_matrices=False)
    U, rank = _truncate(U, S, tol)
    return _finish_basis(U, rank, key_mask, tol, with_ones)


def _finish_basis(U, rank, key_mask, tol, with_ones):
    if key_mask is not None:
        U = _mask_rows(U, key_mask)
    if with_ones:
        U, rank = _append_ones(U, rank, key_mask, tol)
    return U, rank


def _thin_qr(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced QR of a batch of tall float64 matrices X (..., m, k), m >= k.

    CholeskyQR2 (Fukaya, Nakatsukasa, Yanagisawa, Yamamoto 2014): two passes of
    G = X^T X = L L^T, X <- X L^{-T}. Only batched GEMMs and k x k factorisations, so it is
    much faster on CPU than per-matrix Householder calls; orthogonality is at float64 round-off
    when cond(X) < ~1e7. Elements where it is not safe (Cholesky fails, or the first pass left
    ||Q1^T Q1 - I|| >= 0.5, i.e. X is (nearly) rank-deficient) are redone with Householder QR.
    """
    k = X.shape[-1]
    eye = torch.eye(k, dtype=X.dtype, device=X.device)
    Q, Rt, ok = X, None, None
    for p in range(2):
        G = Q.transpose(-1, -2) @ Q
        if p == 1:
            ok = ok & ((G - eye).abs().amax((-1, -2)) < 0.5)
        L, info = torch.linalg.cholesky_ex(G)
        ok = (info == 0) if ok is None else ok & (info == 0)
        L = torch.where(ok[..., None, None], L, eye)  # keep failed elements finite
        Q = Q @ torch.linalg.solve_triangular(L, eye, upper=False).transpose(-1, -2)
        Rt = L if Rt is None else Rt @ L
    R = Rt.transpose(-1, -2)  # X = Q (L1 L2)^T
    if not bool(ok.all()):
        bad = ~ok
        Qh, Rh = torch.linalg.qr(X[bad], mode="reduced")
        Q = Q.clone()
        R = R.clone()
        Q[bad] = Qh
        R[bad] = Rh
    return Q, R


def _basis_from_values(V, W, key_mask, rtol, with_ones):
    """Orthonormal basis of the column space of T = V W (float64, rank tolerance ``rtol``).

    Exact route: :func:`_basis_from_values_exact`. For tolerances of float32 inputs (``tol >=
    1e-6``) most examples are settled by a cheap certificate instead (:func:`_certified_basis`);
    only the rest take the exact route. Both give the same rank decisions and subspaces.
    """
    m, d_v = V.shape[-2:]
    d = W.shape[-1]
    tol = _default_rtol(m, d, _out_dtype(V.dtype, W.dtype), rtol)
    # contiguous: values arrive as a transposed view of the projection's (B, m, H, d_v) output, and
    # batched float64 GEMMs on that layout run ~5x slower than on a contiguous copy (same copy cost)
    V64 = V.to(torch.float64, memory_format=torch.contiguous_format)
    if key_mask is not None:
        V64 = _mask_rows(V64, key_mask)
    _check_finite(V64, "V")
    W64 = W.to(device=V.device, dtype=torch.float64)
    _check_finite(W64, "out_proj_blocks")
    if tol >= 1e-6 and V64.dim() >= 3 and V64.numel() > 0:
        U, rank = _certified_basis(V64, W64, key_mask, tol)
    else:
        U, rank = _basis_from_values_exact(V64, W64, tol)
    return _finish_basis(U, rank, key_mask, tol, with_ones)


def _full_rank_certified(S: torch.Tensor, real: torch.Tensor, tol: float) -> torch.Tensor:
    """True where the PSD Gram matrix ``S`` (..., k, k) of a matrix ``X`` certainly has every
    singular value of ``X`` above ``tol * s_max``: Cholesky of ``S - 2 tol^2 tr(S) I`` succeeds
    (``tr(S) >= s_max^2``; the factor 2 keeps float64 round-off, ~1e-16 tr(S), far from the
    decision since ``tol^2 >= 1e-12``). ``real`` (..., k) bool: padding rows/cols of ``S`` are
    zero and get a unit diagonal instead."""
    tr = torch.diagonal(S, dim1=-2, dim2=-1).sum(-1)  # (...)
    shift = (2 * tol * tol) * tr[..., None] * real.to(S.dtype)
    # S - diag(shift) + diag(~real), on the diagonal only (diag_embed builds two k x k batches)
    G = S.clone()
    G.diagonal(dim1=-2, dim2=-1).sub_(shift).add_((~real).to(S.dtype))
    _, info = torch.linalg.cholesky_ex(G)
    return (info == 0) & (tr > 0)


def _certified_basis(V64: torch.Tensor, W64: torch.Tensor, key_mask: torch.Tensor | None, tol: float):
    """The basis of :func:`_basis_from_values_exact`, certified cheaply where possible.

    Per example (all heads together), with ``m_r`` real keys and ``W W^T`` (H, d_v, d_v):

    * ``m_r >= d_v``: ``V = Q R`` (CholeskyQR2); ``T = Q (R W)`` so the singular values of ``T``
      are those of ``R W``. If the Gram matrix ``R W W^T R^T`` certifies full rank d_v
      (:func:`_full_rank_certified`), span(T) = span(Q) and ``U_r = Q``.
    * ``m_r < d_v``: the real rows ``T_r`` (m_r x d); if ``T_r T_r^T = V_r W W^T V_r^T`` certifies
      full row rank m_r, span(T) is every vector over the real keys and ``U_r`` is the identity
      on them (effective attention then equals the attention: Brunner et al.'s m <= d_h case).
    * examples where a head is not certified: the exact route, for those examples only.
    """
    lead, H, m, d_v = V64.shape[:-3], V64.shape[-3], V64.shape[-2], V64.shape[-1]
    if key_mask is not None:
        km = key_mask[..., 0, :]  # drop the head dim added by the callers
        lead = torch.broadcast_shapes(lead, km.shape[:-1])
        km = torch.broadcast_to(km, lead + (m,)).reshape(-1, m)
    else:
        km = torch.ones(math.prod(lead), m, dtype=torch.bool, device=V64.device)
    V = torch.broadcast_to(V64, lead + (H, m, d_v)).reshape(-1, H, m, d_v)
    N = V.shape[0]
    WWt = W64 @ W64.transpose(-1, -2)  # (H, d_v, d_v)
    m_real = km.sum(-1)  # (N,)
    ok = torch.zeros(N, dtype=torch.bool, device=V.device)
    Q_full = None

    tall = (m_real >= d_v).nonzero().flatten()
    if tall.numel():
        Q_full, R = _thin_qr(V if tall.numel() == N else V[tall])  # (nt, H, m, d_v), (nt, H, d_v, d_v)
        S = R @ WWt @ R.transpose(-1, -2)
        real = torch.ones(S.shape[:-1], dtype=torch.bool, device=V.device)
        ok[tall] = _full_rank_certified(S, real, tol).all(-1)

    short = (m_real < d_v).nonzero().flatten()
    pos = k = None
    if short.numel():
        k = int(m_real[short].max())
        pos = torch.argsort((~km[short]).to(torch.int8), dim=-1, stable=True)[:, :k]  # real positions first
        valid = torch.arange(k, device=V.device)[None, :] < m_real[short][:, None]  # (ns, k)
        Vr = torch.gather(V[short], -2, pos[:, None, :, None].expand(-1, H, k, d_v))
        Vr = Vr * valid[:, None, :, None].to(Vr.dtype)
        K = Vr @ WWt @ Vr.transpose(-1, -2)  # (ns, H, k, k)
        ok[short] = _full_rank_certified(K, valid[:, None, :].expand(-1, H, -1), tol).all(-1) & (m_real[short] > 0)

    rank = torch.zeros(N, H, dtype=torch.long, device=V.device)
    rank[tall] = d_v
    if short.numel():
        rank[short] = m_real[short][:, None]
    rest = (~ok).nonzero().flatten()
    U_rest = None
    if rest.numel():
        U_rest, rank_rest = _basis_from_values_exact(V[rest], W64, tol)
        rank[rest] = rank_rest
    r_max = int(rank.max()) if rank.numel() else 0
    if tall.numel() == N and r_max == d_v and bool(ok.all()):  # the usual case: every example certified tall
        return Q_full.reshape(lead + (H, m, d_v)), rank.reshape(lead + (H,))
    U = torch.zeros(N, H, m, r_max, dtype=V.dtype, device=V.device)
    if tall.numel():
        sel = ok[tall]
        if bool(sel.any()):  # certified: rank d_v, so r_max >= d_v
            U[tall[sel], :, :, :d_v] = Q_full[sel]
    if short.numel():
        sel = ok[short]
        if bool(sel.any()):
            rows = short[sel]
            E = torch.zeros(rows.numel(), m, k, dtype=V.dtype, device=V.device)
            v = (torch.arange(k, device=V.device)[None, :] < m_real[rows][:, None]).to(V.dtype)
            E.scatter_(1, pos[sel][:, None, :], v[:, None, :])  # E[b, pos[b, c], c] = 1 for the real keys
            U[rows, :, :, :k] = E[:, None]
    if U_rest is not None:
        U[rest, :, :, : U_rest.shape[-1]] = U_rest[..., :r_max]
    return U.reshape(lead + (H, m, r_max)), rank.reshape(lead + (H,))


def _basis_from_values_exact(V64, W64, tol):
    """Exact thin SVD of T = V W without forming T.

    V = Q R (reduced QR, Q: m x k1) and W^T = Q_w R_w (Q_w: d x k_w), so
    T = Q (R R_w^T) Q_w^T with orthonormal Q and Q_w^T: the left singular vectors of T are
    Q U_s and its singular values those of the small k1 x k_w matrix R R_w^T = U_s S V_s^T.
    All in float64; ``V64`` has its padding rows zeroed. Returns ``(U_r, rank)``.
    """
    m, d_v = V64.shape[-2:]
    if m >= d_v:
        Q, R = _thin_qr(V64)  # (..., H, m, d_v), (..., H, d_v, d_v)
    else:
        Q, R = torch.linalg.qr(V64, mode="reduced")  # (..., H, m, m), (..., H, m, d_v)
    _, Rw = torch.linalg.qr(W64.transpose(-1, -2), mode="reduced")  # (H, k_w, d_v)
    M = R @ Rw.transpose(-1, -2)  # (..., H, k1, k_w)
    k1, k2 = M.shape[-2], min(M.shape[-2:])
    S = torch.linalg.svdvals(M)
    rank = ((S > tol * S[..., :1]) & (S > 0)).sum(-1)
    if k1 == k2 and bool((rank == k1).all()):
        U = Q  # full rank everywhere (the usual case): span(Q U_s) = span(Q), no vectors needed
    else:
        Us, S, _ = torch.linalg.svd(M, full_matrices=False)  # (..., H, k1, k2)
        U, rank = _truncate(Us, S, tol)  # truncate in the small space, then lift
        U = Q @ U
    return U, rank


def _check_values(V: torch.Tensor, out_proj_blocks: torch.Tensor) -> int:
    """Check V (..., H, m, d_v) against out_proj_blocks (H, d_v, d); returns H."""
    _check_tensor(V, "V", 3, "(..., H, m, d_v)")
    _check_tensor(out_proj_blocks, "out_proj_blocks", 3, "(H, d_v, d)")
    if out_proj_blocks.ndim != 3:
        raise ValueError(f"out_proj_blocks must have shape (H, d_v, d), got {tuple(out_proj_blocks.shape)}")
    H, d_v, _ = out_proj_blocks.shape
    if V.shape[-3] != H or V.shape[-1] != d_v:
        raise ValueError(f"V {tuple(V.shape)} must be (..., H={H}, m, d_v={d_v}) to match out_proj_blocks {tuple(out_proj_blocks.shape)}")
    return H


def value_space_basis(
    V: torch.Tensor,
    out_proj_blocks: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    rtol: float | None = None,
    with_ones: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis ``U_r`` of the column space of ``T = V W_O`` per head, and its rank.

    The basis :func:`effective_attention_from_values` projects onto (same formulas, QRs of ``V``
    and ``W_O^T`` and a d_v x d_v SVD, float64), returned so that it can be computed once and
    reused: ``A_eff = effective_attention_from_basis(A, U_r)`` for any attention over the same
    keys (the full matrix, or only some query rows).

    Args:
        V: ``(..., H, m, d_v)`` value vectors per head.
        out_proj_blocks: ``(H, d_v, d)`` output projection split per head.
        key_mask: ``(..., m)`` bool without the head dim; masked keys' rows of ``U_r`` are 0.
        rtol, with_ones: as ``rtol`` / ``preserve_row_sums`` of :func:`effective_attention`.

    Returns:
        ``(U_r, rank)``: ``(..., H, m, r_max)`` float64 (zero columns beyond each rank) and
        ``(..., H)`` long.
    """
    _check_values(V, out_proj_blocks)
    m = V.shape[-2]
    key_mask = _check_key_mask(key_mask, m)
    if key_mask is not None:
        _broadcast({"V": V.shape[:-3], "key_mask": key_mask.shape[:-1]},
                   "V (..., H, m, d_v), key_mask (..., m) without the head dim")
        key_mask = key_mask[..., None, :]
    return _basis_from_values(V, out_proj_blocks, key_mask, rtol, with_ones)

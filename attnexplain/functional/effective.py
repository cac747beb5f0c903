"""Effective attention (Brunner et al., ICLR 2020, "On Identifiability in Transformers").

A head adds ``A T`` to the residual stream, with ``T = V_h W_O^h`` (m x d, rank <= d_h). Any
vector ``x`` with ``x^T T = 0`` (the left null space LN(T), dimension >= m - rank(T)) can be
added to a row of ``A`` without changing the head's output, so ``A`` is not identifiable once
``m > d_h``. Effective attention removes that part::

    A_eff = A - Proj_LN(T)(A) = A U_r U_r^T,      T = U S V^T (thin SVD),
    r = #{ s_i > rtol * s_max },                  rtol = max(m, d) * eps(dtype T was computed in)

Everything here is a pure function on tensors, batched over arbitrary leading dimensions
(examples, layers, heads), device-agnostic (CPU or GPU), and never builds the m x m projector:
``A_eff = (A @ U_r) @ U_r^T`` costs O(n m r).

Precision: the SVD always runs in float64, but the rank tolerance follows the dtype ``T`` was
*computed* in. A float32 ``T`` has null-direction singular values ~1e-7 * s_max; a float64
tolerance would count them as rank, the null space would vanish and ``A_eff == A`` silently.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "value_transforms",
    "effective_attention",
    "effective_attention_from_values",
    "null_attention",
    "effective_rank",
    "column_space_basis",
    "value_space_basis",
    "effective_attention_from_basis",
]

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# validation helpers (shared by the other functional modules)
# --------------------------------------------------------------------------------------------


def _check_tensor(x, name: str, min_ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}; "
            f"convert it with {name}.float()"
        )
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have shape {layout} (at least {min_ndim} dims), got shape {tuple(x.shape)}")
    return x


def _check_finite(x: torch.Tensor, name: str, hint: str = "") -> None:
    # a sum is finite iff no entry is NaN/inf, unless it overflows: then check entry-wise
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        parts = [f"{name} contains {bad} non-finite value(s) (NaN or inf).", hint,
                 "Remove them, or pass key_mask so that padded positions are ignored."]
        raise ValueError(" ".join(p for p in parts if p))


def _check_key_mask(key_mask, m: int, name: str = "key_mask") -> torch.Tensor | None:
    """Validate a key mask (..., m) bool, True = real key."""
    if key_mask is None:
        return None
    if not isinstance(key_mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor (..., m) with True = real key, got {type(key_mask).__name__}")
    if key_mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor (True = real key), got {key_mask.dtype}; "
            f"for a Hugging Face attention_mask pass attention_mask.bool()"
        )
    if key_mask.ndim < 1 or key_mask.shape[-1] != m:
        raise ValueError(f"{name} must have shape (..., m) with m = {m} keys, got shape {tuple(key_mask.shape)}")
    return key_mask


def _broadcast(shapes: dict[str, tuple[int, ...]], what: str) -> tuple[int, ...]:
    try:
        return tuple(torch.broadcast_shapes(*shapes.values()))
    except RuntimeError:
        desc = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
        raise ValueError(
            f"leading (batch) dimensions do not broadcast: {desc}. They are aligned from the right "
            f"({what}); e.g. for attention (B, H, n, m) pass a key mask of shape (B, 1, m), "
            f"i.e. key_mask[:, None, :]"
        ) from None


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def _default_rtol(m: int, d: int, dtype: torch.dtype, rtol: float | None) -> float:
    if rtol is not None:
        rtol = float(rtol)
        if not (0.0 <= rtol < 1.0) or math.isnan(rtol):
            raise ValueError(f"rtol must be in [0, 1), got {rtol}")
        return rtol
    tol = max(m, d) * _eps(dtype)
    if tol >= 1.0:
        raise ValueError(
            f"the default rank tolerance max(m, d) * eps({dtype}) = {tol:.3g} is >= 1 and would discard "
            f"every direction of T; compute T in float32, or pass rtol explicitly (e.g. rtol=1e-2)"
        )
    return tol


def _mask_rows(x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the rows (dim -2) of x at masked keys (also clears NaN/inf there)."""
    if key_mask is None:
        return x
    return torch.where(key_mask[..., :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _mask_cols(x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the columns (dim -1) of x at masked keys (also clears NaN/inf there)."""
    if key_mask is None:
        return x
    return torch.where(key_mask[..., None, :], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_attention(A, name: str = "A") -> torch.Tensor:
    return _check_tensor(A, name, 2, "(..., n, m)")


def _check_stochastic(A: torch.Tensor, key_mask: torch.Tensor | None, atol: float) -> None:
    sums = A.sum(-1, dtype=torch.float64) if A.dtype != torch.float64 else A.sum(-1)
    if key_mask is not None:
        # a query row whose keys are all masked has nothing to be stochastic over
        any_real = key_mask.any(-1, keepdim=True)
        sums = torch.where(any_real, sums, torch.ones((), dtype=sums.dtype, device=sums.device))
    dev = (sums - 1).abs()
    if bool((dev > atol).any()):
        worst = float(dev.max())
        raise ValueError(
            f"check_stochastic: rows of A (over unmasked keys) must sum to 1 within {atol:g}, but a row is "
            f"off by {worst:.3g}. Pass attention probabilities (after softmax), the right key_mask, or "
            f"check_stochastic=False to project arbitrary rows"
        )


def _stochastic_atol(check, dtype: torch.dtype) -> float | None:
    if check is False or check is None:
        return None
    if check is True:
        return 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    return float(check)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are projected in float32)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _out_dtype(*dtypes: torch.dtype) -> torch.dtype:
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


# --------------------------------------------------------------------------------------------
# value transforms
# --------------------------------------------------------------------------------------------


def value_transforms(values: torch.Tensor, out_proj_blocks: torch.Tensor) -> torch.Tensor:
    """Per-head value transforms ``T^h = V_h W_O^h`` (Kobayashi et al. EMNLP 2020: f^h(x_j)).

    Formula: ``T^h_j = f^h(x_j) = (x_j W_V^h + b_V^h) W_O^h``, the vector head ``h`` adds to the
    residual stream per unit of attention to key ``j`` (Kobayashi et al., EMNLP 2020, "Attention
    is Not Only a Weight"; Brunner et al., ICLR 2020).

    Args:
        values: ``(..., H, m, d_v)`` per-head value vectors (bias included).
        out_proj_blocks: ``(H, d_v, d)`` the output projection split per head (for a
            ``nn.Linear`` output projection: ``weight.T.reshape(H, d_v, d)``).

    Returns:
        ``(..., H, m, d)``.
    """
    _check_tensor(values, "values", 3, "(..., H, m, d_v)")
    _check_tensor(out_proj_blocks, "out_proj_blocks", 3, "(H, d_v, d)")
    if out_proj_blocks.ndim != 3:
        raise ValueError(f"out_proj_blocks must have shape (H, d_v, d), got {tuple(out_proj_blocks.shape)}")
    H, d_v, _ = out_proj_blocks.shape
    if values.shape[-3] != H or values.shape[-1] != d_v:
        raise ValueError(
            f"values {tuple(values.shape)} must be (..., H={H}, m, d_v={d_v}) to match out_proj_blocks "
            f"{tuple(out_proj_blocks.shape)}; split the output projection as weight.T.reshape(H, d_v, d)"
        )
    dtype = _out_dtype(values.dtype, out_proj_blocks.dtype)
    return values.to(dtype) @ out_proj_blocks.to(device=values.device, dtype=dtype)


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
    G = S - torch.diag_embed(shift) + torch.diag_embed((~real).to(S.dtype))
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


# --------------------------------------------------------------------------------------------
# effective attention
# --------------------------------------------------------------------------------------------


def _prepare_A(A, key_mask, check_stochastic):
    if key_mask is not None:
        A = _mask_cols(A, key_mask)  # also clears NaN/inf at padded keys
    atol = _stochastic_atol(check_stochastic, A.dtype)
    if atol is not None:
        _check_finite(A, "A")
        _check_stochastic(A, key_mask, atol)
    return A


def _project(A: torch.Tensor, U: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """(A @ U) @ U^T in float32 (float64 if an input is float64); U's masked rows are zero, so
    masked columns of the result are exactly 0."""
    cdt = _compute_dtype(A.dtype, out_dtype)
    Uc = U.to(cdt)
    Ac = A.to(cdt)
    if Uc.shape[-1] == 0:
        _check_finite(Ac, "A")
        shape = torch.broadcast_shapes(Ac.shape[:-2], Uc.shape[:-2]) + Ac.shape[-2:]
        return torch.zeros(shape, dtype=out_dtype, device=A.device)
    AU = Ac @ Uc
    # NaN/inf in A propagate into A @ U (n x r, cheaper to scan than A itself)
    if not bool(torch.isfinite(AU.sum())):
        _check_finite(Ac, "A")  # names and counts the bad entries of A
        _check_finite(AU, "A @ U_r", "It overflowed in the projection; pass A in float32/float64.")
    return (AU @ Uc.transpose(-1, -2)).to(out_dtype)


def effective_attention(
    A: torch.Tensor,
    T: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    rtol: float | None = None,
    preserve_row_sums: bool = False,
    check_stochastic: bool | float = False,
) -> torch.Tensor:
    """Effective attention ``A_eff = A U_r U_r^T`` (Brunner et al., ICLR 2020).

    Formula: with ``T = U S V^T`` the thin SVD of the value transforms (float64) and ``U_r`` the
    left singular vectors with ``s_i > rtol * s_max``::

        A_eff = A - Proj_LN(T)(A) = (A @ U_r) @ U_r^T           (never forms the m x m projector)

    so ``A_eff T == A T`` (the head's output is unchanged) and ``A_eff == A`` whenever
    ``rank(T) == m`` (e.g. ``m <= d_h``). Rows of ``A_eff`` need not sum to 1 and can be negative.

    Paper: G. Brunner, Y. Liu, D. Pascual, O. Richter, M. Ciaramita, R. Wattenhofer,
    "On Identifiability in Transformers", ICLR 2020.

    Args:
        A: ``(..., n, m)`` attention (n queries, m keys; cross-attention n != m is fine).
        T: ``(..., m, d)`` value transforms ``V_h W_O^h`` (see :func:`value_transforms`); leading
            dims broadcast with ``A``'s (right-aligned).
        key_mask: ``(..., m)`` bool, True = real key. Masked keys' rows of ``T`` are excluded
            (zeroed, NaN there is ignored) and the masked columns of ``A_eff`` are exactly 0;
            ``A_eff T == A T`` then holds over the real keys. For ``A`` of shape ``(B, H, n, m)``
            pass ``mask[:, None, :]``.
        rtol: rank tolerance relative to the largest singular value. Default
            ``max(m, d) * eps(T.dtype)``: the precision ``T`` was *computed* in (float32 -> 1.19e-7),
            not float64, or float32 null directions count as rank and ``A_eff == A`` silently.
        preserve_row_sums: project onto the column space of ``[T, 1]`` instead (the all-ones
            vector over real keys is added to the basis): keeps ``A T`` and the row sums of ``A``.
        check_stochastic: if True (or a float tolerance), raise when a row of ``A`` over the
            unmasked keys does not sum to 1 within 1e-4 (1e-2 for 16-bit ``A``). By default any
            rows are accepted and simply projected (the map is linear: row sums of ``A_eff`` are
            those of the projected rows).

    Returns:
        ``(..., n, m)`` in ``promote_types(A.dtype, T.dtype)``. A zero (rank-0) ``T`` gives
        ``A_eff = 0`` (everything is in the null space; with ``preserve_row_sums`` only the
        row-sum direction is kept).

    Raises:
        ValueError: non-finite values, shape mismatches, or leading dims that do not broadcast.
    """
    _check_attention(A)
    _check_tensor(T, "T", 2, "(..., m, d)")
    n, m = A.shape[-2:]
    if T.shape[-2] != m:
        raise ValueError(
            f"A {tuple(A.shape)} has m = {m} keys (last dim) but T {tuple(T.shape)} has {T.shape[-2]} rows "
            f"(dim -2): T must be (..., m, d) with one row per key (is T transposed, or missing the head dim?)"
        )
    key_mask = _check_key_mask(key_mask, m)
    shapes = {"A": A.shape[:-2], "T": T.shape[:-2]}
    if key_mask is not None:
        shapes["key_mask"] = key_mask.shape[:-1]
    _broadcast(shapes, "A (..., n, m), T (..., m, d), key_mask (..., m)")
    A = _prepare_A(A, key_mask, check_stochastic)
    U, _ = column_space_basis(T, key_mask=key_mask, rtol=rtol, with_ones=preserve_row_sums)
    return _project(A, U, _out_dtype(A.dtype, T.dtype))


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


def effective_attention_from_values(
    A: torch.Tensor,
    V: torch.Tensor,
    out_proj_blocks: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    rtol: float | None = None,
    preserve_row_sums: bool = False,
    check_stochastic: bool | float = False,
) -> torch.Tensor:
    """Effective attention from per-head values and output-projection blocks (fast, exact).

    Same result as ``effective_attention(A, value_transforms(V, out_proj_blocks))`` (Brunner et al.,
    ICLR 2020), computed without the SVD of the m x d matrix ``T = V W_O``::

        V = Q R,   W_O^T = Q_w R_w   (reduced QRs)   =>   T = Q (R R_w^T) Q_w^T
        R R_w^T = U_s S V_s^T   (d_v x d_v SVD)        =>   T = (Q U_s) S (Q_w V_s)^T

    so ``U = Q U_s`` are exactly the left singular vectors of ``T`` (and ``S`` its singular
    values) and ``A_eff = (A @ U_r) @ U_r^T``. The basis costs O(m d_v^2 + d_v^3) per head
    instead of O(m d min(m, d)) for the SVD of ``T``; all factorisations run in float64 (the
    QR of ``V`` by CholeskyQR2 with a Householder fallback for nearly rank-deficient ``V``).
    When ``T`` has full rank d_v everywhere (the usual case), ``U_r`` spans the same space as
    ``Q`` and only singular values are computed. The rank tolerance defaults to ``max(m, d) * eps(dtype of V, W_O)``.

    Args:
        A: ``(..., H, n, m)``.
        V: ``(..., H, m, d_v)`` value vectors per head (bias included).
        out_proj_blocks: ``(H, d_v, d)`` the output projection split per head.
        key_mask: ``(..., m)`` bool, True = real key, **without** the head dim (``(B, m)`` for
            ``A`` of shape ``(B, H, n, m)``); otherwise as :func:`effective_attention`.
        rtol, preserve_row_sums, check_stochastic: as :func:`effective_attention`.

    Returns:
        ``(..., H, n, m)`` in ``promote_types(A.dtype, V.dtype, out_proj_blocks.dtype)``.
    """
    _check_tensor(A, "A", 3, "(..., H, n, m)")
    H = _check_values(V, out_proj_blocks)
    n, m = A.shape[-2:]
    if V.shape[-2] != m:
        raise ValueError(f"A {tuple(A.shape)} has m = {m} keys (last dim) but V {tuple(V.shape)} has {V.shape[-2]} rows (dim -2)")
    if A.shape[-3] != H:
        raise ValueError(f"A {tuple(A.shape)} must be (..., H={H}, n, m)")
    key_mask = _check_key_mask(key_mask, m)
    shapes = {"A": A.shape[:-3], "V": V.shape[:-3]}
    if key_mask is not None:
        shapes["key_mask"] = key_mask.shape[:-1]
        key_mask = key_mask[..., None, :]  # add the head dim
    _broadcast(shapes, "A (..., H, n, m), V (..., H, m, d_v), key_mask (..., m) without the head dim")
    A = _prepare_A(A, key_mask, check_stochastic)
    U, _ = _basis_from_values(V, out_proj_blocks, key_mask, rtol, preserve_row_sums)
    return _project(A, U, _out_dtype(A.dtype, V.dtype, out_proj_blocks.dtype))


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


def effective_attention_from_basis(A: torch.Tensor, U: torch.Tensor, *, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``A_eff = (A @ U_r) @ U_r^T`` for a precomputed basis (Brunner et al., ICLR 2020).

    ``U_r`` from :func:`value_space_basis` or :func:`column_space_basis` (orthonormal columns,
    zero rows at masked keys); ``A``: ``(..., n, m)`` over the same ``m`` keys, leading dims
    broadcasting with ``U``'s. ``key_mask`` ``(..., m)`` (``A``'s leading dims without the query
    dim, e.g. ``(B, 1, m)`` for ``A`` of shape ``(B, H, n, m)``) zeroes ``A``'s masked columns
    first, which also clears NaN there.

    Returns:
        ``(..., n, m)`` in ``promote_types(A.dtype, float32)`` (projected in float64 for a
        float64 ``A``, else float32).
    """
    _check_attention(A)
    _check_tensor(U, "U", 2, "(..., m, r)")
    if U.shape[-2] != A.shape[-1]:
        raise ValueError(f"A {tuple(A.shape)} has m = {A.shape[-1]} keys but the basis U {tuple(U.shape)} has {U.shape[-2]} rows")
    key_mask = _check_key_mask(key_mask, A.shape[-1])
    A = _mask_cols(A, key_mask)
    return _project(A, U, _out_dtype(A.dtype, torch.float32))


def null_attention(A: torch.Tensor, T: torch.Tensor, **kwargs) -> torch.Tensor:
    """The unidentifiable part ``A - A_eff = A (I - U_r U_r^T) = Proj_LN(T)(A)`` (Brunner et al., ICLR 2020).

    Its rows lie in the left null space of ``T``: ``(A - A_eff) T == 0``. Takes the keyword
    arguments of :func:`effective_attention`; masked key columns are 0.
    """
    A_eff = effective_attention(A, T, **kwargs)
    key_mask = kwargs.get("key_mask")
    A_c = _mask_cols(A, key_mask).to(A_eff.dtype)
    return A_c - A_eff


def effective_rank(
    T: torch.Tensor, rtol: float | None = None, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Numerical rank ``r = #{s_i > rtol * s_max}`` of ``T`` (..., m, d) -> LongTensor (...).

    The dimension of the space effective attention keeps (Brunner et al., ICLR 2020); the left
    null space has dimension ``m_real - r``. Default ``rtol = max(m, d) * eps(T.dtype)``; masked
    keys' rows are excluded. A zero ``T`` has rank 0.
    """
    _, rank = column_space_basis(T, key_mask=key_mask, rtol=rtol)
    return rank

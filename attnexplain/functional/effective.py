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

from ._validation import (  # noqa: F401  (re-exported for the other functional modules)
    _broadcast,
    _check_attention,
    _check_finite,
    _check_key_mask,
    _check_stochastic,
    _check_tensor,
    _compute_dtype,
    _default_rtol,
    _eps,
    _mask_cols,
    _mask_rows,
    _out_dtype,
    _stochastic_atol,
    _FLOAT_TYPES,
)
from .value_space import (
    _basis_from_values,
    _check_values,
    column_space_basis,
    value_space_basis,
)


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


def _project(A: torch.Tensor, U: torch.Tensor, out_dtype: torch.dtype, on_nonfinite=None) -> torch.Tensor:
    """(A @ U) @ U^T in float32 (float64 if an input is float64); U's masked rows are zero, so
    masked columns of the result are exactly 0. ``on_nonfinite``: called (and its result
    returned) instead of raising when ``A @ U`` is not finite."""
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
        if on_nonfinite is not None:
            return on_nonfinite()
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


def effective_attention_from_basis(A: torch.Tensor, U: torch.Tensor, *, key_mask: torch.Tensor | None = None,
                                   rows_masked: bool = False) -> torch.Tensor:
    """``A_eff = (A @ U_r) @ U_r^T`` for a precomputed basis (Brunner et al., ICLR 2020).

    ``U_r`` from :func:`value_space_basis` or :func:`column_space_basis` (orthonormal columns,
    zero rows at masked keys); ``A``: ``(..., n, m)`` over the same ``m`` keys, leading dims
    broadcasting with ``U``'s. ``key_mask`` ``(..., m)`` (``A``'s leading dims without the query
    dim, e.g. ``(B, 1, m)`` for ``A`` of shape ``(B, H, n, m)``) zeroes ``A``'s masked columns
    first, which also clears NaN there. ``rows_masked=True`` says ``U``'s rows at the masked keys
    are already zero (as :func:`value_space_basis` / :func:`column_space_basis` return them for the
    same ``key_mask``): ``A``'s masked columns then add exact zeros, so they are cleared only if
    ``A @ U`` is not finite (same result, one pass over ``A`` fewer).

    Returns:
        ``(..., n, m)`` in ``promote_types(A.dtype, float32)`` (projected in float64 for a
        float64 ``A``, else float32).
    """
    _check_attention(A)
    _check_tensor(U, "U", 2, "(..., m, r)")
    if U.shape[-2] != A.shape[-1]:
        raise ValueError(f"A {tuple(A.shape)} has m = {A.shape[-1]} keys but the basis U {tuple(U.shape)} has {U.shape[-2]} rows")
    key_mask = _check_key_mask(key_mask, A.shape[-1])
    out_dtype = _out_dtype(A.dtype, torch.float32)
    if rows_masked and key_mask is not None:
        return _project(A, U, out_dtype, on_nonfinite=lambda: _project(_mask_cols(A, key_mask), U, out_dtype))
    return _project(_mask_cols(A, key_mask), U, out_dtype)


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

"""Attention as a probability distribution over the keys that matter for the output.

The idea (efficient attention "isolates the effective components of attention matrices, is a
probability distribution, is effectively calculable, and gives minimally necessary and
sufficient conditions for the output") is from Naim & Asher, ECAI 2024. Their exact construction
was not available to us; this module is **the project's own formulation** with those properties.
Per row ``a`` of ``A`` (over the real keys), with ``T`` the head's value transforms::

    feasible set  F(a) = { a' : a' >= 0, sum(a') = 1, a'^T T = a^T T }     (a itself is in F(a))

    mode="nearest":   a' = argmin_{a' in F(a)} || a' - a_eff ||^2          (a convex QP)
    mode="sparsest":  a' = a vertex of F(a)  (a basic feasible solution of the LP
                      max a^T a' s.t. a' in F(a)): at most rank(T) + 1 non-zeros,
                      a minimal sufficient key set for the head's output.

Solvers (scipy, CPU): the equality system is first reduced to its independent rows with an
orthonormal basis ``W`` of span([U_r, 1]) (U_r: left singular vectors of T, as in effective
attention), so ``a' in F(a)  <=>  W^T a' = W^T a, a' >= 0``.

* nearest: with ``x0 = a_eff + W W^T (a - a_eff)`` (the row-sum-preserving effective attention)
  and ``N`` an orthonormal basis of the complement of ``W``, every feasible point is
  ``x0 + N y`` and ``||a' - a_eff||^2 = ||y||^2 + const``: a least-distance problem
  ``min ||y|| s.t. N y >= -x0``, solved exactly by Lawson & Hanson's LDP algorithm
  (one ``scipy.optimize.nnls``; "Solving Least Squares Problems", 1974, ch. 23).
* sparsest: ``scipy.optimize.linprog(method="highs-ds")`` (dual simplex returns a vertex); a
  purification step then guarantees a basic solution (support <= rank(W) = rank(T) + 1).

Both cost milliseconds per row, so :func:`attention_distribution` takes a ``rows`` selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from ._validation import (
    _broadcast,
    _check_attention,
    _check_finite,
    _check_key_mask,
    _check_tensor,
    _mask_cols,
    _mask_rows,
    _out_dtype,
)
from .value_space import column_space_basis

__all__ = ["DistributionResult", "attention_distribution"]

_MODES = ("nearest", "sparsest")


@dataclass
class DistributionResult:
    """Result of :func:`attention_distribution`.

    Attributes:
        probs: ``(..., k, m)`` the distributions a' (k = number of selected rows), 0 at masked keys.
        support_size: ``(..., k)`` long, number of entries of a' greater than ``tol``.
        residual: ``(..., k)`` ``max_c |((a' - a)^T T)_c|``, how well the head output is kept.
        mode: ``"nearest"`` or ``"sparsest"``.
        rows: the query rows solved (indices into dim -2 of ``A``).
        rank: ``(...)`` long, rank of ``T`` used (support of a vertex is <= rank + 1).
    """

    probs: torch.Tensor
    support_size: torch.Tensor
    residual: torch.Tensor
    mode: str
    rows: list[int]
    rank: torch.Tensor


def _row_basis(Ub: np.ndarray) -> np.ndarray:
    """Orthonormal basis W of span([Ub, 1]) (Ub orthonormal columns, zero columns dropped)."""
    Ub = Ub[:, np.linalg.norm(Ub, axis=0) > 0.5]
    m = Ub.shape[0]
    ones = np.ones(m)
    u = ones.copy()
    for _ in range(2):
        u = u - Ub @ (Ub.T @ u)
    nu = np.linalg.norm(u)
    if nu > 1e-10 * np.sqrt(m):
        Ub = np.concatenate([Ub, (u / nu)[:, None]], axis=1)
    return Ub


def _ldp(G: np.ndarray, h: np.ndarray) -> np.ndarray:
    """min ||y|| s.t. G y >= h (Lawson & Hanson 1974, Algorithm LDP, via NNLS)."""
    mg, k = G.shape
    E = np.concatenate([G.T, h[None, :]], axis=0)  # (k+1, mg)
    f = np.zeros(k + 1)
    f[-1] = 1.0
    u, _ = scipy.optimize.nnls(E, f, maxiter=50 * (mg + k + 1))
    r = E @ u - f
    if np.linalg.norm(r) < 1e-12:
        raise RuntimeError("attention_distribution: constraints are incompatible (should not happen for a row of A)")
    return -r[:k] / r[k]


def _purify(x: np.ndarray, Wt: np.ndarray, tol: float) -> np.ndarray:
    """Move a feasible x (Wt x = b, x >= 0) to a basic feasible solution with the same Wt x.

    While the columns of Wt on the support are dependent, step along a null direction until a
    support entry hits zero (the classic constructive proof of Caratheodory's theorem).
    """
    x = x.copy()
    x[x < tol] = 0.0
    rank = Wt.shape[0]  # W has orthonormal columns
    for _ in range(x.size):
        S = np.flatnonzero(x > 0)
        if S.size <= rank:
            break
        _, s, vh = np.linalg.svd(Wt[:, S], full_matrices=True)
        if int((s > 1e-10 * max(s.max(initial=0.0), 1.0)).sum()) >= S.size:
            break
        z = vh[-1]  # Wt[:, S] @ z ~ 0
        if not (z < 0).any():
            z = -z
        xs = x[S]
        ratios = np.where(z < 0, xs / np.where(z < 0, -z, 1.0), np.inf)
        j = int(np.argmin(ratios))
        xs = xs + ratios[j] * z
        xs[j] = 0.0
        x[S] = xs
        x[x < tol] = 0.0
    return x


def _normalise_row(a: np.ndarray, row: int) -> np.ndarray:
    if a.size and a.min() < -1e-3:
        raise ValueError(
            f"attention_distribution: row {row} of A has a negative entry ({a.min():.3g}); rows must be "
            "attention probabilities (>= 0, summing to 1 over the real keys)"
        )
    a = np.clip(a, 0.0, None)
    s = a.sum()
    if not (abs(s - 1.0) <= 1e-3):
        raise ValueError(
            f"attention_distribution: row {row} of A sums to {s:.6g} over the real keys, not 1; pass "
            "attention probabilities (after softmax) and the right key_mask"
        )
    return a / s


def _resolve_rows(rows, n: int) -> list[int]:
    if rows is None:
        return list(range(n))
    if isinstance(rows, int):
        rows = [rows]
    if isinstance(rows, torch.Tensor):
        rows = rows.reshape(-1).tolist()
    out = []
    for r in rows:
        r = int(r)
        if not -n <= r < n:
            raise ValueError(f"rows: index {r} out of range for n = {n} query rows")
        out.append(r % n)
    return out


def attention_distribution(
    A: torch.Tensor,
    T: torch.Tensor,
    *,
    mode: str = "nearest",
    key_mask: torch.Tensor | None = None,
    tol: float = 1e-6,
    A_eff: torch.Tensor | None = None,
    rows: int | Sequence[int] | torch.Tensor | None = None,
    rtol: float | None = None,
) -> DistributionResult:
    """Attention as a distribution that keeps the head's output (after Naim & Asher, ECAI 2024).

    Project's own formulation (see the module docstring): per selected row ``a`` of ``A``::

        F(a) = { a' >= 0, sum(a') = 1, a'^T T = a^T T }
        nearest:  argmin_{a' in F(a)} ||a' - a_eff||^2    (LDP / NNLS, exact)
        sparsest: a vertex of F(a) (LP, HiGHS dual simplex, + purification): <= rank(T)+1 non-zeros

    Idea: N. Naim, N. Asher, "Efficient attention", ECAI 2024 (construction here is ours).
    ``a'^T T = a^T T`` is imposed as ``a'^T U_r = a^T U_r`` with ``U_r`` the column-space basis of
    effective attention (Brunner et al., ICLR 2020), same ``rtol``.

    Args:
        A: ``(..., n, m)`` attention probabilities (rows over real keys sum to 1 within 1e-3;
            they are renormalised exactly before solving).
        T: ``(..., m, d)`` value transforms; leading dims broadcast with ``A``'s.
        mode: ``"nearest"`` or ``"sparsest"``.
        key_mask: ``(..., m)`` bool, True = real key; masked keys get probability 0.
        tol: entries ``> tol`` count as support (also the clip level for solver round-off).
        A_eff: optional precomputed effective attention ``(..., n, m)`` used as the target of
            ``nearest`` (default: computed here as ``A U_r U_r^T``). Ignored by ``sparsest``.
        rows: query rows to solve (int, list, or tensor; default all). Each costs ~1-10 ms.
        rtol: rank tolerance of ``T`` (default ``max(m, d) * eps(T.dtype)``).

    Returns:
        :class:`DistributionResult` with ``probs`` ``(..., len(rows), m)`` in
        ``promote_types(A.dtype, T.dtype)`` on ``A``'s device.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    _check_attention(A)
    _check_tensor(T, "T", 2, "(..., m, d)")
    n, m = A.shape[-2:]
    if T.shape[-2] != m:
        raise ValueError(f"A {tuple(A.shape)} has m = {m} keys but T {tuple(T.shape)} has {T.shape[-2]} rows (dim -2)")
    key_mask = _check_key_mask(key_mask, m)
    shapes = {"A": A.shape[:-2], "T": T.shape[:-2]}
    if key_mask is not None:
        shapes["key_mask"] = key_mask.shape[:-1]
    batch = _broadcast(shapes, "A (..., n, m), T (..., m, d), key_mask (..., m)")
    row_idx = _resolve_rows(rows, n)
    k = len(row_idx)
    if A_eff is not None:
        if mode == "nearest" and tuple(A_eff.shape[-2:]) != (n, m):
            raise ValueError(f"A_eff {tuple(A_eff.shape)} must have the shape of A (..., {n}, {m})")

    out_dtype = _out_dtype(A.dtype, T.dtype)
    device = A.device
    idx_t = torch.tensor(row_idx, dtype=torch.long, device=device)
    A_sel = _mask_cols(A.index_select(-2, idx_t), key_mask).to(torch.float64)
    _check_finite(A_sel, "A")
    U, rank = column_space_basis(T, key_mask=key_mask, rtol=rtol)  # float64 (..., m, r_max)

    if mode == "nearest":
        if A_eff is not None:
            C = _mask_cols(A_eff.index_select(-2, idx_t.to(A_eff.device)).to(device), key_mask).to(torch.float64)
            _check_finite(C, "A_eff")
        else:
            C = (A_sel @ U) @ U.transpose(-1, -2)
        C = torch.broadcast_to(C, batch + (k, m))
    mask_full = (
        torch.broadcast_to(key_mask, batch + (m,))
        if key_mask is not None
        else torch.ones(batch + (m,), dtype=torch.bool, device=device)
    )
    # scipy needs host memory: one transfer for the whole batch
    A_np = torch.broadcast_to(A_sel, batch + (k, m)).reshape(-1, k, m).cpu().numpy()
    U_np = torch.broadcast_to(U, batch + U.shape[-2:]).reshape(-1, m, U.shape[-1]).cpu().numpy()
    M_np = mask_full.reshape(-1, m).cpu().numpy()
    C_np = C.reshape(-1, k, m).cpu().numpy() if mode == "nearest" else None

    P = np.zeros_like(A_np)
    for b in range(A_np.shape[0]):
        idx = np.flatnonzero(M_np[b])
        if idx.size == 0:
            continue
        W = _row_basis(U_np[b][idx])  # (m_r, r')
        if mode == "nearest":
            N = np.linalg.qr(W, mode="complete")[0][:, W.shape[1] :]  # (m_r, m_r - r')
        for q in range(k):
            a = _normalise_row(A_np[b, q, idx], row_idx[q])
            if mode == "nearest":
                c = C_np[b, q, idx]
                x0 = c + W @ (W.T @ (a - c))
                if x0.min() >= 0 or N.shape[1] == 0:
                    x = x0
                else:
                    x = x0 + N @ _ldp(N, -x0)
            else:
                x = _vertex(a, W)
            x = np.clip(x, 0.0, None)
            x[x <= tol * 1e-3] = 0.0
            P[b, q, idx] = x

    probs64 = torch.from_numpy(P).to(device).reshape(batch + (k, m))
    T64 = _mask_rows(T.to(torch.float64), key_mask)
    residual = ((probs64 - A_sel) @ T64).abs().amax(-1) if T.shape[-1] else torch.zeros(batch + (k,), dtype=torch.float64, device=device)
    return DistributionResult(
        probs=probs64.to(out_dtype),
        support_size=(probs64 > tol).sum(-1),
        residual=torch.broadcast_to(residual, batch + (k,)).to(out_dtype),
        mode=mode,
        rows=row_idx,
        rank=torch.broadcast_to(rank, batch),
    )


def _vertex(a: np.ndarray, W: np.ndarray) -> np.ndarray:
    """A basic feasible solution of {x >= 0, W^T x = W^T a}, preferring keys a attends to."""
    Wt = np.ascontiguousarray(W.T)
    b = Wt @ a
    res = scipy.optimize.linprog(
        -a,
        A_eq=Wt,
        b_eq=b,
        bounds=(0, None),
        method="highs-ds",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if res.status != 0 or res.x is None:
        # a itself is feasible, so this is numerical trouble: fall back to purifying a
        x = a
    else:
        x = res.x
    return _purify(np.clip(x, 0.0, None), Wt, 1e-12)

"""Pure tensor edits of attention matrices used by the interventions: permuting rows, top-k key
masks, and perturbations in the null space of the value transforms."""

from __future__ import annotations

import math

import torch

from ..functional import column_space_basis



def permute_rows(A: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly permute each row's weights among its allowed keys (Jain & Wallace, NAACL 2019).

    ``A`` (..., n, m), ``allowed`` (..., n, m) bool. Weights at disallowed keys stay (0 for
    softmax attention); each row gets an independent uniform random permutation.
    """
    allowed = allowed.expand(A.shape)
    r = torch.rand(A.shape, generator=generator, dtype=torch.float64).to(A.device)
    r = torch.where(allowed, r, torch.full_like(r, 2.0))  # disallowed keys sort last
    src = torch.argsort(r, dim=-1)  # allowed positions in random order, then the others
    dst = torch.argsort((~allowed).to(torch.int8), dim=-1, stable=True)  # allowed in order, then the others
    out = torch.empty_like(A)
    out.scatter_(-1, dst, A.gather(-1, src))
    # tail entries: disallowed keys map to disallowed keys (in a different order): restore them
    return torch.where(allowed, out, A)


def topk_mask(W: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """(..., n, m) bool: the ``k`` largest entries of each row of ``W`` among the allowed keys.

    Ties: the earlier key first (stable sort). Rows with fewer than ``k`` allowed keys select
    all of them.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    allowed = allowed.expand(W.shape)
    s = torch.where(allowed, W.to(torch.float64), torch.full(W.shape, -math.inf, dtype=torch.float64, device=W.device))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., : min(k, W.shape[-1])]
    sel = torch.zeros(W.shape, dtype=torch.bool, device=W.device)
    sel.scatter_(-1, order, True)
    return sel & allowed


def null_space_perturbation(
    A: torch.Tensor,
    T: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    nonnegative: bool = True,
    scale: float = 1.0,
    steps: int = 10,
    rtol: float | None = None,
) -> torch.Tensor:
    """Add random vectors of the left null space of ``[T, 1]`` to the rows of ``A``.

    Each step draws Gaussian noise ``z`` on the real keys, projects it on the null space,
    ``p = z - (z U) U^T`` with ``U`` an orthonormal basis of the column space of ``[T, 1]``
    (so ``p T = 0`` and ``sum(p) = 0``), normalises ``||p||_1 = 1`` and moves ``a <- a + t p``.

    * ``nonnegative=True`` (default, hit-and-run in the polytope {a' >= 0, sum a' = 1,
      a'T = aT}): ``t`` is uniform on the feasible segment ``{t : a + t p >= 0}`` intersected
      with ``[-scale, scale]``; ``steps`` steps.
    * ``nonnegative=False``: one step with ``t = scale`` (entries may become negative).

    Either way ``A' T = A T`` and the row sums are unchanged (up to float error); rows with an
    empty null space (``m_real <= rank(T) + 1``) are returned unchanged. ``A`` (..., n, m),
    ``T`` (..., m, d) broadcast; ``key_mask`` (..., m) bool, True = real key (pass
    ``mask[:, None, :]`` for (B, H, n, m)). Computed in float64; returns ``A``'s dtype.
    """
    U, _ = column_space_basis(T, key_mask=key_mask, rtol=rtol, with_ones=True)  # (..., m, r)
    a = A.to(torch.float64)
    real = torch.ones(a.shape[-1], dtype=torch.bool, device=A.device) if key_mask is None else key_mask[..., None, :]
    real = torch.broadcast_to(real, a.shape)
    Ut = U.transpose(-1, -2)
    n_steps = steps if nonnegative else 1
    for _ in range(n_steps):
        z = torch.randn(a.shape, generator=generator, dtype=torch.float64).to(A.device)
        z = torch.where(real, z, torch.zeros_like(z))
        p = z - (z @ U) @ Ut
        p = torch.where(real, p, torch.zeros_like(p))
        norm = p.abs().sum(-1, keepdim=True)
        ok = norm > 1e-9
        p = torch.where(ok, p / torch.where(ok, norm, torch.ones_like(norm)), torch.zeros_like(p))
        if nonnegative:
            inf = torch.full_like(a, math.inf)
            hi = torch.where(p < 0, a.clamp_min(0) / (-p).clamp_min(1e-300), inf).amin(-1, keepdim=True)
            lo = torch.where(p > 0, -a.clamp_min(0) / p.clamp_min(1e-300), -inf).amax(-1, keepdim=True)
            hi = hi.clamp(max=scale)
            lo = lo.clamp(min=-scale)
            u = torch.rand(hi.shape, generator=generator, dtype=torch.float64).to(A.device)
            t = torch.where(ok & (hi >= lo), lo + u * (hi - lo), torch.zeros_like(hi))
        else:
            t = torch.where(ok, torch.full_like(norm, float(scale)), torch.zeros_like(norm))
        a = a + t * p
        if nonnegative:
            a = a.clamp_min(0.0)  # round-off at the boundary only (~1e-17)
    return a.to(A.dtype)

"""Performer / FAVOR+ attention (Choromanski et al., ICLR 2021).

Positive orthogonal random features approximate the softmax kernel:

    exp(s q.k) ~ phi(x_q) . phi(x_k),   x = sqrt(s) q  (s = the model's scaling, 1/sqrt(d_h)
                                                         usually, so x = q d_h^-1/4)
    phi(x) = exp(W x - |x|^2 / 2) / sqrt(R)

with W (R x d) made of blocks of d orthogonal Gaussian directions, each row rescaled by the norm
of an independent d-dimensional Gaussian vector (so rows are marginally Gaussian). The implied
matrix is A = D^-1 phi(Q) phi(K)^T: positive and row-stochastic.

Numerical stabilisation: each query's features are divided by their row maximum and all keys'
features (per example and head) by one common maximum; both factors cancel in D^-1, so the
implied matrix is unchanged.

Options: ``n_features`` (R), ``seed`` (the features are drawn from ``torch.Generator`` seeded
with ``seed`` on the call's device, so every call - and every layer - uses the same features),
``redraw`` (draw new features at every call; the sequence of draws is still determined by
``seed``, but the output of one call and the matrix captured in another call then come from
different features).

Padding: padded keys get phi(k) = 0 (zero weight) and are left out of the stabiliser. Causal:
chunked prefix sums (see :func:`~attnexplain.backends.linear.kernel_attention`). Additive biases
in ``call.mask`` are ignored (only padding and causality are used); soft-capping and other model
arguments are refused. Attention dropout is not applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ArgumentTypeError
from .base import AttentionCall, register_backend
from .linear import KernelFeatureAttention, check_int, compute_dtype, real_positions

__all__ = ["PerformerAttention", "orthogonal_gaussian"]


def orthogonal_gaussian(n_rows: int, dim: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n_rows, dim) orthogonal random features as in FAVOR+ (float32)."""
    blocks = []
    for _ in range(math.ceil(n_rows / dim)):
        g = torch.randn(dim, dim, generator=generator, device=device, dtype=torch.float32)
        qmat, _ = torch.linalg.qr(g)
        blocks.append(qmat.T)
    w = torch.cat(blocks, dim=0)[:n_rows]
    norms = torch.randn(n_rows, dim, generator=generator, device=device, dtype=torch.float32).norm(dim=1)
    return w * norms.unsqueeze(1)


@register_backend
@dataclass
class PerformerAttention(KernelFeatureAttention):
    """FAVOR+ with ``n_features`` positive orthogonal random features."""

    n_features: int = 64
    seed: int = 0
    redraw: bool = False

    name = "performer"

    def __post_init__(self) -> None:
        check_int("performer", "n_features", self.n_features, 1)
        check_int("performer", "seed", self.seed, 0)
        if not isinstance(self.redraw, bool):
            raise ArgumentTypeError(f"performer attention: option 'redraw' must be a bool, got {self.redraw!r}")
        self._generators: dict[str, torch.Generator] = {}
        self._fixed: dict[tuple[str, int], torch.Tensor] = {}

    def _projection(self, dim: int, device: torch.device) -> torch.Tensor:
        if not self.redraw:
            key = (str(device), dim)
            if key not in self._fixed:  # the same features every call: draw (QR) once per device
                gen = torch.Generator(device=device)
                gen.manual_seed(self.seed)
                self._fixed[key] = orthogonal_gaussian(self.n_features, dim, gen, device)
            return self._fixed[key]
        else:
            key = str(device)
            if key not in self._generators:
                gen = torch.Generator(device=device)
                gen.manual_seed(self.seed)
                self._generators[key] = gen
            gen = self._generators[key]
        return orthogonal_gaussian(self.n_features, dim, gen, device)

    def features(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(phi(Q) (B,H,n,R), phi(K) (B,H,m,R) with zero rows for padded keys, V) in float32."""
        self.check_extras(call)
        dt = compute_dtype(call)
        _, kreal = real_positions(call)
        root = math.sqrt(call.scaling) if call.scaling > 0 else 0.0
        xq = call.query.to(dt) * root
        xk = call.key.to(dt) * root
        w = self._projection(xq.shape[-1], xq.device).to(dt)
        inv_sqrt_r = 1.0 / math.sqrt(self.n_features)
        lq = torch.matmul(xq, w.T) - 0.5 * (xq * xq).sum(-1, keepdim=True)  # (B, H, n, R)
        lk = torch.matmul(xk, w.T) - 0.5 * (xk * xk).sum(-1, keepdim=True)  # (B, H, m, R)
        phi_q = torch.exp(lq - lq.amax(dim=-1, keepdim=True)) * inv_sqrt_r
        kmask = kreal[:, None, :, None]
        kmax = lk.masked_fill(~kmask, float("-inf")).amax(dim=(-1, -2), keepdim=True)
        kmax = torch.where(torch.isfinite(kmax), kmax, torch.zeros_like(kmax))
        phi_k = torch.exp(lk - kmax).masked_fill(~kmask, 0.0) * inv_sqrt_r
        return phi_q, phi_k, call.value.to(dt)

    def memory_fraction(self, n: int, m: int, causal: bool = False) -> float:
        """No score is computed; the (n + m) x R feature maps stand in for the n x m scores."""
        return (n + m) * self.n_features / (n * m)

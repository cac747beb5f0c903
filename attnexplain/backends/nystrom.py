"""Nystromformer attention (Xiong et al., AAAI 2021).

With landmarks Q~, K~ (segment means of the queries and keys), the softmax matrix is
approximated by

    S = softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T)          (scores scaled as the model)

and the output is S V, computed right to left in O(n L) memory (L = ``n_landmarks``). The implied
matrix is S itself: rows sum to ~1 but entries may be negative.

Details:

* Landmarks are means of L contiguous segments of the *real* tokens (padding excluded, segment
  boundaries floor(r L / n_real)), so adding padding does not change the result. With fewer real
  tokens than landmarks (``n_landmarks >= length``) each token is its own landmark: Q~ = Q, K~ = K,
  and S = A pinv(A) A = A, i.e. exactly dense attention when the pseudo-inverse is exact
  (``pinv_iterations=0``); the iterative pseudo-inverse gives approximately dense attention.
* ``pinv_iterations``: number of Newton-Schulz iterations of the paper's iterative
  pseudo-inverse (6 in the paper); 0 uses the exact ``torch.linalg.pinv``, with the three
  products in float64 (the exact pseudo-inverse of an ill-conditioned kernel has large entries).
  With few tokens per landmark the exact pseudo-inverse amplifies noise; the iterative one
  regularises (the paper's choice).
* The paper's depthwise convolution skip on V is a trained parameter and is not part of this
  drop-in backend.
* Padded keys get zero weight in softmax(Q~ K^T), hence in S. Non-causal only (self or cross
  attention): a causal call (``call.causal`` or ``call.key_limit``) raises
  :class:`~attnexplain.errors.UnsupportedPatternError` (Nystrom landmarks mix past and future
  tokens). Additive biases in
  ``call.mask`` are ignored (only key padding is used); other model arguments are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UnsupportedPatternError
from .base import AttentionBackend, AttentionCall, register_backend
from .linear import check_int, compute_dtype, masked_softmax, real_positions

__all__ = ["NystromAttention", "iterative_pinv", "segment_means"]


def segment_means(x: torch.Tensor, real: torch.Tensor, n_seg: torch.Tensor, n_max: int) -> torch.Tensor:
    """Means of ``n_seg[b]`` contiguous segments of the real positions of x (B, H, n, d) -> (B, H, n_max, d).

    Real position of rank r (among the real ones) goes to segment floor(r * n_seg / n_real);
    segments beyond ``n_seg[b]`` are zero.
    """
    b, h, n, d = x.shape
    count = real.sum(-1, keepdim=True)  # (B, 1)
    rank = real.long().cumsum(-1) - 1
    seg = torch.div(rank * n_seg.unsqueeze(-1), count.clamp(min=1), rounding_mode="floor")
    seg = torch.where(real, seg, torch.full_like(seg, n_max))  # padded -> trash segment
    sums = x.new_zeros(b, h, n_max + 1, d).scatter_add_(2, seg[:, None, :, None].expand(b, h, n, d), x)
    cnt = x.new_zeros(b, n_max + 1).scatter_add_(1, seg, real.to(x.dtype))
    return sums[:, :, :n_max] / cnt[:, None, :n_max, None].clamp(min=1)


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Newton-Schulz pseudo-inverse of the Nystromformer paper (per matrix initial scaling)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    col = a.abs().sum(-2).amax(-1)
    row = a.abs().sum(-1).amax(-1)
    z = a.transpose(-1, -2) / (col * row).clamp(min=torch.finfo(a.dtype).tiny)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


@register_backend
@dataclass
class NystromAttention(AttentionBackend):
    """Nystromformer with ``n_landmarks`` segment-mean landmarks."""

    n_landmarks: int = 32
    pinv_iterations: int = 6

    name = "nystrom"

    def __post_init__(self) -> None:
        check_int("nystrom", "n_landmarks", self.n_landmarks, 1)
        check_int("nystrom", "pinv_iterations", self.pinv_iterations, 0)

    def kernels(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(softmax(Q K~^T) (B,H,n,L), pinv (B,H,L,L), softmax(Q~ K^T) (B,H,L,m), V)."""
        self.check_extras(call)
        if call.causal or call.key_limit is not None:
            pattern = "causal self" if call.causal else "causal cross"
            raise UnsupportedPatternError(
                f"nystrom attention cannot run {pattern} attention: it is not causal (its landmarks "
                f"average past and future tokens); use 'local', 'performer', 'linear', 'smyrf', 'lsh' "
                f"or 'dense' for causal attention"
            )
        dt = compute_dtype(call)
        b, h, n, m = call.shape
        qreal, kreal = real_positions(call)
        q = call.query.to(dt) * call.scaling
        k = call.key.to(dt)
        n_b, m_b = qreal.sum(-1), kreal.sum(-1)
        n_seg = torch.minimum(torch.minimum(n_b, m_b), torch.full_like(n_b, self.n_landmarks))
        n_max = max(int(n_seg.max()), 1)
        lvalid = torch.arange(n_max, device=q.device)[None] < n_seg[:, None]  # (B, L)
        ql = segment_means(q, qreal, n_seg, n_max)
        kl = segment_means(k, kreal, n_seg, n_max)
        lrow = lvalid[:, None, :, None]
        k1 = masked_softmax(q @ kl.transpose(-1, -2), lvalid[:, None, None, :])
        k2 = masked_softmax(ql @ kl.transpose(-1, -2), lvalid[:, None, None, :]) * lrow
        k3 = masked_softmax(ql @ k.transpose(-1, -2), kreal[:, None, None, :]) * lrow
        v = call.value.to(dt)
        if self.pinv_iterations == 0:
            # the exact pseudo-inverse can have large entries (ill-conditioned kernel): multiply in
            # float64 so that S = A pinv(A) A reproduces A to float32 precision
            k1, k2, k3, v = k1.double(), k2.double(), k3.double(), v.double()
            pinv = torch.linalg.pinv(k2)
        else:
            pinv = iterative_pinv(k2, self.pinv_iterations)
        return k1, pinv, k3, v

    def attention(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        k1, pinv, k3, v = self.kernels(call)
        s = (k1 @ pinv) @ k3
        dt = compute_dtype(call)
        return (s @ v).to(call.value.dtype), s.to(dt)

    def forward(self, call: AttentionCall) -> torch.Tensor:
        k1, pinv, k3, v = self.kernels(call)
        return (k1 @ (pinv @ (k3 @ v))).to(call.value.dtype)

    def memory_fraction(self, n: int, m: int, causal: bool = False) -> float:
        """(n L + L^2 + L m) / (n m): the three kernel matrices."""
        lm = min(self.n_landmarks, n, m)
        return (n * lm + lm * lm + lm * m) / (n * m)

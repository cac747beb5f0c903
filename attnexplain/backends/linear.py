"""Linear attention (Katharopoulos et al., ICML 2020), and helpers shared by the efficient backends.

Linear attention replaces exp(q.k) by a feature-map kernel phi(q).phi(k) with
phi(x) = elu(x) + 1 (positive), so that

    O = D^-1 phi(Q) (phi(K)^T V),      D = diag(phi(Q) phi(K)^T 1)

costs O(n d^2) instead of O(n m d). The implied attention matrix is
A = D^-1 phi(Q) phi(K)^T: positive and row-stochastic. As in the paper, phi is applied to the raw
queries and keys (the model's ``scaling`` is not used: elu+1 is not homogeneous, and the paper's
kernel has no temperature). Causal attention uses prefix sums of phi(k_j) v_j^T, computed chunk by
chunk so that memory stays O(n d + chunk^2) instead of the O(n d^2) of a full cumulative sum.

Padding: padded keys get phi(k) = 0, so they have exactly zero weight. Causality is taken from
``call.causal`` (query i sees keys j <= i + m - n) and ``call.key_limit`` (causal cross attention:
query i sees keys j < key_limit[i], by the same prefix sums). Other additive terms of ``call.mask`` (biases)
are not representable by a feature map and are ignored; model arguments such as soft-capping are
refused (:meth:`AttentionBackend.check_extras`). Attention dropout is not applied.

The helpers below (option checks, padding masks, masked softmax, the kernel-attention engine) are
shared with the Performer, Nystrom, local and clustered (SMYRF, LSH) backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ArgumentError, ArgumentTypeError
from .base import AttentionBackend, AttentionCall, register_backend

__all__ = ["LinearAttention", "KernelFeatureAttention", "kernel_attention", "real_positions", "masked_softmax", "check_int"]

#: queries per chunk in the causal prefix-sum loop
CAUSAL_CHUNK = 128


# -- helpers shared by the efficient backends ------------------------------------------------------
def check_int(backend: str, name: str, value: object, minimum: int) -> None:
    """Raise a clear TypeError / ValueError unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{backend} attention: option {name!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ArgumentError(f"{backend} attention: option {name!r} must be >= {minimum}, got {value}")


def compute_dtype(call: AttentionCall) -> torch.dtype:
    """float32, or the input dtype if it is wider (float64)."""
    return torch.promote_types(call.query.dtype, torch.float32)


def real_positions(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n) real queries and (B, m) real keys (bool).

    Keys come from ``call.key_padding_mask``. Queries: when n == m and a key padding mask is given
    the call is taken to be self-attention and the same mask marks padded queries (an
    AttentionCall carries no query padding mask); otherwise every query is real.
    """
    b, _, n, m = call.shape
    dev = call.query.device
    kpm = call.key_padding_mask
    if kpm is None:
        kreal = torch.ones(b, m, dtype=torch.bool, device=dev)
    else:
        kreal = kpm.to(device=dev, dtype=torch.bool).expand(b, m)
    if kpm is not None and n == m:
        qreal = kreal
    else:
        qreal = torch.ones(b, n, dtype=torch.bool, device=dev)
    return qreal, kreal


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim where ``allowed``; rows with nothing allowed become exact zeros."""
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    mx = scores.amax(dim=-1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    e = torch.exp(scores - mx)
    den = e.sum(dim=-1, keepdim=True)
    return e / torch.where(den > 0, den, torch.ones_like(den))


def mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """An additive float mask with its 'masked' entries (< finfo.min / 2) turned into -inf."""
    thresh = torch.finfo(mask.dtype).min / 2 if mask.dtype.is_floating_point else None
    out = mask.float()
    if thresh is not None:
        out = out.masked_fill(mask <= thresh, float("-inf"))
    return out


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _visible_limits(n: int, m: int, causal: bool, key_limit: torch.Tensor | None,
                    device: torch.device) -> torch.Tensor | None:
    """(n,) long: query i sees keys j < limit[i] (None: every key). Causal self-attention gives
    i + 1 + m - n; a ``key_limit`` (causal cross attention) must be non-decreasing."""
    limit = None
    if causal:
        limit = (torch.arange(1, n + 1, device=device) + (m - n)).clamp(0, m)
    if key_limit is not None:
        kl = key_limit.to(device=device, dtype=torch.long).clamp(0, m)
        if kl.shape != (n,) or bool((kl[1:] < kl[:-1]).any()):
            raise ValueError(f"key_limit must be a non-decreasing (n,) = ({n},) tensor of key counts, got {tuple(kl.shape)}")
        limit = kl if limit is None else torch.minimum(limit, kl)
    return limit


def kernel_attention(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    value: torch.Tensor,
    causal: bool,
    want_matrix: bool = False,
    key_limit: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention with a positive feature map: O = D^-1 phi(Q) phi(K)^T V.

    Args:
        phi_q: (B, H, n, R) non-negative query features.
        phi_k: (B, H, m, R) non-negative key features, zero rows for padded keys.
        value: (B, H, m, d_v).
        causal: query i sees keys j <= i + m - n.
        want_matrix: also return the implied matrix D^-1 phi(Q) phi(K)^T (B, H, n, m).
        key_limit: (n,) non-decreasing: query i sees keys j < key_limit[i] (causal cross attention,
            :func:`~attnexplain.backends.base.causal_cross_limits`); combined with ``causal``.

    Rows with no positive mass (every visible key padded) get zero output and a zero row.
    Raises ValueError for a ``key_limit`` that is not non-decreasing (no prefix sums then).
    """
    n, m = phi_q.shape[-2], phi_k.shape[-2]
    limit = _visible_limits(n, m, causal, key_limit, phi_q.device)
    if want_matrix:
        num = torch.matmul(phi_q, phi_k.transpose(-1, -2))
        if limit is not None:
            allowed = torch.arange(m, device=num.device)[None] < limit[:, None]
            num = num.masked_fill(~allowed, 0.0)
        den = num.sum(dim=-1, keepdim=True)
        a = _safe_div(num, den)
        return torch.matmul(a, value), a
    if limit is None:
        kv = torch.matmul(phi_k.transpose(-1, -2), value)  # (B, H, R, d_v)
        z = phi_k.sum(dim=-2)  # (B, H, R)
        num = torch.matmul(phi_q, kv)
        den = torch.matmul(phi_q, z.unsqueeze(-1))
        return _safe_div(num, den), None
    # causal: chunked prefix sums; the state covers keys [0, done), visible to every later query
    # because the limits do not decrease
    b, h, _, r = phi_q.shape
    dv = value.shape[-1]
    state = phi_q.new_zeros(b, h, r, dv)
    zsum = phi_q.new_zeros(b, h, r, 1)
    limits = limit.tolist()
    done = 0
    first = limits[0] if n else 0
    if first > 0:  # keys visible to every query (e.g. the cached prefix when decoding)
        state = state + torch.matmul(phi_k[:, :, :first].transpose(-1, -2), value[:, :, :first])
        zsum = zsum + phi_k[:, :, :first].sum(dim=-2).unsqueeze(-1)
        done = first
    outs = []
    for a0 in range(0, n, CAUSAL_CHUNK):
        a1 = min(a0 + CAUSAL_CHUNK, n)
        k1 = limits[a1 - 1]  # keys visible to the last query of the chunk: j < k1
        k0 = done
        qc = phi_q[:, :, a0:a1]
        num = torch.matmul(qc, state)
        den = torch.matmul(qc, zsum)
        if k1 > k0:
            kc, vc = phi_k[:, :, k0:k1], value[:, :, k0:k1]
            loc = torch.matmul(qc, kc.transpose(-1, -2))  # (B, H, c, k1 - k0)
            kj = torch.arange(k0, k1, device=loc.device).unsqueeze(0)
            loc = loc.masked_fill(kj >= limit[a0:a1].unsqueeze(-1), 0.0)
            num = num + torch.matmul(loc, vc)
            den = den + loc.sum(dim=-1, keepdim=True)
            state = state + torch.matmul(kc.transpose(-1, -2), vc)
            zsum = zsum + kc.sum(dim=-2).unsqueeze(-1)
            done = k1
        outs.append(_safe_div(num, den))
    return torch.cat(outs, dim=2), None


def _elu1(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


class KernelFeatureAttention(AttentionBackend):
    """Base of the kernelised backends: ``A = phi(Q) phi(K)^T / row sums``, computed by
    :func:`kernel_attention` from the feature maps a subclass's :meth:`features` returns."""

    def features(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(phi(Q) (B,H,n,R), phi(K) (B,H,m,R) with zero rows for padded keys, V) in the compute dtype."""
        raise NotImplementedError

    def attention(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        phi_q, phi_k, v = self.features(call)
        out, a = kernel_attention(phi_q, phi_k, v, call.causal, want_matrix=True, key_limit=call.key_limit)
        return out.to(call.value.dtype), a

    def forward(self, call: AttentionCall) -> torch.Tensor:
        phi_q, phi_k, v = self.features(call)
        return kernel_attention(phi_q, phi_k, v, call.causal, key_limit=call.key_limit)[0].to(call.value.dtype)


@register_backend
@dataclass
class LinearAttention(KernelFeatureAttention):
    """Linear attention with phi(x) = elu(x) + 1 (no options)."""

    name = "linear"

    def __post_init__(self) -> None:
        pass

    def features(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_extras(call)
        dt = compute_dtype(call)
        _, kreal = real_positions(call)
        phi_q = _elu1(call.query.to(dt))
        phi_k = _elu1(call.key.to(dt)) * kreal[:, None, :, None].to(dt)
        return phi_q, phi_k, call.value.to(dt)

    def memory_fraction(self, n: int, m: int, causal: bool = False, *, head_dim: int = 64) -> float:
        """No score is computed; the (n + m) x d feature maps stand in for the n x m scores."""
        return (n + m) * head_dim / (n * m)

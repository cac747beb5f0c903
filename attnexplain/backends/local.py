"""Local (sliding-window) attention: dense softmax under a band mask.

Query i (at absolute position i + m - n, so that a decoding query with a key cache lines up with
its own key) may attend key j when

    non-causal:  |j - (i + m - n)| <= window
    causal:      (i + m - n) - window <= j <= i + m - n      (``call.causal``)

and the call's own mask allows it. The implied matrix is the band-masked softmax (exactly zero
outside the band); with ``window >= length`` it is dense attention.

The output-only path (:meth:`LocalAttention.forward`) works on blocks of queries against the
keys their band can reach, so memory is O(n (block + 2 window)) instead of O(n m). Additive
terms of ``call.mask`` (padding, causal structure, biases such as T5's relative positions) are
honoured, as is soft-capping; other model arguments are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import AttentionBackend, AttentionCall, register_backend
from .linear import check_int, compute_dtype, mask_bias, masked_softmax

__all__ = ["LocalAttention"]


def _slice_mask(mask: torch.Tensor, a0: int, a1: int, k0: int, k1: int) -> torch.Tensor:
    if mask.shape[-2] != 1:
        mask = mask[..., a0:a1, :]
    if mask.shape[-1] != 1:
        mask = mask[..., k0:k1]
    return mask


@register_backend
@dataclass
class LocalAttention(AttentionBackend):
    """Sliding-window softmax attention with half-width ``window`` (causal from the call)."""

    window: int = 64

    name = "local"
    supported_extras = frozenset({"softcap"})

    def __post_init__(self) -> None:
        check_int("local", "window", self.window, 0)

    def _band(self, qpos: torch.Tensor, kpos: torch.Tensor, off: int, causal: bool) -> torch.Tensor:
        rel = kpos - (qpos + off)
        upper = 0 if causal else self.window
        return (rel >= -self.window) & (rel <= upper)

    def _dropout(self, p: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        if call.training and call.dropout > 0:
            return F.dropout(p, p=call.dropout, training=True)
        return p

    def attention(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_extras(call)
        dt = compute_dtype(call)
        b, h, n, m = call.shape
        dev = call.query.device
        off = m - n
        allowed = self._band(torch.arange(n, device=dev)[:, None], torch.arange(m, device=dev)[None], off, call.causal)
        q = call.query.to(dt) * call.scaling
        s = q @ call.key.to(dt).transpose(-1, -2)
        softcap = call.extras.get("softcap")
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        if call.mask is not None:
            s = s + mask_bias(call.mask).to(dt)
        allowed = allowed.expand(b, 1, n, m)
        if call.key_padding_mask is not None:
            allowed = allowed & call.key_padding_mask.bool()[:, None, None, :]
        probs = masked_softmax(s, allowed)
        out = self._dropout(probs, call) @ call.value.to(dt)
        return out.to(call.value.dtype), probs

    def forward(self, call: AttentionCall) -> torch.Tensor:
        self.check_extras(call)
        dt = compute_dtype(call)
        b, h, n, m = call.shape
        dev = call.query.device
        off = m - n
        w = self.window
        upper = 0 if call.causal else w
        q = call.query.to(dt) * call.scaling
        k = call.key.to(dt)
        v = call.value.to(dt)
        softcap = call.extras.get("softcap")
        kpm = call.key_padding_mask.bool() if call.key_padding_mask is not None else None
        block = min(n, max(64, w))
        outs = []
        for a0 in range(0, n, block):
            a1 = min(a0 + block, n)
            k0 = max(a0 + off - w, 0)
            k1 = min(a1 - 1 + off + upper + 1, m)
            if k1 <= k0:
                outs.append(q.new_zeros(b, h, a1 - a0, v.shape[-1]))
                continue
            s = q[:, :, a0:a1] @ k[:, :, k0:k1].transpose(-1, -2)
            if softcap is not None:
                s = torch.tanh(s / softcap) * softcap
            if call.mask is not None:
                s = s + mask_bias(_slice_mask(call.mask, a0, a1, k0, k1)).to(dt)
            allowed = self._band(torch.arange(a0, a1, device=dev)[:, None], torch.arange(k0, k1, device=dev)[None], off,
                                 call.causal)
            if kpm is not None:
                allowed = allowed & kpm[:, None, None, k0:k1]
            p = self._dropout(masked_softmax(s, allowed), call)
            outs.append(p @ v[:, :, k0:k1])
        return torch.cat(outs, dim=2).to(call.value.dtype)

    def memory_fraction(self, n: int, m: int, causal: bool = False) -> float:
        """Share of the n x m pairs inside the band (what the mechanism needs to compute)."""
        off = m - n
        upper = 0 if causal else self.window
        total = 0
        for i in range(n):
            lo = max(i + off - self.window, 0)
            hi = min(i + off + upper, m - 1)
            total += max(hi - lo + 1, 0)
        return total / (n * m)

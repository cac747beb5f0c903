"""Local (sliding-window) attention: dense softmax under a band mask.

Query i (at absolute position i + m - n, so that a decoding query with a key cache lines up with
its own key) may attend key j when

    non-causal:  |j - (i + m - n)| <= window
    causal:      (i + m - n) - window <= j <= i + m - n      (``call.causal``)

and the call's own mask allows it. The implied matrix is the band-masked softmax (exactly zero
outside the band); with ``window >= length`` it is dense attention.

The output-only path (:meth:`LocalAttention.forward`) works on blocks of max(64, window) queries
against the keys their band can reach (one batched computation over overlapping key windows), so
memory is O(n (block + 2 window)) instead of O(n m). Additive
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


@register_backend
@dataclass
class LocalAttention(AttentionBackend):
    """Sliding-window softmax attention with half-width ``window`` (one-sided where the model's attention is causal)."""

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
        """Blocks of ``block`` queries against the ``block + window + upper`` keys they can reach.

        One batched computation (no Python loop over blocks): keys and values are padded and
        unfolded into overlapping windows, so the band relation is the same in every block.
        """
        self.check_extras(call)
        dt = compute_dtype(call)
        b, h, n, m = call.shape
        dev = call.query.device
        off = m - n
        w = self.window
        upper = 0 if call.causal else w
        block = min(n, max(64, w))
        nb = -(-n // block)
        kw = block + w + upper  # keys a block can reach
        q = call.query.to(dt) * call.scaling
        k = call.key.to(dt)
        v = call.value.to(dt)
        # absolute key position of window slot t of block j: j * block + off - w + t
        first = off - w
        left = max(-first, 0)
        need = (nb - 1) * block + kw  # window span in padded coordinates
        lo = first + left  # >= 0: where block 0's window starts in the left-padded keys
        right = max(lo + need - (m + left), 0)
        kpad = F.pad(k, (0, 0, left, right))[:, :, lo: lo + need]
        vpad = F.pad(v, (0, 0, left, right))[:, :, lo: lo + need]
        kwin = kpad.unfold(2, kw, block)  # (B, H, nb, d, kw)
        vwin = vpad.unfold(2, kw, block).transpose(-1, -2)  # (B, H, nb, kw, d_v)
        qblk = F.pad(q, (0, 0, 0, nb * block - n)).view(b, h, nb, block, q.shape[-1])
        s = qblk @ kwin  # (B, H, nb, block, kw)
        softcap = call.extras.get("softcap")
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        i = torch.arange(block, device=dev)
        t = torch.arange(kw, device=dev)
        kabs = torch.arange(nb, device=dev)[:, None] * block + first + t[None]  # (nb, kw)
        qabs = torch.arange(nb, device=dev)[:, None] * block + i[None]  # (nb, block)
        allowed = (t[None] >= i[:, None]) & (t[None] <= i[:, None] + w + upper)  # the band, same in every block
        allowed = allowed[None] & ((kabs >= 0) & (kabs < m))[:, None, :]  # (nb, block, kw)
        kcl = kabs.clamp(0, m - 1)
        if call.key_padding_mask is not None:
            allowed = allowed & call.key_padding_mask.bool()[:, kcl][:, None, :, None, :]
        else:
            allowed = allowed[None, None]
        if call.mask is not None:
            mask = call.mask
            qi = qabs.clamp(max=n - 1)[:, :, None] if mask.shape[-2] != 1 else torch.zeros(1, 1, 1, dtype=torch.long, device=dev)
            kj = kcl[:, None, :] if mask.shape[-1] != 1 else torch.zeros(1, 1, 1, dtype=torch.long, device=dev)
            s = s + mask_bias(mask[:, :, qi, kj]).to(dt)  # (B, 1 or H, nb, block, kw)
        # in-place masked softmax: s is a fresh buffer, the largest tensor of this path; out of place
        # when autograd records it (gradient explanations through this backend)
        grad = torch.is_grad_enabled() and (s.requires_grad or vwin.requires_grad)
        s = s.masked_fill(~allowed, float("-inf")) if grad else s.masked_fill_(~allowed, float("-inf"))
        mx = s.amax(dim=-1, keepdim=True)
        mx = mx.masked_fill(torch.isneginf(mx), 0.0)
        p = (s - mx).exp() if grad else s.sub_(mx).exp_()
        z = p.sum(dim=-1, keepdim=True)
        zs = torch.where(z > 0, z, torch.ones_like(z))
        p = self._dropout(p / zs if grad else p.div_(zs), call)
        out = (p @ vwin).view(b, h, nb * block, -1)[:, :, :n]
        return out.to(call.value.dtype)

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

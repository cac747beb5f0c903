"""Dense softmax attention (Vaswani et al., 2017): A = softmax(Q K^T * s + M), O = A V.

The output-only path uses PyTorch's fused ``scaled_dot_product_attention``, so a model running
the dense backend keeps the fast kernel; the matrix is built only for the layers and heads that
capture or an intervention asks for.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .base import AttentionBackend, AttentionCall, broadcasts_into, register_backend
from .base import cpu_has_native_bfloat16 as _cpu_has_native_bfloat16  # a module name: tests patch it


def _scores(call: AttentionCall, out: torch.Tensor | None = None) -> torch.Tensor:
    """``call.scores()`` without a separate pass over the n x m scores for the scaling: without
    autograd the GEMM applies it (alpha), with autograd it is applied to the queries (B, H, n, d).

    ``out``: a contiguous (B, H, n, m) tensor of the compute dtype to write the scores into (no
    autograd), or None for a new tensor."""
    q = call.query
    if call.extras.get("softcap") is not None:
        return call.scores()
    dtype = torch.promote_types(q.dtype, torch.float32)
    key = call.key.to(dtype)
    grad = torch.is_grad_enabled() and (q.requires_grad or key.requires_grad)
    if not grad and q.dim() == 4 and key.shape[:2] == q.shape[:2]:
        # one batched GEMM with the scaling as its alpha (eager's order: (q k^T) * s), into ``out``
        # where it fits; queries and keys copied to contiguous heads, as torch.matmul does
        B, H, n, d = q.shape
        m = key.shape[-2]
        if out is None or out.dtype != dtype or out.shape != (B, H, n, m) or not out.is_contiguous():
            out = torch.empty((B, H, n, m), dtype=dtype, device=q.device)
        out3 = out.view(B * H, n, m)
        s = torch.baddbmm(out3, q.to(dtype).reshape(B * H, n, d), key.reshape(B * H, m, d).transpose(1, 2),
                          beta=0, alpha=call.scaling, out=out3).view(B, H, n, m)
    elif q.shape[-1] > key.shape[-2]:
        return call.scores()
    else:
        # scaled into a contiguous buffer: the GEMM then needs no copy of the (transposed-view) queries
        qs = torch.mul(q.to(dtype), call.scaling, out=torch.empty(q.shape, dtype=dtype, device=q.device)) \
            if not q.requires_grad else q.to(dtype) * call.scaling
        s = torch.matmul(qs, key.transpose(-1, -2))
    if call.mask is not None:
        mask = call.mask.to(dtype)
        return s.add_(mask) if broadcasts_into(mask.shape, s.shape) else s + mask
    if call.causal:  # no mask given: causal structure must still hold (query i sees keys <= i + m - n)
        n, m = s.shape[-2], s.shape[-1]
        allowed = torch.ones(n, m, dtype=torch.bool, device=s.device).tril_(diagonal=m - n)
        s = s.masked_fill_(~allowed, torch.finfo(dtype).min)
    return s


#: rows shorter than this many keys take the transposed softmax when the call allows it
#: (``AttentionCall.short_row_softmax``)
SHORT_ROWS = 16


def dense_attention_probs(call: AttentionCall, out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T * scaling + mask) in float32 (B, H, n, m); fully masked rows become 0.

    Without autograd the softmax overwrites the fresh score tensor (no second n x m buffer).
    ``out``: where to write the matrix (see :func:`_scores`; used only without autograd)."""
    if out is not None and torch.is_grad_enabled() and (call.query.requires_grad or call.key.requires_grad):
        out = None
    scores = _scores(call, out)
    if call.short_row_softmax and scores.shape[-1] < SHORT_ROWS and scores.device.type == "cpu" and scores.shape[-2] > 1:
        # PyTorch's CPU softmax over the last dim runs a scalar loop for rows shorter than a
        # vector register (16 floats with AVX-512): on the transposed layout the kernel runs
        # vectorised across the rows, ~6x faster at 12 keys (same maths, sums in another order
        # and a vectorised exp: a few float32 ulp from the row kernel)
        t = scores.transpose(-1, -2).contiguous()
        if scores.requires_grad:
            probs = torch.softmax(t, dim=-2).transpose(-1, -2).contiguous()
        else:
            probs = scores.copy_(torch.softmax(t, dim=-2, out=t).transpose(-1, -2))  # back into the score buffer
    else:
        probs = torch.softmax(scores, dim=-1) if scores.requires_grad else torch.softmax(scores, dim=-1, out=scores)
    # transformers' masks use the dtype's minimum (finite), so rows never become NaN; a mask with
    # -inf can fully mask a row (NaN after softmax): make those rows exact zeros.
    if call.mask is not None and torch.isinf(call.mask).any():
        probs = torch.nan_to_num_(probs, nan=0.0)
    return probs


@register_backend
class DenseAttention(AttentionBackend):
    """Exact softmax attention; the reference every other backend is compared with."""

    name = "dense"
    handles_autocast = True  # picks SDPA's precision under CPU autocast itself (see forward)
    supported_extras = frozenset({"softcap", "sliding_window", "position_bias"})

    def attention(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attention_into(call, None)

    def attention_into(self, call: AttentionCall, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`attention` with the matrix written into ``out`` where it fits (contiguous
        (B, H, n, m) of the compute dtype, no autograd); otherwise into a new tensor."""
        self.check_extras(call)
        probs = dense_attention_probs(call, out)
        weights = probs
        if call.training and call.dropout > 0:
            weights = F.dropout(probs, p=call.dropout, training=True)
        out = torch.matmul(weights.to(call.value.dtype), call.value)
        return out, probs

    def attention_rows(self, call: AttentionCall, positions: torch.Tensor) -> torch.Tensor:
        """softmax(q_r K^T * scaling + mask_r) for the query row ``r = positions[b]`` of each example
        only: ``(B, H, 1, m)`` float32, equal to those rows of :func:`dense_attention_probs`."""
        self.check_extras(call)
        if call.causal and call.mask is None:  # the causal structure lives in no mask: slice the full matrix
            return super().attention_rows(call, positions)
        B, H, n, m = call.shape
        pos = positions.to(call.query.device)
        b = torch.arange(B, device=call.query.device)
        q = call.query[b, :, pos].unsqueeze(-2)  # (B, H, 1, d)
        mask = call.mask
        if mask is not None:
            mask = torch.broadcast_to(mask, (B, mask.shape[1], n, m))[b, :, pos].unsqueeze(-2)
        return dense_attention_probs(dataclasses.replace(call, query=q, mask=mask, causal=False))

    def forward(self, call: AttentionCall) -> torch.Tensor:
        self.check_extras(call)
        if call.extras.get("softcap") is not None:
            return self.attention(call)[0]
        mask = call.mask
        q = call.query
        if (q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu")
                and not (call.training and call.dropout > 0) and not _cpu_has_native_bfloat16()):
            # under CPU autocast the projections arrive in bfloat16; a CPU without native bfloat16
            # (AVX512-BF16 / AMX) runs PyTorch's attention kernel slower in it than in float32 for
            # short sequences (measured ~1.3x at n = 24): run it in float32 (also more accurate) and
            # hand bfloat16 back. With native bfloat16 the kernel runs in bfloat16, 1.4-2.2x faster
            # than the float32 route at n = 8-60 (Xeon with AMX, 1 thread) and batch-invariant alike
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(
                    q.float(), call.key.float(), call.value.float(),
                    attn_mask=None if mask is None else mask.float(),
                    is_causal=bool(call.causal and mask is None and q.shape[-2] > 1), scale=call.scaling,
                )
            return out.to(q.dtype)
        if mask is not None and mask.dtype != call.query.dtype:
            # float32's most negative number overflows to -inf in bfloat16/float16: clamp it to
            # the target's own minimum (a fully masked row stays finite, as in float32)
            mask = mask.to(call.query.dtype)
            if mask.is_floating_point() and torch.finfo(mask.dtype).bits < 32:
                mask = mask.clamp_min(torch.finfo(mask.dtype).min)
        return F.scaled_dot_product_attention(
            call.query,
            call.key,
            call.value,
            attn_mask=mask,
            dropout_p=call.dropout if call.training else 0.0,
            is_causal=bool(call.causal and mask is None and call.query.shape[-2] > 1),
            scale=call.scaling,
        )

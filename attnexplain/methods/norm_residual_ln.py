"""``norm_residual_ln``: norm-based attention with the residual connection and the LayerNorm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._token_matrix import TokenMatrixMethod, check_layers_option, select_layer_positions
from .base import register_method

__all__ = ["NormResidualLN", "post_ln_parts", "check_post_ln", "real_position_mask"]


def post_ln_parts(mc, p: int, b: int, idx: torch.Tensor):
    """Block ``p`` of a :class:`~attnexplain.capturing.mixing.MixingCapture` with norms, example
    ``b`` on its real positions ``idx``: ``(parts (n_i, n_i, d), block record)`` with
    ``parts[i, j] = g1_i(u_ij)`` (:func:`attnexplain.functional.context_mixing.attention_layer_norm_parts`).

    Checked against the recorded first LayerNorm: ``sum_j parts_ij + g1_i(b_O) + beta1`` must be
    its output, which holds only when its input is ``x + Attn(x)`` (a post-LN block); others are
    refused with :class:`~attnexplain.capturing.UnsupportedArchitectureError`. One example at a
    time on its real tokens: the ``(n_i, n_i, d)`` block stays small (cache-resident for short
    inputs) and padding costs nothing.
    """
    from ..capturing.adapters import UnsupportedArchitectureError
    from ..functional.context_mixing import attention_layer_norm_parts, layer_norm_parts

    rec = mc.blocks[p]
    dev = rec.attention.device
    idx = idx.to(dev)
    A = rec.attention[b].index_select(-2, idx).index_select(-1, idx)
    x = rec.hidden_in[b].index_select(0, idx)
    z, y, w, beta, eps = rec.norms["attention"]
    z, y = z[b].index_select(0, idx).to(A.dtype), y[b].index_select(0, idx).to(A.dtype)
    # gamma * centred T = V @ (gamma * centred W_O): no (H, n, d) T and no centring pass over it
    Tc = rec.values[b].index_select(-2, idx) @ rec.centered_out_proj(w)
    parts = attention_layer_norm_parts(A, Tc, x, z, w, eps, prepared=True)
    total = parts.sum(-2)
    bias = rec.out_proj_bias
    if bias is not None:
        total = total + layer_norm_parts(bias.to(A.dtype).expand(len(idx), 1, -1), z, w, eps)[:, 0]
    if beta is not None:
        total = total + beta.to(A.dtype)
    tol = 1e-4 if A.dtype == torch.float32 else 1e-8
    diff = float((total - y).abs().max()) if len(idx) else 0.0
    if diff > tol * max(1.0, float(y.abs().max())):
        raise UnsupportedArchitectureError(
            f"the first LayerNorm of {rec.site.module_name} does not receive attention output + residual "
            f"(its output differs from the decomposition by {diff:.3g}): not a post-LN block this decomposition covers")
    return parts, rec


def real_position_mask(idxs: list[torch.Tensor], n: int, device=None) -> torch.Tensor:
    """``(B, n)`` bool: True at each example's real positions ``idxs[b]``."""
    real = torch.zeros(len(idxs), n, dtype=torch.bool, device=device)
    for b, idx in enumerate(idxs):
        real[b, idx.to(real.device)] = True
    return real


def check_post_ln(rec, A: torch.Tensor, real: torch.Tensor) -> None:
    """Refuse a block whose first LayerNorm does not receive ``x + Attn(x)``: the decomposition's
    total ``sum_h A^h V^h W_O^h + b_O + x_i`` put through the recorded LayerNorm's centring, gamma,
    scale and beta must equal the recorded output, checked at each example's first and last real
    position (``real`` ``(B, n)``; a block laid out otherwise fails at every position).

    Without the ``(n, n, d)`` parts: ``sum_j g_i(u_ij) = g_i(sum_j u_ij)`` and
    ``sum_j A^h_ij T^h_j = (A^h V^h)_i W_O^h``. ``A`` ``(B, H, n, n)`` is the recorded attention with
    the padded keys zeroed. Same tolerance as :func:`post_ln_parts`.

    Raises:
        UnsupportedArchitectureError: the recorded output differs (not a post-LN block).
    """
    from ..capturing.adapters import UnsupportedArchitectureError
    from ..functional.context_mixing import layer_norm_maps

    z, y, w, beta, eps = rec.norms["attention"]
    dt = A.dtype
    n = A.shape[-1]
    has = real.any(1)
    if not bool(has.any()):
        return
    rows = torch.arange(A.shape[0], device=A.device)
    first = real.to(torch.uint8).argmax(1)
    last = n - 1 - real.flip(1).to(torch.uint8).argmax(1)
    Ar = torch.stack([A[rows, :, first], A[rows, :, last]], 2)  # (B, H, 2, n)
    ctx = (Ar @ rec.values.to(dt)).permute(0, 2, 1, 3)[has].reshape(-1, A.shape[1] * rec.values.shape[-1])  # (R, H d_h)
    bi, pos = rows[has].repeat_interleave(2), torch.stack([first, last], 1)[has].reshape(-1)
    Wc = rec.centered_out_proj(w)
    total = ctx @ Wc.reshape(-1, Wc.shape[-1]).to(dt) + layer_norm_maps(rec.hidden_in[bi, pos].to(dt), w)
    bias = rec.out_proj_bias
    if bias is not None:
        total = total + layer_norm_maps(bias.to(dt), w)
    total = total / torch.sqrt(z[bi, pos].to(dt).var(-1, unbiased=False, keepdim=True) + float(eps))
    if beta is not None:
        total = total + beta.to(dt)
    want = y[bi, pos].to(dt)
    tol = 1e-4 if dt == torch.float32 else 1e-8
    diff = float((total - want).abs().max())
    if not diff <= tol * max(1.0, float(want.abs().max())):
        raise UnsupportedArchitectureError(
            f"the first LayerNorm of {rec.site.module_name} does not receive attention output + residual "
            f"(its output differs from the decomposition by {diff:.3g}): not a post-LN block this decomposition covers")


@register_method
@dataclass
class NormResidualLN(TokenMatrixMethod):
    """Attention, residual and LayerNorm in the norm-based analysis (Kobayashi et al., EMNLP 2021).

    Formula, per layer of a post-LN block ``LN1(x + sum_h A^h T^h + b_O)``, with
    ``T^h_j = (x_j W_V^h + b_V^h) W_O^h`` (see :mod:`attnexplain.functional.context_mixing`)::

        N_ij = || g_i( sum_h A^h_ij T^h_j + [i = j] x_i ) ||_2,
        g_i(v) = gamma1 * (v - mean(v)) / sqrt(var(z_i) + eps),   z_i = LN1's actual input
        score_j = mean_{l in layers} N^l_{r j}          (r the readout position)

    ``sum_j g_i(u_ij) + g_i(b_O) + beta1`` equals the LayerNorm's output exactly (tested).
    Non-negative, not normalised. The readout token itself carries its residual, so it usually
    scores highest (the paper's finding: the residual dominates mixing).

    Shapes: per example and layer ``(n, n, d)`` vectors are built (``n`` real tokens, ``d`` width).

    Options: ``readout`` (as the attention methods), ``layers`` ("all" mean | "last" | int | list).

    Architectures: post-LN blocks with ``nn.LayerNorm`` (BERT, RoBERTa, ELECTRA, XLM-R,
    DistilBERT; grouped-query attention does not occur there). Pre-LN (GPT-2, Llama), RMSNorm
    and encoder-decoder models are refused with :class:`~attnexplain.capturing.UnsupportedArchitectureError`.

    Paper: G. Kobayashi, T. Kuribayashi, S. Yokoi, K. Inui, "Incorporating Residual and
    Normalization Layers into Analysis of Masked Language Models", EMNLP 2021.
    """

    name: ClassVar[str] = "norm_residual_ln"
    description: ClassVar[str] = "norm of each token's part of LN1(x + attention) (Kobayashi et al. 2021), mean over layers"

    layers: str | int | list[int] = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layers_option(self.layers)

    def check_model(self, lm) -> None:
        from ..capturing.mixing import require_post_ln

        require_post_ln(lm.model, self.name)

    def token_matrices(self, lm, batch, target, idxs):
        from ..capturing.mixing import capture_mixing

        mc = capture_mixing(lm.model, batch, norms=True)
        pos = select_layer_positions(self.layers, len(mc.blocks))
        return [sum(torch.linalg.vector_norm(post_ln_parts(mc, p, b, idx)[0], dim=-1) for p in pos) / len(pos)
                for b, idx in enumerate(idxs)]


def rolled_out_post_ln(lm, batch, idxs, layer_fn) -> list[torch.Tensor]:
    """Per example: each block's contribution matrix ``layer_fn(parts, rec, b, idx)`` (from
    :func:`post_ln_parts`), aggregated over the blocks by ``contribution_rollout``; the last
    layer's rolled-out matrix. Shared by ALTI and GlobEnc."""
    from ..capturing.mixing import capture_mixing
    from ..functional.context_mixing import contribution_rollout

    mc = capture_mixing(lm.model, batch, norms=True)
    out = []
    for b, idx in enumerate(idxs):
        Cs = []
        for p in range(len(mc.blocks)):
            parts, rec = post_ln_parts(mc, p, b, idx)
            Cs.append(layer_fn(parts, rec, b, idx))
        out.append(contribution_rollout(torch.stack(Cs))[-1])
    return out

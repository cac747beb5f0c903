"""``norm_residual_ln``: norm-based attention with the residual connection and the LayerNorm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._token_matrix import TokenMatrixMethod, check_layers_option, select_layer_positions
from .base import register_method

__all__ = ["NormResidualLN", "post_ln_parts"]


def post_ln_parts(mc, b: int, idx: torch.Tensor, layer_pos: int):
    """For example ``b`` (real positions ``idx``) and block ``layer_pos`` of a
    :class:`~attnexplain.capturing.mixing.MixingCapture` with norms: ``(N, parts, block)`` of
    :func:`attnexplain.functional.context_mixing.norm_residual_ln`, checked against the recorded
    LayerNorm input (refuses blocks whose first LayerNorm does not see ``x + Attn(x)``)."""
    from ..capturing.adapters import UnsupportedArchitectureError
    from ..functional.context_mixing import attention_residual_vectors, norm_residual_ln

    rec = mc.blocks[layer_pos]
    dev = rec.attention.device
    idx = idx.to(dev)
    A = rec.attention[b].index_select(-2, idx).index_select(-1, idx)
    T = rec.value_transforms()[b].index_select(-2, idx)
    x = rec.hidden_in[b].index_select(0, idx).to(A.dtype)
    z, _, w, _, eps = rec.norms["attention"]
    z = z[b].index_select(0, idx).to(A.dtype)
    N, parts = norm_residual_ln(A, T, x, z, w, eps)
    # post-LN check: the parts (and the output bias) must add up to the LayerNorm's actual input
    bias = rec.out_proj_bias
    recon = attention_residual_vectors(A, T, x).sum(-2) + (0 if bias is None else bias.to(A.dtype))
    tol = 1e-4 if A.dtype == torch.float32 else 1e-8
    if not torch.allclose(recon, z, rtol=tol, atol=tol * max(1.0, float(z.abs().max()))):
        raise UnsupportedArchitectureError(
            f"the first LayerNorm of {rec.site.module_name} does not receive attention output + residual "
            f"(max difference {float((recon - z).abs().max()):.3g}): not a post-LN block this decomposition covers")
    return N, parts, rec


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

    def token_matrices(self, lm, batch, target, idxs):
        from ..capturing.mixing import capture_mixing

        mc = capture_mixing(lm.model, batch, norms=True)
        pos = select_layer_positions(self.layers, len(mc.blocks))
        out = []
        for b, idx in enumerate(idxs):
            acc = None
            for p in pos:
                N, _, _ = post_ln_parts(mc, b, idx, p)
                acc = N if acc is None else acc + N
            out.append(acc / len(pos))
        return out

"""``globenc``: encoder-wide token attribution through both residual connections and LayerNorms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._token_matrix import TokenMatrixMethod
from .base import register_method
from .norm_residual_ln import check_post_ln, real_position_mask

__all__ = ["GlobEnc"]


@register_method
@dataclass
class GlobEnc(TokenMatrixMethod):
    """GlobEnc (Modarressi et al., NAACL 2022): the whole-encoder-layer decomposition, rolled out.

    Formula, per post-LN layer ``l``, with ``p_ij = g1_i(u_ij)`` the parts of the first
    LayerNorm's output (see ``norm_residual_ln``) carried through the second residual connection
    (the feed-forward network is left out, as in the paper) into the second LayerNorm::

        N2_ij = || gamma2 * (p_ij - mean(p_ij)) / sqrt(var(z2_i) + eps2) ||_2   (z2_i = LN2's actual input)
        C^l_ij = N2_ij / sum_k N2_ik
        R = C^L @ ... @ C^1        (rollout; no added identity: the residual is inside C)
        score_j = R[r, j]          (r the readout position)

    Non-negative; each example's scores sum to 1. Functions:
    :func:`attnexplain.functional.context_mixing.globenc_layer` (the definition), computed by
    :func:`~attnexplain.functional.context_mixing.globenc_contributions` (same values, without the
    ``(n, n, d)`` parts), :func:`~attnexplain.functional.context_mixing.contribution_rollout`.

    Options: ``readout``. Architectures: as ``norm_residual_ln`` (post-LN ``nn.LayerNorm`` blocks:
    BERT, RoBERTa, ELECTRA, XLM-R, DistilBERT); pre-LN, RMSNorm and encoder-decoders are refused.

    Paper: A. Modarressi, M. Fayyaz, Y. Yaghoobzadeh, M. T. Pilehvar, "GlobEnc: Quantifying Global
    Token Attribution by Incorporating the Whole Encoder Layer in Transformers", NAACL 2022.
    """

    name: ClassVar[str] = "globenc"
    description: ClassVar[str] = "GlobEnc: norms through attention, both residuals and LayerNorms, rolled out (Modarressi et al. 2022)"

    def check_model(self, lm) -> None:
        from ..capturing.mixing import require_post_ln

        require_post_ln(lm.model, self.name)

    def token_matrices(self, lm, batch, target, idxs):
        # Without the (n, n, d) parts: both LayerNorms are linear in the parts, so their centring
        # and gammas go onto W_O's rows once per layer (M = layer_norm_maps(., gamma1, gamma2)), and
        # N2_ij = ||sum_h A^h_ij V^h_j M(W_O^h) + [i = j] M(x_i)|| / (s1_i s2_i) comes from each key's
        # (H x H) Gram matrix of heads (mixed_part_norms; what globenc_contributions computes).
        # One example at a time, all layers at once, on its real tokens: its (L, H, n, d) head
        # vectors stay small and padding costs nothing.
        from ..capturing.mixing import capture_mixing
        from ..functional.context_mixing import contribution_rollout, layer_norm_maps, mixed_part_norms, normalize_rows

        mc = capture_mixing(lm.model, batch, norms=True)
        first = mc.blocks[0]
        dev, dt = first.attention.device, first.attention.dtype
        real = real_position_mask(idxs, first.hidden_in.shape[1], dev)
        keys = real[:, None, None, :].to(dt)
        Wm, r, s = [], [], []
        for rec in mc.blocks:
            check_post_ln(rec, rec.attention * keys, real)
            z1, _, w1, _, eps1 = rec.norms["attention"]
            z2, _, w2, _, eps2 = rec.norms["output"]
            Wm.append(layer_norm_maps(rec.centered_out_proj(w1), w2).to(dt))  # gamma2 C(gamma1 C(W_O^h)): (H, d_h, d)
            r.append(layer_norm_maps(rec.hidden_in.to(dt), w1, w2))  # the residual's part: (B, n, d)
            s.append(_layer_norm_scale(z1.to(dt), eps1) * _layer_norm_scale(z2.to(dt), eps2))  # s1 s2: (B, n)
        Wm = torch.stack(Wm)  # (L, H, d_h, d)
        out = []
        for b, idx in enumerate(idxs):
            idx = idx.to(dev)
            nb = len(idx)
            start = int(idx[0]) if nb else 0
            if nb and int(idx[-1]) - start == nb - 1:  # contiguous real tokens (right or left padding): views
                pick = lambda t, dim: t.narrow(dim, start, nb)  # noqa: E731
            else:
                pick = lambda t, dim: t.index_select(dim, idx)  # noqa: E731
            A = torch.stack([pick(pick(rec.attention[b], -2), -1) for rec in mc.blocks])  # (L, H, n, n)
            V = torch.stack([pick(rec.values[b], -2) for rec in mc.blocks]).to(dt)  # (L, H, n, d_h)
            rb = torch.stack([pick(t[b], -2) for t in r])  # (L, n, d)
            sb = torch.stack([pick(t[b], -1) for t in s])  # (L, n)
            N = mixed_part_norms(A, V @ Wm, rb, sb)
            out.append(contribution_rollout(normalize_rows(N))[-1])
        return out


def _layer_norm_scale(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``sqrt(var(z) + eps)`` over the last dim (biased variance, as ``nn.LayerNorm``)."""
    zc = z - z.mean(-1, keepdim=True)
    return torch.sqrt(zc.square().mean(-1) + float(eps))

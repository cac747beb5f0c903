"""``globenc``: encoder-wide token attribution through both residual connections and LayerNorms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


from ._token_matrix import TokenMatrixMethod
from .base import register_method
from .norm_residual_ln import rolled_out_post_ln

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
    :func:`attnexplain.functional.context_mixing.globenc_layer`,
    :func:`~attnexplain.functional.context_mixing.contribution_rollout`.

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
        from ..functional.context_mixing import globenc_layer

        def layer(parts, rec, b, idx):
            z2, _, w2, _, eps2 = rec.norms["output"]
            return globenc_layer(parts, z2[b].index_select(0, idx.to(z2.device)), w2, eps2)

        return rolled_out_post_ln(lm, batch, idxs, layer)

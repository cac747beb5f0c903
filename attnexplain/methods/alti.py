"""``alti``: Aggregation of Layer-wise Token-to-token Interactions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


from ._token_matrix import TokenMatrixMethod
from .base import register_method
from .norm_residual_ln import rolled_out_post_ln

__all__ = ["ALTI"]


@register_method
@dataclass
class ALTI(TokenMatrixMethod):
    """ALTI (Ferrando et al., EMNLP 2022): L1-distance contributions to each layer's attention-block
    output, aggregated over layers by rollout.

    Formula, per post-LN layer, with ``T_i(x_j) = g1_i(u_ij)`` the vector token ``j`` adds to
    the first LayerNorm's output ``y_i`` (residual included for ``j = i``; see
    ``norm_residual_ln``) and ``y_i`` the actual output (biases included)::

        c_ij = max(0, ||y_i||_1 - ||y_i - T_i(x_j)||_1),     C^l_ij = c_ij / sum_k c_ik
        R = C^L @ ... @ C^1,       score_j = R[r, j]

    Non-negative; each example's scores sum to 1. The scale ``s(z_i)`` is the LayerNorm's exact
    one (``sqrt(var + eps)``; the authors' code uses ``std(z + eps)``, a negligible difference).
    Functions: :func:`attnexplain.functional.context_mixing.alti_layer`,
    :func:`~attnexplain.functional.context_mixing.contribution_rollout`.

    Options: ``readout``. Architectures: as ``norm_residual_ln`` (post-LN ``nn.LayerNorm`` blocks:
    BERT, RoBERTa, ELECTRA, XLM-R, DistilBERT); pre-LN (ALTI+ for decoders is not implemented),
    RMSNorm and encoder-decoders are refused.

    Paper: J. Ferrando, G. I. Gallego, M. R. Costa-jussa, "Measuring the Mixing of Contextual
    Information in the Transformer", EMNLP 2022.
    """

    name: ClassVar[str] = "alti"
    description: ClassVar[str] = "ALTI: L1-distance contributions to each layer output, rolled out (Ferrando et al. 2022)"

    def check_model(self, lm) -> None:
        from ..capturing.mixing import require_post_ln

        require_post_ln(lm.model, self.name)

    def token_matrices(self, lm, batch, target, idxs):
        from ..functional.context_mixing import alti_layer

        def layer(parts, rec, b, idx):
            return alti_layer(parts, rec.norms["attention"][1][b].index_select(0, idx.to(parts.device)))

        return rolled_out_post_ln(lm, batch, idxs, layer)

"""Pure tensor functions for attention interpretability (no model knowledge).

Every function takes torch tensors, is batched over arbitrary leading dims (examples, layers,
heads) and works on CPU and GPU. Formulas and papers are in each docstring and in
``docs/methods.md``.

* effective attention (Brunner et al., ICLR 2020): :func:`effective_attention`,
  :func:`effective_attention_from_values`, :func:`null_attention`, :func:`effective_rank`,
  :func:`value_transforms`, :func:`column_space_basis`, :func:`value_space_basis`,
  :func:`effective_attention_from_basis`
* attention as a distribution keeping the output (after Naim & Asher, ECAI 2024; the project's
  own formulation): :func:`attention_distribution`
* norm-based attention (Kobayashi et al., EMNLP 2020): :func:`norm_based_attention`,
  :func:`norm_based_attention_from_values`
* rollout and flow (Abnar & Zuidema, ACL 2020): :func:`attention_rollout`,
  :func:`attention_flow`, :func:`augmented_attention`
* readouts: :func:`token_importance`, :func:`aggregate`
* context mixing (Kobayashi et al. 2021, GlobEnc, ALTI, value zeroing):
  :func:`attention_residual_vectors`, :func:`layer_norm_parts`, :func:`norm_residual_ln`,
  :func:`globenc_layer`, :func:`alti_layer`, :func:`contribution_rollout`,
  :func:`value_zeroing_scores`, :func:`normalize_rows`; without the ``(n, n, d)`` parts:
  :func:`globenc_contributions`, :func:`mixed_part_norms`, :func:`layer_norm_maps`
* gradient-weighted attention relevance (Chefer et al., ICCV 2021):
  :func:`gradient_weighted_attention`, :func:`self_attention_relevance`,
  :func:`normalize_self_relevance`, :func:`encoder_decoder_relevance`
"""

from .context_mixing import (
    alti_layer,
    attention_residual_vectors,
    contribution_rollout,
    globenc_contributions,
    globenc_layer,
    layer_norm_maps,
    layer_norm_parts,
    mixed_part_norms,
    norm_residual_ln,
    normalize_rows,
    value_zeroing_scores,
)
from .distribution import DistributionResult, attention_distribution
from .effective import (
    column_space_basis,
    effective_attention,
    effective_attention_from_values,
    effective_rank,
    effective_attention_from_basis,
    null_attention,
    value_space_basis,
    value_transforms,
)
from .flow import attention_flow
from .norms import NormAttention, norm_based_attention, norm_based_attention_from_values
from .readouts import aggregate, token_importance
from .relevance import (
    encoder_decoder_relevance,
    gradient_weighted_attention,
    normalize_self_relevance,
    self_attention_relevance,
)
from .rollout import attention_rollout, augmented_attention

__all__ = [
    "value_transforms",
    "effective_attention",
    "effective_attention_from_values",
    "null_attention",
    "effective_rank",
    "column_space_basis",
    "value_space_basis",
    "effective_attention_from_basis",
    "DistributionResult",
    "attention_distribution",
    "NormAttention",
    "norm_based_attention",
    "norm_based_attention_from_values",
    "augmented_attention",
    "attention_rollout",
    "attention_flow",
    "token_importance",
    "aggregate",
    "attention_residual_vectors",
    "layer_norm_parts",
    "norm_residual_ln",
    "alti_layer",
    "globenc_layer",
    "globenc_contributions",
    "mixed_part_norms",
    "layer_norm_maps",
    "normalize_rows",
    "contribution_rollout",
    "value_zeroing_scores",
    "gradient_weighted_attention",
    "self_attention_relevance",
    "normalize_self_relevance",
    "encoder_decoder_relevance",
]

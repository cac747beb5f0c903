"""Ablations: attention-level interventions (head-level) and token-level faithfulness (ERASER).

* :mod:`.interventions`: pure ``A -> A'`` functions for :func:`attnexplain.capturing.session`
  (effective part, distribution variant, null-space perturbation, A - A_eff, uniform, permuted,
  keep/remove top-k keys, zero- and mean-ablation of heads) and runners that report the output
  change (TVD, max |logit change|, prediction flips).
* :mod:`.eraser`: comprehensiveness, sufficiency and AOPC of token rankings, batched.
"""

from .eraser import (
    REMOVAL_MODES,
    FaithfulnessResult,
    bin_sizes,
    content_positions,
    faithfulness,
    faithfulness_for_methods,
    random_rankings,
    special_token_ids,
)
from .interventions import (
    KINDS,
    ablation_table,
    build_intervention,
    distribution_variant,
    effective_part,
    head_ablation,
    head_means,
    identity,
    intervention_effects,
    mean,
    minimal_k,
    minus_effective,
    null_perturbation,
    null_space_perturbation,
    permute,
    permute_rows,
    run_conditions,
    run_with_interventions,
    site_keys,
    topk,
    topk_mask,
    topk_sweep,
    uniform,
    zero,
)

__all__ = [
    "REMOVAL_MODES", "FaithfulnessResult", "bin_sizes", "content_positions", "faithfulness",
    "faithfulness_for_methods", "random_rankings", "special_token_ids",
    "KINDS", "ablation_table", "build_intervention", "distribution_variant", "effective_part", "head_ablation", "head_means",
    "identity", "intervention_effects", "mean", "minimal_k", "minus_effective", "null_perturbation",
    "null_space_perturbation", "permute", "permute_rows", "run_conditions", "run_with_interventions", "site_keys",
    "topk", "topk_mask", "topk_sweep", "uniform", "zero",
]

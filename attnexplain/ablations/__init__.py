"""Ablations: attention-level interventions (head-level) and token-level faithfulness (ERASER).

* :mod:`.interventions`: pure ``A -> A'`` functions for :func:`attnexplain.capturing.session`
  (effective part, distribution variant, null-space perturbation, A - A_eff, uniform, permuted,
  keep/remove top-k keys, zero- and mean-ablation of heads); the tensor edits behind them in
  :mod:`.perturbations`;
* :mod:`.runners`: run a model under interventions and report the output change (TVD, max |logit
  change|, prediction flips), top-k sweeps; :mod:`.heads`: head ablation tables.
* :mod:`.eraser`: comprehensiveness, sufficiency and AOPC of token rankings, batched (the perturbed
  inputs and their forwards in :mod:`.perturbed_inputs`).
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
from .heads import (
    ablation_table,
    head_ablation,
    head_means,
)
from .interventions import (
    KINDS,
    build_intervention,
    distribution_variant,
    effective_part,
    identity,
    mean,
    minus_effective,
    null_perturbation,
    permute,
    topk,
    uniform,
    zero,
)
from .perturbations import (
    null_space_perturbation,
    permute_rows,
    topk_mask,
)
from .runners import (
    intervention_effects,
    minimal_k,
    run_conditions,
    run_with_interventions,
    site_keys,
    topk_sweep,
)

__all__ = [
    "REMOVAL_MODES", "FaithfulnessResult", "bin_sizes", "content_positions", "faithfulness",
    "faithfulness_for_methods", "random_rankings", "special_token_ids",
    "KINDS", "ablation_table", "build_intervention", "distribution_variant", "effective_part", "head_ablation", "head_means",
    "identity", "intervention_effects", "mean", "minimal_k", "minus_effective", "null_perturbation",
    "null_space_perturbation", "permute", "permute_rows", "run_conditions", "run_with_interventions", "site_keys",
    "topk", "topk_mask", "topk_sweep", "uniform", "zero",
]

"""Generative models: capture and explain what a decoder generates, token by token.

- :func:`generate` (re-exported as ``attnexplain.generate``): run ``model.generate`` and capture
  every layer's attention for every generated step, with step probabilities (:class:`GenerationResult`).
- :func:`explain_generation` (``attnexplain.explain_generation``): every generated token explained
  by each registered method, forced targets, contrastive explanations (:class:`GenerationExplanation`).
- :func:`generation_faithfulness`: ERASER comprehensiveness / sufficiency / AOPC on the explained
  token's probability, with the random baseline, batched.
"""

from .attribution import (
    DEFAULT_GENERATION_METHODS,
    GenerationAttribution,
    GenerationExplanation,
    explain_generation,
    generation_methods,
)
from .decoding import check_generator, continuation_ids, generate
from .erasure import generation_faithfulness
from .result import GenerationResult, step_scores

__all__ = ["generation_faithfulness", "explain_generation", "GenerationExplanation", "GenerationAttribution", "DEFAULT_GENERATION_METHODS",
           "generation_methods", "generate", "GenerationResult", "check_generator", "continuation_ids", "step_scores"]

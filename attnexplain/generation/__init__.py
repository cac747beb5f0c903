"""Generative models: capture and explain what a decoder generates, token by token.

- :func:`generate` (re-exported as ``attnexplain.generate``): run ``model.generate`` and capture
  every layer's attention for every generated step, with step probabilities (:class:`GenerationResult`).
"""

from .decoding import check_generator, continuation_ids, generate
from .result import GenerationResult, step_scores

__all__ = ["generate", "GenerationResult", "check_generator", "continuation_ids", "step_scores"]

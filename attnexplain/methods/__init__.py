"""Explanation methods, found by name, and the ``explain`` verb (defined in :mod:`.explanation`).

>>> attnexplain.explain(lm, ["a witty film"], methods=["raw_attention", "effective_attention", "integrated_gradients"])
{'raw_attention': Attribution(...), ...}
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import METHODS, Attribution, ExplanationMethod, available_methods, get_method, rank_tokens, register_method
from .explanation import explain, explain_batch

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in {"base", "explanation"} and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "METHODS", "Attribution", "ExplanationMethod", "available_methods", "get_method", "rank_tokens",
    "register_method", "explain", "explain_batch",
]

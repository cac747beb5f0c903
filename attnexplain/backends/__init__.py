"""Attention backends: dense softmax and efficient approximations, one file each.

Every module in this package is imported so that its ``@register_backend`` classes join the
registry; ``get_backend(name, **options)`` builds one.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    ATTENTION_PATTERNS,
    BACKENDS,
    AttentionBackend,
    AttentionCall,
    BackendOptionError,
    available_backends,
    causal_cross_limits,
    get_backend,
    pattern_call,
    register_backend,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in {"base"} and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "ATTENTION_PATTERNS",
    "BACKENDS",
    "AttentionBackend",
    "AttentionCall",
    "BackendOptionError",
    "available_backends",
    "causal_cross_limits",
    "get_backend",
    "pattern_call",
    "register_backend",
]

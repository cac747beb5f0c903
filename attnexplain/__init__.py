"""attnexplain: does this attention explain the prediction?

Public API (re-exported here, implemented in submodules; imported lazily so that
``import attnexplain`` stays cheap and ``attnexplain.metrics`` can be imported on its own):

- models:      ``load_model``, ``LoadedModel``
- capture:     ``capture``, ``CaptureResult``, ``use_backend``, ``mark_attention_site``, ``report_attention``
- backends:    ``get_backend``, ``available_backends``
- maths:       ``effective_attention``, ``attention_distribution``, ``norm_based_attention``,
               ``attention_rollout``, ``attention_flow`` (in ``attnexplain.functional``)
- explanation: ``explain``, ``get_method``, ``available_methods``
- data/runs:   ``load_dataset``, ``open_run``
- set decoder: ``SetDecoder``, ``train_set_decoder``, ``load_set_decoder`` (learned-query
               decoder over social scenes; everything else in ``attnexplain.set_decoder``)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "attnexplain.models",
    "LoadedModel": "attnexplain.models",
    "capture": "attnexplain.capturing",
    "CaptureResult": "attnexplain.capturing",
    "mark_attention_site": "attnexplain.capturing",
    "report_attention": "attnexplain.capturing",
    "get_backend": "attnexplain.backends",
    "available_backends": "attnexplain.backends",
    "effective_attention": "attnexplain.functional",
    "attention_distribution": "attnexplain.functional",
    "norm_based_attention": "attnexplain.functional",
    "attention_rollout": "attnexplain.functional",
    "attention_flow": "attnexplain.functional",
    "explain": "attnexplain.methods",
    "generate": "attnexplain.generation",
    "GenerationResult": "attnexplain.generation",
    "explain_generation": "attnexplain.generation",
    "generation_faithfulness": "attnexplain.generation",
    "get_method": "attnexplain.methods",
    "available_methods": "attnexplain.methods",
    "load_dataset": "attnexplain.data",
    "open_run": "attnexplain.runs",
    "SetDecoder": "attnexplain.set_decoder",
    "train_set_decoder": "attnexplain.set_decoder",
    "load_set_decoder": "attnexplain.set_decoder",
}


def use_backend(model: Any, backend: str = "dense", **options: Any) -> str:
    """Switch a model (LoadedModel or HF model) to an attnexplain attention backend in place."""
    from .capturing.attention import use_backend as _use
    from .models import torch_module

    return _use(torch_module(model), backend, **options)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'attnexplain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = ["__version__", "use_backend", *_EXPORTS]

"""Capture: attention matrices (and what effective attention needs) from running models."""

from .adapters import ADAPTER_RULES, AdapterRule, AttentionSite, UnsupportedArchitectureError, find_attention_sites
from .attention import (
    CaptureSpec,
    Intervention,
    Session,
    active_session,
    backend_of,
    register_backend_function,
    session,
    use_backend,
)
from .readout import first_token_readout, first_token_readout_supported
from .result import CaptureResult, ExampleView, NothingCapturedError, capture
from .sites import mark_attention_site, report_attention, unmark_attention_site

__all__ = [
    "ADAPTER_RULES", "AdapterRule", "AttentionSite", "UnsupportedArchitectureError", "find_attention_sites",
    "CaptureSpec", "Intervention", "Session", "active_session", "backend_of", "register_backend_function",
    "session", "use_backend", "CaptureResult", "ExampleView", "NothingCapturedError", "capture",
    "mark_attention_site", "report_attention", "unmark_attention_site", "first_token_readout",
    "first_token_readout_supported",
]


# ``attnexplain.capture`` is both this package and the verb: calling the package calls
# :func:`capture` (``attnexplain.capture(lm, texts)``), like ``from attnexplain.capture import capture``.
import sys as _sys
import types as _types


class _CallablePackage(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        return capture(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage

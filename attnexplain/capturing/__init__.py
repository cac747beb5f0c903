"""Capturing attention matrices (and what effective attention needs) from running models.

The verb :func:`capture` lives in :mod:`.result` and is re-exported here and as
``attnexplain.capture``.
"""

from .adapters import ADAPTER_RULES, AdapterRule, AttentionSite, UnsupportedArchitectureError, find_attention_sites
from .attention import (
    CaptureSpec,
    Intervention,
    Session,
    active_session,
    backend_at_sites,
    backend_of,
    register_backend_function,
    routed_backend,
    session,
    use_backend,
)
from .gradients import AttentionGradients, attention_gradients
from .mixing import MixingCapture, capture_mixing, rerun_block
from .readout import first_token_readout, first_token_readout_supported
from .result import CaptureResult, ExampleView, NothingCapturedError, capture
from .sites import mark_attention_site, report_attention, unmark_attention_site

__all__ = [
    "AttentionGradients", "attention_gradients", "MixingCapture", "capture_mixing", "rerun_block",
    "ADAPTER_RULES", "AdapterRule", "AttentionSite", "UnsupportedArchitectureError", "find_attention_sites",
    "CaptureSpec", "Intervention", "Session", "active_session", "backend_at_sites", "backend_of", "routed_backend", "register_backend_function",
    "session", "use_backend", "CaptureResult", "ExampleView", "NothingCapturedError", "capture",
    "mark_attention_site", "report_attention", "unmark_attention_site", "first_token_readout",
    "first_token_readout_supported",
]


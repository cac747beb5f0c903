"""Capture for attention modules that do not go through transformers' attention registry.

Two ways, neither forks any model code:

* **forward hooks**: ``mark_attention_site(module, weights_from=...)`` registers a hook that
  reads the attention matrix from the module's inputs/output (e.g. ``output[1]`` for modules
  returning ``(hidden, weights)``, like ``nn.MultiheadAttention`` with ``need_weights=True``).
* **reporting**: a custom module calls :func:`report_attention` from its own ``forward``; this
  costs nothing when no capture is running. Used by the trained efficient-attention modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .adapters import AttentionSite
from .attention import Record, active_session, reduce_record

__all__ = ["mark_attention_site", "unmark_attention_site", "report_attention"]


def mark_attention_site(
    module: nn.Module,
    *,
    layer: int,
    stack: str = "main",
    kind: str = "self",
    out_proj: nn.Module | None = None,
    conv1d_layout: bool = False,
    weights_from: Callable[[tuple, Any], torch.Tensor] | None = None,
    values_from: Callable[[tuple, Any], torch.Tensor] | None = None,
) -> AttentionSite:
    """Declare ``module`` an attention site so that capture records it.

    Args:
        module: the attention module.
        layer: its layer index.
        stack / kind: as in :class:`AttentionSite` (``"main"``, ``"self"`` by default).
        out_proj: the output projection (for effective attention); a Linear or GPT-2 Conv1D.
        weights_from: ``(inputs, output) -> (B, H, n, m)`` matrix; registers a forward hook.
            Leave None when the module calls :func:`report_attention` itself.
        values_from: ``(inputs, output) -> (B, H, m, d_v)`` value vectors (optional).
    """
    from .adapters import AdapterRule

    rule = AdapterRule("marked", (), "", layout="conv1d" if conv1d_layout else "linear")
    site = AttentionSite(
        key=f"{stack}.{layer}.{kind}", module_name="", stack=stack, layer=layer, kind=kind,
        rule=rule, out_proj=out_proj, module=module,
    )
    module._attnexplain_site = site
    if weights_from is not None:

        def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            probs = weights_from(inputs, output)
            values = values_from(inputs, output) if values_from is not None else None
            report_attention(mod, probs, values)

        module._attnexplain_hook = module.register_forward_hook(hook)
    return site


def unmark_attention_site(module: nn.Module) -> None:
    """Undo :func:`mark_attention_site`."""
    handle = getattr(module, "_attnexplain_hook", None)
    if handle is not None:
        handle.remove()
        del module._attnexplain_hook
    if hasattr(module, "_attnexplain_site"):
        del module._attnexplain_site


def report_attention(module: nn.Module, probs: torch.Tensor, values: torch.Tensor | None = None) -> None:
    """Hand an attention (or token-mixing) matrix (B, H, n, m) to the active capture, if any.

    A no-op outside a capture session or when the module is not a marked site.
    """
    state = active_session()
    if state is None:
        return
    site = getattr(module, "_attnexplain_site", None)
    if site is None or state.spec is None or not state.spec.wants(site):
        return
    if probs.dim() != 4:
        raise ValueError(f"report_attention expects (batch, heads, n, m), got shape {tuple(probs.shape)}")
    spec = state.spec
    heads = spec.heads
    stored = probs.detach()
    if heads is not None:
        stored = stored[:, heads]
    state.calls += 1
    rec = Record(
        site=site,
        probs=stored.to(spec.dtype),
        values=values.detach().to(spec.dtype) if (values is not None and spec.store_values) else None,
        heads=heads,
        num_heads=probs.shape[1],
    )
    state.records.append(reduce_record(spec, rec) if spec.reduced else rec)

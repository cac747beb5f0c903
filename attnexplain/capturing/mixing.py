"""Opt-in capture of what the context-mixing methods need beyond the attention matrices.

One forward pass inside a capture session (attention probabilities and values from the
registered attention function) plus forward hooks on the modules the adapter table names: the
transformer blocks (their inputs, the residual stream; their outputs) and, for post-LN blocks,
both LayerNorms (their inputs and parameters). No model code is forked; nothing here runs
unless a context-mixing method asks for it.

:func:`capture_mixing` returns a :class:`MixingCapture`; :func:`rerun_block` re-runs one block
on the recorded inputs with attention interventions (value zeroing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adapters import AttentionSite, UnsupportedArchitectureError, _resolve
from .attention import CaptureSpec, Intervention, session

__all__ = ["BlockRecord", "MixingCapture", "capture_mixing", "rerun_block", "block_sites", "require_post_ln", "zero_value_columns"]


@dataclass
class BlockRecord:
    """One self-attention block of one batch.

    Attributes:
        site: the block's attention site (adapter rule, output projection...).
        block: the transformer block module.
        hidden_in: ``(B, n, d)`` the block's input (the residual stream before attention).
        hidden_out: ``(B, n, d)`` the block's output.
        attention: ``(B, H, n, n)``; values ``(B, H, n, d_h)`` (grouped-query heads repeated).
        call_args / call_kwargs: what the block was called with (for :func:`rerun_block`).
        norms: post-LN blocks only: ``{"attention"|"output": (input (B, n, d), output, weight, bias, eps)}``.
    """

    site: AttentionSite
    block: nn.Module
    hidden_in: torch.Tensor
    hidden_out: torch.Tensor
    attention: torch.Tensor
    values: torch.Tensor
    call_args: tuple
    call_kwargs: dict
    norms: dict[str, tuple] = field(default_factory=dict)
    _T: torch.Tensor | None = field(default=None, repr=False)
    _Wc: tuple | None = field(default=None, repr=False)

    def value_transforms(self) -> torch.Tensor:
        """``T = V_h W_O^h``: (B, H, n, d) (computed once, kept)."""
        if self._T is None:
            W = self.site.output_projection_blocks(self.values.shape[1]).detach().to(self.values.dtype)
            self._T = self.values @ W
        return self._T

    def centered_out_proj(self, weight: torch.Tensor | None) -> torch.Tensor:
        """``W_O^h`` blocks (H, d_h, d) with each row centred over ``d`` and multiplied by ``weight``:
        ``V_h @ result = gamma * (T_h - mean_d T_h)`` (kept per weight tensor)."""
        key = id(weight)
        if self._Wc is None or self._Wc[0] != key:
            W = self.site.output_projection_blocks(self.values.shape[1]).detach().to(self.values.dtype)
            W = W - W.mean(-1, keepdim=True)
            if weight is not None:
                W = W * weight.to(W.dtype)
            self._Wc = (key, W)
        return self._Wc[1]

    @property
    def out_proj_bias(self) -> torch.Tensor | None:
        b = getattr(self.site.out_proj, "bias", None)
        return None if b is None else b.detach()


@dataclass
class MixingCapture:
    """What :func:`capture_mixing` recorded: one :class:`BlockRecord` per layer (layer order)."""

    blocks: list[BlockRecord]
    logits: torch.Tensor | None
    attention_mask: torch.Tensor | None
    model: nn.Module

    @property
    def layers(self) -> list[int]:
        return [b.site.layer for b in self.blocks]


def _first_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    raise TypeError(f"cannot find the hidden states in a block output of type {type(x).__name__}")


def block_sites(model: nn.Module, *, stack: str | None = None) -> list[AttentionSite]:
    """The self-attention sites of one stack (the primary one by default), layer order, each with
    its block located through ``AdapterRule.block_path``.

    Raises:
        UnsupportedArchitectureError: no rule, or the rule does not name the block.
    """
    from .attention import _model_sites

    sites = [s for s in _model_sites(model).values() if s.kind == "self"]
    if not sites:
        raise UnsupportedArchitectureError(f"{type(model).__name__}: no self-attention module found by the adapter table")
    stacks = {s.stack for s in sites}
    if stack is None:
        stack = next((c for c in ("main", "encoder", "decoder") if c in stacks), sorted(stacks)[0])
    sites = sorted((s for s in sites if s.stack == stack), key=lambda s: s.layer)
    for s in sites:
        if s.rule is None or s.rule.block_path is None or _resolve(model, s.module_name, s.rule.block_path) is None:
            raise UnsupportedArchitectureError(
                f"the adapter table does not say where the transformer block of {s.module_name!r} is "
                f"(rule {getattr(s.rule, 'name', None)!r}); add block_path to its rule in attnexplain.capturing.adapters"
            )
    return sites


def require_post_ln(model: nn.Module, method: str) -> None:
    """Refuse models whose blocks are not post-LN with ``nn.LayerNorm`` (with the reason)."""
    for s in block_sites(model):
        layout = s.rule.post_ln if s.rule is not None else None
        if layout is None:
            raise UnsupportedArchitectureError(
                f"{method} decomposes post-LN blocks with nn.LayerNorm (BERT, RoBERTa, ELECTRA, XLM-R, DistilBERT); "
                f"{type(model).__name__} ({getattr(s.rule, 'name', 'unknown')} attention) has no post-LN layout in the "
                "adapter table (pre-LN blocks such as GPT-2's, RMSNorm blocks such as Llama's or T5's, and encoder-decoders "
                "are not covered by this decomposition). Use value_zeroing or grad_rollout for it."
            )
        for path in (layout.attention_norm_path, layout.output_norm_path):
            mod = _resolve(model, s.module_name, path)
            if not isinstance(mod, nn.LayerNorm):
                raise UnsupportedArchitectureError(
                    f"{method}: expected an nn.LayerNorm at {s.module_name}/{path}, found {type(mod).__name__}"
                )
        return


def capture_mixing(model: nn.Module, batch: dict[str, torch.Tensor], *, norms: bool = False,
                   dtype: torch.dtype | None = None) -> MixingCapture:
    """Run ``model`` once on ``batch`` and record every self-attention block of its primary stack.

    Args:
        model: an HF model running an attnexplain attention backend.
        batch: model inputs.
        norms: also record both LayerNorms of each block (post-LN models only;
            :func:`require_post_ln` is checked first).
        dtype: store the tensors in this dtype (default: as computed).

    Raises:
        UnsupportedArchitectureError: see :func:`block_sites` / :func:`require_post_ln`.
    """
    sites = block_sites(model)
    if norms:
        require_post_ln(model, "this method")
    conv = (lambda t: t.detach()) if dtype is None else (lambda t: t.detach().to(dtype))
    store: dict[str, dict[str, Any]] = {s.key: {} for s in sites}
    handles = []

    def block_pre(key):
        def hook(mod, args, kwargs):
            hs = args[0] if args else next((kwargs[k] for k in ("hidden_states", "x") if k in kwargs), None)
            if hs is None:
                raise UnsupportedArchitectureError(f"cannot find the hidden states among the inputs of block {key}")
            store[key]["hidden_in"] = conv(hs)
            store[key]["call"] = (args, kwargs)
        return hook

    def block_post(key):
        def hook(mod, args, kwargs, out):
            store[key]["hidden_out"] = conv(_first_tensor(out))
        return hook

    def norm_hook(key, which):
        def hook(mod, args, out):
            store[key].setdefault("norms", {})[which] = (
                conv(args[0]), conv(out), mod.weight.detach() if mod.weight is not None else None,
                None if mod.bias is None else mod.bias.detach(), float(mod.eps))
        return hook

    for s in sites:
        block = _resolve(model, s.module_name, s.rule.block_path)
        handles.append(block.register_forward_pre_hook(block_pre(s.key), with_kwargs=True))
        handles.append(block.register_forward_hook(block_post(s.key), with_kwargs=True))
        if norms:
            handles.append(_resolve(model, s.module_name, s.rule.post_ln.attention_norm_path).register_forward_hook(norm_hook(s.key, "attention")))
            handles.append(_resolve(model, s.module_name, s.rule.post_ln.output_norm_path).register_forward_hook(norm_hook(s.key, "output")))
    store_dtype = dtype or (torch.float64 if _dtype_of(model) == torch.float64 else torch.float32)
    spec = CaptureSpec(layers={s.layer for s in sites}, stacks={sites[0].stack}, kinds={"self"}, dtype=store_dtype,
                       store_values=True)
    try:
        with torch.no_grad(), session(model, spec) as state:
            out = model(**_without_cache(model, batch))
    finally:
        for h in handles:
            h.remove()
    recs = {r.site.key: r for r in state.records}
    blocks = []
    for s in sites:
        if s.key not in recs or "hidden_in" not in store[s.key]:
            raise UnsupportedArchitectureError(f"no attention was recorded at {s.key}: does the model run an attnexplain backend?")
        r = recs[s.key]
        if r.values is None:
            raise UnsupportedArchitectureError(f"no value vectors were recorded at {s.key}")
        args, kwargs = store[s.key]["call"]
        blocks.append(BlockRecord(
            site=s, block=_resolve(model, s.module_name, s.rule.block_path),
            hidden_in=store[s.key]["hidden_in"], hidden_out=store[s.key]["hidden_out"],
            attention=r.probs, values=r.values, call_args=args, call_kwargs=kwargs,
            norms=store[s.key].get("norms", {}),
        ))
    return MixingCapture(blocks=blocks, logits=getattr(out, "logits", None), attention_mask=batch.get("attention_mask"),
                         model=model)


def _without_cache(model: nn.Module, batch: dict) -> dict:
    """``use_cache=False`` for models that take it: a key/value cache passed to the blocks would
    grow when a block is re-run."""
    import inspect

    try:
        takes = "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes = False
    return {**batch, "use_cache": False} if takes and "use_cache" not in batch else dict(batch)


def _dtype_of(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.float32


def _select_rows(x: Any, B: int, index: torch.Tensor) -> Any:
    """Rows ``index`` of every tensor (with >= 2 dims) whose first dim is the batch ``B``, recursively
    through tuples, lists and dicts; anything else unchanged. With ``B == 1`` leading-1 tensors are
    copied too (a broadcast mask copied is still correct)."""
    if isinstance(x, torch.Tensor):
        return x.index_select(0, index.to(x.device)) if x.dim() >= 2 and x.shape[0] == B else x
    if isinstance(x, tuple):
        return tuple(_select_rows(v, B, index) for v in x)
    if isinstance(x, list):
        return [_select_rows(v, B, index) for v in x]
    if isinstance(x, dict):
        return {k: _select_rows(v, B, index) for k, v in x.items()}
    return x


def rerun_block(
    capture: MixingCapture, layer_index: int, rows: torch.Tensor,
    intervention: Intervention | None = None,
) -> torch.Tensor:
    """Re-run one recorded block on copies of its recorded inputs.

    Args:
        capture: from :func:`capture_mixing`.
        layer_index: position of the block in ``capture.blocks``.
        rows: ``(R,)`` example index of each copy (the block runs on ``R`` sequences).
        intervention: applied to the block's attention matrix ``(R, H, n, m)`` through the
            attention-function interventions the ablations use, e.g. :func:`zero_value_columns`.

    Returns:
        ``(R, n, d)`` the block's output hidden states.
    """
    rec = capture.blocks[layer_index]
    B = rec.hidden_in.shape[0]
    args = _select_rows(rec.call_args, B, rows)
    kwargs = _select_rows(rec.call_kwargs, B, rows)
    interventions = {rec.site.key: intervention} if intervention is not None else {}
    with torch.no_grad(), session(capture.model, None, interventions):
        out = rec.block(*args, **kwargs)
    return _first_tensor(out)


def zero_value_columns(columns: torch.Tensor) -> Callable:
    """An intervention that zeroes key column ``columns[r]`` of copy ``r`` in every head:
    ``A'[r, :, :, columns[r]] = 0`` without renormalising, i.e. ``A' V = A V'`` with ``v_j = 0``."""

    def zero(A, call, site):
        keep = torch.ones(A.shape[0], A.shape[-1], dtype=A.dtype, device=A.device)
        keep[torch.arange(A.shape[0], device=A.device), columns.to(A.device)] = 0
        return A * keep[:, None, None, :]

    return zero

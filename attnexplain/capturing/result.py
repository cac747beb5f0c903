"""The capture verb and its result.

>>> lm = attnexplain.load_model("minilm-rotten-tomatoes")
>>> res = attnexplain.capture(lm, ["a gorgeous, witty film", "dull"])
>>> res.attention(layer=3).shape          # (batch, heads, n, n)
>>> res.stacked().shape                   # (layers, batch, heads, n, n)
>>> res.value_transforms(layer=3).shape   # T = V_h W_O^h: (batch, heads, n, d_model)
>>> res.example(0).tokens, res.probs, res.predicted
>>> res.to_dataframe(example=0, layers=[0])

Memory: full capture stores L x H x n^2 numbers per example (MiniLM at 128 tokens: 6 x 12 x
128^2 x 4 bytes = 4.7 MB per example in float32). Cut it with ``layers=``, ``heads=`` and
``dtype=torch.float16``; ``store_values=False`` drops the value vectors (L x H x n x d_h).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import AttnExplainError
from .adapters import AttentionSite
from .attention import CaptureSpec, Record, _model_sites, backend_of, session

__all__ = ["CaptureResult", "ExampleView", "capture", "NothingCapturedError"]


class NothingCapturedError(AttnExplainError, RuntimeError):
    """The model ran, but no attention call reached attnexplain."""


@dataclass
class CaptureResult:
    """Attention captured from one batch.

    Attributes:
        input_ids / attention_mask: (B, n) model inputs (None for non-text models).
        tokens: token strings per example, padding removed.
        logits: (B, C) or (B, n, V) model output logits (None if the model returns none).
        labels: class names for classifiers.
        records: site key -> list of records (one per forward pass; several when generating).
        sites: site key -> :class:`AttentionSite`.
        out_proj: site key -> per-head output-projection blocks (H, d_h, d), when known.
        backend: attention implementation the model ran.
    """

    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    tokens: list[list[str]]
    logits: torch.Tensor | None
    labels: list[str] | None
    records: dict[str, list[Record]]
    sites: dict[str, AttentionSite]
    out_proj: dict[str, torch.Tensor] = field(default_factory=dict)
    backend: str = ""
    _bases: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- predictions ------------------------------------------------------------------------
    @property
    def probs(self) -> torch.Tensor | None:
        """Softmax of the logits (last position for sequence outputs)."""
        if self.logits is None:
            return None
        logits = self.logits if self.logits.dim() == 2 else self.logits[:, -1]
        return torch.softmax(logits.float(), dim=-1)

    @property
    def predicted(self) -> list[int] | None:
        p = self.probs
        return None if p is None else p.argmax(-1).tolist()

    @property
    def predicted_labels(self) -> list[str] | None:
        pred = self.predicted
        if pred is None:
            return None
        return [self.labels[i] if self.labels and i < len(self.labels) else str(i) for i in pred]

    # -- attention --------------------------------------------------------------------------
    @property
    def site_keys(self) -> list[str]:
        return sorted(self.records, key=lambda k: (self.sites[k].stack, self.sites[k].kind, self.sites[k].layer))

    def _key(self, layer: int, stack: str | None, kind: str) -> str:
        if stack is None:
            stack = self.primary_stack
        key = f"{stack}.{layer}.{kind}"
        if key not in self.records:
            raise KeyError(f"no attention captured at {key!r}; captured: {self.site_keys}")
        return key

    @property
    def primary_stack(self) -> str:
        stacks = {s.stack for s in self.sites.values() if s.key in self.records}
        for cand in ("main", "encoder", "decoder"):
            if cand in stacks:
                return cand
        return next(iter(stacks)) if stacks else "main"

    def layers(self, stack: str | None = None, kind: str = "self") -> list[int]:
        stack = stack or self.primary_stack
        return sorted(s.layer for k, s in self.sites.items() if k in self.records and s.stack == stack and s.kind == kind)

    def heads(self, layer: int | None = None) -> list[int]:
        key = self._key(layer if layer is not None else self.layers()[0], None, "self")
        rec = self.records[key][0]
        return list(rec.heads) if rec.heads is not None else list(range(rec.num_heads))

    def _record(self, layer: int, stack: str | None, kind: str, step: int) -> Record:
        return self.records[self._key(layer, stack, kind)][step]

    def attention(self, layer: int, *, stack: str | None = None, kind: str = "self", step: int = 0,
                  examples: list[int] | None = None) -> torch.Tensor:
        """Attention matrix (B, H_captured, n, m) of one layer (dense); ``examples``: only those
        batch examples, (len(examples), H, n, m).

        Raises:
            ValueError: the capture kept the full matrices of other examples only (``full_examples``).
        """
        rec = self._record(layer, stack, kind, step)
        a = rec.probs
        a = a.to_dense() if a.is_sparse else a
        if rec.examples is None:
            return a if examples is None else a[list(examples)]
        held = {e: k for k, e in enumerate(rec.examples)}
        wanted = list(range(rec.n_batch)) if examples is None else list(examples)
        missing = [e for e in wanted if e not in held]
        if missing:
            raise ValueError(
                f"the full attention matrices of example(s) {missing[:5]} at {rec.site.key} were not captured "
                f"(captured in full: {rec.examples}); capture them with full_examples=..., or without "
                "query_rows/head_means/full_examples for every example")
        return a[[held[e] for e in wanted]]

    def readout_rows(self, layer: int, positions: torch.Tensor, *, stack: str | None = None, kind: str = "self",
                     step: int = 0) -> torch.Tensor:
        """Row ``positions[b]`` of example ``b``'s attention, every captured head: (B, H, 1, m).

        Read from the rows the capture kept (``query_rows``) when they are these positions, else
        sliced from the full matrices."""
        rec = self._record(layer, stack, kind, step)
        pos = torch.as_tensor(positions).reshape(-1)
        if rec.rows is not None and rec.row_positions is not None and torch.equal(
                rec.row_positions.to(pos.device, torch.long), pos.long()):
            return rec.rows
        A = self.attention(layer, stack=stack, kind=kind, step=step)
        return A[torch.arange(A.shape[0], device=A.device), :, pos.to(A.device)].unsqueeze(-2)

    def head_mean(self, layer: int, *, stack: str | None = None, kind: str = "self", step: int = 0) -> torch.Tensor:
        """Mean over the captured heads of one layer's attention: (B, n, m) (kept by ``head_means``,
        else computed from the full matrices)."""
        rec = self._record(layer, stack, kind, step)
        if rec.head_mean is not None:
            return rec.head_mean
        return self.attention(layer, stack=stack, kind=kind, step=step).mean(1)

    def derived(self, layer: int, *, stack: str | None = None, kind: str = "self", step: int = 0) -> Any:
        """What the capture's ``on_matrices`` callback returned for one layer (None without one)."""
        return self._record(layer, stack, kind, step).derived

    def num_keys(self, layer: int, *, stack: str | None = None, kind: str = "self", step: int = 0) -> int:
        """m, the keys of one layer's attention (padded batch length for self-attention)."""
        return int(self._record(layer, stack, kind, step).probs.shape[-1])

    @property
    def batch_size(self) -> int:
        """Examples in the batch."""
        return next(iter(self.records.values()))[0].n_batch

    def stacked(self, *, stack: str | None = None, kind: str = "self", examples: list[int] | None = None) -> torch.Tensor:
        """All captured layers of a stack: (L, B, H, n, m) (``examples``: only those, (L, S, H, n, m))."""
        return torch.stack([self.attention(l, stack=stack, kind=kind, examples=examples)
                            for l in self.layers(stack, kind)])

    def values(self, layer: int, *, stack: str | None = None, kind: str = "self", step: int = 0) -> torch.Tensor:
        """Value vectors (B, H_captured, m, d_h) of one layer."""
        rec = self.records[self._key(layer, stack, kind)][step]
        if rec.values is None:
            raise ValueError("values were not stored; capture with store_values=True")
        v = rec.values
        return v[:, rec.heads] if rec.heads is not None else v

    def out_proj_blocks(self, layer: int, *, stack: str | None = None, kind: str = "self") -> torch.Tensor:
        """Output-projection blocks W_O^h (H_captured, d_h, d) of one layer."""
        key = self._key(layer, stack, kind)
        if key not in self.out_proj:
            raise ValueError(f"the output projection of {key} is unknown (site marked without out_proj)")
        rec = self.records[key][0]
        w = self.out_proj[key]
        return w[rec.heads] if rec.heads is not None else w

    def value_transforms(self, layer: int, *, stack: str | None = None, kind: str = "self", step: int = 0) -> torch.Tensor:
        """T = V_h W_O^h (B, H_captured, m, d): what each key adds to the output per unit of attention."""
        v = self.values(layer, stack=stack, kind=kind, step=step)
        w = self.out_proj_blocks(layer, stack=stack, kind=kind).to(v.dtype)
        return v @ w  # (B, H, m, d_v) @ (H, d_v, d): one batched GEMM

    def _site_key_mask(self, layer: int, stack: str | None, kind: str, step: int = 0) -> torch.Tensor | None:
        """(B, m) key mask of a site: True for the keys its own attention mask lets through.

        Each site's keys carry their own padding: the source tokens' mask for cross-attention, the
        decoder's for decoder self-attention, the input's for encoder/decoder-only self-attention;
        read from the mask the attention call itself received. Sites that report their matrices
        themselves (marked sites) fall back to the input mask for self-attention of the input's length.
        """
        rec = self.records[self._key(layer, stack, kind)][step]
        if rec.key_mask_known:
            return None if rec.key_mask is None else rec.key_mask.to(rec.probs.device)
        km = self.key_mask
        if km is None or kind != "self" or self.sites[self._key(layer, stack, kind)].stack == "decoder":
            return None
        return km.to(rec.probs.device) if km.shape[-1] == rec.probs.shape[-1] else None

    def effective_basis(self, layer: int, *, stack: str | None = None, kind: str = "self", step: int = 0,
                        rtol: float | None = None, preserve_row_sums: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Orthonormal basis of the column space of the value transforms, ``(U_r, rank)``.

        :func:`attnexplain.functional.value_space_basis` of this layer's values and output
        projection (padding keys masked): ``(B, H, m, r_max)`` float64 and ``(B, H)``. Computed
        once per (layer, options) and kept with the result, so every consumer of effective
        attention (explanations, head statistics, the dashboard) shares one factorisation.
        """
        from ..functional import value_space_basis

        key = (self._key(layer, stack, kind), step, rtol, bool(preserve_row_sums))
        rec = self.records[key[0]][step]
        if key not in self._bases and rec.basis is not None and rtol is None and not preserve_row_sums:
            self._bases[key] = rec.basis  # computed at capture time from the same values (effective_basis=True)
        if key not in self._bases:
            V = self.values(layer, stack=stack, kind=kind, step=step)
            W = self.out_proj_blocks(layer, stack=stack, kind=kind)
            self._bases[key] = value_space_basis(V, W, key_mask=self._site_key_mask(layer, stack, kind, step), rtol=rtol,
                                                 with_ones=preserve_row_sums)
        return self._bases[key]

    def effective_attention(self, layer: int, *, stack: str | None = None, kind: str = "self", step: int = 0,
                            rtol: float | None = None, preserve_row_sums: bool = False,
                            examples: list[int] | None = None) -> torch.Tensor:
        """Effective attention ``A U_r U_r^T`` of one layer, (B, H, n, m) float32 (Brunner et al., ICLR 2020).

        Equal to :func:`attnexplain.functional.effective_attention_from_values` on this layer's
        attention, values and output projection; the basis comes from :meth:`effective_basis`.
        Padding keys' columns are 0. ``examples``: only those batch examples.
        """
        from ..functional import effective_attention_from_basis

        U, _ = self.effective_basis(layer, stack=stack, kind=kind, step=step, rtol=rtol,
                                    preserve_row_sums=preserve_row_sums)
        A = self.attention(layer, stack=stack, kind=kind, step=step, examples=examples)
        km = self._site_key_mask(layer, stack, kind, step)
        if examples is not None:
            sel = torch.as_tensor(list(examples), dtype=torch.long)
            U = U.index_select(0, sel.to(U.device)) if U.shape[0] > 1 else U
            km = None if km is None else km.index_select(0, sel.to(km.device))
        # U from effective_basis: zero rows at the same masked keys
        return effective_attention_from_basis(A.to(U.device), U, key_mask=None if km is None else km[:, None, :],
                                              rows_masked=True)

    @property
    def key_mask(self) -> torch.Tensor | None:
        """(B, n) bool, True for real (non-padding) tokens."""
        return None if self.attention_mask is None else self.attention_mask.bool()

    # -- per example ------------------------------------------------------------------------
    def example(self, i: int) -> "ExampleView":
        """One example with padding removed: tokens and (L, H, n_i, n_i) attention."""
        full = self.stacked(examples=[i])[:, 0]
        if self.attention_mask is not None:
            idx = self.attention_mask[i].bool().nonzero().flatten()
        else:
            idx = torch.arange(full.shape[-1])
        att = full[..., idx, :][..., idx]
        probs = None if self.probs is None else self.probs[i]
        return ExampleView(tokens=self.tokens[i], attentions=att, positions=idx, probs=probs, labels=self.labels)

    # -- conversions ------------------------------------------------------------------------
    def to_numpy(self) -> dict[str, Any]:
        """Plain numpy arrays: ``attentions`` (L, B, H, n, m), ``probs``, ``input_ids``..."""
        out: dict[str, Any] = {"attentions": self.stacked().float().cpu().numpy(), "tokens": self.tokens}
        for name in ("input_ids", "attention_mask", "logits"):
            t = getattr(self, name)
            if t is not None:
                out[name] = t.detach().float().cpu().numpy() if name == "logits" else t.cpu().numpy()
        if self.probs is not None:
            out["probs"] = self.probs.cpu().numpy()
        return out

    def to_dataframe(self, example: int = 0, *, layers: list[int] | None = None, heads: list[int] | None = None):
        """Long-format pandas table of one example: layer, head, query, key, tokens, weight."""
        import pandas as pd

        view = self.example(example)
        all_layers = self.layers()
        sel_layers = layers if layers is not None else all_layers
        head_ids = self.heads()
        sel_heads = heads if heads is not None else head_ids
        toks = np.asarray(view.tokens, dtype=object)
        n = len(toks)
        q_idx, k_idx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        frames = []
        for l in sel_layers:
            li = all_layers.index(l)
            for h in sel_heads:
                hi = head_ids.index(h)
                w = view.attentions[li, hi].float().cpu().numpy()
                frames.append(pd.DataFrame({
                    "layer": l, "head": h, "query": q_idx.ravel(), "key": k_idx.ravel(),
                    "query_token": toks[q_idx.ravel()], "key_token": toks[k_idx.ravel()], "weight": w.ravel(),
                }))
        return pd.concat(frames, ignore_index=True)

    @property
    def nbytes(self) -> int:
        total = 0
        for recs in self.records.values():
            for r in recs:
                p = r.probs
                total += (p._values().numel() * p.element_size()) if p.is_sparse else p.numel() * p.element_size()
                for extra in (r.rows, r.head_mean):
                    if extra is not None:
                        total += extra.numel() * extra.element_size()
                if r.values is not None:
                    total += r.values.numel() * r.values.element_size()
        return total


class _LazyTokens:
    """Token strings computed on first read of :attr:`CaptureResult.tokens` (the readable strings of a
    16 x 128 batch take a few ms: more than some captures' own overhead)."""

    __slots__ = ("make",)

    def __init__(self, make: Any) -> None:
        self.make = make


def _get_tokens(self: CaptureResult) -> list[list[str]]:
    toks = self.__dict__.get("_tokens")
    if isinstance(toks, _LazyTokens):
        toks = self.__dict__["_tokens"] = toks.make()
    return toks


def _set_tokens(self: CaptureResult, value: Any) -> None:
    self.__dict__["_tokens"] = value


def _getstate(self: CaptureResult) -> dict[str, Any]:
    _get_tokens(self)  # pickled (e.g. to a Ray worker) with its strings, not the closure that makes them
    return self.__dict__


# a property installed after @dataclass made the field (so ``tokens=`` stays a constructor argument)
CaptureResult.tokens = property(_get_tokens, _set_tokens, doc="token strings per example, padding removed")
CaptureResult.__getstate__ = _getstate


@dataclass
class ExampleView:
    """One example of a :class:`CaptureResult`, padding removed."""

    tokens: list[str]
    attentions: torch.Tensor  # (L, H, n, n)
    positions: torch.Tensor
    probs: torch.Tensor | None
    labels: list[str] | None


def _model_of(model: Any) -> tuple[nn.Module, Any]:
    from ..models import LoadedModel, torch_module

    return torch_module(model), (model if isinstance(model, LoadedModel) else None)


def _raise_nothing_captured(torch_model: nn.Module, state: Any) -> None:
    """The real reason an attention capture came back empty."""
    from .adapters import UnsupportedArchitectureError, unsupported_message

    impl = getattr(getattr(torch_model, "config", None), "_attn_implementation", None)
    if state.unmatched_calls and state.adapter_error is not None:
        raise UnsupportedArchitectureError(str(state.adapter_error))
    if state.unmatched_calls:
        raise UnsupportedArchitectureError(unsupported_message(
            torch_model, f"{state.unmatched_calls} attention call(s) came from modules the adapter table does not know"))
    if backend_of(torch_model) is None:
        raise NothingCapturedError(
            f"{type(torch_model).__name__} runs attention implementation {impl!r}, not an attnexplain backend, and has no "
            "marked attention sites: switch it with attnexplain.use_backend(model), or mark its attention modules with "
            "attnexplain.capturing.mark_attention_site"
        )
    raise NothingCapturedError(
        f"{type(torch_model).__name__} ran under {impl!r} but made no attention call (capture options "
        "layers/stacks/kinds may exclude every site)"
    )


def _check_batch_layout(torch_model: nn.Module, records: list[Record], batch: dict[str, Any]) -> None:
    """Refuse matrices whose batch axis is not the input's: window attention (Swin) runs each window
    of each image as its own row, which is not one attention matrix per example."""
    from .adapters import UnsupportedArchitectureError, unsupported_message

    ref = next((v for k, v in batch.items() if k in ("input_ids", "pixel_values", "inputs_embeds", "input_features")
                and isinstance(v, torch.Tensor)), None)
    if ref is None:
        return
    for rec in records:
        if rec.n_batch != ref.shape[0]:
            raise UnsupportedArchitectureError(unsupported_message(
                torch_model, f"its attention at {rec.site.key} runs on {rec.n_batch} rows for {ref.shape[0]} "
                "input(s): window attention (each window of each image attends separately), which is not one "
                "token-by-token matrix per example"))


@contextlib.contextmanager
def _window_geometry(torch_model: nn.Module):
    """For window-attention sites (Swin): record each block's input grid, window and shift per call."""
    from .adapters import _resolve

    try:  # the model's site table, found once per model (walking the modules costs every call)
        sites = [s for s in _model_sites(torch_model).values() if s.rule is not None and s.rule.windowed]
    except ValueError:
        sites = []
    geometry: dict[str, list[tuple[int, int, int, int]]] = {}
    handles = []
    for site in sites:
        block = _resolve(torch_model, site.module_name, site.rule.block_path)
        if block is None:
            continue

        def pre(mod, args, kwargs, key=site.key):
            dims = kwargs.get("input_dimensions", args[1] if len(args) > 1 else None)
            geometry.setdefault(key, []).append((int(dims[0]), int(dims[1]), -1, -1))

        def post(mod, args, kwargs, out, key=site.key):
            h, w, _, _ = geometry[key][-1]
            geometry[key][-1] = (h, w, int(mod.window_size), int(mod.shift_size))

        handles += [block.register_forward_pre_hook(pre, with_kwargs=True),
                    block.register_forward_hook(post, with_kwargs=True)]
    try:
        yield geometry
    finally:
        for h in handles:
            h.remove()


def _window_index(height: int, width: int, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For the windows of one image (as Swin partitions its padded grid rolled by -shift): the token
    index (row-major in the unpadded grid) of each window slot, and whether it is a real token.
    Returns (n_windows, window**2) long and bool tensors."""
    hp, wp = -(-height // window) * window, -(-width // window) * window
    ys = torch.arange(hp)[:, None].expand(hp, wp)
    xs = torch.arange(wp)[None, :].expand(hp, wp)
    # slot (Y, X) of the rolled grid holds the token at ((Y + shift) mod hp, (X + shift) mod wp)
    oy, ox = (ys + shift) % hp, (xs + shift) % wp
    nwy, nwx = hp // window, wp // window

    def part(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(nwy, window, nwx, window).transpose(1, 2).reshape(nwy * nwx, window * window)

    oy, ox = part(oy), part(ox)
    real = (oy < height) & (ox < width)
    return torch.where(real, oy * width + ox, torch.zeros_like(oy)), real


def _fold_windows(rec: Record, geometry: dict[str, list[tuple[int, int, int, int]]]) -> Record:
    """A window-attention record (B * n_windows, H, w^2, w^2) as (B, H, N, N) over the image's N
    tokens (0 between tokens of different windows); its values (B, H, N, d) likewise."""
    import dataclasses

    calls = geometry.get(rec.site.key)
    if not calls:
        return rec
    height, width, window, shift = calls.pop(0)
    idx, real = _window_index(height, width, window, shift)
    n_win, slots = idx.shape
    probs = rec.probs.to_dense() if rec.probs.is_sparse else rec.probs
    if probs.shape[0] % n_win or probs.shape[-1] != slots:
        return rec  # not the layout expected: left as is (refused by the batch-layout check)
    B, H, N = probs.shape[0] // n_win, probs.shape[1], height * width
    p = probs.reshape(B, n_win, H, slots, slots)
    out = probs.new_zeros(B, H, N, N)
    values = None
    if rec.values is not None:
        v = rec.values.reshape(B, n_win, rec.values.shape[1], slots, rec.values.shape[-1])
        values = rec.values.new_zeros(B, rec.values.shape[1], N, rec.values.shape[-1])
    for w in range(n_win):
        r = real[w].nonzero().flatten()
        t = idx[w, r].to(probs.device)
        out[:, :, t[:, None], t[None, :]] = p[:, w][:, :, r][..., r]
        if values is not None:
            values[:, :, t] = v[:, w][:, :, r]
    return dataclasses.replace(rec, probs=out, values=values, key_mask=None, key_mask_known=True)


def _one_site_per_call(records: list[Record]) -> list[Record]:
    """Models that reuse one attention module for several layers (ALBERT's shared layer) call the
    same site more than once per forward pass: the k-th call of a (stack, kind) becomes layer k."""
    counts: dict[str, int] = defaultdict(int)
    for rec in records:
        counts[rec.site.key] += 1
    if all(c == 1 for c in counts.values()):
        return records
    import dataclasses

    out, order = [], defaultdict(int)
    for rec in records:
        group = (rec.site.stack, rec.site.kind)
        layer = order[group]
        order[group] += 1
        site = dataclasses.replace(rec.site, layer=layer, key=f"{rec.site.stack}.{layer}.{rec.site.kind}")
        out.append(dataclasses.replace(rec, site=site))
    return out


def _prepare_model(torch_model: nn.Module) -> None:
    """Positions that follow the mask; the dense backend for a model that runs no attnexplain
    backend and has no marked sites (a bare HF model straight from ``from_pretrained``)."""
    from .attention import _marked_sites, use_backend
    from .positions import follow_mask_positions

    follow_mask_positions(torch_model)
    if backend_of(torch_model) is None and not _marked_sites(torch_model) and hasattr(torch_model, "set_attn_implementation"):
        use_backend(torch_model, "dense")


def capture(
    model: Any,
    inputs: str | list[str] | dict[str, torch.Tensor],
    *,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    stacks: list[str] | None = None,
    kinds: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
    store_values: bool = True,
    keep_sparse: bool = False,
    text_pairs: list[str] | None = None,
    max_length: int | None = None,
    on_long: str = "truncate",
    query_rows: Any = None,
    head_means: bool = False,
    full_examples: list[int] | None = None,
    effective_basis: bool = False,
    on_matrices: Any = None,
    **forward_kwargs: Any,
) -> CaptureResult:
    """Run ``model`` once on ``inputs`` and return the attention it used.

    Args:
        model: a :class:`~attnexplain.models.LoadedModel` (texts are tokenized for you) or any
            HF model (one that runs no attnexplain backend and has no marked attention sites is
            switched to the dense backend in place, which computes the same outputs).
        inputs: a text, a list of texts, or a dict of model inputs (``input_ids``...).
        layers / heads / stacks / kinds: restrict what is stored (memory: L x H x n^2 per example).
        dtype: storage dtype of the matrices (``torch.float16`` halves memory).
        store_values: keep value vectors (needed for effective and norm-based attention).
        query_rows / head_means / full_examples / effective_basis / on_matrices: keep only what
            the consumers read (see :class:`~attnexplain.capturing.attention.CaptureSpec`): one
            query row per example (``(B,)`` positions; read with :meth:`CaptureResult.readout_rows`),
            the head mean per layer (:meth:`CaptureResult.head_mean`), the full matrices of some
            examples only (``attention(layer, examples=...)``), the effective-attention basis, and
            statistics over the full matrices computed layer by layer (:meth:`CaptureResult.derived`).
            Values equal those of the full capture (rows: within float round-off, ~1e-7). Default:
            every example's full matrices.
        forward_kwargs: extra model inputs (e.g. ``decoder_input_ids``).

    The model's output is the same as without capture (dense backend: within float error).

    Raises:
        NothingCapturedError: the model does not route attention through attnexplain.
    """
    from ..validation import check_float_dtype, check_indices, check_int, check_texts, check_token_ids

    torch_model, lm = _model_of(model)
    check_int("max_length", max_length, low=1, allow_none=True)
    check_float_dtype("dtype", dtype)
    _prepare_model(torch_model)
    if isinstance(inputs, (str, list, tuple, bytes, bytearray)):
        if lm is None:
            raise TypeError("pass a LoadedModel to capture from texts, or a dict of model inputs")
        batch = lm.tokenize(check_texts(inputs, "inputs"), text_pairs=text_pairs, max_length=max_length, on_long=on_long)
    else:
        batch = dict(inputs)
        config = getattr(torch_model, "config", None)
        vocab = getattr(config, "vocab_size", None)
        check_token_ids(batch.get("input_ids"), vocab if isinstance(vocab, int) and vocab > 0 else None)
    batch.update(forward_kwargs)
    if layers is not None or heads is not None:
        try:
            site_layers = sorted({s.layer for s in _model_sites(torch_model).values()})
        except ValueError:  # no adapter rule: capture reports the real cause below
            site_layers = []
        if layers is not None and site_layers:
            layers = check_indices("layers", layers, max(site_layers) + 1, what="layer index")
        try:
            n_heads = lm.num_heads if lm is not None else getattr(torch_model.config, "num_attention_heads", None)
        except AttributeError:
            n_heads = None
        if heads is not None and isinstance(n_heads, int):
            heads = check_indices("heads", heads, n_heads, what="head index")
    spec = CaptureSpec(
        layers=set(layers) if layers is not None else None,
        heads=list(heads) if heads is not None else None,
        stacks=set(stacks) if stacks is not None else None,
        kinds=set(kinds) if kinds is not None else None,
        dtype=dtype,
        store_values=store_values,
        keep_sparse=keep_sparse,
        query_rows=None if query_rows is None else torch.as_tensor(query_rows, dtype=torch.long).reshape(-1),
        head_means=bool(head_means),
        full_examples=None if full_examples is None else [int(i) for i in full_examples],
        effective_basis=bool(effective_basis),
        on_matrices=on_matrices,
    )
    with torch.no_grad(), session(torch_model, spec) as state, _window_geometry(torch_model) as geometry:
        output = torch_model(**batch)
    if not state.records:
        _raise_nothing_captured(torch_model, state)
    if geometry and spec.reduced:
        raise ValueError("query_rows / head_means / full_examples / effective_basis / on_matrices are not "
                         "available for window attention (Swin): capture the full matrices")
    if geometry:
        state.records = [_fold_windows(rec, geometry) for rec in state.records]
    _check_batch_layout(torch_model, state.records, batch)
    records: dict[str, list[Record]] = defaultdict(list)
    sites: dict[str, AttentionSite] = {}
    out_proj: dict[str, torch.Tensor] = {}
    for rec in _one_site_per_call(state.records):
        records[rec.site.key].append(rec)
        sites[rec.site.key] = rec.site
        if rec.site.key not in out_proj and rec.site.out_proj is not None:
            out_proj[rec.site.key] = rec.site.output_projection_blocks(rec.num_heads).detach()
    logits = getattr(output, "logits", None)
    input_ids = batch.get("input_ids")
    attention_mask = batch.get("attention_mask")
    if input_ids is not None and lm is not None and lm.tokenizer is not None:
        ids_at, mask_at = input_ids.clone(), None if attention_mask is None else attention_mask.clone()
        tokens = _LazyTokens(lambda: lm.tokens(ids_at, mask_at))
    elif input_ids is not None:
        tokens = [[str(t) for t in row] for row in input_ids.tolist()]
    else:
        n = next(iter(records.values()))[0].probs.shape[-1]
        tokens = [[f"#{j}" for j in range(n)] for _ in range(next(iter(records.values()))[0].n_batch)]
    backend = backend_of(torch_model)
    return CaptureResult(
        input_ids=input_ids,
        attention_mask=attention_mask,
        tokens=tokens,
        logits=None if logits is None else logits.detach(),
        labels=lm.labels if lm is not None else None,
        records=dict(records),
        sites=sites,
        out_proj=out_proj,
        backend=backend.name if backend is not None else str(getattr(getattr(torch_model, "config", None), "_attn_implementation", "custom")),
    )

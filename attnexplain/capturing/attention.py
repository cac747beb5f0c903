"""Attention functions registered in transformers' ``AttentionInterface``, and the session they read.

One function is registered per configured backend (``attnexplain_dense``,
``attnexplain_smyrf``...), each with a matching ``AttentionMaskInterface`` entry (``eager_mask``:
an additive float mask, so padding is never silently dropped). When no capture or intervention
is active, the function only computes the backend's output (dense: PyTorch's fused SDPA kernel),
so the model runs as fast as with ``sdpa``. Inside :func:`session`, the function also computes
the attention matrix for the sites asked for, applies interventions (ablations) to it, and hands
it to the recorder.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.integrations.sdpa_attention import repeat_kv

from ..backends import AttentionBackend, AttentionCall, get_backend
from .adapters import AttentionSite, find_attention_sites
from .buffers import take_buffer

__all__ = [
    "CaptureSpec",
    "Intervention",
    "Session",
    "session",
    "active_session",
    "register_backend_function",
    "use_backend",
    "backend_of",
    "build_call",
    "backend_at_sites",
    "routed_backend",
]

_PREFIX = "attnexplain_"
_REGISTERED: dict[str, AttentionBackend] = {}
_ACTIVE: contextvars.ContextVar["Session | None"] = contextvars.ContextVar("attnexplain_session", default=None)
#: id(attention module) -> the backend it runs instead of its model's (set by :func:`backend_at_sites`)
_SITE_BACKENDS: contextvars.ContextVar["dict[int, AttentionBackend] | None"] = contextvars.ContextVar(
    "attnexplain_site_backends", default=None)

#: an intervention receives the attention matrix (B, H, n, m), the call and the site and returns
#: the matrix to use instead (same shape); it may return a new tensor or modify a copy.
Intervention = Callable[[torch.Tensor, AttentionCall, AttentionSite], torch.Tensor]


@dataclass
class CaptureSpec:
    """What to record.

    Attributes:
        layers: layer indices to record (None = all).
        heads: head indices to record (None = all).
        stacks: stacks to record ("main", "encoder", "decoder"; None = all).
        kinds: "self" and/or "cross" (None = both).
        dtype: dtype the attention matrices are stored in (float16 halves memory).
        store_values: also keep the value vectors (needed for effective / norm-based attention).
        keep_sparse: keep sparse implied matrices (SMYRF, LSH) sparse instead of densifying.
        query_rows: ``(B,)`` long, one query position per example (e.g. a classifier's readout
            row): its row of every recorded head is kept as ``Record.rows`` ``(B, H, 1, m)``.
        head_means: keep the mean over the recorded heads, ``Record.head_mean`` ``(B, n, m)``
            (what attention rollout reads).
        full_examples: the batch examples whose full matrices are kept (None: all of them, the
            default; ``[]``: none, e.g. with ``query_rows`` only).
        effective_basis: compute each recorded layer's value-space basis (what effective attention
            projects onto; :func:`attnexplain.functional.value_space_basis`, default tolerance) while
            the values are at hand, ``Record.basis``.
        on_matrices: called with each record while its full matrices (every example) are still
            there, before they are cut to ``full_examples``; its return value is kept as
            ``Record.derived`` (per-layer statistics over the whole matrix without keeping it).

    With none of ``query_rows`` / ``head_means`` / ``full_examples`` / ``on_matrices`` a record
    holds the full matrices of every example (the default). With ``query_rows`` alone, the dense
    backend computes only those rows (``q_r K^T``) and the layer output keeps the fused kernel.
    """

    layers: set[int] | None = None
    heads: list[int] | None = None
    stacks: set[str] | None = None
    kinds: set[str] | None = None
    dtype: torch.dtype = torch.float32
    store_values: bool = True
    keep_sparse: bool = False
    query_rows: torch.Tensor | None = None
    head_means: bool = False
    full_examples: Sequence[int] | None = None
    effective_basis: bool = False
    on_matrices: Callable[["Record"], Any] | None = None

    @property
    def reduced(self) -> bool:
        """True when records hold less than every example's full matrices (or hold more besides)."""
        return (self.query_rows is not None or self.head_means or self.full_examples is not None
                or self.effective_basis or self.on_matrices is not None)

    def needs_matrices(self) -> bool:
        """Whether recording needs the full matrices of the whole batch (not only ``query_rows``)."""
        return (self.full_examples is None or len(self.full_examples) > 0 or self.head_means
                or self.on_matrices is not None)

    def wants(self, site: AttentionSite) -> bool:
        return (
            (self.layers is None or site.layer in self.layers)
            and (self.stacks is None or site.stack in self.stacks)
            and (self.kinds is None or site.kind in self.kinds)
        )


@dataclass
class Record:
    """What one attention call at one site left behind."""

    site: AttentionSite
    probs: torch.Tensor  # (B, H_sel, n, m), dense or sparse COO
    values: torch.Tensor | None  # (B, H, m, d_v)
    heads: list[int] | None
    num_heads: int
    #: (B, m) bool, True for the keys this call's mask lets some query see (its own padding:
    #: the source tokens for cross-attention, the decoder tokens for decoder self-attention);
    #: None with ``key_mask_known`` = no key is padding; unknown for reported/marked sites
    key_mask: torch.Tensor | None = None
    key_mask_known: bool = False
    #: the batch examples ``probs`` holds, in order (None: every example of the batch)
    examples: list[int] | None = None
    #: (B, H_sel, 1, m): the row at ``row_positions`` of each example (``CaptureSpec.query_rows``)
    rows: torch.Tensor | None = None
    row_positions: torch.Tensor | None = None
    #: (B, n, m): mean over the recorded heads (``CaptureSpec.head_means``)
    head_mean: torch.Tensor | None = None
    #: ``(U_r, rank)`` of :func:`attnexplain.functional.value_space_basis` (``CaptureSpec.effective_basis``)
    basis: tuple[torch.Tensor, torch.Tensor] | None = None
    #: what ``CaptureSpec.on_matrices`` returned for this record
    derived: Any = None
    #: batch size of the call (``probs`` may hold fewer examples)
    batch_size: int | None = None

    @property
    def n_batch(self) -> int:
        return self.batch_size if self.batch_size is not None else int(self.probs.shape[0])


@dataclass
class Session:
    """State read by the registered attention functions while a model runs."""

    model: nn.Module
    spec: CaptureSpec | None = None
    interventions: dict[str, Intervention] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    sites: dict[int, AttentionSite] = field(default_factory=dict)
    calls: int = 0
    #: attention calls from modules that match no adapter rule (and are not marked)
    unmatched_calls: int = 0
    #: why the adapter table found no site in this model (None when it found some)
    adapter_error: Exception | None = None

    def site_of(self, module: nn.Module) -> AttentionSite | None:
        site = self.sites.get(id(module))
        if site is None:
            marked = getattr(module, "_attnexplain_site", None)
            if marked is not None:
                return marked
        return site


def active_session() -> Session | None:
    """The session the attention functions currently report to (None outside :func:`session`)."""
    return _ACTIVE.get()


#: model -> its attention sites (keyed by ``id(module)``). Held beside the model, not on it: a
#: copied or unpickled model (``copy.deepcopy``, a Ray worker) has new module ids and must not
#: inherit the original's table
_SITES: "weakref.WeakKeyDictionary[nn.Module, dict[int, AttentionSite]]" = weakref.WeakKeyDictionary()


#: model -> (adapter rule names, the refusal) for models no adapter rule matches (those that run
#: only marked sites, e.g. the set decoder): every capture asks, and the walk over the modules
#: costs ~1 ms; a rule registered later is looked for again
_NO_SITES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[str, ...], ValueError]]" = weakref.WeakKeyDictionary()


def _model_sites(model: nn.Module) -> dict[int, AttentionSite]:
    cached = _SITES.get(model)
    if cached is None:
        from .adapters import ADAPTER_RULES

        rules = tuple(ADAPTER_RULES)
        failed = _NO_SITES.get(model)
        if failed is not None and failed[0] == rules:
            raise type(failed[1])(*failed[1].args)  # a fresh exception: no traceback piling up
        try:
            cached = _SITES[model] = find_attention_sites(model)
        except ValueError as exc:
            _NO_SITES[model] = (rules, exc)
            raise
    return cached


@contextlib.contextmanager
def session(
    model: nn.Module,
    spec: CaptureSpec | None = None,
    interventions: dict[str, Intervention] | None = None,
) -> Iterator[Session]:
    """Run ``model`` inside this block to record attention and/or apply interventions.

    ``interventions`` maps site keys (``"main.3.self"``) to functions A -> A'.
    """
    adapter_error = None
    try:
        sites = _model_sites(model)
    except ValueError as exc:  # no module matches the adapter table: kept to explain an empty capture
        sites, adapter_error = {}, exc
    unknown = set(interventions or {}) - {s.key for s in sites.values()}
    if unknown:  # marked sites are looked up (a walk over every module) only when needed
        marked = {s.key for s in _marked_sites(model)}
        unknown -= marked
        if unknown:
            raise KeyError(
                f"unknown attention site(s) {sorted(unknown)}; this model has "
                f"{sorted({s.key for s in sites.values()} | marked)}"
            )
    state = Session(model=model, spec=spec, interventions=dict(interventions or {}), sites=sites,
                    adapter_error=adapter_error)
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def _marked_sites(model: nn.Module) -> list[AttentionSite]:
    return [m._attnexplain_site for m in model.modules() if getattr(m, "_attnexplain_site", None) is not None]


#: the last mask :func:`_mask_parts` read and what it made of it: every layer of a forward pass
#: receives the same mask tensor (a decoding step's 30 layers: one analysis instead of 30)
_LAST_MASK: list = [None]  # one slot, replaced whole (threads never see half an entry)


def _mask_parts(attention_mask: torch.Tensor | None, dtype: torch.dtype, m: int,
                causal_block: bool) -> tuple[torch.Tensor | None, bool, torch.Tensor | None]:
    """(additive mask cut to ``m`` keys or None, all keys real and unstructured, (B, m) key padding or None).

    Memoised on the tensor itself (same object, unchanged ``_version``, same arguments): transformers
    hands every layer of a forward pass the one mask it built."""
    if attention_mask is None:
        return None, False, None
    memo = not (attention_mask.requires_grad or attention_mask.is_inference())  # inference tensors have no _version
    memo_key = (attention_mask._version, dtype, m, causal_block) if memo else None
    last = _LAST_MASK[0]
    if memo and last is not None and last[0] is attention_mask and last[1] == memo_key:
        return last[2]
    mask = attention_mask
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    mask = mask[..., :m]
    all_real = False
    if not causal_block and not bool(mask.any()):
        # an all-zero additive mask (no padding, no structure: e.g. an unpadded encoder batch) changes
        # nothing; without it SDPA takes its mask-free kernel and the capture skips adding it
        mask, all_real = None, True
    key_padding = None
    if attention_mask.dim() == 4 and not all_real:
        base = attention_mask if attention_mask.dtype == torch.bool else attention_mask > torch.finfo(attention_mask.dtype).min / 2
        kp = base[..., :m].any(dim=-2).any(dim=1)  # (B, m)
        if not bool(kp.all()):
            key_padding = kp
    out = (mask, all_real, key_padding)
    if memo:
        _LAST_MASK[0] = (attention_mask, memo_key, out)
    return out


def build_call(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> AttentionCall:
    """Normalise the arguments transformers passes to an attention function."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    key = repeat_kv(key, n_rep)  # transformers' own (grouped-query attention: each k/v head serves n_rep query heads)
    value = repeat_kv(value, n_rep)
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
    n, m = query.shape[-2], key.shape[-2]
    mask, all_real, key_padding = _mask_parts(attention_mask, query.dtype, m, causal and n > 1)
    position_bias = kwargs.get("position_bias")
    if position_bias is not None:  # T5: relative position bias added to the scores
        position_bias = position_bias[..., -query.shape[-2] :, : key.shape[-2]]
        mask = position_bias if mask is None else mask + position_bias
    extras = {k: kwargs.get(k) for k in ("softcap", "sliding_window", "s_aux") if kwargs.get(k) is not None}
    return AttentionCall(
        query=query,
        key=key,
        value=value,
        mask=mask,
        scaling=float(scaling),
        causal=causal and n > 1,
        key_padding_mask=key_padding,
        dropout=float(dropout),
        training=bool(getattr(module, "training", False)),
        extras=extras,
    )


def _select_heads(call: AttentionCall, heads: list[int]) -> AttentionCall:
    idx = torch.as_tensor(heads, device=call.query.device)
    mask = call.mask
    if mask is not None and mask.shape[1] > 1:
        mask = mask.index_select(1, idx)
    return dataclasses.replace(
        call,
        query=call.query.index_select(1, idx),
        key=call.key.index_select(1, idx),
        value=call.value.index_select(1, idx),
        mask=mask,
    )


def _densify(a: torch.Tensor) -> torch.Tensor:
    return a.to_dense() if a.is_sparse else a


def run_attention(backend: AttentionBackend, module: nn.Module, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The body of every registered function: output (B, H, n, d_v) and the matrix if computed.

    ``backend`` is replaced by the one :func:`backend_at_sites` put at ``module``, if any (so custom
    attention modules that call this function follow the swap too)."""
    backend = routed_backend(module, backend)
    state = _ACTIVE.get()
    site = state.site_of(module) if state is not None else None
    if site is None:
        if state is not None:
            state.unmatched_calls += 1
        return backend.forward(call), None
    state.calls += 1
    spec = state.spec
    record = spec is not None and spec.wants(site)
    intervention = state.interventions.get(site.key)
    if not record and intervention is None:
        return backend.forward(call), None
    num_heads = call.query.shape[1]
    heads = spec.heads if (spec is not None and spec.heads is not None) else None
    if record and intervention is None and spec.query_rows is not None and not spec.needs_matrices():
        # only the chosen query rows are recorded: the output keeps the fast path, and the backend
        # computes those rows alone where it can (dense: q_r K^T)
        out = backend.forward(call)
        sel = _select_heads(call, heads) if heads is not None and len(heads) < num_heads else call
        B, _, n, m = sel.shape
        rows = backend.attention_rows(sel, _query_positions(spec, B, n, call.query.device))
        km = call.key_padding_mask
        rec = Record(site=site, probs=rows.new_zeros((0, rows.shape[1], n, m), dtype=spec.dtype),
                     values=_stored_values(call.value, spec.dtype) if spec.store_values else None, heads=heads,
                     num_heads=num_heads, key_mask=None if km is None else km.detach(), key_mask_known=True,
                     examples=[], batch_size=B)
        rec.rows = rows.detach().to(spec.dtype)
        rec.row_positions = _query_positions(spec, B, n, rows.device)
        if spec.effective_basis:
            rec.basis = _record_basis(rec)
        state.records.append(rec)
        return out, None
    if intervention is None and heads is not None and len(heads) < num_heads:
        # only the chosen heads' matrices are built; the output keeps the fast path
        out = backend.forward(call)
        probs = backend.attention(_select_heads(call, heads))[1]
    else:
        buf = _matrix_buffer(backend, call)
        out, probs = backend.attention(call) if buf is None else backend.attention_into(call, buf)
        del buf
        if intervention is not None:
            probs = intervention(_densify(probs), call, site)
            if probs.shape != (*call.query.shape[:3], call.key.shape[-2]):
                raise ValueError(f"intervention at {site.key} returned shape {tuple(probs.shape)}")
            out = torch.matmul(probs.to(call.value.dtype), call.value)
        if heads is not None and len(heads) < num_heads:
            probs = _densify(probs)[:, heads]
    if record:
        stored = probs if (spec.keep_sparse and probs.is_sparse) else _densify(probs)
        stored = stored.detach().to(spec.dtype)
        values = _stored_values(call.value, spec.dtype) if spec.store_values else None
        km = call.key_padding_mask
        rec = Record(site=site, probs=stored, values=values, heads=heads, num_heads=num_heads,
                     key_mask=None if km is None else km.detach(), key_mask_known=True)
        state.records.append(reduce_record(spec, rec) if spec.reduced else rec)
    return out, probs


def _matrix_buffer(backend: AttentionBackend, call: AttentionCall) -> torch.Tensor | None:
    """Reusable memory for the (B, H, n, m) matrix of ``call`` (:mod:`.buffers`), for backends that
    write into it (dense) and calls without autograd; None otherwise."""
    if type(backend).attention_into is AttentionBackend.attention_into:
        return None
    q, k = call.query, call.key
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return None
    return take_buffer((*q.shape[:3], k.shape[-2]), torch.promote_types(q.dtype, torch.float32), q.device)


def _stored_values(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The value vectors (B, H, m, d_v) as a record keeps them. A strided view into the model's
    value projection output (how most models pass them) is copied into reusable memory
    (:mod:`.buffers`), so the record does not pin the projection output (fresh memory on every
    forward); a contiguous tensor (e.g. a decoding step's key/value cache) is kept as is, in
    ``dtype`` (a view when it already is)."""
    value = value.detach()
    buf = None if value.is_contiguous() else take_buffer(tuple(value.shape), dtype, value.device)
    return value.to(dtype) if buf is None else buf.copy_(value)


def routed_backend(module: nn.Module, default: AttentionBackend) -> AttentionBackend:
    """The backend ``module`` runs now: the one :func:`backend_at_sites` put at it, else ``default``.

    The registered attention functions call this for every attention call (through
    :func:`run_attention`, which custom attention modules call too, so ``backend_at_sites`` swaps
    their backend as well).
    """
    routed = _SITE_BACKENDS.get()
    if routed:
        return routed.get(id(module), default)
    return default


@contextlib.contextmanager
def backend_at_sites(
    model: Any,
    backend: AttentionBackend | str,
    sites: Callable[[AttentionSite], bool] | list[str] | tuple[str, ...] | set[str],
    **options: Any,
) -> Iterator[list[str]]:
    """Inside the ``with`` block, the chosen attention sites of ``model`` run ``backend``; every other
    site keeps the backend the model runs (which must be an attnexplain backend, e.g. ``"dense"``).

    This is how one attention pattern of a model is swapped alone (CAB's patterns: the decoder's
    causal self-attention, or its cross-attention, while the encoder stays dense).

    Args:
        model: a LoadedModel or a torch module; its sites come from the adapter table and from
            :func:`~attnexplain.capturing.mark_attention_site` (custom modules that call
            :func:`routed_backend`).
        backend / options: the backend to run there (a name with options, or an instance).
        sites: site keys (``["decoder.0.cross", "decoder.1.cross"]``) or a predicate on
            :class:`~attnexplain.capturing.AttentionSite` (``lambda s: s.kind == "cross"``).

    Yields:
        The keys of the sites that run ``backend``, sorted.

    Raises:
        ValueError: no site matches, or a key names no site of the model (the message lists them).
    """
    from ..models import torch_module

    torch_model = torch_module(model) if not isinstance(model, nn.Module) else model
    chosen_backend = get_backend(backend, **options)
    try:
        table = dict(_model_sites(torch_model))
    except ValueError:  # no adapter rule matches: only marked sites
        table = {}
    for m in torch_model.modules():
        marked = getattr(m, "_attnexplain_site", None)
        if marked is not None:
            table[id(m)] = marked
    keys = {s.key for s in table.values()}
    if callable(sites):
        pick = sites
    else:
        wanted = set(sites)
        unknown = wanted - keys
        if unknown:
            raise ValueError(f"unknown attention site(s) {sorted(unknown)}; this model has {sorted(keys)}")
        pick = lambda s: s.key in wanted  # noqa: E731
    chosen = {mid: chosen_backend for mid, s in table.items() if pick(s)}
    if not chosen:
        raise ValueError(f"no attention site of {type(torch_model).__name__} matches; its sites: {sorted(keys)}")
    routed = dict(_SITE_BACKENDS.get() or {})
    routed.update(chosen)
    token = _SITE_BACKENDS.set(routed)
    try:
        yield sorted({table[mid].key for mid in chosen})
    finally:
        _SITE_BACKENDS.reset(token)


def _query_positions(spec: CaptureSpec, batch: int, n: int, device: torch.device) -> torch.Tensor:
    """``spec.query_rows`` checked against a call's (batch, n queries), as a long tensor on ``device``."""
    pos = torch.as_tensor(spec.query_rows).reshape(-1).to(device=device, dtype=torch.long)
    if pos.numel() != batch:
        raise ValueError(f"query_rows has {pos.numel()} positions for a batch of {batch} examples")
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= n):
        raise ValueError(f"query_rows {pos.tolist()} out of range for an attention call with {n} query rows")
    return pos


def _record_basis(rec: Record) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The value-space basis of a record, computed exactly as :meth:`CaptureResult.effective_basis`
    does from the stored values (default tolerance); None where it cannot be (no values, no known
    output projection, a failed factorisation)."""
    from ..functional import value_space_basis

    if not rec.key_mask_known:  # a reported site: the result falls back to the input's mask later
        return None
    W = rec.site.output_projection_blocks(rec.num_heads) if rec.site.out_proj is not None else None
    if W is None or rec.values is None:
        return None
    V, W = rec.values, W.detach()
    if rec.heads is not None:
        V, W = V[:, rec.heads], W[rec.heads]
    km = None if rec.key_mask is None else rec.key_mask.to(rec.probs.device)
    try:
        return value_space_basis(V, W, key_mask=km)
    except (ValueError, RuntimeError):
        return None


def reduce_record(spec: CaptureSpec, rec: Record) -> Record:
    """Cut a record holding every example's full matrices to what ``spec`` asks for (see
    :class:`CaptureSpec`): the query rows, the head means, the basis and ``on_matrices``' result
    from the full matrices, then the full matrices of ``full_examples`` only."""
    probs = rec.probs
    dense = _densify(probs)
    B, n = dense.shape[0], dense.shape[-2]
    rec.batch_size = B
    if spec.effective_basis and rec.basis is None:
        rec.basis = _record_basis(rec)
    if spec.query_rows is not None:
        pos = _query_positions(spec, B, n, dense.device)
        rec.rows = dense[torch.arange(B, device=dense.device), :, pos].unsqueeze(-2)
        rec.row_positions = pos
    if spec.head_means:
        rec.head_mean = dense.mean(1)
    if spec.on_matrices is not None:
        rec.derived = spec.on_matrices(rec)
    if spec.full_examples is not None:
        idx = [int(i) for i in spec.full_examples]
        if any(not 0 <= i < B for i in idx):
            raise ValueError(f"full_examples {idx} out of range for a batch of {B} examples")
        rec.probs = probs.index_select(0, torch.as_tensor(idx, dtype=torch.long, device=probs.device))
        rec.examples = idx
    return rec


def _make_function(backend: AttentionBackend) -> Callable:
    def attnexplain_attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = query.device.type
        chosen = routed_backend(module, backend)
        if chosen.handles_autocast or not torch.is_autocast_enabled(device):
            call = build_call(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
            out, probs = run_attention(chosen, module, call)
        else:  # e.g. bfloat16 faithfulness forwards: the backend computes in its own dtype
            with torch.autocast(device, enabled=False):
                call = build_call(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
                out, probs = run_attention(chosen, module, call)
        return out.transpose(1, 2).contiguous(), (probs if probs is None or not probs.is_sparse else probs.to_dense())

    attnexplain_attention.backend = backend  # type: ignore[attr-defined]
    return attnexplain_attention


def register_backend_function(backend: AttentionBackend | str, **options: Any) -> str:
    """Register ``backend`` in transformers' attention registry; return its implementation name.

    Default-configured backends get ``attnexplain_<name>``; configured ones
    ``attnexplain_<name>_<config id>``.
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    backend = get_backend(backend, **options)
    default = type(backend)()
    reg_name = _PREFIX + backend.name
    if backend.options() != default.options():
        reg_name += "_" + backend.config_id()
    if reg_name not in _REGISTERED:
        AttentionInterface.register(reg_name, _make_function(backend))
        AttentionMaskInterface.register(reg_name, eager_mask)
        _REGISTERED[reg_name] = backend
    return reg_name


def use_backend(model: nn.Module, backend: AttentionBackend | str = "dense", **options: Any) -> str:
    """Switch ``model`` to an attnexplain attention backend without reloading it.

    Returns the registered implementation name (what ``model.config._attn_implementation`` holds).
    """
    from .positions import follow_mask_positions

    from .adapters import UnsupportedArchitectureError, unsupported_message

    name = register_backend_function(backend, **options)
    follow_mask_positions(model)
    try:
        model.set_attn_implementation(name)
    except (ValueError, AttributeError) as exc:
        raise UnsupportedArchitectureError(unsupported_message(model, f"it refuses custom attention functions ({exc})")) from exc
    # transformers only logs (and keeps its own code) for models outside the attention registry
    taken = getattr(getattr(model, "config", None), "_attn_implementation", None) == name
    if not taken:
        raise UnsupportedArchitectureError(unsupported_message(
            model, "it does not call attention through transformers' attention registry, so the switch did not take"
            f" (attention implementation still {getattr(getattr(model, 'config', None), '_attn_implementation', None)!r})"))
    return name


@contextlib.contextmanager
def running_backend(model: Any, backend: AttentionBackend | str = "dense", **options: Any) -> Iterator[str]:
    """Run ``model`` (a LoadedModel or an HF model) under ``backend`` inside the ``with`` block, then
    restore the attention implementation it had before (also after an error; if that one cannot be
    set again, dense). Yields the registered implementation name.

    >>> with running_backend(lm, "smyrf", n_hashes=2):
    ...     cap = capture(lm, batch)
    """
    hf = getattr(model, "model", model)
    previous = getattr(getattr(hf, "config", None), "_attn_implementation", None)
    name = use_backend(hf, backend, **options)
    try:
        yield name
    finally:
        if previous is None:
            use_backend(hf, "dense")
        elif previous != getattr(hf.config, "_attn_implementation", None):
            try:
                hf.set_attn_implementation(previous)
            except Exception:  # noqa: BLE001 - never leave a half-switched model: fall back to dense
                use_backend(hf, "dense")


def backend_of(model: nn.Module) -> AttentionBackend | None:
    """The attnexplain backend a model currently runs (None if it runs something else)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return _REGISTERED.get(impl) if impl else None


# the default-configured backends are registered on import, so that
# ``model.set_attn_implementation("attnexplain_smyrf")`` works directly
def _register_defaults() -> None:
    from ..backends import BACKENDS

    for name in BACKENDS:
        try:
            register_backend_function(name)
        except TypeError:  # a backend without default options
            pass


_register_defaults()

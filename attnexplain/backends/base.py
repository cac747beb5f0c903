"""The attention-backend interface and its registry.

A backend computes one attention call: given queries, keys and values of shape
(batch, heads, seq, head_dim) and an additive mask, it returns the attention output and, when
asked, its *implied attention matrix*: the (batch, heads, n, m) matrix that, multiplied by V,
gives the output. Capture, effective attention and every explanation method work on that
matrix, so an efficient backend is explained exactly like dense attention.

Adding a backend means adding one file in this package that defines a subclass decorated with
``@register_backend``; ``attnexplain.backends`` imports every module in the package.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..errors import ArgumentTypeError, AttnExplainError
from .._registry import Registry


@functools.lru_cache(maxsize=1)
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX): where
    autocast to bfloat16 is faster rather than emulated (the dense backend's attention kernel and
    the faithfulness forwards' precision ``auto`` both ask this)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and bool(fn()):
                return True
        except Exception:  # noqa: BLE001 - a private probe that changed: assume not
            continue
    return False

__all__ = [
    "AttentionCall",
    "AttentionBackend",
    "register_backend",
    "get_backend",
    "available_backends",
    "BACKENDS",
    "ATTENTION_PATTERNS",
    "causal_cross_limits",
    "pattern_call",
]

BACKENDS = Registry("attention backend")  # name -> AttentionBackend subclass


def broadcasts_into(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without changing it (so ``t.add_(x)``
    may add it in place): ``torch.broadcast_shapes(target, shape) == target``, without that
    function's Python-level symbolic-shape checks (a fifth of a millisecond per call: per layer
    and decoding step in a captured generation)."""
    if len(shape) > len(target):
        return False
    return all(a == 1 or a == b for a, b in zip(reversed(tuple(shape)), reversed(tuple(target))))


@dataclass
class AttentionCall:
    """One call of an attention function, normalised.

    Attributes:
        query: (B, H, n, d) queries.
        key: (B, H, m, d) keys, already expanded to H heads for grouped-query attention.
        value: (B, H, m, d_v) values, expanded like ``key``.
        mask: additive float mask broadcastable to (B, H, n, m) (0 = attend, a very negative
            number = masked), including causal structure and padding; or None (attend to all).
        scaling: the factor applied to q.k (1/sqrt(d) for most models, 1.0 for T5).
        causal: whether the call is causal self-attention (query i sees keys <= i).
        key_padding_mask: (B, m) bool, True where the key is a real token; None if no padding.
        dropout: attention dropout probability (applied only when ``training``).
        training: whether the calling module is in training mode.
        extras: model-specific keyword arguments that a backend must honour or refuse
            (``softcap``, ``s_aux``, ``sliding_window``...).
        key_limit: (n,) long or None: query i sees only keys j < key_limit[i], a non-decreasing
            causal alignment (CAB's causal cross attention, see :func:`causal_cross_limits`). The
            same structure must also be in ``mask`` (backends that read the mask use it; the
            kernelised backends, which cannot read an arbitrary mask, use ``key_limit``).
        short_row_softmax: let the dense backend take its softmax over rows shorter than 16 keys
            on the transposed layout (vectorised: several times faster on CPU; a few float32 ulp
            from ``torch.softmax`` over the rows). Off by default, so that captured matrices of
            transformers models equal their eager ``output_attentions`` bit for bit; set by models
            whose reference is their own fused forward (the set decoder).
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None = None
    scaling: float = 1.0
    causal: bool = False
    key_padding_mask: torch.Tensor | None = None
    dropout: float = 0.0
    training: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    key_limit: torch.Tensor | None = None
    short_row_softmax: bool = False

    def __post_init__(self) -> None:
        if self.key_limit is not None and self.mask is None:
            raise ValueError("AttentionCall: key_limit needs the same structure in mask "
                             "(build the call with attnexplain.backends.pattern_call)")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(batch, heads, n, m)."""
        b, h, n, _ = self.query.shape
        return b, h, n, self.key.shape[-2]

    def scores(self) -> torch.Tensor:
        """Masked, scaled dot-product scores (B, H, n, m) in float32 or the input dtype if wider."""
        q = self.query
        dtype = torch.promote_types(q.dtype, torch.float32)
        s = torch.matmul(q.to(dtype), self.key.to(dtype).transpose(-1, -2))
        s.mul_(self.scaling)  # in place: s is a fresh tensor (same op order as eager attention)
        softcap = self.extras.get("softcap")
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        if self.mask is not None:
            s = s.add_(self.mask.to(dtype)) if broadcasts_into(self.mask.shape, s.shape) else s + self.mask.to(dtype)
        elif self.causal:  # no mask given: causal structure must still hold (query i sees keys <= i + m - n)
            n, m = s.shape[-2], s.shape[-1]
            allowed = torch.ones(n, m, dtype=torch.bool, device=s.device).tril_(diagonal=m - n)
            s = s.masked_fill_(~allowed, torch.finfo(dtype).min)
        return s

    def full_mask_bool(self) -> torch.Tensor:
        """(B, 1 or H, n, m) bool, True where query i may attend key j."""
        b, h, n, m = self.shape
        if self.mask is not None:
            return self.mask > torch.finfo(self.mask.dtype).min / 2
        allowed = torch.ones(1, 1, n, m, dtype=torch.bool, device=self.query.device)
        if self.causal:
            allowed = torch.tril(allowed, diagonal=m - n)
        return allowed


#: CAB's four attention patterns (Zhang et al., "CAB: Comprehensive Attention Benchmarking on Long
#: Sequence Modeling", ICML 2023)
ATTENTION_PATTERNS = ("noncausal_self", "causal_self", "noncausal_cross", "causal_cross")


def causal_cross_limits(n: int, m: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The causal cross-attention alignment: (n,) long, key_limit[i] = ceil((i + 1) m / n).

    Query i (of n) sees keys j < ceil((i + 1) m / n) (of m): queries and keys are spread evenly
    over the same time axis and a query sees the keys up to its own time; every query sees at least
    one key and the last query sees all m. With n == m it is causal self-attention (j <= i).
    """
    i = torch.arange(1, n + 1, device=device, dtype=torch.long)
    return torch.div(i * m + n - 1, n, rounding_mode="floor")


def pattern_call(
    pattern: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scaling: float = 1.0,
    key_padding_mask: torch.Tensor | None = None,
) -> AttentionCall:
    """An :class:`AttentionCall` for one of CAB's four patterns (:data:`ATTENTION_PATTERNS`).

    * ``noncausal_self``: n == m, every query sees every key (``key_padding_mask`` also marks
      padded queries).
    * ``causal_self``: n == m, query i sees keys j <= i (``causal=True``; a mask only with padding).
    * ``noncausal_cross``: any n, m; every query sees every real key (padding in ``mask``).
    * ``causal_cross``: any n, m; query i sees keys j < ceil((i + 1) m / n)
      (:func:`causal_cross_limits`), carried both as ``key_limit`` and in ``mask``.

    Shapes: query (B, H, n, d), key (B, H, m, d), value (B, H, m, d_v), key_padding_mask (B, m)
    bool (True = real key). Raises ValueError for an unknown pattern or n != m in a self pattern.
    """
    if pattern not in ATTENTION_PATTERNS:
        raise ValueError(f"unknown attention pattern {pattern!r}; use one of {list(ATTENTION_PATTERNS)}")
    b, _, n, _ = query.shape
    m = key.shape[-2]
    if pattern.endswith("_self") and n != m:
        raise ValueError(f"pattern {pattern!r} needs as many queries as keys, got n={n}, m={m}; use a cross pattern")
    dtype = torch.promote_types(query.dtype, torch.float32)
    allowed = torch.ones(b, 1, n, m, dtype=torch.bool, device=query.device)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, None, :]
    limits = None
    if pattern == "causal_self":
        allowed = allowed & torch.ones(n, m, dtype=torch.bool, device=query.device).tril_()
    if pattern == "causal_cross":
        limits = causal_cross_limits(n, m, query.device)
        allowed = allowed & (torch.arange(m, device=query.device)[None] < limits[:, None])
    mask = None
    if pattern.endswith("_cross") or key_padding_mask is not None:
        mask = torch.zeros(allowed.shape, dtype=dtype, device=query.device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return AttentionCall(query=query, key=key, value=value, mask=mask, scaling=scaling,
                         causal=pattern == "causal_self", key_padding_mask=key_padding_mask, key_limit=limits)


class AttentionBackend:
    """Base class of attention backends.

    Subclasses set ``name`` and implement :meth:`attention` (returns output and implied matrix).
    :meth:`forward` (output only) defaults to the same computation; backends that can produce the
    output without materialising the matrix (dense SDPA, Performer, linear) override it.

    Options are constructor keyword arguments; :meth:`options` returns them, and
    :meth:`memory_fraction` reports the share of the n x m dense scores the backend computes.
    """

    name: ClassVar[str] = ""
    #: whether :meth:`attention` may return a sparse COO tensor for the implied matrix
    sparse_implied: ClassVar[bool] = False
    #: extras this backend honours; any other non-None extra raises a clear error
    supported_extras: ClassVar[frozenset[str]] = frozenset()
    #: True when the backend chooses its own precision under ``torch.autocast`` (dense); the others
    #: run with autocast switched off (their sums, sorts and scatters in their compute dtype, float32
    #: for bfloat16 inputs) and hand the output back in the value dtype
    handles_autocast: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        if options:
            raise ArgumentTypeError(f"backend {self.name!r} takes no options, got {sorted(options)}")

    # -- to implement ---------------------------------------------------------------------
    def attention(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output (B, H, n, d_v), implied attention matrix (B, H, n, m))."""
        raise NotImplementedError

    def attention_into(self, call: AttentionCall, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`attention`, with the implied matrix written into ``out`` (B, H, n, m) where the
        backend can (dense does: capture hands it reusable memory); the returned matrix is then
        ``out``. By default ``out`` is ignored and the matrix is a new tensor."""
        return self.attention(call)

    def forward(self, call: AttentionCall) -> torch.Tensor:
        """Return the output (B, H, n, d_v); by default via :meth:`attention`."""
        return self.attention(call)[0]

    def attention_rows(self, call: AttentionCall, positions: torch.Tensor) -> torch.Tensor:
        """Row ``positions[b]`` of example ``b``'s implied matrix, every head: ``(B, H, 1, m)``.

        By default the full matrix of :meth:`attention`, sliced (exact for any backend); backends
        whose rows do not depend on the other queries (dense) compute only those rows."""
        probs = self.attention(call)[1]
        probs = probs.to_dense() if probs.is_sparse else probs
        b = torch.arange(probs.shape[0], device=probs.device)
        return probs[b, :, positions.to(probs.device)].unsqueeze(-2)

    def memory_fraction(self, n: int, m: int, causal: bool = False) -> float:
        """Share of the dense n x m score matrix this backend computes (1.0 for dense)."""
        return 1.0

    # -- shared ---------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """The options this backend was built with (JSON-serialisable)."""
        if dataclasses.is_dataclass(self):
            return dataclasses.asdict(self)
        return {}

    def config_id(self) -> str:
        """A short stable identifier of name + options (used for registry names)."""
        payload = json.dumps({"name": self.name, **self.options()}, sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:8]

    def check_extras(self, call: AttentionCall) -> None:
        for key, val in call.extras.items():
            if val is not None and key not in self.supported_extras:
                raise NotImplementedError(
                    f"attention backend {self.name!r} does not support the model argument {key!r}; "
                    f"use the dense backend for this model"
                )

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def register_backend(cls: type[AttentionBackend]) -> type[AttentionBackend]:
    """Class decorator: add a backend to the registry under ``cls.name``."""
    return BACKENDS.register(cls)


def available_backends() -> list[str]:
    """Names of all registered backends."""
    return BACKENDS.names()


class BackendOptionError(AttnExplainError, TypeError):
    """An option the backend does not have (the message lists the options it takes)."""


def get_backend(name: str | AttentionBackend, **options: Any) -> AttentionBackend:
    """Build the backend registered as ``name`` with ``options``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        BackendOptionError: an option the backend does not have (a ``TypeError``; the message lists
            the options it takes).
    """
    if isinstance(name, AttentionBackend):
        if options:
            raise TypeError("options cannot be given together with a backend instance")
        return name
    cls = BACKENDS[name]
    known = [f.name for f in dataclasses.fields(cls) if f.init] if dataclasses.is_dataclass(cls) else None
    unknown = sorted(set(options) - set(known)) if known is not None else []
    if unknown:
        raise BackendOptionError(
            f"the {name!r} attention backend has no option {', '.join(repr(u) for u in unknown)}; "
            + (f"it takes: {', '.join(known)}" if known else "it takes no options")
            + " (`attnexplain backends` lists each backend's options)")
    return cls(**options)

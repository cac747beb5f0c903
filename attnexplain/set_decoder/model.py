"""The learned-query set decoder (DETR-style set prediction over a set of individuals).

Architecture (pre-LN; d = ``d_model``)::

    memory  = Encoder(Embed(features))                     (B, N, d)   N individuals (padded)
    queries = E_q                       (learned:      Q learned vectors)
            = E_q + W_c memory[r_b(q mod N_b)]  (conditioned: query q starts from real individual q mod N_b)
    for each decoder layer:
        z = z + SelfAttn(LN(z))                            (Q x Q; only with query_self_attention)
        z = z + CrossAttn(LN(z), memory)                   (Q x N; padded individuals masked)
        z = z + MLP(LN(z))
    h = LN(z)
    activity_logits[b, q] = W_a h_q + b_a                  (C activities + "no group", the last class)
    member_logits[b, q, j] = (W_m h_q) . (W_k memory_j) / sqrt(d) + b_m   (padding: -1e4)

Every attention module is a :class:`SetAttention`: it builds an
:class:`~attnexplain.backends.AttentionCall` (CAB pattern ``noncausal_cross`` for query x
individual, ``noncausal_self`` for the queries and the encoder) and runs it through
:func:`attnexplain.capturing.attention.run_attention` with the module's attention backend, so

* :func:`attnexplain.capture` records every call (the modules are marked attention sites:
  ``encoder.<l>.self``, ``decoder.<l>.self``, ``decoder.<l>.cross``) with values and output
  projections, and effective attention works as for any captured model;
* interventions (ablations, attention gradients) apply to them;
* :meth:`SetDecoder.set_backend` swaps in any registered backend (``"smyrf"``, ``"nystrom"``,
  ...) for some or all of the attention kinds; outside a capture the dense backend runs PyTorch's
  fused SDPA kernel.

Input: ``features`` (B, N, F) float, ``attention_mask`` (B, N) bool or 0/1, True = a real
individual (masked individuals are invisible to every attention: padding, or individuals removed
by a faithfulness test). Output: :class:`SetDecoderOutput`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..backends import AttentionBackend, get_backend, pattern_call
from ..capturing.attention import run_attention
from ..capturing.sites import mark_attention_site

__all__ = ["SetDecoderConfig", "SetDecoderOutput", "SetAttention", "SetDecoder", "QUERY_INITS", "NO_GROUP"]

QUERY_INITS = ("learned", "conditioned")
#: the "no group" class is the last activity class
NO_GROUP = -1
_MASKED_LOGIT = -1.0e4


@dataclass
class SetDecoderConfig:
    """Hyper-parameters of :class:`SetDecoder` (saved with a trained model).

    Attributes:
        feature_dim: features per individual (9 for the social scenes).
        num_activities: activity classes C (the model adds "no group" as class C).
        num_queries: Q learned queries.
        query_init: ``"learned"`` (Q free vectors) or ``"conditioned"`` (learned vector + a
            projection of individual ``q mod N_b``'s encoded features).
        query_self_attention: self-attention among the queries in every decoder layer.
        d_model, n_heads: width and heads of every attention module.
        n_encoder_layers: self-attention layers over the individuals (0 = the embedded features
            are the memory).
        n_decoder_layers: decoder layers.
        mlp_ratio: MLP width factor.
        dropout: dropout on residual branches (none inside attention, so captured matrices
            reproduce outputs in train mode too).
    """

    feature_dim: int = 9
    num_activities: int = 4
    num_queries: int = 6
    query_init: str = "learned"
    query_self_attention: bool = True
    d_model: int = 32
    n_heads: int = 4
    n_encoder_layers: int = 1
    n_decoder_layers: int = 2
    mlp_ratio: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("feature_dim", "num_activities", "num_queries", "d_model", "n_heads", "n_decoder_layers",
                     "mlp_ratio"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if isinstance(self.n_encoder_layers, bool) or not isinstance(self.n_encoder_layers, int) or self.n_encoder_layers < 0:
            raise ValueError(f"n_encoder_layers must be an integer >= 0, got {self.n_encoder_layers!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.query_init not in QUERY_INITS:
            raise ValueError(f"query_init must be one of {list(QUERY_INITS)}, got {self.query_init!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SetDecoderOutput:
    """What :meth:`SetDecoder.forward` returns.

    Attributes:
        member_logits: (B, Q, N) membership logit of individual j for query q (padding: -1e4).
        activity_logits: (B, Q, C + 1); the last class is "no group".
        memory: (B, N, d) the encoded individuals.
        query_states: (B, Q, d) the decoder's final query states (after the last LayerNorm).
    """

    member_logits: torch.Tensor
    activity_logits: torch.Tensor
    memory: torch.Tensor
    query_states: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def member_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.member_logits.float())

    @property
    def activity_probs(self) -> torch.Tensor:
        return torch.softmax(self.activity_logits.float(), dim=-1)


class SetAttention(nn.Module):
    """Multi-head attention run through an attnexplain backend.

    ``forward(x (B, n, d), memory (B, m, d) or None (self-attention), key_padding_mask (B, m) bool
    or None) -> (B, n, d)``. Per head h: ``A_h = backend(Q_h, K_h)`` (dense: softmax(Q_h K_h^T /
    sqrt(d_h))), output ``concat_h(A_h V_h) W_O + b_O``; ``Q = x W_Q + b_Q``, ``K = mem W_K + b_K``,
    ``V = mem W_V + b_V``. The call is CAB's ``noncausal_cross`` pattern when ``memory`` is given,
    ``noncausal_self`` otherwise (:func:`attnexplain.backends.pattern_call`).
    """

    def __init__(self, d_model: int, n_heads: int, *, cross: bool, backend: str | AttentionBackend = "dense") -> None:
        super().__init__()
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.cross = bool(cross)
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.backend = get_backend(backend)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, cross={self.cross}, backend={self.backend!r}"

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if memory is None else memory
        q, k, v = self._split(self.w_q(x)), self._split(self.w_k(kv)), self._split(self.w_v(kv))
        pattern = "noncausal_cross" if self.cross else "noncausal_self"
        call = pattern_call(pattern, q, k, v, scaling=self.head_dim ** -0.5, key_padding_mask=key_padding_mask)
        call.training = self.training
        call.short_row_softmax = True  # 12-individual scenes: rows of < 16 keys (see AttentionCall)
        out, _ = run_attention(self.backend, self, call)
        b, h, n, dh = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * dh))


def _mlp(d: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, ratio * d), nn.GELU(), nn.Linear(ratio * d, d))


class _EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SetAttention(d, heads, cross=False)
        self.mlp = _mlp(d, ratio)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kpm: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), key_padding_mask=kpm))
        return x + self.drop(self.mlp(self.ln2(x)))


class _DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ratio: int, dropout: float, self_attention: bool) -> None:
        super().__init__()
        self.self_attn = SetAttention(d, heads, cross=False) if self_attention else None
        self.ln_self = nn.LayerNorm(d) if self_attention else None
        self.ln_cross, self.ln_mlp = nn.LayerNorm(d), nn.LayerNorm(d)
        self.cross_attn = SetAttention(d, heads, cross=True)
        self.mlp = _mlp(d, ratio)
        self.drop = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor, memory: torch.Tensor, kpm: torch.Tensor | None) -> torch.Tensor:
        if self.self_attn is not None:
            z = z + self.drop(self.self_attn(self.ln_self(z)))
        z = z + self.drop(self.cross_attn(self.ln_cross(z), memory, kpm))
        return z + self.drop(self.mlp(self.ln_mlp(z)))


class SetDecoder(nn.Module):
    """Learned-query set decoder; see the module docstring for the architecture.

    Build from a :class:`SetDecoderConfig` (or its fields as keyword arguments)::

        model = SetDecoder(SetDecoderConfig(num_queries=24, query_init="conditioned"))
        out = model(features, attention_mask)        # SetDecoderOutput
        cap = attnexplain.capture(model, {"features": features, "attention_mask": mask})
        cap.attention(1, stack="decoder", kind="cross")          # (B, H, Q, N)
        cap.effective_attention(1, stack="decoder", kind="cross")

    Attention sites: ``encoder.<l>.self`` (N x N), ``decoder.<l>.self`` (Q x Q, when
    ``query_self_attention``), ``decoder.<l>.cross`` (Q x N), each with its output projection.
    """

    def __init__(self, config: SetDecoderConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = SetDecoderConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a SetDecoderConfig or keyword arguments, not both")
        self.config = config
        c = config
        d = c.d_model
        self.embed = nn.Sequential(nn.Linear(c.feature_dim, d), nn.GELU(), nn.Linear(d, d))
        self.encoder = nn.ModuleList(_EncoderLayer(d, c.n_heads, c.mlp_ratio, c.dropout) for _ in range(c.n_encoder_layers))
        self.ln_memory = nn.LayerNorm(d)
        self.query_embed = nn.Parameter(torch.randn(c.num_queries, d) * 0.5)
        self.query_from_memory = nn.Linear(d, d) if c.query_init == "conditioned" else None
        self.decoder = nn.ModuleList(
            _DecoderLayer(d, c.n_heads, c.mlp_ratio, c.dropout, c.query_self_attention) for _ in range(c.n_decoder_layers))
        self.ln_out = nn.LayerNorm(d)
        self.activity_head = nn.Linear(d, c.num_activities + 1)
        self.member_query = nn.Linear(d, d)
        self.member_key = nn.Linear(d, d)
        self.member_bias = nn.Parameter(torch.zeros(()))
        for i, layer in enumerate(self.encoder):
            mark_attention_site(layer.attn, layer=i, stack="encoder", kind="self", out_proj=layer.attn.out_proj)
        for i, layer in enumerate(self.decoder):
            if layer.self_attn is not None:
                mark_attention_site(layer.self_attn, layer=i, stack="decoder", kind="self", out_proj=layer.self_attn.out_proj)
            mark_attention_site(layer.cross_attn, layer=i, stack="decoder", kind="cross", out_proj=layer.cross_attn.out_proj)

    # -- attention modules and backends ----------------------------------------------------
    def attention_modules(self, kind: str | None = None) -> list[SetAttention]:
        """The attention modules: ``kind`` ``"encoder"``, ``"query_self"``, ``"cross"`` or None (all)."""
        out: list[SetAttention] = []
        if kind in (None, "encoder"):
            out += [layer.attn for layer in self.encoder]
        for layer in self.decoder:
            if kind in (None, "query_self") and layer.self_attn is not None:
                out.append(layer.self_attn)
            if kind in (None, "cross"):
                out.append(layer.cross_attn)
        if kind not in (None, "encoder", "query_self", "cross"):
            raise ValueError(f"kind must be 'encoder', 'query_self', 'cross' or None, got {kind!r}")
        return out

    def set_backend(self, backend: str | AttentionBackend = "dense", *, kinds: tuple[str, ...] | None = None,
                    **options: Any) -> AttentionBackend:
        """Run ``backend`` (a registered name with ``options``, or an instance) in the attention
        modules of ``kinds`` (default all: ``"encoder"``, ``"query_self"``, ``"cross"``). Returns it."""
        be = get_backend(backend, **options)
        for kind in kinds or ("encoder", "query_self", "cross"):
            for module in self.attention_modules(kind):
                module.backend = be
        return be

    def backends(self) -> dict[str, str]:
        """Site key -> backend name."""
        return {m._attnexplain_site.key: m.backend.name for m in self.attention_modules()}

    # -- forward ---------------------------------------------------------------------------
    @staticmethod
    def check_inputs(features: torch.Tensor, attention_mask: torch.Tensor | None, feature_dim: int) -> torch.Tensor:
        """The (B, N) bool mask; ValueError naming the problem for bad shapes or masks."""
        if not isinstance(features, torch.Tensor) or features.dim() != 3:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must be a (batch, individuals, {feature_dim}) tensor, got {shape}")
        if features.shape[-1] != feature_dim:
            raise ValueError(f"features have {features.shape[-1]} values per individual; this model expects {feature_dim}")
        if not features.is_floating_point():
            raise ValueError(f"features must be floating point, got {features.dtype}")
        if features.shape[1] == 0:
            raise ValueError("the scene has no individuals")
        if attention_mask is None:
            return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        if attention_mask.shape != features.shape[:2]:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match the features' "
                             f"(batch, individuals) {tuple(features.shape[:2])}")
        mask = attention_mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every scene needs at least one individual (a row of attention_mask is all 0)")
        return mask

    def initial_queries(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, Q, d): the learned queries, plus for ``conditioned`` queries the projection of the
        encoded features of scene b's ``(q mod N_b)``-th real individual (N_b = its real individuals,
        counted in order along the mask)."""
        b = memory.shape[0]
        z = self.query_embed[None].expand(b, -1, -1)
        if self.query_from_memory is None:
            return z
        n_real = mask.long().sum(1, keepdim=True)  # (B, 1)
        real_first = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # real individuals first, in order
        rank = torch.arange(self.config.num_queries, device=memory.device)[None] % n_real  # (B, Q)
        idx = torch.gather(real_first, 1, rank)
        picked = torch.gather(memory, 1, idx[..., None].expand(-1, -1, memory.shape[-1]))
        return z + self.query_from_memory(picked)

    def encode(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The memory (B, N, d): embedded individuals after the encoder and a LayerNorm."""
        kpm = None if bool(mask.all()) else mask
        x = self.embed(features)
        for layer in self.encoder:
            x = layer(x, kpm)
        return self.ln_memory(x)

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                initial_queries: torch.Tensor | None = None) -> SetDecoderOutput:
        """Run the model on ``features`` (B, N, F) with ``attention_mask`` (B, N) (True / 1 = a real
        individual; masked individuals are invisible to every attention and get member logit -1e4).

        ``initial_queries`` (B, Q, d), optional: start the decoder from these instead of
        :meth:`initial_queries` (faithfulness tests keep the queries built from the full scene
        while they remove individuals).
        """
        mask = self.check_inputs(features, attention_mask, self.config.feature_dim)
        memory = self.encode(features, mask)
        if initial_queries is None:
            z = self.initial_queries(memory, mask)
        else:
            expected = (features.shape[0], self.config.num_queries, self.config.d_model)
            if tuple(initial_queries.shape) != expected:
                raise ValueError(f"initial_queries must have shape {expected}, got {tuple(initial_queries.shape)}")
            z = initial_queries.to(memory.dtype)
        kpm = None if bool(mask.all()) else mask
        for layer in self.decoder:
            z = layer(z, memory, kpm)
        h = self.ln_out(z)
        act = self.activity_head(h)
        scores = self.member_query(h) @ self.member_key(memory).transpose(-1, -2) / math.sqrt(self.config.d_model)
        scores = (scores + self.member_bias).masked_fill(~mask[:, None, :], _MASKED_LOGIT)
        return SetDecoderOutput(member_logits=scores, activity_logits=act, memory=memory, query_states=h)

"""A small pre-LN transformer classifier whose attention is one of the five mechanisms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..capturing.sites import mark_attention_site
from .attention import ATTENTION_MECHANISMS, count_parameters, make_attention

__all__ = ["EfficientTransformerClassifier", "POOLINGS"]

POOLINGS = ("mean", "cls", "last")


class _Block(nn.Module):
    """Pre-LN block: x + attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, attn: nn.Module, d_model: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = attn
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class EfficientTransformerClassifier(nn.Module):
    """Token + learned position embeddings, ``n_layers`` pre-LN blocks (attention + GELU MLP),
    a final LayerNorm, pooling and a linear head.

    Args:
        vocab_size, num_labels: sizes of the input vocabulary and of the label set.
        d_model, n_heads, n_layers: width, heads per attention module, number of blocks.
        max_len: longest input (positions; also super attention's W_A size). Longer: ValueError.
        attention: ``"standard"``, ``"optimised"``, ``"efficient"``, ``"super"`` or ``"elementwise"``.
        causal: causal attention masks (element-wise attention then has an RNN form).
        taylor_order: element-wise attention's Taylor order (even, >= 2 by default; see there).
        pooling: ``"mean"`` over real tokens (default), ``"cls"`` (first token) or ``"last"``
            (last real token; the natural choice with ``causal=True``).
        mlp_ratio, dropout: MLP width factor; dropout on the residual branches and embeddings
            (none inside attention, so captured matrices reproduce outputs in train mode too).

    Each attention module is registered as an attention site at construction
    (``mark_attention_site(block.attn, layer=i, out_proj=block.attn.out_proj)``), so
    :func:`attnexplain.capturing.attention.session` records its matrices.

    ``forward(input_ids (B, n) long, attention_mask (B, n) 0/1 or bool, optional) -> logits (B, C)``.
    """

    def __init__(
        self,
        vocab_size: int,
        num_labels: int,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        max_len: int = 128,
        attention: str = "standard",
        causal: bool = False,
        taylor_order: int = 2,
        *,
        pooling: str = "mean",
        mlp_ratio: int = 4,
        dropout: float = 0.1,
        pad_token_id: int = 0,
    ) -> None:
        super().__init__()
        for name, val in (("vocab_size", vocab_size), ("num_labels", num_labels), ("d_model", d_model),
                          ("n_heads", n_heads), ("n_layers", n_layers), ("max_len", max_len), ("mlp_ratio", mlp_ratio)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {num_labels}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        ATTENTION_MECHANISMS[attention]  # UnknownNameError (a ValueError) listing the mechanisms
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.config: dict[str, Any] = dict(
            vocab_size=vocab_size, num_labels=num_labels, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
            max_len=max_len, attention=attention, causal=bool(causal), taylor_order=taylor_order,
            pooling=pooling, mlp_ratio=mlp_ratio, dropout=dropout, pad_token_id=pad_token_id,
        )
        self.attention = attention
        self.max_len = max_len
        self.pooling = pooling
        self.num_labels = num_labels
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_len, d_model)
        self.emb_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _Block(make_attention(attention, d_model, n_heads, causal=causal, max_len=max_len,
                                  taylor_order=taylor_order), d_model, mlp_ratio, dropout)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_labels)
        self.apply(self._init)
        for i, block in enumerate(self.blocks):
            mark_attention_site(block.attn, layer=i, out_proj=block.attn.out_proj)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def attention_modules(self) -> list[nn.Module]:
        return [b.attn for b in self.blocks]

    def parameter_counts(self) -> dict[str, int]:
        """``{"total": ..., "attention": ..., "embeddings": ...}`` (trainable parameters)."""
        return {
            "total": count_parameters(self),
            "attention": sum(count_parameters(m) for m in self.attention_modules),
            "embeddings": count_parameters(self.tok_emb) + count_parameters(self.pos_emb),
        }

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a (batch, seq) tensor, got {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        n = input_ids.shape[1]
        if n == 0:
            raise ValueError("input_ids has no tokens")
        if n > self.max_len:
            raise ValueError(f"input has {n} tokens but the model was built with max_len={self.max_len}; truncate it")
        if attention_mask is None:
            return torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        mask = attention_mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every example needs at least one real token (a row of attention_mask is all 0)")
        return mask

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, n, d) after the last LayerNorm."""
        mask = self._check_inputs(input_ids, attention_mask)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.emb_drop(self.tok_emb(input_ids) + self.pos_emb(pos)[None])
        kp = None if bool(mask.all()) else mask
        for block in self.blocks:
            x = block(x, kp)
        return self.ln_f(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self._check_inputs(input_ids, attention_mask)
        h = self.encode(input_ids, mask)
        if self.pooling == "mean":
            w = mask.to(h.dtype)[..., None]
            pooled = (h * w).sum(1) / w.sum(1)
        elif self.pooling == "cls":
            pooled = h[:, 0]
        else:
            last = mask.long().cumsum(1).argmax(1)  # index of the last real token
            pooled = h[torch.arange(h.shape[0], device=h.device), last]
        return self.head(pooled)

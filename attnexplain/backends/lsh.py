"""Reformer-style LSH attention (Kitaev et al., ICLR 2020), for models with separate Q and K.

The Reformer shares queries and keys (Q = K), so one hash sorts both. A pretrained model's
queries and keys differ, so here the *normalised* queries and keys are hashed with the same
random rotations R (angular LSH: bucket(x) = argmax([x R; -x R]), ``2 C_b`` buckets for an example
cut into C_b chunks, as the Reformer's "about 2 n / chunk" recommendation), each sorted by
(bucket, position) and cut into the same number of equal-size chunks; query chunk c attends to key
chunk c (and to chunk c - 1, cyclically, with ``attend_previous=True``, as the Reformer's
one-chunk look-back). Rounds are combined as in SMYRF (weights Z_l(i) / sum_l Z_l(i)), and the
implied matrix is the same: A_ij = sum_l 1[j in C_l(i)] exp(s_ij) / sum_l Z_l(i).

Chunking, padding, masks, causality and memory behave as in
:mod:`attnexplain.backends.smyrf` (same engine, :func:`clustered_attention`): padded keys are never
in a chunk, padded queries (self-attention) get zero output, a single chunk is dense attention.
Reformer's rule that a shared-QK query does not attend to itself does not apply (Q != K).

Options: n_hashes (rounds), bucket_size (queries and keys per chunk), seed (rotations drawn from
a torch.Generator on the call's device, one generator per round so the rotations of an example do
not depend on the other lengths in the batch), attend_previous.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ArgumentTypeError
from .base import AttentionBackend, AttentionCall, register_backend
from .linear import check_int
from .smyrf import clustered_attention, cluster_counts

__all__ = ["LSHAttention"]


def _round_seed(seed: int, r: int) -> int:
    return (seed * 1_000_003 + r * 7919 + 17) % (2**63 - 1)


def _lsh_keys(seed: int):
    def keys(q, k, q_real, k_real, cb, c, rounds):
        b, h, n, d = q.shape
        qn = F.normalize(q, dim=-1)
        kn = F.normalize(k, dim=-1)
        col_ok = torch.arange(c, device=q.device)[None] < cb[:, None]  # (B, C): rotations used by each example
        col_ok = torch.cat([col_ok, col_ok], dim=1)[:, None, None, :]  # (B, 1, 1, 2C)
        gen = torch.Generator(device=q.device)
        for r in range(rounds):
            gen.manual_seed(_round_seed(seed, r))
            # (C, d), drawn row by row: the first C_b rows do not depend on C (torch.randn of one
            # larger tensor would not give a prefix), so an example hashes alike in any batch; shared
            # by the heads, so a call restricted to some heads hashes them as the full call does
            rot = torch.stack([torch.randn(d, generator=gen, device=q.device, dtype=torch.float32)
                               for _ in range(c)]).to(q.dtype)
            out = []
            for x in (qn, kn):
                proj = x @ rot.T  # (B, H, n, C)
                proj = torch.cat([proj, -proj], dim=-1).masked_fill(~col_ok, float("-inf"))
                out.append(proj.argmax(dim=-1).to(q.dtype))
            yield out[0], out[1]

    return keys


@register_backend
@dataclass
class LSHAttention(AttentionBackend):
    """Angular-LSH chunked attention with ``n_hashes`` rounds of ``bucket_size`` chunks."""

    n_hashes: int = 2
    bucket_size: int = 32
    seed: int = 0
    attend_previous: bool = False

    name = "lsh"
    sparse_implied = True
    supported_extras = frozenset({"softcap"})

    def __post_init__(self) -> None:
        check_int("lsh", "n_hashes", self.n_hashes, 1)
        check_int("lsh", "bucket_size", self.bucket_size, 1)
        check_int("lsh", "seed", self.seed, 0)
        if not isinstance(self.attend_previous, bool):
            raise ArgumentTypeError(f"lsh attention: option 'attend_previous' must be a bool, got {self.attend_previous!r}")

    def _run(self, call: AttentionCall, want_matrix: bool):
        self.check_extras(call)
        return clustered_attention(call, _lsh_keys(self.seed), self.n_hashes, self.bucket_size, self.bucket_size,
                                   lookback=self.attend_previous, want_matrix=want_matrix)

    def attention(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(call, True)

    def forward(self, call: AttentionCall) -> torch.Tensor:
        return self._run(call, False)[0]

    def memory_fraction(self, n: int, m: int, causal: bool = False) -> float:
        """n_hashes * C * chunk_q * chunk_k (x2 with attend_previous) / (n m); 1.0 with one chunk."""
        c, qb, kb = cluster_counts(n, m, self.bucket_size, self.bucket_size)
        if c == 1:
            return 1.0
        per = 2 if (self.attend_previous and c > 1) else 1
        return self.n_hashes * per * c * qb * kb / (n * m)

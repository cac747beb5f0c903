"""SMYRF attention (Daras et al., NeurIPS 2020): balanced asymmetric-LSH clustering.

Per head, with q already multiplied by the model's ``scaling`` (s_ij = q_i . k_j):

    F(q) = [q; 0; sqrt(M_Q^2 + M_K^2 - |q|^2)],   G(k) = [k; sqrt(M_Q^2 + M_K^2 - |k|^2); 0]

(M_Q, M_K = the largest query / key norm of the example and head, real tokens only), so that
|F(q) - G(k)|^2 = const - 2 q.k. Each of ``n_hashes`` rounds projects F(q) and G(k) on one
random Gaussian vector, sorts queries and keys by it and cuts both sorted lists into the same
number C of clusters; query cluster c attends (dense softmax) to key cluster c, giving o_l(i) and
log Z_l(i). Rounds are combined with weights Z_l(i) / sum_l' Z_l'(i), so the implied matrix is

    A_ij = sum_l 1[j in C_l(i)] exp(s_ij) / sum_l Z_l(i)          (rows sum to 1)

(a key that shares i's cluster in several rounds counts several times) and output = A V exactly.

Cluster layout (``cluster_layout``): per example, C_b = max(ceil(n_b / q_cluster_size),
ceil(m_b / k_cluster_size)) clusters (n_b, m_b: real queries / keys), at most min(n_b, m_b). The
r-th query in sorted order goes to cluster floor(r C_b / n_b) (keys likewise), so clusters are
balanced, never empty, and hold at most ``q_cluster_size`` queries / ``k_cluster_size`` keys.
When the lengths do not divide, the cluster blocks are padded with dummy positions that are
masked out (and dropped from the output). With C = 1 (sequences no longer than a cluster) there
is one round of dense attention.

Padding: padded keys are never placed in a cluster (zero weight). When n == m the key padding
mask also marks padded queries (self-attention); those get no cluster, hence zero output and a
zero row - as with flash-attention's unpadded path - and the clustering of the real tokens, the
norms M_Q, M_K and the random vectors do not depend on padding, so adding padding leaves the real
positions' outputs unchanged.

Masks: an additive ``call.mask`` is gathered inside the clusters (padding, causal structure and
biases such as T5's relative positions are honoured); without one, ``call.causal`` masks keys
j > i + m - n inside the clusters. Causal SMYRF is therefore supported, but a query whose clusters
hold none of its allowed keys in any round attends to nothing (zero output, zero row): SMYRF was
designed for non-causal attention. Soft-capping is honoured; other model arguments are refused.

Memory: the output-only path processes one round at a time and gathers q, k, v into
(B, H, C, cluster, d) blocks, so its largest tensor is the (B, H, C, q_cluster, k_cluster) block of
scores of one round: a share k_cluster / m of the dense scores (``memory_fraction`` reports
n_hashes * C * q_cluster * k_cluster / (n m), the share of dense scores computed in all rounds).
The block softmax runs in place (one score-sized buffer). On CPU, when no mask, soft-capping or
dropout applies, the blocks go through PyTorch's fused flash-attention kernel instead
(``aten._scaled_dot_product_flash_attention_for_cpu``, which returns log Z too), so not even the
score block is materialised; set ``FUSED_CPU_KERNEL = False`` in this module to force the
explicit batched-matmul path (same output up to float rounding).

The implied matrix is returned as a sparse COO tensor (B, H, n, m) (``sparse_implied = True``),
dense when C = 1. The clustering engine (:func:`clustered_attention`) is shared with the Reformer
LSH backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import AttentionBackend, AttentionCall, register_backend
from .linear import check_int, compute_dtype, mask_bias, real_positions

__all__ = ["SmyrfAttention", "clustered_attention", "cluster_layout", "cluster_counts"]

#: a function (q, k, q_real, k_real, clusters per example, C, rounds) -> iterator over rounds of
#: (query sort keys (B, H, n), key sort keys (B, H, m)); padded positions are handled by the engine
SortKeys = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int],
    Iterator[tuple[torch.Tensor, torch.Tensor]],
]


def _ceil_div(a: torch.Tensor | int, b: int) -> torch.Tensor | int:
    return -((-a) // b)


def cluster_counts(n: int, m: int, q_cluster: int, k_cluster: int) -> tuple[int, int, int]:
    """(C, query block, key block) for one example with n real queries and m real keys."""
    c = max(_ceil_div(n, q_cluster), _ceil_div(m, k_cluster), 1)
    c = min(c, max(min(n, m), 1))
    return c, max(_ceil_div(n, c), 1), max(_ceil_div(m, c), 1)


def cluster_layout(q_real: torch.Tensor, k_real: torch.Tensor, q_cluster: int, k_cluster: int):
    """Per-example cluster counts: (n_b, m_b, C_b (B,), C, query block QB, key block KB)."""
    n_b = q_real.sum(-1)
    m_b = k_real.sum(-1)
    cb = torch.maximum(_ceil_div(n_b, q_cluster), _ceil_div(m_b, k_cluster)).clamp(min=1)
    cb = torch.minimum(cb, torch.minimum(n_b, m_b).clamp(min=1))
    c = int(cb.max())
    qb = max(int(_ceil_div(n_b, cb).max()), 1)
    kb = max(int(_ceil_div(m_b, cb).max()), 1)
    return n_b, m_b, cb, c, qb, kb


def _slots(order: torch.Tensor, count: torch.Tensor, cb: torch.Tensor, cap: int, c: int, dummy: int):
    """Place sorted positions into C clusters of capacity ``cap``.

    order: (B, H, L) positions sorted by the round's key, the ``count[b]`` real ones first.
    Returns (index (B, H, C*cap) of the position in each slot, ``dummy`` for empty slots;
    valid (B, C*cap) bool). The slot layout depends only on the example, not on the head.
    """
    b, h, length = order.shape
    r = torch.arange(length, device=order.device)[None]  # (1, L)
    cnt = count[:, None]
    c_b = cb[:, None]
    clus = torch.div(r * c_b, cnt.clamp(min=1), rounding_mode="floor")
    start = torch.div(clus * cnt + c_b - 1, c_b, rounding_mode="floor")
    real = r < cnt
    flat = torch.where(real, clus * cap + (r - start), torch.full_like(clus, c * cap))  # (B, L)
    idx = order.new_full((b, h, c * cap + 1), dummy)
    idx.scatter_(2, flat[:, None].expand(b, h, length), order)
    valid = torch.zeros(b, c * cap + 1, dtype=torch.bool, device=order.device)
    valid.scatter_(1, flat, real)
    return idx[..., :-1], valid[:, :-1]


#: use PyTorch's fused CPU flash-attention kernel (which also returns log Z) for the cluster blocks
#: of the output-only path when no mask, soft-capping or dropout is involved; False forces the
#: explicit batched-matmul path (same result up to float rounding)
FUSED_CPU_KERNEL = True
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _block_softmax(scores: torch.Tensor, vblk: torch.Tensor, call: AttentionCall, keep_probs: bool):
    """Softmax of a block of scores (-inf = masked) in place, applied to ``vblk``.

    Returns (output (..., QB, d_v), log Z (..., QB), normalised probabilities or None). One
    score-sized buffer: p = exp(s - max) is computed in place and the output is normalised
    afterwards. Rows with no allowed key give p = 0, output 0 and log Z = -inf.
    """
    mx = scores.amax(dim=-1, keepdim=True)
    mx = mx.masked_fill(torch.isneginf(mx), 0.0)
    inplace = not _tracks_grad(scores, vblk)
    p = scores.sub_(mx).exp_() if inplace else (scores - mx).exp()
    z = p.sum(dim=-1, keepdim=True)
    zs = torch.where(z > 0, z, torch.ones_like(z))
    pw = F.dropout(p, p=call.dropout, training=True) if (call.training and call.dropout > 0) else p
    o = (pw @ vblk).div_(zs) if inplace else (pw @ vblk) / zs
    # log Z = -inf where no key is allowed, without log(0) in the graph: its backward (1/0 times a zero
    # gradient) would make every gradient-based explanation through this backend NaN
    lse = (mx + torch.log(zs)).masked_fill(z == 0, float("-inf")).squeeze(-1)
    if not keep_probs:
        return o, lse, None
    return o, lse, (p.div_(zs) if inplace else p / zs)


def _tracks_grad(*tensors: torch.Tensor) -> bool:
    """True when autograd records these tensors: in-place updates would corrupt the backward pass
    (gradient-based explanations run through this backend), so out-of-place ops are used then."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, d), idx (B, H, S) -> (B, H, S, d)."""
    return x.gather(2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))


def clustered_attention(
    call: AttentionCall,
    sort_keys: SortKeys,
    n_rounds: int,
    q_cluster: int,
    k_cluster: int,
    *,
    lookback: bool = False,
    want_matrix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Balanced clustered attention over several sorting rounds, combined by log-sum-exp.

    Returns (output (B, H, n, d_v) in the value dtype, implied matrix or None). The matrix is a
    coalesced sparse COO tensor when there is more than one cluster, else dense.
    ``lookback``: query cluster c also attends to key cluster c - 1 (cyclically, per example),
    as the Reformer does.
    """
    b, h, n, m = call.shape
    dt = compute_dtype(call)
    dev = call.query.device
    d = call.query.shape[-1]
    dv = call.value.shape[-1]
    q = call.query.to(dt) * call.scaling
    k = call.key.to(dt)
    v = call.value.to(dt)
    softcap = call.extras.get("softcap")
    q_real, k_real = real_positions(call)
    n_b, m_b, cb, c, qb, kb = cluster_layout(q_real, k_real, q_cluster, k_cluster)
    single = c == 1
    rounds = 1 if single else n_rounds
    lookback = lookback and not single

    mask = None
    if call.mask is not None:
        mask = call.mask.expand(b, h, n, m)
    causal_off = m - n if (call.causal and call.mask is None) else None
    neg_inf = float("-inf")
    bias_free = mask is None and causal_off is None and softcap is None and not (call.training and call.dropout > 0)

    if single:
        def _position_keys() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            yield q.new_zeros(b, h, n), k.new_zeros(b, h, m)

        key_iter = _position_keys()
    else:
        key_iter = sort_keys(q, k, q_real, k_real, cb, c, rounds)

    if lookback:
        ar = torch.arange(c, device=dev)[None]
        prev = torch.where(ar == 0, cb[:, None] - 1, ar - 1).clamp(min=0)  # (B, C)
        prev_ok = (cb > 1)[:, None, None, None]  # (B, 1, 1, 1): no self-duplicate with one cluster

    acc_o = None
    acc_lse = None
    saved = []
    for qkeys, kkeys in key_iter:
        qkeys = qkeys.masked_fill(~q_real[:, None], float("inf"))
        kkeys = kkeys.masked_fill(~k_real[:, None], float("inf"))
        qorder = torch.argsort(qkeys, dim=-1, stable=True)
        korder = torch.argsort(kkeys, dim=-1, stable=True)
        qidx, qvalid = _slots(qorder, n_b, cb, qb, c, n)
        kidx, kvalid = _slots(korder, m_b, cb, kb, c, m)
        # dummy slots (index n / m) read the last row; they are masked (keys) or dropped (queries)
        qblk = _gather_rows(q, qidx.clamp(max=n - 1)).view(b, h, c, qb, d)
        kclamp = kidx.clamp(max=m - 1)
        kblk = _gather_rows(k, kclamp).view(b, h, c, kb, d)
        vblk = _gather_rows(v, kclamp).view(b, h, c, kb, dv)
        kpos = kidx.view(b, h, c, kb)
        kval = kvalid.view(b, 1, c, kb)
        if lookback:
            pi = prev[:, None, :, None]
            kblk = torch.cat([kblk.gather(2, pi[..., None].expand(b, h, c, kb, d)), kblk], dim=3)
            vblk = torch.cat([vblk.gather(2, pi[..., None].expand(b, h, c, kb, dv)), vblk], dim=3)
            kpos = torch.cat([kpos.gather(2, pi.expand(b, h, c, kb)), kpos], dim=3)
            kval = torch.cat([kval.gather(2, pi.expand(b, 1, c, kb)) & prev_ok, kval], dim=3)
        fused = (
            not want_matrix and bias_free and _FLASH_CPU is not None and FUSED_CPU_KERNEL and dev.type == "cpu"
            and dt == torch.float32 and dv == d and bool(kval.all())
        )
        if fused:  # PyTorch's flash kernel on the cluster blocks: no score block at all, same o and lse
            kbe = kblk.shape[3]
            o, lse = _FLASH_CPU(qblk.view(b, h * c, qb, d), kblk.reshape(b, h * c, kbe, d),
                                vblk.reshape(b, h * c, kbe, dv), scale=1.0)[:2]
            o = o.reshape(b, h, c * qb, dv)
            lse = lse.reshape(b, h, c, qb)
            p = None
        else:
            scores = qblk @ kblk.transpose(-1, -2)  # (B, H, C, QB, KBe)
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            if mask is not None or causal_off is not None:
                qpos = qidx.view(b, h, c, qb, 1).clamp(max=n - 1)
                kp = kpos.unsqueeze(3).clamp(max=m - 1)
                if mask is not None:
                    bi = torch.arange(b, device=dev).view(b, 1, 1, 1, 1)
                    hi = torch.arange(h, device=dev).view(1, h, 1, 1, 1)
                    scores = scores + mask_bias(mask[bi, hi, qpos, kp]).to(dt)
                else:
                    scores = scores.masked_fill(kp > qpos + causal_off, neg_inf)
            if not bool(kval.all()):
                scores = scores.masked_fill(~kval.unsqueeze(3), neg_inf)
            o, lse, p = _block_softmax(scores, vblk, call, keep_probs=want_matrix)
            o = o.view(b, h, c * qb, dv)
            del scores
        o_full = q.new_zeros(b, h, n + 1, dv).scatter_(2, qidx.unsqueeze(-1).expand(b, h, c * qb, dv), o)[:, :, :n]
        lse_full = q.new_full((b, h, n + 1), neg_inf).scatter_(2, qidx, lse.reshape(b, h, c * qb))[:, :, :n]
        if acc_o is None:
            acc_o, acc_lse = o_full, lse_full
        else:
            # rows with no allowed key in either term stay at -inf; logaddexp(-inf, -inf) would give a NaN
            # gradient (exp(-inf - -inf)), so those entries are kept out of it
            none = torch.isneginf(acc_lse) & torch.isneginf(lse_full)
            new = torch.logaddexp(acc_lse.masked_fill(none, 0.0), lse_full.masked_fill(none, 0.0)).masked_fill(none, neg_inf)
            new_safe = new.masked_fill(none, 0.0)
            w_old = torch.exp(acc_lse - new_safe).unsqueeze(-1)
            w_new = torch.exp(lse_full - new_safe).unsqueeze(-1)
            if _tracks_grad(acc_o, o_full):
                acc_o = acc_o * w_old + o_full * w_new
            else:
                acc_o.mul_(w_old).add_(o_full.mul_(w_new))
            acc_lse = new
        if want_matrix:
            saved.append((qidx, qvalid, kpos, kval, p, lse))
        del p, o, qblk, kblk, vblk

    out = acc_o.to(call.value.dtype)
    if not want_matrix:
        return out, None
    tot = torch.cat([acc_lse, acc_lse.new_full((b, h, 1), neg_inf)], dim=2)
    idx_parts, val_parts = [], []
    for qidx, qvalid, kpos, kval, p, lse in saved:
        t = tot.gather(2, qidx).view(b, h, c, qb)
        ok = torch.isfinite(t) & torch.isfinite(lse)
        w = torch.where(ok, torch.exp(lse - torch.where(ok, t, torch.zeros_like(t))), torch.zeros_like(t))
        vals = p * w.unsqueeze(-1)  # (B, H, C, QB, KBe)
        keep = qvalid.view(b, 1, c, qb, 1) & kval.unsqueeze(3) & (vals != 0)
        nz = keep.nonzero(as_tuple=True)
        bi, hi, ci, qs, ks = nz
        qi = qidx.view(b, h, c, qb)[bi, hi, ci, qs]
        kj = kpos[bi, hi, ci, ks]
        idx_parts.append(torch.stack([bi, hi, qi, kj]))
        val_parts.append(vals[nz])
    implied = torch.sparse_coo_tensor(torch.cat(idx_parts, 1), torch.cat(val_parts), (b, h, n, m),
                                      check_invariants=False).coalesce()
    if single:
        implied = implied.to_dense()
    return out, implied


def _smyrf_keys(seed: int) -> SortKeys:
    def keys(q, k, q_real, k_real, cb, c, rounds):
        b, h, n, d = q.shape
        gen = torch.Generator(device=q.device)
        gen.manual_seed(seed)
        # one vector per round, shared by all heads and examples: a call restricted to some heads
        # (capture of selected heads) clusters those heads exactly as the full call does
        w = torch.randn(rounds, d + 2, generator=gen, device=q.device, dtype=torch.float32).to(q.dtype)
        qn2 = (q * q).sum(-1)
        kn2 = (k * k).sum(-1)
        mq2 = qn2.masked_fill(~q_real[:, None], 0.0).amax(-1, keepdim=True)
        mk2 = kn2.masked_fill(~k_real[:, None], 0.0).amax(-1, keepdim=True)
        extra_q = (mq2 + mk2 - qn2).clamp(min=0).sqrt()  # last coordinate of F(q)
        extra_k = (mq2 + mk2 - kn2).clamp(min=0).sqrt()  # second-to-last coordinate of G(k)
        for r in range(rounds):
            wr = w[r]  # (d + 2,)
            pq = q @ wr[:d] + extra_q * wr[d + 1]
            pk = k @ wr[:d] + extra_k * wr[d]
            yield pq, pk

    return keys


@register_backend
@dataclass
class SmyrfAttention(AttentionBackend):
    """SMYRF: ``n_hashes`` rounds of balanced asymmetric-LSH clustering.

    Options: n_hashes (rounds), q_cluster_size, k_cluster_size (the paper's 50 % memory setting
    at length 128 is 2 hashes x 32), seed (random projections, from a torch.Generator on the
    call's device: every call uses the same projections).
    """

    n_hashes: int = 2
    q_cluster_size: int = 32
    k_cluster_size: int = 32
    seed: int = 0

    name = "smyrf"
    sparse_implied = True
    supported_extras = frozenset({"softcap"})

    def __post_init__(self) -> None:
        check_int("smyrf", "n_hashes", self.n_hashes, 1)
        check_int("smyrf", "q_cluster_size", self.q_cluster_size, 1)
        check_int("smyrf", "k_cluster_size", self.k_cluster_size, 1)
        check_int("smyrf", "seed", self.seed, 0)

    def _run(self, call: AttentionCall, want_matrix: bool):
        self.check_extras(call)
        return clustered_attention(call, _smyrf_keys(self.seed), self.n_hashes, self.q_cluster_size,
                                   self.k_cluster_size, want_matrix=want_matrix)

    def attention(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(call, True)

    def forward(self, call: AttentionCall) -> torch.Tensor:
        return self._run(call, False)[0]

    def memory_fraction(self, n: int, m: int, causal: bool = False) -> float:
        """n_hashes * C * q_block * k_block / (n m); 1.0 with a single cluster (dense)."""
        c, qb, kb = cluster_counts(n, m, self.q_cluster_size, self.k_cluster_size)
        if c == 1:
            return 1.0
        return self.n_hashes * c * qb * kb / (n * m)

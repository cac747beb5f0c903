"""``value_zeroing``: zero one token's value vectors in a layer and measure how the layer output moves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._token_matrix import TokenMatrixMethod, check_layers_option, select_layer_positions
from .base import register_method

__all__ = ["ValueZeroing", "length_groups", "trimmed_lengths", "value_zeroing_matrices"]

_AGGREGATIONS = ("rollout", "mean")


#: batch entries laid out (B, n, ...) along the token axis: cut with the trailing padding
_TOKEN_AXIS_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")
#: the fixed cost of one more length group (one capture forward, one block call per layer and
#: chunk), in (copy x token) block runs. An estimate, not a measurement: on MiniLM (2 CPU cores) a
#: block call's fixed cost is that of a few dozen tokens, taken several times over for loaded
#: machines. On the benchmark's 64 rotten-tomatoes examples (batches of 16) it gives 6 groups per
#: batch and 0.65x the block work of padding every copy to the batch's longest example.
_GROUP_COST_TOKENS = 256


def trimmed_lengths(batch: dict) -> list[int]:
    """Per example, the sequence length without its trailing padding (last real position + 1;
    at least 1). Without an ``attention_mask``: the padded length for every example. Left padding
    is kept (cutting it would shift the positions of causal models)."""
    ids = batch.get("input_ids", batch.get("inputs_embeds"))
    B, n = int(ids.shape[0]), int(ids.shape[1])
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return [n] * B
    pos = torch.arange(1, n + 1, device=mask.device)
    return (mask.bool() * pos).amax(1).clamp(min=1).tolist()


def length_groups(lengths: list[int], copies: list[int], group_cost: int = _GROUP_COST_TOKENS) -> list[list[int]]:
    """Partition the examples into groups of similar length (contiguous in length order) that
    minimises ``sum_g [group_cost + (sum_{b in g} (copies_b + 1)) * max_{b in g} lengths_b]`` (dynamic
    programming; the ``+ 1`` is the capture forward). Returns lists of example indices."""
    order = sorted(range(len(lengths)), key=lambda b: lengths[b])
    best = [0.0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for e in range(1, len(order) + 1):
        work = 0
        for s in range(e - 1, -1, -1):  # group order[s:e], its length that of order[e - 1]
            work += copies[order[s]] + 1
            cost = best[s] + group_cost + work * lengths[order[e - 1]]
            if cost < best[e]:
                best[e], cut[e] = cost, s
    groups, e = [], len(order)
    while e > 0:
        groups.append(order[cut[e]:e])
        e = cut[e]
    return groups[::-1]


def _sub_batch(batch: dict, rows: list[int], length: int) -> dict:
    B = int(batch.get("input_ids", batch.get("inputs_embeds")).shape[0])
    index = torch.tensor(rows, dtype=torch.long)
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B:
            v = v.index_select(0, index.to(v.device))
            if k in _TOKEN_AXIS_KEYS and v.dim() >= 2:
                v = v[:, :length]
        out[k] = v
    return out


def value_zeroing_matrices(model, batch, idxs: list[torch.Tensor], *, max_tokens: int = 16384,
                           threshold: float = 0.0, normalize: bool = True,
                           layer_positions: list[int] | None = None,
                           group_cost: int = _GROUP_COST_TOKENS) -> list[torch.Tensor]:
    """Per example ``(L, n_i, n_i)`` value-zeroing matrices ``C^l[i, j]`` (see :class:`ValueZeroing`);
    with ``layer_positions`` only those blocks (positions in layer order) are re-run and returned.

    The examples are cut to their real length (trailing padding dropped: :func:`trimmed_lengths`)
    and grouped by length (:func:`length_groups` with ``group_cost``). Per group, one capture pass records every
    block's inputs and outputs (the clean forward: the layers below a zeroed layer are never run
    again); then, per layer, the block alone is re-run on one copy of its recorded input per
    (example, real token ``j``) -- all copies of the group batched, at most ``max_tokens`` tokens
    per re-run -- with key column ``j`` of the attention zeroed in every head (an attention-function
    intervention: ``A'[:, :, j] = 0`` without renormalising equals ``v_j = 0``). Layers above are
    not run: the method compares layer ``l``'s own outputs. Cost per example of ``n_i`` tokens:
    one forward at its real length plus ``n_i`` runs of every block at that length, i.e. about one
    forward per input token, with no padding to the batch's longest example.
    """
    from ..capturing.mixing import capture_mixing, rerun_block, zero_value_columns
    from ..functional.context_mixing import normalize_rows, value_zeroing_scores

    lengths = trimmed_lengths(batch)
    mats: list[list[torch.Tensor]] = [[] for _ in idxs]
    for group in length_groups(lengths, [int(idx.numel()) for idx in idxs], group_cost):
        n = max(lengths[b] for b in group)
        mc = capture_mixing(model, _sub_batch(batch, group, n))
        gidx = [idxs[b] for b in group]
        rows = torch.cat([torch.full((idx.numel(),), g, dtype=torch.long) for g, idx in enumerate(gidx)])
        cols = torch.cat(gidx).long()
        per_run = max(1, int(max_tokens) // max(1, n))
        starts = [0] + torch.cumsum(torch.tensor([idx.numel() for idx in gidx]), 0).tolist()
        for p, rec in enumerate(mc.blocks):
            if layer_positions is not None and p not in layer_positions:
                continue
            altered = torch.cat([rerun_block(mc, p, rows[s:s + per_run], zero_value_columns(cols[s:s + per_run]))
                                 for s in range(0, rows.numel(), per_run)]) if rows.numel() else None  # (R, n, d)
            for g, (b, idx) in enumerate(zip(group, gidx)):
                if altered is None:
                    mats[b].append(torch.zeros(0, 0, dtype=rec.hidden_out.dtype))
                    continue
                dev = altered.device
                alt = altered[starts[g]:starts[g + 1]].index_select(1, idx.to(dev))  # (n_i zeroed j, n_i positions i, d)
                orig = rec.hidden_out[g].index_select(0, idx.to(rec.hidden_out.device)).to(dev)
                c = value_zeroing_scores(orig, alt, normalize=False)
                if threshold > 0:
                    c = torch.where(c < threshold, torch.zeros_like(c), c)
                mats[b].append(normalize_rows(c) if normalize else c)
    return [torch.stack(m) for m in mats]


@register_method
@dataclass
class ValueZeroing(TokenMatrixMethod):
    """Value zeroing (Mohebbi et al., EACL 2023): how much position ``i``'s layer output changes when
    token ``j``'s value vectors are zeroed in that layer.

    Formula, per layer ``l`` (the layer's input held fixed, every head of the layer zeroed)::

        c^l_ij = 1 - cos( h^l_i, h^l_i[v_j = 0] ),      C^l_ij = c^l_ij / sum_k c^l_ik
        aggregation="rollout" (default): R = C^L @ ... @ C^1,  score_j = R[r, j]
        aggregation="mean":              score_j = mean_{l in layers} C^l[r, j]

    ``h^l_i`` is the block's output (after its feed-forward part); ``r`` the readout position.
    Non-negative; each example's scores sum to 1 (unless every distance of the row is 0).
    Implemented with the ablations' attention interventions on a re-run of the block alone
    (batched over all zeroed tokens, each example at its own length, see
    :func:`value_zeroing_matrices`): about one forward per input token. Functions: :func:`attnexplain.functional.context_mixing.value_zeroing_scores`.

    Options: ``readout``, ``aggregation`` ("rollout" | "mean"), ``layers`` (for "mean"),
    ``threshold`` (distances below it count as 0 before normalising; inseq uses 1e-5),
    ``max_tokens`` (tokens per batched re-run, bounds memory).

    Architectures: any model whose attention runs an attnexplain backend and whose block the
    adapter table names (BERT family, GPT-2, Llama/Mistral/Qwen incl. grouped-query attention --
    zeroing a key column of every query head zeroes the shared value --, BART, T5): pre-LN,
    post-LN and RMSNorm alike; the primary stack's self-attention (the encoder of an
    encoder-decoder). Others are refused with :class:`~attnexplain.capturing.UnsupportedArchitectureError`.

    Paper: H. Mohebbi, W. Zuidema, G. Chrupala, A. Alishahi, "Quantifying Context Mixing in
    Transformers", EACL 2023.
    """

    name: ClassVar[str] = "value_zeroing"
    description: ClassVar[str] = "value zeroing: cosine distance of layer outputs when a token's values are zeroed, rolled out (Mohebbi et al. 2023)"

    aggregation: str = "rollout"
    layers: str | int | list[int] = "all"
    threshold: float = 0.0
    max_tokens: int = 16384

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aggregation not in _AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {self.aggregation!r}")
        check_layers_option(self.layers)
        if float(self.threshold) < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if int(self.max_tokens) < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def check_model(self, lm) -> None:
        from ..capturing.mixing import block_sites

        block_sites(lm.model)

    def token_matrices(self, lm, batch, target, idxs):
        from ..functional.context_mixing import contribution_rollout

        if self.aggregation == "rollout":
            mats = value_zeroing_matrices(lm.model, batch, idxs, max_tokens=self.max_tokens,
                                          threshold=float(self.threshold))
            return [contribution_rollout(C)[-1] for C in mats]
        from ..capturing.mixing import block_sites

        pos = select_layer_positions(self.layers, len(block_sites(lm.model)))
        mats = value_zeroing_matrices(lm.model, batch, idxs, max_tokens=self.max_tokens, threshold=float(self.threshold),
                                      layer_positions=sorted(set(pos)))  # only the blocks averaged are re-run
        order = {p: k for k, p in enumerate(sorted(set(pos)))}
        return [C[[order[p] for p in pos]].mean(0) for C in mats]

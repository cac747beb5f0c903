"""``value_zeroing``: zero one token's value vectors in a layer and measure how the layer output moves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._token_matrix import TokenMatrixMethod, check_layers_option, select_layer_positions
from .base import register_method

__all__ = ["ValueZeroing", "value_zeroing_matrices"]

_AGGREGATIONS = ("rollout", "mean")


def value_zeroing_matrices(model, batch, idxs: list[torch.Tensor], *, max_tokens: int = 16384,
                           threshold: float = 0.0, normalize: bool = True,
                           layer_positions: list[int] | None = None) -> list[torch.Tensor]:
    """Per example ``(L, n_i, n_i)`` value-zeroing matrices ``C^l[i, j]`` (see :class:`ValueZeroing`);
    with ``layer_positions`` only those blocks (positions in layer order) are re-run and returned.

    One capture pass records every block's inputs; then, per layer, the block alone is re-run on
    one copy of its input per (example, real token ``j``) -- all of them batched, at most
    ``max_tokens`` tokens per re-run -- with key column ``j`` of the attention zeroed in every
    head (an attention-function intervention: ``A'[:, :, j] = 0`` without renormalising equals
    ``v_j = 0``). Cost: ``sum_i n_i`` block runs per layer, i.e. about one forward per input token.
    """
    from ..capturing.mixing import capture_mixing, rerun_block, zero_value_columns
    from ..functional.context_mixing import value_zeroing_scores

    mc = capture_mixing(model, batch)
    n = mc.blocks[0].hidden_in.shape[1]
    rows = torch.cat([torch.full((idx.numel(),), b, dtype=torch.long) for b, idx in enumerate(idxs)])
    cols = torch.cat(list(idxs)).long()
    per_run = max(1, int(max_tokens) // max(1, n))
    starts = [0] + torch.cumsum(torch.tensor([idx.numel() for idx in idxs]), 0).tolist()
    mats: list[list[torch.Tensor]] = [[] for _ in idxs]
    for p, rec in enumerate(mc.blocks):
        if layer_positions is not None and p not in layer_positions:
            continue
        altered = torch.cat([rerun_block(mc, p, rows[s:s + per_run], zero_value_columns(cols[s:s + per_run]))
                             for s in range(0, rows.numel(), per_run)])  # (R, n, d)
        for b, idx in enumerate(idxs):
            dev = altered.device
            alt = altered[starts[b]:starts[b + 1]].index_select(1, idx.to(dev))  # (n_i zeroed j, n_i positions i, d)
            orig = rec.hidden_out[b].index_select(0, idx.to(rec.hidden_out.device)).to(dev)
            c = value_zeroing_scores(orig, alt, normalize=False)
            if threshold > 0:
                c = torch.where(c < threshold, torch.zeros_like(c), c)
            if normalize:
                from ..functional.context_mixing import normalize_rows

                c = normalize_rows(c)
            mats[b].append(c)
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
    (batched over all zeroed tokens, see :func:`value_zeroing_matrices`): about one forward per
    input token. Functions: :func:`attnexplain.functional.context_mixing.value_zeroing_scores`.

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

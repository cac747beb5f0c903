"""``grad_rollout`` and ``attention_gradient``: gradient-weighted attention (Chefer et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ._token_matrix import TokenMatrixMethod, check_layers_option, select_layer_positions
from .base import register_method

__all__ = ["GradRollout", "AttentionGradient", "relevance_maps"]


def _score_fn(target: torch.Tensor, mask: torch.Tensor | None):
    from .gradients import target_scores

    def score(output: Any) -> torch.Tensor:
        logits = target_scores(output.logits, mask)
        return logits.gather(1, target.to(logits.device).long()[:, None])[:, 0]

    return score


def relevance_maps(model, batch: dict[str, torch.Tensor], target: torch.Tensor, *, head_reduction: str = "mean") -> dict[str, Any]:
    """Chefer et al.'s gradient-weighted maps and relevance for one batch.

    Returns a dict with ``"abar"`` (per layer of the explained stack, ``(B, n, m)``),
    ``"relevance"`` (``(B, n_q, n)``: relevance of the input tokens for every position of the
    stack that is read, i.e. ``R^{ss}`` of a single stack or ``R^{de}`` of an encoder-decoder),
    and ``"kind"`` (``"self"`` or ``"encoder-decoder"``).
    """
    from ..capturing.gradients import attention_gradients
    from ..functional.relevance import encoder_decoder_relevance, gradient_weighted_attention, self_attention_relevance

    ag = attention_gradients(model, batch, _score_fn(target, batch.get("attention_mask")))
    abar = {k: gradient_weighted_attention(ag.attention[k][0].double(), ag.gradient[k][0].double(),
                                           head_reduction=head_reduction) for k in ag.attention}
    stacks = ag.stacks
    if "decoder" in stacks and "encoder" in stacks:
        enc = [abar[k] for k in ag.layers("encoder", "self")]
        dec_self = {ag.sites[k].layer: abar[k] for k in ag.layers("decoder", "self")}
        dec_cross = {ag.sites[k].layer: abar[k] for k in ag.layers("decoder", "cross")}
        layers = sorted(set(dec_self) | set(dec_cross))
        _, _, R_de = encoder_decoder_relevance(enc, [(dec_self.get(l), dec_cross.get(l)) for l in layers])
        return {"abar": enc, "relevance": R_de, "kind": "encoder-decoder"}
    stack = next(c for c in ("main", "encoder", "decoder") if c in stacks)
    keys = ag.layers(stack, "self")
    maps = [abar[k] for k in keys]
    return {"abar": maps, "relevance": self_attention_relevance(maps), "kind": "self"}


@register_method
@dataclass
class GradRollout(TokenMatrixMethod):
    """Gradient-weighted attention rollout (Chefer, Gur, Wolf, ICCV 2021).

    Formula (:mod:`attnexplain.functional.relevance`), ``y`` the target class's logit::

        Abar^l = E_h[ (dy/dA^{l,h} (.) A^{l,h})^+ ]
        single stack:    R = I;  R += Abar^l R  for l = 1..L;           score_j = R[r, j]
        encoder-decoder: R^{ee} from the encoder as above; per decoder layer
                         R^{dd} += Abar_self R^{dd},  R^{de} += Abar_self R^{de},
                         R^{de} += (Rbar^{dd})^T Abar_cross Rbar^{ee};   score_j = R^{de}[r, j]

    ``r`` is the readout position (for an encoder-decoder: a decoder position, default the last
    real one, the <eos> BART/T5 classifiers read). The readout token's own score includes the
    identity's 1 (as in the paper). Non-negative. One forward and one backward pass per batch;
    the gradients come from the attention-function interventions
    (:func:`attnexplain.capturing.gradients.attention_gradients`).

    Options: ``readout``, ``head_reduction`` ("mean" as the paper, or "sum").

    Architectures: any model whose attention runs an attnexplain backend: encoders (BERT family),
    decoders (GPT-2, Llama incl. grouped-query attention: one map per query head), encoder-
    decoders (BART, T5; cross-attention rule); pre-/post-LN and RMSNorm alike.

    Paper: H. Chefer, S. Gur, L. Wolf, "Generic Attention-model Explainability for Interpreting
    Bi-Modal and Encoder-Decoder Transformers", ICCV 2021.
    """

    name: ClassVar[str] = "grad_rollout"
    description: ClassVar[str] = "gradient-weighted attention rollout (Chefer et al. 2021), self- and cross-attention"

    head_reduction: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_reduction not in ("mean", "sum"):
            raise ValueError(f"head_reduction must be 'mean' or 'sum', got {self.head_reduction!r}")

    def _resolve_readout(self, lm):
        if self.readout == "auto" and getattr(getattr(lm.model, "config", None), "is_encoder_decoder", False):
            return "last"  # the decoder position BART/T5 classifiers read (<eos>)
        return super()._resolve_readout(lm)

    def token_matrices(self, lm, batch, target, idxs):
        res = relevance_maps(lm.model, batch, target, head_reduction=self.head_reduction)
        R = res["relevance"]
        out = []
        for b, idx in enumerate(idxs):
            idx = idx.to(R.device)
            rows = idx if R.shape[-2] == batch["input_ids"].shape[1] else torch.arange(R.shape[-2], device=R.device)
            out.append(R[b].index_select(0, rows).index_select(1, idx))
        return out


@register_method
@dataclass
class AttentionGradient(TokenMatrixMethod):
    """Gradient-weighted attention without rollout (Chefer et al. 2021's ``Abar``), mean over layers.

    Formula: ``score_j = mean_{l in layers} Abar^l[r, j]`` with
    ``Abar^l = E_h[(dy/dA^{l,h} (.) A^{l,h})^+]`` over the explained stack's self-attention
    (the encoder of an encoder-decoder), ``y`` the target logit, ``r`` the readout position.
    Non-negative; not normalised.

    Options: ``readout``, ``layers`` ("all" | "last" | int | list), ``head_reduction``.
    Architectures: as ``grad_rollout``.

    Paper: H. Chefer, S. Gur, L. Wolf, "Generic Attention-model Explainability for Interpreting
    Bi-Modal and Encoder-Decoder Transformers", ICCV 2021 (and "Transformer Interpretability
    Beyond Attention Visualization", CVPR 2021).
    """

    name: ClassVar[str] = "attention_gradient"
    description: ClassVar[str] = "gradient-weighted attention E_h[(grad A * A)^+] of the readout row, mean over layers"

    layers: str | int | list[int] = "all"
    head_reduction: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_layers_option(self.layers)
        if self.head_reduction not in ("mean", "sum"):
            raise ValueError(f"head_reduction must be 'mean' or 'sum', got {self.head_reduction!r}")

    def token_matrices(self, lm, batch, target, idxs):
        res = relevance_maps(lm.model, batch, target, head_reduction=self.head_reduction)
        maps = res["abar"]
        pos = select_layer_positions(self.layers, len(maps))
        M = sum(maps[p] for p in pos) / len(pos)
        return [M[b].index_select(0, idx.to(M.device)).index_select(1, idx.to(M.device)) for b, idx in enumerate(idxs)]

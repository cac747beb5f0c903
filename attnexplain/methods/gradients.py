"""Gradient-based explanation methods on the input (word) embeddings: integrated gradients and
gradient x input. They run the model themselves (``uses_capture = False``).

The explained quantity is the target class's **logit** (pre-softmax score). For sequence
classifiers that is ``logits[:, c]``; for models returning per-position logits (causal LMs) it is
the logit of class/token ``c`` at the last real token of each example.

The "input" is the output of ``lm.model.get_input_embeddings()`` (the word-embedding lookup,
before position / token-type embeddings and layer norm); a token's score is the sum over the
embedding dimensions (signed) of the per-dimension attribution.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..models import LoadedModel
from .base import ExplanationMethod, register_method


__all__ = ["IntegratedGradients", "GradientXInput", "target_scores", "pad_token_id", "special_token_ids"]

#: batch keys passed to the model (others, e.g. labels, are dropped)
_SKIP_KEYS = {"labels", "label"}


# --------------------------------------------------------------------------------------------
# helpers shared with perturbation.py
# --------------------------------------------------------------------------------------------


def _model_kwargs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in _SKIP_KEYS and isinstance(v, torch.Tensor)}


def last_real_index(attention_mask: torch.Tensor | None, B: int, n: int, device) -> torch.Tensor:
    """(B,) index of the last real token (right or left padding)."""
    if attention_mask is None:
        return torch.full((B,), n - 1, dtype=torch.long, device=device)
    pos = torch.arange(n, device=attention_mask.device)
    return (pos * attention_mask.bool()).argmax(-1).to(device)


def target_scores(logits: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) scores per class: the logits of a classifier, or the logits at the last real token."""
    if logits.dim() == 2:
        return logits
    if logits.dim() == 3:
        B, n = logits.shape[:2]
        last = last_real_index(attention_mask, B, n, logits.device)
        return logits[torch.arange(B, device=logits.device), last]
    raise ValueError(f"cannot explain model output logits of shape {tuple(logits.shape)}")


def pad_token_id(lm: LoadedModel) -> int:
    """The pad token id: tokenizer's, else the config's, else EOS, else 0."""
    tok = getattr(lm, "tokenizer", None)
    for src, attr in ((tok, "pad_token_id"), (getattr(lm.model, "config", None), "pad_token_id"),
                      (tok, "eos_token_id"), (getattr(lm.model, "config", None), "eos_token_id")):
        v = getattr(src, attr, None) if src is not None else None
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if isinstance(v, int):
            return v
    return 0


def special_token_ids(lm: LoadedModel) -> set[int]:
    """Ids of the tokenizer's special tokens ([CLS], [SEP], <s>, </s>, ...), padding excluded."""
    tok = getattr(lm, "tokenizer", None)
    if tok is None:
        return set()
    ids = set(getattr(tok, "all_special_ids", None) or [])
    for attr in ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id", "cls_id", "sep_id"):
        v = getattr(tok, attr, None)
        if isinstance(v, int):
            ids.add(v)
    ids.discard(getattr(tok, "pad_token_id", None))
    return ids


def _real_masks(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    ids = batch["input_ids"]
    am = batch.get("attention_mask")
    return torch.ones_like(ids, dtype=torch.bool) if am is None else am.bool()


def _split(scores: torch.Tensor, real: torch.Tensor) -> list[np.ndarray]:
    return [scores[i][real[i]].detach().double().cpu().numpy() for i in range(scores.shape[0])]


@contextlib.contextmanager
def _replace_output(module: torch.nn.Module, fn):
    """Forward hook on ``module``: its output becomes ``fn(output)``."""
    handle = module.register_forward_hook(lambda mod, inp, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


def _check_text_batch(method: ExplanationMethod, lm: LoadedModel, batch: dict[str, Any]) -> None:
    if "input_ids" not in batch:
        raise ValueError(f"method {method.name!r} explains token inputs: the batch has no input_ids")
    if lm.model.get_input_embeddings() is None:
        raise ValueError(f"{type(lm.model).__name__} has no input embeddings module")
    if getattr(lm.model.config, "is_encoder_decoder", False):
        raise ValueError(
            f"method {method.name!r} does not support encoder-decoder models ({type(lm.model).__name__}): their "
            "encoder and decoder embed the input through separate modules; use an attention method or occlusion"
        )


# --------------------------------------------------------------------------------------------
# the methods
# --------------------------------------------------------------------------------------------


@register_method
@dataclass
class IntegratedGradients(ExplanationMethod):
    """Integrated gradients on the word embeddings (Sundararajan et al., ICML 2017), via captum.

    Formula, with ``e`` the word embeddings of the input, ``e'`` those of the baseline and ``F``
    the target logit as a function of the word embeddings (everything else held fixed)::

        IG_{j,k} = (e_{jk} - e'_{jk}) * int_0^1 dF(e' + a (e - e')) / de_{jk} da
        score_j  = sum_k IG_{j,k}              (signed sum over embedding dimensions)

    Completeness: ``sum_j score_j = F(e) - F(e')`` up to the quadrature error (reported per
    example in ``self.convergence_delta`` after each call, computed with the same path
    endpoints as the attributions).

    Implementation: ``captum.attr.LayerIntegratedGradients`` on ``lm.model.get_input_embeddings()``
    (Gauss-Legendre quadrature, ``n_steps`` points; ``internal_batch_size`` model rows per forward
    pass bounds memory).

    Baseline: every **real** token replaced by the pad token id ([PAD]; the tokenizer's, else the
    config's, else EOS, else 0), special tokens included unless ``keep_special=True``; padding
    positions and the attention mask are left unchanged (so padding contributes exactly 0).

    Options: ``n_steps`` (20), ``internal_batch_size`` (64), ``keep_special`` (False).

    Paper: M. Sundararajan, A. Taly, Q. Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.
    """

    name: ClassVar[str] = "integrated_gradients"
    description: ClassVar[str] = "integrated gradients on the word embeddings (pad baseline), summed over dims"
    uses_capture: ClassVar[bool] = False

    n_steps: int = 20
    internal_batch_size: int = 64
    keep_special: bool = False

    def __post_init__(self) -> None:
        if int(self.n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if int(self.internal_batch_size) < 1:
            raise ValueError(f"internal_batch_size must be >= 1, got {self.internal_batch_size}")
        self.convergence_delta: np.ndarray | None = None

    def baseline_ids(self, lm: LoadedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The baseline input ids (see the class docstring)."""
        ids = batch["input_ids"]
        replace = _real_masks(batch)
        if self.keep_special:
            special = torch.tensor(sorted(special_token_ids(lm)), dtype=ids.dtype, device=ids.device)
            replace = replace & ~torch.isin(ids, special)
        return torch.where(replace, torch.full_like(ids, pad_token_id(lm)), ids)

    def attribute(self, lm, batch, *, target, capture=None) -> list[np.ndarray]:
        from captum.attr import LayerIntegratedGradients

        _check_text_batch(self, lm, batch)
        kwargs = _model_kwargs(batch)
        ids = kwargs.pop("input_ids")
        names = list(kwargs)
        am = batch.get("attention_mask")
        model = lm.model
        emb = model.get_input_embeddings()

        def forward(input_ids, *extra):
            kw = dict(zip(names, extra))
            out = model(input_ids=input_ids, **kw)
            return target_scores(out.logits, kw.get("attention_mask")).float()

        target = torch.as_tensor(target, device=ids.device).reshape(-1).long()
        base = self.baseline_ids(lm, batch)
        extra = tuple(kwargs[k] for k in names)
        with torch.enable_grad():
            lig = LayerIntegratedGradients(forward, emb)
            attr = lig.attribute(
                ids,
                baselines=base,
                target=target,
                additional_forward_args=extra if extra else None,
                n_steps=int(self.n_steps),
                internal_batch_size=int(self.internal_batch_size),
            )
        scores = attr.sum(-1)  # (B, n)
        # completeness check with the path's own endpoints (the input ids are kept along the
        # path; only the word embeddings move), so models that locate their pooled token from
        # the ids (GPT-2 style classifiers, which look for the pad id) are handled correctly
        with torch.no_grad():
            f_x = forward(ids, *extra).gather(1, target[:, None])[:, 0]
            base_emb = emb(base)
            with _replace_output(emb, lambda out: base_emb):
                f_b = forward(ids, *extra).gather(1, target[:, None])[:, 0]
        self.convergence_delta = (scores.sum(-1) - (f_x - f_b)).detach().double().cpu().numpy()
        return _split(scores, _real_masks(batch))

    def attribute_positions(self, lm, batch, *, positions: list[int], targets: torch.Tensor) -> list[list[np.ndarray]]:
        """Integrated gradients of a causal LM's logit ``targets[:, t]`` at position ``positions[t]``,
        for every t, from **one** interpolation path over the whole sequence.

        Equals :meth:`attribute` on the prefix ``batch[:, : positions[t] + 1]`` with target
        ``targets[:, t]`` (tested; up to float rounding): the path moves every word embedding by the
        same ``alpha`` and a causal model's output at position ``r`` does not depend on later inputs,
        so the gradients of ``F_t`` on the full path are the prefix's gradients (zero after ``r``).
        Cost: one forward of the ``n_steps x B`` path rows (in chunks of ``internal_batch_size``
        rows) and one backward per position, instead of a forward and a backward per position; the
        LM head runs on the requested positions only (``logits_to_keep``).

        Args:
            batch: ``input_ids`` (B, n), ``attention_mask`` (left padding: every position in
                ``positions`` real for every example), optional ``position_ids``.
            positions: N readout positions (increasing).
            targets: (B, N) token ids.

        Returns:
            ``out[t][i]``: scores of example ``i``'s real tokens among positions ``0 .. positions[t]``.
            ``self.convergence_delta`` becomes (B, N): ``sum_j score_j - (F_t(x) - F_t(x'))``.
        """
        from captum.attr._utils.approximation_methods import approximation_parameters

        _check_text_batch(self, lm, batch)
        if getattr(lm, "task", None) != "causal-lm":
            raise ValueError("attribute_positions needs a causal LM (its outputs must not depend on later inputs)")
        kwargs = _model_kwargs(batch)
        ids = kwargs.pop("input_ids")
        model = lm.model
        emb = model.get_input_embeddings()
        B, n = ids.shape
        pos = torch.as_tensor(list(positions), dtype=torch.long, device=ids.device)
        N = int(pos.numel())
        targets = torch.as_tensor(targets, device=ids.device).long().reshape(B, N)
        base = self.baseline_ids(lm, batch)
        with torch.no_grad():
            e = emb(ids)
            e0 = emb(base)
        sizes_fn, alphas_fn = approximation_parameters("gausslegendre")
        steps = int(self.n_steps)
        sizes = torch.tensor(sizes_fn(steps), dtype=e.dtype, device=e.device)
        alphas = torch.tensor(alphas_fn(steps), dtype=e.dtype, device=e.device)

        def logits_at(x_emb: torch.Tensor, rows_kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
            with _replace_output(emb, lambda out: x_emb):
                out = model(input_ids=ids.repeat(x_emb.shape[0] // B, 1), use_cache=False, logits_to_keep=pos,
                            **rows_kwargs)
            return out.logits.float()  # (rows, N, V)

        per_chunk = max(1, int(self.internal_batch_size) // B)  # alphas per forward pass
        acc = torch.zeros(N, B, n, e.shape[-1], dtype=torch.float32, device=e.device)
        diff = (e - e0).float()
        gather_idx = targets.T[:, None, :]  # (N, 1, B)
        with torch.enable_grad():
            for a0 in range(0, steps, per_chunk):
                a = alphas[a0: a0 + per_chunk]
                k = a.numel()
                x = (e0[None] + a[:, None, None, None] * (e - e0)[None]).reshape(k * B, n, -1).detach().requires_grad_(True)
                rows_kwargs = {name: v.repeat(k, *([1] * (v.dim() - 1))) for name, v in kwargs.items()}
                logits = logits_at(x, rows_kwargs).view(k, B, N, -1)
                for t in range(N):
                    f_t = logits[:, :, t, :].gather(-1, gather_idx[t].expand(k, B)[..., None]).sum()
                    (g,) = torch.autograd.grad(f_t, x, retain_graph=t < N - 1)
                    acc[t] += (g.view(k, B, n, -1).float() * sizes[a0: a0 + k, None, None, None].float()).sum(0)
                del logits, x
        scores = (acc * diff[None]).sum(-1)  # (N, B, n)
        with torch.no_grad():
            f_x = logits_at(e, kwargs).gather(-1, targets[..., None])[..., 0]  # (B, N)
            f_b = logits_at(e0, kwargs).gather(-1, targets[..., None])[..., 0]
        self.convergence_delta = (scores.sum(-1).T - (f_x - f_b)).detach().double().cpu().numpy()
        real = _real_masks(batch)
        return [_split(scores[t][:, : int(pos[t]) + 1], real[:, : int(pos[t]) + 1]) for t in range(N)]


_GXI_INPUTS = ("block_input", "word_embeddings")
_GXI_AGGREGATIONS = ("sum", "l2")


@contextlib.contextmanager
def _block_input_leaf(block: torch.nn.Module, store: dict[str, torch.Tensor]):
    """Forward pre-hook on ``block``: its hidden-states input becomes a leaf that requires grad."""

    def pre(mod, args, kwargs):
        if args:
            x = args[0].detach().requires_grad_(True)
            store["e"] = x
            return (x, *args[1:]), kwargs
        x = kwargs["hidden_states"].detach().requires_grad_(True)
        store["e"] = x
        return args, {**kwargs, "hidden_states": x}

    handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@register_method
@dataclass
class GradientXInput(ExplanationMethod):
    """Gradient x input, on the input of the first transformer block (default) or on the word embeddings.

    Formula, with ``x_j`` the chosen input vector of token ``j`` and ``F`` the target logit::

        g_j = x_j * dF/dx_j                    (per dimension)
        score_j = sum_k g_{jk}                 (aggregation="sum", signed; default)
        score_j = ||g_j||_2                    (aggregation="l2", unsigned)

    ``input`` (what ``x`` is):

    * ``"block_input"`` (default): the hidden states entering the first transformer block, i.e. the
      embedding output (word + position + type embeddings **after the embedding LayerNorm** in
      BERT-family models; word + position embeddings for GPT-2; the word embeddings for Llama).
    * ``"word_embeddings"``: the output of ``get_input_embeddings()`` (before position/type
      embeddings and the LayerNorm).

    Why not the word embeddings by default: in BERT-family models the embedding LayerNorm makes
    the model invariant to the scale of the summed embedding ``x = w + p + t``, so
    ``sum_k x_k dF/dx_k = 0`` for every token and the signed word-embedding score is exactly minus
    the position+type part, uninformative by construction (measured on 500 rotten-tomatoes test
    examples with the fine-tuned MiniLM: AOPC comprehensiveness 0.055 against 0.051 for random
    rankings; after the LayerNorm 0.151; L2 aggregation 0.157). The signed block-input score keeps
    the direction of the evidence and is far from random; ``aggregation="l2"`` is the variant of
    e.g. Atanasova et al. (2020).

    Computed with one forward and one backward pass per batch (autograd; a hook on the first block
    or on ``get_input_embeddings()``); ``input="word_embeddings", aggregation="sum"`` equals captum's
    ``InputXGradient`` on the embeddings summed over dimensions.

    Raises:
        UnsupportedArchitectureError: ``input="block_input"`` on a model whose adapter rule does not
            locate its transformer block (use ``input="word_embeddings"``).

    Papers: A. Shrikumar, P. Greenside, A. Shcherbina, A. Kundaje, "Not Just a Black Box:
    Learning Important Features Through Propagating Activation Differences", 2016; as a token
    attribution for NLP e.g. J. Bastings, K. Filippova, "The elephant in the interpretability
    room", BlackboxNLP 2020; P. Atanasova, J. G. Simonsen, C. Lioma, I. Augenstein, "A Diagnostic
    Study of Explainability Techniques for Text Classification", EMNLP 2020.
    """

    name: ClassVar[str] = "gradient_x_input"
    description: ClassVar[str] = "gradient of the target logit x the first block's input (after the embedding norm), summed over dims"
    uses_capture: ClassVar[bool] = False

    input: str = "block_input"
    aggregation: str = "sum"

    def __post_init__(self) -> None:
        if self.input not in _GXI_INPUTS:
            raise ValueError(f"input must be one of {_GXI_INPUTS}, got {self.input!r}")
        if self.aggregation not in _GXI_AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {_GXI_AGGREGATIONS}, got {self.aggregation!r}")

    def attribute(self, lm, batch, *, target, capture=None) -> list[np.ndarray]:
        _check_text_batch(self, lm, batch)
        kwargs = _model_kwargs(batch)
        model = lm.model
        store: dict[str, torch.Tensor] = {}

        def leaf(out: torch.Tensor) -> torch.Tensor:
            e = out.detach().requires_grad_(True)
            store["e"] = e
            return e

        if self.input == "word_embeddings":
            hook = _replace_output(model.get_input_embeddings(), leaf)
        else:
            from ..capturing.adapters import first_block

            hook = _block_input_leaf(first_block(model), store)
        target = torch.as_tensor(target, device=batch["input_ids"].device).reshape(-1).long()
        with torch.enable_grad(), hook:
            out = model(**kwargs)
            f = target_scores(out.logits, kwargs.get("attention_mask")).float()
            sel = f.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(sel, store["e"])
        prod = grad * store["e"]
        scores = prod.sum(-1) if self.aggregation == "sum" else prod.norm(dim=-1)
        return _split(scores, _real_masks(batch))

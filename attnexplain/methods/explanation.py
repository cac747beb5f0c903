"""The ``explain`` verb: scores of named explanation methods for texts or tokenized batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..models import LoadedModel
from .base import DEFAULT_EXPLAIN_METHODS, Attribution, ExplanationMethod, get_method


def explain_batch(
    lm: LoadedModel,
    batch: dict[str, torch.Tensor],
    methods: Sequence[str | ExplanationMethod],
    *,
    target: torch.Tensor | None = None,
    capture_result: Any | None = None,
) -> tuple[dict[str, list[np.ndarray]], torch.Tensor, Any]:
    """Scores of every method for one tokenized batch.

    Captures attention once (all layers and heads, with values) when any method needs it and
    shares it. Returns ``(scores per method, target (B,), capture result or None)``.
    """
    from ..capturing import capture
    from ..models import as_loaded_model

    lm = as_loaded_model(lm)
    built = [get_method(m) for m in methods]
    cap = capture_result
    if cap is None and any(m.uses_capture for m in built):
        cap = capture(lm, batch)
    if target is None:
        if cap is not None and cap.logits is not None:
            logits = cap.logits
        else:
            with torch.no_grad():
                logits = getattr(lm.model(**batch), "logits", None)
        if logits is None:
            _refuse_headless(lm)
        if logits.dim() == 3:  # per-position logits: read the last real token of each example
            mask = batch.get("attention_mask")
            last = (mask.long().cumsum(-1).argmax(-1) if mask is not None
                    else torch.full((logits.shape[0],), logits.shape[1] - 1))
            logits = logits[torch.arange(logits.shape[0]), last]
        target = logits.argmax(-1)
    target = torch.as_tensor(target).reshape(-1)
    scores = {m.name: m.attribute(lm, batch, target=target, capture=cap) for m in built}
    return scores, target, cap


def _refuse_headless(lm: LoadedModel) -> None:
    """An encoder without a head has no prediction to explain: say which classifier to use."""
    from ..models import InputError

    raise InputError(
        f"{getattr(lm, 'name', type(lm.model).__name__)} is an encoder without a classification head "
        f"({type(lm.model).__name__} returns no logits), so there is no prediction to explain. Use a classifier: "
        "--model minilm-rotten-tomatoes (made by `attnexplain prepare --model minilm-rotten-tomatoes`), or "
        "load_model(name, task='classification') and fine-tune it"
    )


def explain(
    lm: LoadedModel,
    texts: str | Sequence[str],
    methods: Sequence[str | ExplanationMethod] = DEFAULT_EXPLAIN_METHODS,
    *,
    target: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
    text_pairs: str | Sequence[str] | None = None,
    exclude_special_tokens: bool = True,
) -> dict[str, Attribution]:
    """Token importance of ``texts`` by each method (``target``: class per text, default predicted).

    Args:
        text_pairs: second segments for sentence-pair models (NLI, paraphrase...), one per text;
            each pair is tokenized together (``[CLS] a [SEP] b [SEP]``) and explained as one input.
        exclude_special_tokens: leave special tokens ([CLS], [SEP]...; a causal model's first
            token, the attention sink) out of ``tokens`` and ``scores`` (default True; see
            :mod:`attnexplain.methods.special_tokens`). ``Attribution.positions`` gives each kept
            score's index among the example's real tokens.

    Raises:
        InputError: an encoder without a classification head (nothing to explain), empty texts,
            ``text_pairs`` of another length than ``texts``.
    """
    from ..models import InputError, as_loaded_model
    from .special_tokens import drop_special_tokens, special_token_mask

    from ..validation import check_int, check_targets, check_texts

    lm = as_loaded_model(lm)
    texts = check_texts(texts)
    batch_size = check_int("batch_size", batch_size, low=1)
    n_classes = len(lm.labels) if getattr(lm, "labels", None) else None
    target = check_targets(target, len(texts), n_classes)
    if text_pairs is not None:
        text_pairs = [text_pairs] if isinstance(text_pairs, str) else list(text_pairs)
        if len(text_pairs) != len(texts):
            raise InputError(f"text_pairs has {len(text_pairs)} entries for {len(texts)} texts; give one second segment per text")
    if getattr(lm, "task", None) == "encoder":
        _refuse_headless(lm)
    built = [get_method(m) for m in methods]
    out: dict[str, Attribution] = {m.name: Attribution(m.name, [], [], []) for m in built}
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="explain", unit="batch")
    for start in starts:
        pairs = None if text_pairs is None else text_pairs[start : start + batch_size]
        enc = lm.tokenize(texts[start : start + batch_size], text_pairs=pairs)
        tgt = None if target is None else torch.as_tensor(list(target)[start : start + batch_size])
        scores, tgt, _ = explain_batch(lm, enc, built, target=tgt)
        toks = lm.tokens(enc["input_ids"], enc.get("attention_mask"))
        masks = (special_token_mask(lm, enc["input_ids"], enc.get("attention_mask")) if exclude_special_tokens
                 else [np.zeros(len(t), dtype=bool) for t in toks])
        for m in built:
            kept_toks, kept_scores, positions = drop_special_tokens(toks, scores[m.name], masks)
            out[m.name].tokens.extend(kept_toks)
            out[m.name].scores.extend(kept_scores)
            out[m.name].positions.extend(positions)
            out[m.name].target.extend(tgt.tolist())
    return out

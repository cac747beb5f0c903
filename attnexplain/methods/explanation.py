"""The ``explain`` verb: scores of named explanation methods for texts or tokenized batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .base import Attribution, ExplanationMethod, get_method


def explain_batch(
    lm: Any,
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
                logits = lm.model(**batch).logits
        if logits.dim() == 3:  # per-position logits: read the last real token of each example
            mask = batch.get("attention_mask")
            last = (mask.long().cumsum(-1).argmax(-1) if mask is not None
                    else torch.full((logits.shape[0],), logits.shape[1] - 1))
            logits = logits[torch.arange(logits.shape[0]), last]
        target = logits.argmax(-1)
    target = torch.as_tensor(target).reshape(-1)
    scores = {m.name: m.attribute(lm, batch, target=target, capture=cap) for m in built}
    return scores, target, cap


def explain(
    lm: Any,
    texts: str | Sequence[str],
    methods: Sequence[str | ExplanationMethod] = ("raw_attention", "effective_attention"),
    *,
    target: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Attribution]:
    """Token importance of ``texts`` by each method (``target``: class per text, default predicted)."""
    from ..models import as_loaded_model

    lm = as_loaded_model(lm)
    texts = [texts] if isinstance(texts, str) else list(texts)
    built = [get_method(m) for m in methods]
    out: dict[str, Attribution] = {m.name: Attribution(m.name, [], [], []) for m in built}
    starts = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="explain", unit="batch")
    for start in starts:
        enc = lm.tokenize(texts[start : start + batch_size])
        tgt = None if target is None else torch.as_tensor(list(target)[start : start + batch_size])
        scores, tgt, _ = explain_batch(lm, enc, built, target=tgt)
        toks = lm.tokens(enc["input_ids"], enc.get("attention_mask"))
        for m in built:
            out[m.name].tokens.extend(toks)
            out[m.name].scores.extend(scores[m.name])
            out[m.name].target.extend(tgt.tolist())
    return out

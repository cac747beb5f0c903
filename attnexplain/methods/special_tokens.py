"""Which token scores the user sees: special tokens (and a causal model's attention sink) left out.

On a fine-tuned BERT classifier, [CLS] and [SEP] carry about 80 % of raw attention's and
rollout's score mass and top every ranked list, although they carry no content (the
faithfulness metrics already never remove them). One option, shared by every method, the
``explain`` verb, the CLI (``--include-special-tokens``), ``analyze``'s tables and the report,
leaves them out of the token scores:

* ``exclude_special_tokens=True`` (the default): the tokenizer's special tokens ([CLS], [SEP],
  <s>, </s>, [PAD], [MASK], BOS/EOS; ``[UNK]`` is content) and, for causal models, the first
  real token (the *attention sink*: causal attention piles mass on position 0 whatever it
  holds) are dropped from ``tokens`` and ``scores``. The scores of the other tokens are the
  method's own values, not renormalised.
* ``exclude_special_tokens=False``: every real token keeps its score.

The rule lives in :func:`special_token_mask`; the special ids are
:func:`attnexplain.ablations.eraser.special_token_ids` (the same set the faithfulness metrics
never remove).
"""

from __future__ import annotations


import numpy as np
import torch

from ..models import LoadedModel


__all__ = ["EXCLUDE_SPECIAL_TOKENS_DEFAULT", "special_token_mask", "drop_special_tokens"]

#: the documented default of every ``exclude_special_tokens`` option
EXCLUDE_SPECIAL_TOKENS_DEFAULT = True


def special_token_mask(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                       attention_sink: bool | None = None) -> list[np.ndarray]:
    """Per example, a bool array over its real tokens (padding removed): True = left out.

    Args:
        lm: the :class:`~attnexplain.models.LoadedModel` (its tokenizer gives the special ids).
        input_ids / attention_mask: (B, n) the batch as the model saw it (any padding side).
        attention_sink: also mark the first real token; ``None`` (default): for causal models
            (:func:`attnexplain.methods.attention_methods.is_causal_model`).
    """
    from ..ablations.perturbed_inputs import special_token_ids
    from .attention_methods import is_causal_model

    specials = special_token_ids(getattr(lm, "tokenizer", None))
    if attention_sink is None:
        attention_sink = is_causal_model(lm)
    out = []
    for i, row in enumerate(input_ids.tolist()):
        if attention_mask is not None:
            row = [t for t, k in zip(row, attention_mask[i].bool().tolist()) if k]
        mask = np.fromiter((t in specials for t in row), dtype=bool, count=len(row))
        if attention_sink and len(row):
            mask[0] = True
        out.append(mask)
    return out


def drop_special_tokens(tokens: list[list[str]], scores: list[np.ndarray], masks: list[np.ndarray]
                        ) -> tuple[list[list[str]], list[np.ndarray], list[np.ndarray]]:
    """Tokens and scores without the masked positions, and the kept positions (indices into each
    example's real tokens). An example whose tokens are all masked keeps them all."""
    out_t, out_s, out_p = [], [], []
    for toks, sc, m in zip(tokens, scores, masks):
        keep = np.flatnonzero(~m) if (~m).any() else np.arange(len(m))
        out_t.append([toks[j] for j in keep])
        out_s.append(np.asarray(sc)[keep])
        out_p.append(keep)
    return out_t, out_s, out_p

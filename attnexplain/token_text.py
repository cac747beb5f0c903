"""Readable token strings: what a token looks like in the text, without tokenizer markers.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2) show a leading space as ``Ġ`` and a newline as
``Ċ``; SentencePiece tokenizers (T5, Llama 2) show a leading space as ``▁``. :func:`readable_tokens`
turns each token into the text it stands for (``"Ġis"`` -> ``" is"``), through the tokenizer's own
``convert_tokens_to_string`` one token at a time, so the strings concatenate to the decoded text.
Special tokens keep their names (``<|im_start|>``, ``[CLS]``). WordPiece continuation pieces keep
their ``##`` (that marker carries information a string cannot: "no space before me").
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["readable_tokens", "readable_token"]

_SPIECE = "\u2581"  # ▁


def readable_token(tokenizer: Any, token: str, *, special: bool = False) -> str:
    """One token string as text (see the module docstring)."""
    if special or not hasattr(tokenizer, "convert_tokens_to_string"):
        return token
    try:
        text = tokenizer.convert_tokens_to_string([token])
    except Exception:  # noqa: BLE001 - a tokenizer that cannot: show the raw token
        return token.replace(_SPIECE, " ")
    if not isinstance(text, str):
        return token
    if token.startswith(_SPIECE) and not text.startswith(" "):
        text = " " + text  # SentencePiece decoders drop the leading space of a text's first piece
    if token.startswith("##"):
        return token
    return text


def readable_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Token strings of ``ids`` as text: ``[" The", " capital", ...]`` instead of ``["ĠThe", ...]``.

    Tokenizers without ``convert_ids_to_tokens`` give the ids as strings.
    """
    ids = [int(i) for i in ids]
    if tokenizer is None or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return [str(i) for i in ids]
    toks = tokenizer.convert_ids_to_tokens(ids)
    specials = set(getattr(tokenizer, "all_special_ids", None) or [])
    # one convert_tokens_to_string call per distinct token string (a per-token call costs ~10 us:
    # 20 ms for a batch of 16 x 128 tokens, as much as capturing its attention), remembered
    # per tokenizer across calls
    memo = _memo(tokenizer)
    out = []
    for i, t in zip(ids, toks):
        key = (t, i in specials)
        text = memo.get(key)
        if text is None:
            text = memo[key] = readable_token(tokenizer, t, special=key[1])
        out.append(text)
    return out


#: tokenizer -> {(token string, special): readable string}
_MEMOS: "weakref.WeakKeyDictionary[Any, dict[tuple[str, bool], str]]" = weakref.WeakKeyDictionary()


def _memo(tokenizer: Any) -> dict[tuple[str, bool], str]:
    try:
        memo = _MEMOS.get(tokenizer)
        if memo is None:
            memo = _MEMOS[tokenizer] = {}
        return memo
    except TypeError:  # not weak-referenceable: remember nothing beyond this call
        return {}

"""Positions that follow the attention mask, for every forward pass of a model attnexplain runs.

Hugging Face models with learned or rotary absolute positions number the tokens ``0..n-1`` along
the padded sequence unless they are given ``position_ids``. With left padding, the real tokens of
a short example then sit at positions ``k..n-1`` instead of ``0..n_i-1``, so the example's logits
and attention differ from the same example run alone (GPT-2: 0.441 vs 0.3765). Hugging Face's
``generate`` passes ``position_ids = cumsum(mask) - 1`` itself; a plain ``model(**batch)`` does not.

:func:`follow_mask_positions` installs one forward pre-hook on the model (idempotent; done by
:func:`attnexplain.use_backend` and :func:`attnexplain.capture`) that adds those position ids to
every call that has a 2-D ``attention_mask``, no ``position_ids`` and padding on the left (models
that number their tokens from the pad id themselves, RoBERTa-style, are left alone), so
capture, explanation methods, faithfulness forwards, interventions, analyze and the dashboard all
give each example the positions it has alone. Right-padded and unpadded calls are left untouched
(their positions already follow the mask).

Models whose ``forward`` takes no ``position_ids`` but embeds absolute positions (BART, mBART,
Marian, Pegasus...) cannot be corrected from outside, first-token sequence classifiers (BERT, RoBERTa, ELECTRA,
XLM-R, CamemBERT, DistilBERT) would classify from a padding token, and encoder-decoder sequence
classifiers (BART, T5) feed the padded input to their decoder unmasked; a
left-padded call to one of them raises :class:`LeftPaddingError` naming the fix (pad on the right). Models with relative positions (T5)
or none are unaffected by left padding and run as they are.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..errors import AttnExplainError

__all__ = ["positions_from_mask", "follow_mask_positions", "LeftPaddingError", "is_left_padded", "left_padding_supported"]

_FLAG = "_attnexplain_positions_hook"
#: names of absolute position-embedding modules in models whose forward takes no position_ids
_ABSOLUTE_POSITION_NAMES = ("embed_positions", "position_embeddings", "wpe", "embed_pos")


class LeftPaddingError(AttnExplainError, ValueError):
    """A left-padded batch for a model that cannot be given the real tokens' positions."""


def positions_from_mask(attention_mask: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Position ids ``cumsum(mask) - 1`` (B, n), clamped at 0 on padding; the last ``length`` columns.

    The i-th real token of each example gets position i whatever the padding side (what
    Hugging Face's ``generate`` does). ``length`` < n keeps the last columns (a call with cached
    keys: the mask covers past + new tokens).
    """
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.clamp(min=0)
    if length is not None and length < pos.shape[-1]:
        pos = pos[..., -length:]
    return pos


def is_left_padded(attention_mask: torch.Tensor) -> bool:
    """True when some example has a padding position before one of its real tokens."""
    m = attention_mask.bool()
    if m.dim() != 2 or bool(m.all()):
        return False
    # a row is right-padded (or unpadded) iff the mask never goes from 0 back to 1
    return bool((~m[:, :-1] & m[:, 1:]).any())


def _takes_position_ids(model: nn.Module) -> bool:
    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _positions_from_padding(model: nn.Module) -> bool:
    """RoBERTa-style embeddings number the non-padding tokens themselves (from the pad id)."""
    return any(hasattr(m, "create_position_ids_from_input_ids") for m in model.modules())


def _has_absolute_positions(model: nn.Module) -> bool:
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in _ABSOLUTE_POSITION_NAMES and isinstance(module, nn.Embedding):
            return True
    return False


def _reads_first_position(model: nn.Module) -> bool:
    from .adapters import FIRST_TOKEN_CLASSIFIERS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return model_type in FIRST_TOKEN_CLASSIFIERS and "SequenceClassification" in type(model).__name__


def left_padding_supported(model: nn.Module) -> bool:
    """False for the models a left-padded call is refused for (see the module docstring); the
    toolkit pads its own batches on the right for them whatever the tokenizer's padding side."""
    if _head_refusal(model) is not None:
        return False
    return _takes_position_ids(model) or _positions_from_padding(model) or not _has_absolute_positions(model)


def _head_refusal(model: nn.Module) -> str | None:
    """Why the model's classification head cannot take left padding (None when it can)."""
    if _reads_first_position(model):
        return "classifies from the hidden state at position 0, which left padding fills with a padding token"
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) and "SequenceClassification" in type(model).__name__:
        return ("feeds the padded input, shifted, to its decoder without a decoder mask, so left padding puts "
                "padding tokens before every real decoder position")
    return None


def _hook(model: nn.Module, takes_positions: bool, absolute: bool):
    head_refusal = _head_refusal(model)

    def pre_forward(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        mask = kwargs.get("attention_mask")
        if mask is None or not isinstance(mask, torch.Tensor) or mask.dim() != 2 or not is_left_padded(mask):
            return None
        if head_refusal is not None:
            raise LeftPaddingError(
                f"{type(module).__name__} {head_refusal}; pad on the right (tokenizer.padding_side = 'right')"
            )
        if kwargs.get("position_ids") is not None:
            return None
        if not takes_positions:
            if absolute:
                raise LeftPaddingError(
                    f"{type(module).__name__} ({getattr(module.config, 'model_type', '?')}) numbers its absolute "
                    "positions along the padded sequence and takes no position_ids, so left padding would shift "
                    "the real tokens' positions; pad on the right (tokenizer.padding_side = 'right')"
                )
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if isinstance(ids, torch.Tensor) else embeds
        length = ref.shape[1] if isinstance(ref, torch.Tensor) else None
        kwargs = dict(kwargs)
        kwargs["position_ids"] = positions_from_mask(mask, length).to(mask.device)
        return args, kwargs

    return pre_forward


def follow_mask_positions(model: nn.Module) -> nn.Module:
    """Install (once) the forward pre-hook described in the module docstring; returns ``model``."""
    if getattr(model, _FLAG, None) is None and isinstance(model, nn.Module):
        takes = _takes_position_ids(model) and not _positions_from_padding(model)
        absolute = _has_absolute_positions(model) and not _positions_from_padding(model)
        handle = model.register_forward_pre_hook(_hook(model, takes, absolute), with_kwargs=True
        )
        object.__setattr__(model, _FLAG, handle)
    return model

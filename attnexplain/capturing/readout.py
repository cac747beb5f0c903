"""Skip what a first-token classifier never reads: its last layer beyond position 0.

BERT-family sequence classifiers (BERT, RoBERTa, ELECTRA, XLM-R, CamemBERT, DistilBERT) classify
from the last hidden state at position 0 alone (the pooler's / head's ``hidden[:, 0]``, the
[CLS] or <s> token). Their last layer's attention output projection, residual, norm and
feed-forward block still run on every position, and nothing reads the results. Inside
``with first_token_readout(model):`` the last layer's hidden states after the attention block
are cut to position 0 (a forward hook at the module the adapter table names,
``AdapterRule.post_attention_path``), so the feed-forward block runs on one position. The logits
are those of the full forward (the same rows go through the same operations; tested on tiny
BERT, RoBERTa and DistilBERT models, and checked on the real model by the faithfulness code before
first use); the forward pass is about (L - 1 + 1/n) / L as expensive.

Only for models that :func:`first_token_readout_supported` accepts; the context manager refuses
others. Hidden states of the last layer (``output_hidden_states``) have length 1 inside the block.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from .adapters import FIRST_TOKEN_CLASSIFIERS, _resolve, find_attention_sites

__all__ = ["first_token_readout", "first_token_readout_supported"]


_FOUND: "weakref.WeakKeyDictionary[nn.Module, nn.Module | None]" = weakref.WeakKeyDictionary()


def _last_post_attention_module(model: nn.Module) -> nn.Module | None:
    """The module to cut (found once per model: walking the modules is not free)."""
    if model not in _FOUND:
        _FOUND[model] = _find_last_post_attention_module(model)
    return _FOUND[model]


def _find_last_post_attention_module(model: nn.Module) -> nn.Module | None:
    try:
        sites = find_attention_sites(model)
    except ValueError:
        return None
    own = [s for s in sites.values() if s.kind == "self" and s.rule is not None]
    if not own or len({s.stack for s in own}) != 1:
        return None  # encoder-decoder or several stacks: not a first-token classifier
    last = max(own, key=lambda s: s.layer)
    if last.rule.post_attention_path is None:
        return None
    return _resolve(model, last.module_name, last.rule.post_attention_path)


def first_token_readout_supported(model: nn.Module) -> bool:
    """Whether ``model`` is a sequence classifier of a family in
    :data:`~attnexplain.capturing.adapters.FIRST_TOKEN_CLASSIFIERS` whose last attention block the
    adapter table can locate."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FIRST_TOKEN_CLASSIFIERS or not type(model).__name__.endswith("ForSequenceClassification"):
        return False
    return _last_post_attention_module(model) is not None


def _cut(output):
    if isinstance(output, torch.Tensor):
        return output[:, :1]
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (output[0][:, :1],) + tuple(output[1:])
    raise TypeError(f"first_token_readout: unexpected output of the last attention block: {type(output).__name__}")


@contextlib.contextmanager
def first_token_readout(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s last layer computes position 0 only (see the module docstring).

    Raises:
        ValueError: the model is not a supported first-token classifier.
    """
    if not first_token_readout_supported(model):
        raise ValueError(
            f"{type(model).__name__} is not a first-token sequence classifier the adapter table knows "
            f"(model types: {', '.join(sorted(FIRST_TOKEN_CLASSIFIERS))})"
        )
    module = _last_post_attention_module(model)
    handle = module.register_forward_hook(lambda _m, _inp, out: _cut(out))
    try:
        yield
    finally:
        handle.remove()

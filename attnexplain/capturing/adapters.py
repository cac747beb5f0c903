"""The one table of architecture knowledge: where attention modules and output projections live.

Capture needs, for every attention call, (1) which layer and stack it belongs to and whether it
is self- or cross-attention, and (2) the head's block W_O^h of the output projection, for the
value transforms T = V_h W_O^h that effective attention and norm-based attention use.

Output projections live in different places (see shared notes): Llama ``self_attn.o_proj``,
GPT-2 ``attn.c_proj`` (a Conv1D with transposed weight), BERT in the sibling
``attention.output.dense``. Each rule below names the attribute names that identify the module
that calls the attention function and the path from that module to its output projection
(``..`` goes to the parent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .._registry import Registry
from ..errors import AttnExplainError

__all__ = [
    "AdapterRule", "ADAPTER_RULES", "FIRST_TOKEN_CLASSIFIERS", "AttentionSite", "find_attention_sites",
    "UnsupportedArchitectureError", "PostLNLayout", "unsupported_message", "first_block",
]


class UnsupportedArchitectureError(AttnExplainError, ValueError):
    """Raised when no attention module of a model can be identified, or a method needs architecture
    knowledge the adapter table does not have for it."""


@dataclass(frozen=True)
class PostLNLayout:
    """Where the two LayerNorms of a post-LN transformer block sit (paths from the attention module).

    A post-LN block computes ``h = LN1(x + Attn(x)); out = LN2(h + FFN(h))`` (BERT, RoBERTa,
    ELECTRA, DistilBERT). The context-mixing decompositions (``norm_residual_ln``, ``globenc``,
    ``alti``) need both norms' parameters and inputs; pre-LN (GPT-2, Llama) and RMSNorm blocks
    have no entry and are refused.
    """

    #: the LayerNorm applied to ``x + Attn(x)``
    attention_norm_path: str
    #: the LayerNorm applied to ``h + FFN(h)``
    output_norm_path: str


@dataclass(frozen=True)
class AdapterRule:
    """How to recognise an attention module and find its output projection."""

    name: str
    #: attribute names the module calling the attention function has
    marker_attrs: tuple[str, ...]
    #: path from that module to the output projection; ".." = parent module
    out_proj_path: str
    #: "linear" (weight is (out, in)) or "conv1d" (weight is (in, out), GPT-2)
    layout: str = "linear"
    #: path from that module to the module whose output is its layer's hidden states after the
    #: attention block (residual and norm included), (B, n, d) or a tuple starting with them;
    #: what :func:`attnexplain.capturing.first_token_readout` cuts to position 0. None: unknown.
    post_attention_path: str | None = None
    #: path from that module to its transformer block (the module called once per layer with the
    #: residual stream as first argument); value zeroing re-runs it. None: unknown.
    block_path: str | None = None
    #: the block's LayerNorms when it is a post-LN block with ``nn.LayerNorm``; None otherwise
    post_ln: PostLNLayout | None = None
    #: window attention (Swin): each call runs every window of every image as its own row; the
    #: block (``block_path``) has ``window_size``, ``shift_size`` and takes ``input_dimensions``,
    #: and capture folds the windows back into one (tokens x tokens) matrix per image
    windowed: bool = False


# The table. Order matters: the first rule whose markers all exist on a module wins.
_RULES_IN_ORDER: tuple[AdapterRule, ...] = (
    AdapterRule("swin-window", ("q_proj", "k_proj", "v_proj", "o_proj", "relative_position_bias"), "o_proj",
                block_path="..", windowed=True),  # Swin: shifted windows, folded back per image by capture
    AdapterRule("albert", ("query", "key", "value", "dense"), "dense"),  # ALBERT: the projection sits on the attention module
    AdapterRule("bert-style", ("query", "key", "value"), "../output.dense", post_attention_path="..",  # BERT, RoBERTa, ELECTRA, XLM-R
                block_path="../..", post_ln=PostLNLayout("../output.LayerNorm", "../../output.LayerNorm")),
    AdapterRule("llama-style", ("q_proj", "k_proj", "v_proj", "o_proj"), "o_proj", block_path=".."),  # Llama, Mistral, Qwen, ViT (5.x); pre-LN RMSNorm
    AdapterRule("bart-style", ("q_proj", "k_proj", "v_proj", "out_proj"), "out_proj", block_path=".."),  # BART, mBART, Whisper
    AdapterRule("distilbert", ("q_lin", "k_lin", "v_lin", "out_lin"), "out_lin", post_attention_path="../sa_layer_norm",
                block_path="..", post_ln=PostLNLayout("../sa_layer_norm", "../output_layer_norm")),
    AdapterRule("t5", ("q", "k", "v", "o"), "o", block_path="../../.."),  # pre-LN RMSNorm
    AdapterRule("gpt2", ("c_attn", "c_proj"), "c_proj", layout="conv1d", block_path=".."),  # pre-LN
    # registry-using models whose projections have other names (fused q/k/v or another output name)
    AdapterRule("modernbert", ("Wqkv", "Wo"), "Wo"),  # ModernBERT
    AdapterRule("phi", ("q_proj", "k_proj", "v_proj", "dense"), "dense"),  # Phi-1, 1.5, 2
    AdapterRule("fused-qkv-o", ("qkv_proj", "o_proj"), "o_proj"),  # Phi-3
    AdapterRule("gpt-neox", ("query_key_value", "dense"), "dense"),  # GPT-NeoX, Pythia
)
#: the table as a registry, name -> rule, in matching order (``ADAPTER_RULES.register(AdapterRule(...))``
#: appends a rule for another architecture)
ADAPTER_RULES: Registry = Registry("architecture adapter rule", {rule.name: rule for rule in _RULES_IN_ORDER})

_CROSS_MARKERS = ("encoder_attn", "EncDecAttention", "crossattention", "cross_attn")

#: sequence classifiers (``config.model_type``) whose head reads the last hidden states at
#: position 0 only (the pooler's / head's ``hidden[:, 0]``): BERT, RoBERTa, ELECTRA, XLM-R,
#: CamemBERT, DistilBERT. Used with ``post_attention_path`` by ``first_token_readout``.
FIRST_TOKEN_CLASSIFIERS: frozenset[str] = frozenset({"bert", "roberta", "electra", "xlm-roberta", "camembert", "distilbert"})


@dataclass
class AttentionSite:
    """One attention module of a model.

    Attributes:
        key: stable identifier, e.g. ``"encoder.3.self"`` or ``"decoder.1.cross"``.
        module_name: qualified name of the module in the model.
        stack: ``"encoder"``, ``"decoder"`` or ``"main"`` (single-stack models).
        layer: layer index within its stack.
        kind: ``"self"`` or ``"cross"``.
        rule: the adapter rule that matched (None for user-marked sites).
        out_proj: the output projection module (None if unknown).
    """

    key: str
    module_name: str
    stack: str
    layer: int
    kind: str
    rule: AdapterRule | None
    out_proj: nn.Module | None
    module: nn.Module | None = None

    def output_projection_blocks(self, num_heads: int) -> torch.Tensor | None:
        """W_O split per head: (H, d_h, d) such that head h contributes o_h @ W[h]."""
        if self.out_proj is None:
            return None
        weight = self.out_proj.weight
        if self.rule is not None and self.rule.layout == "conv1d":
            w = weight  # (in = H*d_h, out = d)
        else:
            w = weight.t()  # Linear: (out, in) -> (in, out)
        d_in, d_out = w.shape
        if d_in % num_heads:
            raise ValueError(f"output projection input size {d_in} is not divisible by {num_heads} heads")
        return w.reshape(num_heads, d_in // num_heads, d_out)


def _resolve(root: nn.Module, module_name: str, path: str) -> nn.Module | None:
    parts = module_name.split(".") if module_name else []
    for step in path.split("/"):
        if step == "..":
            parts = parts[:-1]
        else:
            parts = parts + step.split(".")
    try:
        return root.get_submodule(".".join(parts))
    except AttributeError:
        return None


def _rule_for(module: nn.Module) -> AdapterRule | None:
    for rule in ADAPTER_RULES.values():
        if all(hasattr(module, a) for a in rule.marker_attrs):
            return rule
    return None


def _stack_and_layer(module_name: str) -> tuple[str, int]:
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", module_name)
    layer = int(match.group(1)) if match else 0
    prefix = module_name[: match.start()] if match else module_name
    if "decoder" in prefix:
        stack = "decoder"
    elif "encoder" in prefix:
        stack = "encoder"  # renamed "main" later when the model has no decoder (BERT's stack is "encoder")
    else:
        stack = "main"
    return stack, layer


def unsupported_message(model: nn.Module, why: str) -> str:
    """The refusal of a model attnexplain cannot capture: its type, why, and the fallback."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return (
        f"{type(model).__name__} (model_type {model_type!r}) is not supported by attnexplain's attention capture: "
        f"{why}. Mark its attention modules yourself with attnexplain.capturing.mark_attention_site(module, layer=..., "
        "weights_from=...) (see the README, 'Supported architectures')"
    )


def find_attention_sites(model: nn.Module) -> dict[int, AttentionSite]:
    """Map ``id(module)`` -> :class:`AttentionSite` for every attention module of ``model``.

    Raises:
        UnsupportedArchitectureError: when no module matches the adapter table.
    """
    found: list[tuple[nn.Module, AttentionSite]] = []
    for name, module in model.named_modules():
        rule = _rule_for(module)
        if rule is None:
            continue
        stack, layer = _stack_and_layer(name)
        kind = "cross" if any(mk in name for mk in _CROSS_MARKERS) else "self"
        out_proj = _resolve(model, name, rule.out_proj_path)
        site = AttentionSite(
            key="", module_name=name, stack=stack, layer=layer, kind=kind, rule=rule, out_proj=out_proj, module=module
        )
        found.append((module, site))
    if not found:
        raise UnsupportedArchitectureError(unsupported_message(
            model, f"no attention module matches the adapter table ({', '.join(ADAPTER_RULES)}); "
            "a rule naming its projections, added with attnexplain.capturing.adapters.ADAPTER_RULES.register(AdapterRule(...)), "
            "adds it"))
    # one site per attention module: models whose names hold several indices (Swin's
    # layers.<stage>.blocks.<block>) are numbered in module order within their stack and kind
    groups: dict[tuple[str, str], list[AttentionSite]] = {}
    for _, site in found:
        groups.setdefault((site.stack, site.kind), []).append(site)
    for group in groups.values():
        if len({s.layer for s in group}) < len(group):
            for i, site in enumerate(group):
                site.layer = i
    has_decoder = any(s.stack == "decoder" for _, s in found)
    sites: dict[int, AttentionSite] = {}
    for module, site in found:
        if site.stack == "encoder" and not has_decoder:
            site.stack = "main"
        site.key = f"{site.stack}.{site.layer}.{site.kind}"
        sites[id(module)] = site
    return sites


def first_block(model: nn.Module, stack: str | None = None) -> nn.Module:
    """The first transformer block of the model's input stack (the encoder of an encoder-decoder;
    ``stack="decoder"``: the decoder's): the module whose first argument is the residual stream
    entering layer 0, i.e. the embedding output (after the embedding LayerNorm in BERT-family models).

    Raises:
        UnsupportedArchitectureError: no attention site, or its rule has no ``block_path``.
    """
    stacks = ("main", "encoder") if stack is None else (stack,)
    sites = [s for s in find_attention_sites(model).values() if s.kind == "self" and s.stack in stacks]
    if not sites:
        raise UnsupportedArchitectureError(unsupported_message(model, "it has no self-attention site in its input stack"))
    site = min(sites, key=lambda s: s.layer)
    block = None if site.rule is None or site.rule.block_path is None else _resolve(model, site.module_name, site.rule.block_path)
    if block is None:
        raise UnsupportedArchitectureError(unsupported_message(
            model, f"the adapter rule {getattr(site.rule, 'name', None)!r} does not say where its transformer block is "
            "(block_path)"))
    return block

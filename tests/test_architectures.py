"""Every architecture attnexplain meets: a sweep over tiny Hugging Face models built from configs.

Each entry is either captured exactly (logits and every captured attention matrix equal to an eager
copy of the same weights run with ``output_attentions=True``, on a right-padded batch) or refused
with an :class:`~attnexplain.capturing.UnsupportedArchitectureError` that names the model type and the
fix (``mark_attention_site``), never a ``NothingCapturedError`` with the wrong remedy.

A new architecture joins with one line in ``ARCHITECTURES``:
``name: (config class, model class, input kind, config keyword arguments, expected)``, where
expected is ``EXACT`` or the words its refusal must contain.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

import attnexplain
from attnexplain.capturing import NothingCapturedError, UnsupportedArchitectureError

EXACT = "exact"
NOT_REGISTRY = "does not call attention through transformers' attention registry"

_ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, vocab_size=100)
_DEC = dict(_ENC, num_key_value_heads=2, pad_token_id=0)
_S2S = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, vocab_size=100)
_VIS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4)

ARCHITECTURES = {
    # encoders
    "bert": (tf.BertConfig, tf.BertForSequenceClassification, "text", _ENC, EXACT),
    "roberta": (tf.RobertaConfig, tf.RobertaForSequenceClassification, "text", dict(_ENC, max_position_embeddings=70, pad_token_id=1), EXACT),
    "xlm-roberta": (tf.XLMRobertaConfig, tf.XLMRobertaForSequenceClassification, "text", dict(_ENC, max_position_embeddings=70, pad_token_id=1), EXACT),
    "electra": (tf.ElectraConfig, tf.ElectraForSequenceClassification, "text", dict(_ENC, embedding_size=32), EXACT),
    "distilbert": (tf.DistilBertConfig, tf.DistilBertForSequenceClassification, "text", dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64, vocab_size=100), EXACT),
    "albert": (tf.AlbertConfig, tf.AlbertForSequenceClassification, "text", dict(_ENC, embedding_size=16), EXACT),  # one layer module, shared
    "modernbert": (tf.ModernBertConfig, tf.ModernBertForSequenceClassification, "text", dict(_ENC, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=3, sep_token_id=4), EXACT),
    "deberta-v2": (tf.DebertaV2Config, tf.DebertaV2ForSequenceClassification, "text", _ENC, NOT_REGISTRY),
    "mpnet": (tf.MPNetConfig, tf.MPNetForSequenceClassification, "text", dict(_ENC, max_position_embeddings=70, pad_token_id=1), NOT_REGISTRY),
    "big_bird": (tf.BigBirdConfig, tf.BigBirdForSequenceClassification, "text", dict(_ENC, attention_type="block_sparse", block_size=2, num_random_blocks=1), NOT_REGISTRY),
    # decoders
    "gpt2": (tf.GPT2Config, tf.GPT2ForSequenceClassification, "text", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2), EXACT),
    "llama": (tf.LlamaConfig, tf.LlamaForSequenceClassification, "text", _DEC, EXACT),
    "mistral": (tf.MistralConfig, tf.MistralForSequenceClassification, "text", _DEC, EXACT),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForSequenceClassification, "text", _DEC, EXACT),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForSequenceClassification, "text", dict(_DEC, head_dim=8), EXACT),  # soft-capping, sliding window
    "phi": (tf.PhiConfig, tf.PhiForSequenceClassification, "text", dict(_DEC, num_key_value_heads=4), EXACT),
    "phi3": (tf.Phi3Config, tf.Phi3ForSequenceClassification, "text", _DEC, EXACT),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForSequenceClassification, "text", _DEC, EXACT),
    "opt": (tf.OPTConfig, tf.OPTForSequenceClassification, "text", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, max_position_embeddings=64, vocab_size=100, word_embed_proj_dim=32, pad_token_id=0), EXACT),
    "gpt_neo": (tf.GPTNeoConfig, tf.GPTNeoForSequenceClassification, "text", dict(hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], max_position_embeddings=64, vocab_size=100, window_size=4, pad_token_id=0), NOT_REGISTRY),
    # encoder-decoders
    "bart": (tf.BartConfig, tf.BartForSequenceClassification, "seq2seq", dict(_S2S, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2), EXACT),
    "mbart": (tf.MBartConfig, tf.MBartForSequenceClassification, "seq2seq", dict(_S2S, pad_token_id=1, bos_token_id=0, eos_token_id=2), EXACT),
    "t5": (tf.T5Config, tf.T5ForSequenceClassification, "seq2seq", dict(d_model=32, d_kv=8, num_heads=4, num_layers=2, d_ff=64, vocab_size=100, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1), EXACT),
    "marian": (tf.MarianConfig, tf.MarianMTModel, "seq2seq-lm", dict(_S2S, pad_token_id=1, eos_token_id=2, decoder_start_token_id=1), EXACT),
    "pegasus": (tf.PegasusConfig, tf.PegasusForConditionalGeneration, "seq2seq-lm", dict(_S2S, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0), EXACT),
    # vision
    "vit": (tf.ViTConfig, tf.ViTForImageClassification, "image", _VIS, EXACT),
    "deit": (tf.DeiTConfig, tf.DeiTForImageClassification, "image", _VIS, EXACT),
    "clip_vision": (tf.CLIPVisionConfig, tf.CLIPVisionModel, "image", _VIS, EXACT),
    "dinov2": (tf.Dinov2Config, tf.Dinov2Model, "image", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=16, patch_size=4), EXACT),
    "swin": (tf.SwinConfig, tf.SwinForImageClassification, "image", dict(image_size=16, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=2), EXACT),  # windows folded per image
    "swin-padded": (tf.SwinConfig, tf.SwinForImageClassification, "image", dict(image_size=20, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4), EXACT),  # 10x10 grid, windows of 4: padded
}


def _build(name: str, impl: str):
    config_cls, model_cls, _, kwargs, _ = ARCHITECTURES[name]
    cfg = config_cls(**kwargs)
    cfg.num_labels = 2
    torch.manual_seed(0)
    return model_cls._from_config(copy.deepcopy(cfg), attn_implementation=impl).eval()


def _inputs(name: str, model) -> dict[str, torch.Tensor]:
    kind = ARCHITECTURES[name][2]
    g = torch.Generator().manual_seed(0)
    if kind == "image":
        size = model.config.image_size
        return {"pixel_values": torch.randn(2, 3, size, size, generator=g)}
    cfg = model.config
    ids = torch.randint(5, 100, (2, 8), generator=g)
    am = torch.ones_like(ids)
    am[1, -3:] = 0  # right padding
    if kind.startswith("seq2seq"):  # one <eos> per example, at its last real token
        ids[0, -1] = ids[1, 4] = cfg.eos_token_id
    ids[1, -3:] = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    out = {"input_ids": ids, "attention_mask": am}
    if kind == "seq2seq-lm":
        out["decoder_input_ids"] = ids[:, :3]
    return out


def _swin_folded(model, attentions: tuple) -> tuple:
    """Independent fold of Swin's per-window eager attentions (B * n_windows, H, w^2, w^2) into
    (B, H, N, N): transformers' own padding, cyclic shift and window_partition applied to a grid of
    token indices tell which token sits in each window slot; explicit loops place every weight."""
    from transformers.models.swin.modeling_swin import window_partition

    blocks = [b for layer in model.swin.encoder.layers for b in layer.blocks]
    side = model.config.image_size // model.config.patch_size
    folded = []
    for block, a in zip(blocks, attentions):
        level = [i for i, layer in enumerate(model.swin.encoder.layers) if any(b is block for b in layer.blocks)][0]
        hgt = wid = side // (2 ** level)
        win, shift = int(block.window_size), int(block.shift_size)
        grid = torch.arange(hgt * wid, dtype=torch.float32).view(1, hgt, wid, 1)
        hp, wp = -(-hgt // win) * win, -(-wid // win) * win
        grid = torch.nn.functional.pad(grid, (0, 0, 0, wp - wid, 0, hp - hgt), value=-1)
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
        slots = window_partition(grid, win).reshape(-1, win * win).long()  # (n_windows, w^2) token or -1
        n_win = slots.shape[0]
        B, H = a.shape[0] // n_win, a.shape[1]
        out = torch.zeros(B, H, hgt * wid, hgt * wid)
        for b in range(B):
            for w in range(n_win):
                for i in range(win * win):
                    for j in range(win * win):
                        ti, tj = int(slots[w, i]), int(slots[w, j])
                        if ti >= 0 and tj >= 0:
                            out[b, :, ti, tj] = a[b * n_win + w, :, i, j]
        folded.append(out)
    return tuple(folded)


def _eager_groups(out) -> dict[tuple[str, str], tuple]:
    if getattr(out, "encoder_attentions", None) is not None:
        return {("encoder", "self"): out.encoder_attentions, ("decoder", "self"): out.decoder_attentions,
                ("decoder", "cross"): out.cross_attentions}
    return {(None, "self"): out.attentions}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_is_exact_or_refused_with_the_fix(name):
    expected = ARCHITECTURES[name][-1]
    model = _build(name, "eager")
    inputs = _inputs(name, model)
    if expected != EXACT:
        with pytest.raises(UnsupportedArchitectureError) as err:
            attnexplain.capture(model, inputs)
        msg = str(err.value)
        assert expected in msg and repr(model.config.model_type) in msg and "mark_attention_site" in msg, msg
        assert not isinstance(err.value, NothingCapturedError)
        return
    reference = _build(name, "eager")
    res = attnexplain.capture(model, inputs)
    with torch.no_grad():
        out = reference(**inputs, output_attentions=True)
    if getattr(out, "logits", None) is not None:
        torch.testing.assert_close(res.logits, out.logits, atol=1e-6, rtol=0)
    compared = 0
    groups = _eager_groups(out)
    if name.startswith("swin"):  # output_attentions keeps one block per stage: read every block's weights
        seen = []
        hooks = [b.attention.register_forward_hook(lambda m, i, o: seen.append(o[1]))
                 for layer in reference.swin.encoder.layers for b in layer.blocks]
        with torch.no_grad():
            reference(**inputs, output_attentions=True)
        for h in hooks:
            h.remove()
        groups = {(None, "self"): _swin_folded(reference, tuple(seen))}
    for (stack, kind), tensors in groups.items():
        stack = stack or res.primary_stack
        assert res.layers(stack, kind) == list(range(len(tensors))), (stack, kind, res.site_keys)
        for layer, exp in enumerate(tensors):
            torch.testing.assert_close(res.attention(layer, stack=stack, kind=kind), exp, atol=1e-6, rtol=0,
                                       msg=f"{name} {stack}.{layer}.{kind}")
            compared += 1
    assert compared == len(res.records)
    # every captured site knows its output projection (effective / norm-based attention need it)
    for key in res.site_keys:
        site = res.sites[key]
        T = res.value_transforms(site.layer, stack=site.stack, kind=site.kind)
        assert T.shape[:2] == res.attention(site.layer, stack=site.stack, kind=site.kind).shape[:2]


@pytest.mark.parametrize("name", [n for n, spec in ARCHITECTURES.items() if spec[-1] == NOT_REGISTRY])
def test_use_backend_says_when_the_switch_did_not_take(name):
    """BigBird & co.: transformers only logs that it keeps its own attention; use_backend must not
    report success."""
    model = _build(name, "eager")
    with pytest.raises(UnsupportedArchitectureError, match="mark_attention_site"):
        attnexplain.use_backend(model)


def test_swin_blocks_get_one_site_each():
    from attnexplain.capturing import find_attention_sites

    sites = find_attention_sites(_build("swin", "eager"))
    keys = sorted(s.key for s in sites.values())
    assert keys == [f"main.{i}.self" for i in range(4)]  # 2 stages x 2 blocks


def test_adapter_table_miss_is_reported_not_nothing_captured(monkeypatch):
    """A registry-using model whose modules match no adapter rule: capture raises the adapter
    table's error (naming the rule table and mark_attention_site), not NothingCapturedError."""
    from attnexplain.capturing import adapters

    from attnexplain._registry import Registry

    monkeypatch.setattr(adapters, "ADAPTER_RULES", Registry(adapters.ADAPTER_RULES.kind, {
        name: rule for name, rule in adapters.ADAPTER_RULES.items() if name != "modernbert"}))
    model = _build("modernbert", "eager")
    with pytest.raises(UnsupportedArchitectureError, match="ADAPTER_RULES") as err:
        attnexplain.capture(model, _inputs("modernbert", model))
    assert "'modernbert'" in str(err.value) and "mark_attention_site" in str(err.value)

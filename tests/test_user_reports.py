"""Faults replayed from users' bug reports (issue 14), each fixed by kind and tested over every tiny
architecture the kind touches; expected values come from the example run alone, an eager copy, or
a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnexplain
from attnexplain.capturing.positions import LeftPaddingError
from attnexplain.models import LoadedModel
from attnexplain.testing import TINY_ARCHITECTURES, tiny_hf_model, tiny_inputs, tiny_model

TEXT_ARCHITECTURES = [a for a in TINY_ARCHITECTURES if a != "vit"]
#: left padding is refused for these tiny classifiers (head reads position 0, or absolute
#: positions without position_ids, or an encoder-decoder classifier decoding the padded input);
#: attnexplain's own batches pad them on the right
LEFT_PADDING_REFUSED = {"bert", "roberta", "distilbert", "bart", "t5"}


def _real(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(H, n, n) attention cut to the real tokens ``idx``."""
    return x[..., idx, :][..., idx]


# ------------------------------------------------------------------ 1. positions follow the mask


def test_report_left_padding_gpt2_probs_equal_alone():
    lm = tiny_model("gpt2")
    lm.tokenizer.padding_side = "left"
    texts = ["hello there, how are you today", "hi"]
    batched = attnexplain.capture(lm, texts).probs[1]
    alone = attnexplain.capture(lm, [texts[1]]).probs[0]
    torch.testing.assert_close(batched, alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", TEXT_ARCHITECTURES)
def test_batched_equals_alone_for_every_tiny_architecture(arch, side):
    """Logits and every captured attention matrix of each example in a padded batch equal the
    example run alone (< 1e-5), or the left-padded call is refused with the fix named."""
    lm = tiny_model(arch)
    inputs = tiny_inputs(arch, batch=2, length=9, pad=side)
    am = inputs["attention_mask"]
    # padding positions hold the pad id, as a tokenizer leaves them (last-token heads look for it)
    inputs["input_ids"] = inputs["input_ids"].masked_fill(am == 0, lm.model.config.pad_token_id)
    if side == "left" and arch in LEFT_PADDING_REFUSED:
        with pytest.raises(LeftPaddingError, match="pad on the right"):
            attnexplain.capture(lm, inputs)
        return
    res = attnexplain.capture(lm, inputs)
    for i in range(2):
        idx = am[i].bool().nonzero().flatten()
        alone = attnexplain.capture(lm, {"input_ids": inputs["input_ids"][i : i + 1, idx],
                                         "attention_mask": am[i : i + 1, idx]})
        torch.testing.assert_close(res.logits[i], alone.logits[0], atol=1e-5, rtol=0)
        for key in res.site_keys:
            site = res.sites[key]
            a = res.attention(site.layer, stack=site.stack, kind=site.kind)[i]
            b = alone.attention(site.layer, stack=site.stack, kind=site.kind)[0]
            torch.testing.assert_close(_real(a, idx), b, atol=1e-5, rtol=0, msg=f"{arch} {side} {key} example {i}")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padding_interventions_and_faithfulness_forwards_equal_alone(arch):
    from attnexplain.ablations import faithfulness, interventions, runners

    lm = tiny_model(arch)
    lm.tokenizer.padding_side = "left"
    texts = ["hello there, how are you", "hi you"]
    enc = lm.tokenize(texts)
    assert (enc["attention_mask"][:, 0] == 0).any()
    fn = {f"main.{l}.self": interventions.uniform() for l in (0, 1)}
    batched = runners.run_with_interventions(lm, enc, fn)
    for i, t in enumerate(texts):
        alone = runners.run_with_interventions(lm, lm.tokenize([t]), fn)
        torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=0)
    # faithfulness runs its own (left-padded, deleted-token) batches: scores equal per example alone
    scores = [np.arange(len(x), dtype=float) for x in lm.tokens(enc["input_ids"], enc["attention_mask"])]
    both = faithfulness(lm, texts, scores, skip_unread=False).table
    for i, t in enumerate(texts):
        one = faithfulness(lm, [t], [scores[i]], skip_unread=False).table
        got = both[both.example == i].sort_values(["metric", "fraction"])
        exp = one.sort_values(["metric", "fraction"])
        np.testing.assert_allclose(got["p_perturbed"].to_numpy(), exp["p_perturbed"].to_numpy(), atol=1e-6)
        np.testing.assert_allclose(got["p_full"].to_numpy(), exp["p_full"].to_numpy(), atol=1e-6)


def test_first_token_classifier_is_padded_right_by_tokenize_whatever_the_tokenizer_says():
    lm = tiny_model("bert")
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenize(["a long text here", "hi"])
    assert enc["attention_mask"][1, 0] == 1 and enc["attention_mask"][1, -1] == 0
    assert lm.tokenizer.padding_side == "left"  # restored


# ------------------------------------------------------------ 2. each site's keys, their own mask

SEQ2SEQ = ["bart", "t5"]


def _seq2seq_inputs(pad_side: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (2, 12), generator=g)
    am = torch.ones_like(ids)
    if pad_side == "right":
        am[1, -6:] = 0
    else:
        am[1, :6] = 0
    dec = torch.randint(5, 100, (2, 3), generator=g)
    return {"input_ids": ids, "attention_mask": am, "decoder_input_ids": dec}


def test_report_bart_effective_cross_attention_ignores_source_padding():
    m = tiny_hf_model("bart", task="base")
    lm = LoadedModel.from_model(m, None, task="seq2seq")
    ids = torch.randint(5, 100, (2, 12))
    am = torch.ones_like(ids)
    am[1, -6:] = 0
    res = attnexplain.capture(lm, {"input_ids": ids, "attention_mask": am,
                                   "decoder_input_ids": torch.randint(5, 100, (2, 3))})
    assert res.effective_attention(0, stack="decoder", kind="cross")[1][..., -6:].abs().sum() == 0


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_effective_attention_per_site_equals_example_alone(arch, pad_side):
    """Encoder self, decoder self and cross: each example's effective attention in the padded batch
    equals the example alone (source padding removed), for every layer."""
    lm = LoadedModel.from_model(tiny_hf_model(arch, task="base"), None, task="seq2seq")
    inputs = _seq2seq_inputs(pad_side)
    if pad_side == "left" and arch == "bart":  # the base model: absolute positions, no position_ids
        with pytest.raises(LeftPaddingError):
            attnexplain.capture(lm, inputs)
        return
    res = attnexplain.capture(lm, inputs)
    am = inputs["attention_mask"]
    for i in range(2):
        src = am[i].bool().nonzero().flatten()
        alone = attnexplain.capture(lm, {"input_ids": inputs["input_ids"][i : i + 1, src],
                                         "attention_mask": am[i : i + 1, src],
                                         "decoder_input_ids": inputs["decoder_input_ids"][i : i + 1]})
        for stack, kind in (("encoder", "self"), ("decoder", "self"), ("decoder", "cross")):
            for layer in res.layers(stack, kind):
                got = res.effective_attention(layer, stack=stack, kind=kind)[i]
                exp = alone.effective_attention(layer, stack=stack, kind=kind)[0]
                keys = src if kind == "cross" or stack == "encoder" else torch.arange(got.shape[-1])
                rows = src if stack == "encoder" else torch.arange(got.shape[-2])
                torch.testing.assert_close(got[:, rows][..., keys], exp, atol=2e-5, rtol=0,
                                           msg=f"{arch} {pad_side} {stack}.{layer}.{kind} example {i}")
                pad_keys = torch.tensor([j for j in range(got.shape[-1]) if j not in set(keys.tolist())], dtype=torch.long)
                if pad_keys.numel():
                    assert got[..., pad_keys].abs().max() == 0


# ----------------------------------------------------------- 3. bare HF models are not the wrapper


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_capture_and_explain_on_bare_hf_models(arch):
    """Bare HF models (many have a submodule called ``model``) capture exactly what an eager copy
    returns, and explain_batch gives one score per real token."""
    from attnexplain.methods import explain_batch

    for task in ("base", "classification"):
        model = tiny_hf_model(arch, task=task)
        ref = tiny_hf_model(arch, task=task, attn_implementation="eager")
        inputs = tiny_inputs(arch, pad="right")
        if arch in ("bart", "t5") and task == "base":
            inputs["decoder_input_ids"] = inputs["input_ids"][:, :3]
        res = attnexplain.capture(model, inputs)
        with torch.no_grad():
            out = ref(**inputs, output_attentions=True)
        eager = out.encoder_attentions if getattr(out, "encoder_attentions", None) is not None else out.attentions
        stack = res.primary_stack
        for layer, exp in enumerate(eager):
            torch.testing.assert_close(res.attention(layer, stack=stack), exp, atol=1e-6, rtol=0)
        if arch != "vit" and task == "classification":
            methods = ["raw_attention"] + ([] if arch in ("bart", "t5") else ["occlusion", "gradient_x_input"])
            scores, target, _ = explain_batch(model, inputs, methods)
            lengths = inputs["attention_mask"].sum(1).tolist()
            for m in methods:
                assert [len(s) for s in scores[m]] == lengths, m
            if arch in ("bart", "t5"):
                with pytest.raises(ValueError, match="encoder-decoder"):
                    explain_batch(model, inputs, ["gradient_x_input"])

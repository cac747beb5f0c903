"""Per-generated-token explanations of encoder-decoder models (tiny random BART and T5), each
method against an independent computation: the eager model's own ``generate(output_attentions=True)``
rows, direct autograd, a slow occlusion loop, IG completeness."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import attnexplain
from attnexplain.generation.decoding import _tokenize_prompts
from attnexplain.methods import get_method
from attnexplain.testing import tiny_generator

PROMPTS = ["the cat sat on", "a dog"]  # the second is right-padded in the encoder batch
N = 4
ARCHS = ["bart", "t5"]


def _explain(lm, methods, prompts=PROMPTS, **kw):
    return attnexplain.explain_generation(lm, prompts, methods, max_new_tokens=N, min_new_tokens=N,
                                          exclude_special_tokens=False, **kw)


def _eager(lm, prompts=PROMPTS):
    batch = _tokenize_prompts(lm, prompts)
    m = copy.deepcopy(lm.model)
    m.set_attn_implementation("eager")
    with torch.no_grad():
        out = m.generate(**batch, max_new_tokens=N, min_new_tokens=N, do_sample=False, output_attentions=True,
                         return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id)
    return batch, out


def _example(ex, i):
    g = ex.generation
    real = g.attention_mask[i].bool()
    return g.input_ids[i][real], g.decoder_input_ids[i], g.generated_ids[i]


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_rows_equal_the_eager_models_cross_and_self_attention(arch):
    lm = tiny_generator(arch)
    batch, ref = _eager(lm)
    ex = _explain(lm, ["raw_attention"])
    raw = ex["raw_attention"]
    assert raw.n_prompt == [int(m.sum()) for m in batch["attention_mask"]]
    L = lm.num_layers
    for i in range(len(PROMPTS)):
        real = batch["attention_mask"][i].bool()
        n_src = int(real.sum())
        assert raw.tokens[i][:n_src] == ex.generation.tokens[i]
        for t in range(N):
            cross = torch.stack([ref.cross_attentions[t][l][i, :, -1][:, real] for l in range(L)])  # (L, H, n_src)
            np.testing.assert_allclose(raw.scores[i][t, :n_src], cross.mean(dim=(0, 1)).numpy(), atol=1e-5)
            self_rows = torch.stack([ref.decoder_attentions[t][l][i, :, -1, 1: t + 1] for l in range(L)])
            np.testing.assert_allclose(raw.scores[i][t, n_src: n_src + t], self_rows.mean(dim=(0, 1)).numpy(), atol=1e-5)
            assert np.isnan(raw.scores[i][t, n_src + t:]).all()  # y_t and later: not visible
    # the method's options apply: last layer, max over heads
    i, t = 0, 2
    n_src = raw.n_prompt[0]
    mx = _explain(lm, [get_method("raw_attention", layers="last", head_reduction="max")])["raw_attention"]
    expect = ref.cross_attentions[t][L - 1][i, :, -1][:, batch["attention_mask"][i].bool()].amax(0).numpy()
    np.testing.assert_allclose(mx.scores[i][t, :n_src], expect, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("where", ["word_embeddings", "block_input"])
def test_gradient_x_input_equals_direct_autograd(arch, where):
    lm = tiny_generator(arch)
    ex = _explain(lm, [get_method("gradient_x_input", input=where)])
    s = ex["gradient_x_input"]
    model = lm.model
    emb = model.get_input_embeddings()
    for i in range(len(PROMPTS)):
        src, dec, y = _example(ex, i)
        n_src = src.numel()
        for t in range(N):
            if where == "word_embeddings":
                e_s = emb(src[None]).detach().requires_grad_(True)
                e_d = emb(dec[None, : t + 1]).detach().requires_grad_(True)
                logit = model(inputs_embeds=e_s, decoder_inputs_embeds=e_d).logits[0, -1, y[t]]
                g_s, g_d = torch.autograd.grad(logit, [e_s, e_d])
            else:  # the first blocks' inputs: the models' own hidden_states[0]
                out = model(input_ids=src[None], decoder_input_ids=dec[None, : t + 1], output_hidden_states=True)
                e_s, e_d = out.encoder_hidden_states[0], out.decoder_hidden_states[0]
                g_s, g_d = torch.autograd.grad(out.logits[0, -1, y[t]], [e_s, e_d])
            ref_src = (g_s * e_s).sum(-1)[0].detach().double().numpy()
            ref_dec = (g_d * e_d).sum(-1)[0, 1: t + 1].detach().double().numpy()
            np.testing.assert_allclose(s.scores[i][t, :n_src], ref_src, atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(s.scores[i][t, n_src: n_src + t], ref_dec, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_integrated_gradients_are_complete(arch):
    """sum of the source and decoder-input scores = F(x) - F(baseline) for every step."""
    lm = tiny_generator(arch)
    ex = _explain(lm, [get_method("integrated_gradients", n_steps=64)], prompts=PROMPTS[:1])
    s = ex["integrated_gradients"]
    model = lm.model
    emb = model.get_input_embeddings()
    pad = lm.tokenizer.pad_token_id
    src, dec, y = _example(ex, 0)
    with torch.no_grad():
        for t in range(N):
            d = dec[: t + 1]
            base_d = d.clone()
            base_d[1:] = pad
            f_x = model(input_ids=src[None], decoder_input_ids=d[None]).logits[0, -1, y[t]]
            f_b = model(inputs_embeds=emb(torch.full_like(src, pad))[None],
                        decoder_inputs_embeds=emb(base_d)[None]).logits[0, -1, y[t]]
            total = np.nansum(s.scores[0][t])
            assert total == pytest.approx(float(f_x - f_b), abs=2e-3 + 2e-2 * abs(float(f_x - f_b)))


@pytest.mark.parametrize("arch", ARCHS)
def test_occlusion_equals_a_slow_loop_and_contrast_is_a_difference(arch):
    lm = tiny_generator(arch)
    occ = get_method("occlusion", removal="pad", occlude_special=True)
    ex = _explain(lm, [occ, "gradient_x_input"], prompts=PROMPTS[:1])
    s = ex["occlusion"]
    src, dec, y = _example(ex, 0)
    n_src = src.numel()
    pad = occ.replacement_id(lm)

    def p(src_ids, dec_ids, t):
        with torch.no_grad():
            return float(torch.softmax(lm.model(input_ids=src_ids[None], decoder_input_ids=dec_ids[None, : t + 1])
                                       .logits[0, -1].float(), -1)[y[t]])

    for t in range(N):
        base = p(src, dec, t)
        for j in range(n_src):
            z = src.clone()
            z[j] = pad
            assert s.scores[0][t, j] == pytest.approx(base - p(z, dec, t), abs=1e-5)
        for q in range(t):
            z = dec.clone()
            z[q + 1] = pad
            assert s.scores[0][t, n_src + q] == pytest.approx(base - p(src, z, t), abs=1e-5)
    # contrast: gradient x input of (logit y - logit c) = the two attributions' difference
    with pytest.warns(UserWarning):
        con = attnexplain.explain_generation(lm, PROMPTS[:1], ["gradient_x_input", "raw_attention"], target="abcd",
                                             contrast="xyz", exclude_special_tokens=False)
    assert con.skipped == ["raw_attention"]
    foil = con.contrast_ids[0]
    m = lm.model
    for t in range(min(3, len(con.generation.steps(0)))):
        out = m(input_ids=src[None], decoder_input_ids=con.generation.decoder_input_ids[0][None, : t + 1],
                output_hidden_states=True)
        e_s = out.encoder_hidden_states[0]
        lp = torch.log_softmax(out.logits[0, -1].float(), -1)
        (g,) = torch.autograd.grad(lp[con.generation.generated_ids[0, t]] - lp[foil[t]], [e_s])
        np.testing.assert_allclose(con["gradient_x_input"].scores[0][t, :n_src],
                                   (g * e_s).sum(-1)[0].detach().double().numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_effective_norm_and_rollout_properties(arch):
    lm = tiny_generator(arch)
    short = _explain(lm, ["raw_attention", "effective_attention"], prompts=["abc"])
    # at most d_head (8) keys: nothing is hidden in the null space, effective == raw (source side; the
    # target side too when the decoder's inputs differ -- T5 has no absolute positions, so a repeated
    # generated token has the same value vector, and effective attention shares its weight between the copies)
    n = short["raw_attention"].n_prompt[0]
    np.testing.assert_allclose(short["effective_attention"].source(0), short["raw_attention"].source(0), atol=1e-5)
    dec = short.generation.decoder_input_ids[0].tolist()
    if len(set(dec)) == len(dec) or arch == "bart":
        np.testing.assert_allclose(short["effective_attention"].scores[0][:, n:], short["raw_attention"].scores[0][:, n:],
                                   atol=1e-5)
    long_prompt = ["the quick brown fox jumps over the lazy dog"]
    ex = _explain(lm, ["raw_attention", "effective_attention", "norm", "rollout"], prompts=long_prompt)
    n_src = ex["raw_attention"].n_prompt[0]
    assert n_src > 8
    src_eff, src_raw = ex["effective_attention"].source(0), ex["raw_attention"].source(0)
    assert np.abs(src_eff - src_raw).max() > 1e-3  # more source tokens than d_head: they differ
    # norm-based: non-negative and zero exactly where the raw attention is zero (never here)
    assert (ex["norm"].source(0) >= 0).all() and np.isfinite(ex["norm"].source(0)).all()
    # rollout: the cross-attention row (sums to 1) through the encoder rollout (rows sum to 1)
    np.testing.assert_allclose(ex["rollout"].source(0).sum(-1), 1.0, atol=1e-5)
    assert (ex["rollout"].source(0) >= 0).all()


def test_all_methods_on_an_encoder_decoder_and_refusals():
    lm = tiny_generator("bart")
    with pytest.warns(UserWarning, match="left out"):
        ex = attnexplain.explain_generation(lm, PROMPTS, "all", max_new_tokens=2)
    assert {"raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "occlusion",
            "random"} <= set(ex.methods)
    assert "alti" in ex.not_applicable and "alti" not in ex.methods
    from attnexplain.capturing import UnsupportedArchitectureError

    with pytest.raises(UnsupportedArchitectureError, match="encoder-decoder"):
        attnexplain.explain_generation(lm, PROMPTS, ["value_zeroing"], max_new_tokens=2)
    # random: the same example alone or in a batch gets the same scores
    alone = attnexplain.explain_generation(lm, PROMPTS[1], ["random"], max_new_tokens=2)
    np.testing.assert_array_equal(alone["random"].scores[0], ex["random"].scores[1])
    assert "step 0" in ex.format(0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["delete", "mask"])
def test_encoder_decoder_faithfulness_equals_one_example_alone_in_a_slow_loop(arch, mode):
    """Every table value = p(y_t | x, y_<t) - p(y_t | x with source tokens removed, y_<t), each from
    one unpadded teacher-forced forward of that example alone (source tokens ranked by the method's
    source scores for step t; special tokens never removed); the random baseline too."""
    from attnexplain.ablations.perturbed_inputs import special_token_ids
    from attnexplain.generation.decoding import _pad_id
    from attnexplain.methods import rank_tokens

    lm = tiny_generator(arch)
    ex = _explain(lm, ["raw_attention", "gradient_x_input"], prompts=["the cat sat on the mat", "a dog"])
    bins = (0.2, 0.5)
    res = attnexplain.generation_faithfulness(lm, ex, bins=bins, mode=mode, seed=3)
    assert set(res.methods) == {"raw_attention", "gradient_x_input", "random"}
    g = ex.generation
    specials = special_token_ids(lm.tokenizer)
    pad = _pad_id(lm)

    def p(src, dec, y):
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec])).logits[0, -1]
        return float(torch.softmax(logits.double(), -1)[y])

    checked = 0
    for i in range(2):
        src = g.input_ids[i][g.attention_mask[i].bool()].tolist()
        assert ex["raw_attention"].n_prompt[i] == len(src)
        content = [j for j, tok in enumerate(src) if tok not in specials]
        for t in range(N):
            y = int(g.generated_ids[i, t])
            dec = g.decoder_input_ids[i, : t + 1].tolist()
            full = p(src, dec, y)
            np.testing.assert_allclose(full, float(g.step_probs[i, t]), atol=1e-5)  # teacher forcing = the step
            for name in ("gradient_x_input", "random"):
                if name == "random":
                    order = np.random.default_rng([3, i, t]).permutation(len(content))
                else:
                    order = rank_tokens(ex[name].step_scores(i, t)[: len(src)][content])
                ranked = [content[c] for c in order]
                for f in bins:
                    k = min(len(content), max(1, int(np.ceil(f * len(content)))))
                    for metric, removed in (("comprehensiveness", set(ranked[:k])), ("sufficiency", set(ranked[k:]))):
                        if mode == "delete":
                            kept = [tok for j, tok in enumerate(src) if j not in removed]
                        else:
                            kept = [pad if j in removed else tok for j, tok in enumerate(src)]
                        want = full - p(kept, dec, y)
                        row = res.table.query("example == @i and step == @t and method == @name and "
                                              "metric == @metric and fraction == @f")
                        assert len(row) == 1
                        assert abs(float(row["value"].iloc[0]) - want) < 1e-5, (i, t, name, metric, f)
                        checked += 1
    assert checked == 2 * N * 2 * 2 * 2
    assert res.n_forward < res.n_sequences  # batched
    assert len(res.summary(ci=False)) == 6

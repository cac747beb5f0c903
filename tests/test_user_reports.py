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


# ------------------------------------------- 7. encoder without a head; 8. pairs; 9. special tokens


def _headless_bert():
    from attnexplain.testing import CharTokenizer

    return LoadedModel.from_model(tiny_hf_model("bert", task="base"), CharTokenizer(), name="minilm", task="encoder")


def test_report_explain_encoder_without_head_names_a_classifier(monkeypatch):
    from typer.testing import CliRunner

    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.cli.main import app
    from attnexplain.models import InputError

    with pytest.raises(InputError, match="minilm-rotten-tomatoes"):
        attnexplain.explain(_headless_bert(), "a witty film")
    monkeypatch.setattr(analyze_mod, "load_model_for_run", lambda name, **kw: _headless_bert())
    res = CliRunner().invoke(app, ["explain", "a witty film", "--model", "minilm"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "logits" not in res.stderr.split("(")[0]
    assert "classifier" in res.stderr and "minilm-rotten-tomatoes" in res.stderr


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "roberta"])
def test_special_tokens_left_out_by_default_and_scores_unchanged(arch):
    """Default: [CLS]/[SEP] (and a causal model's first token) are dropped; every kept score equals
    the score of the same token with the option off (independent run); the option off keeps all."""
    lm = tiny_model(arch)
    texts = ["a witty film", "dull"]
    methods = ["raw_attention", "rollout", "gradient_x_input"]
    full = attnexplain.explain(lm, texts, methods, exclude_special_tokens=False)
    kept = attnexplain.explain(lm, texts, methods)
    causal = arch in ("gpt2", "llama")
    for i, t in enumerate(texts):
        toks = full["raw_attention"].tokens[i]
        assert toks[0] == "[CLS]" and toks[-1] == "[SEP]"
        expected_pos = list(range(1, len(toks) - 1))  # CharTokenizer: [CLS] text [SEP]; first token is [CLS] anyway
        for m in methods:
            assert kept[m].positions[i].tolist() == expected_pos
            assert kept[m].tokens[i] == toks[1:-1] and len(toks) == len(t) + 2
            np.testing.assert_array_equal(kept[m].scores[i], full[m].scores[i][expected_pos])
            assert len(full[m].scores[i]) == len(toks)
    from attnexplain.methods.special_tokens import special_token_mask

    enc = lm.tokenize(["ab"])
    mask = special_token_mask(lm, enc["input_ids"], enc["attention_mask"], attention_sink=True)[0]
    assert mask.tolist() == [True, False, False, True]
    # the attention sink: a causal model's first real token is left out even when it is not special
    enc = {"input_ids": torch.tensor([[0, 40, 41, 42]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}
    sink = special_token_mask(lm, enc["input_ids"], enc["attention_mask"])[0]
    assert sink.tolist() == ([True, False, False] if causal else [False, False, False])


def test_cli_explain_leaves_special_tokens_out_unless_asked(monkeypatch):
    from typer.testing import CliRunner

    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.cli.main import app

    monkeypatch.setattr(analyze_mod, "load_model_for_run", lambda name, **kw: tiny_model("bert"))
    runner = CliRunner()
    res = runner.invoke(app, ["explain", "ab", "--model", "t", "--methods", "raw_attention", "--top", "4"])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.stdout.splitlines() if l.startswith("raw_attention"))
    assert "[CLS]" not in line and "[SEP]" not in line
    res = runner.invoke(app, ["explain", "ab", "--model", "t", "--methods", "raw_attention", "--top", "4",
                              "--include-special-tokens"])
    line = next(l for l in res.stdout.splitlines() if l.startswith("raw_attention"))
    assert "[CLS]" in line and "[SEP]" in line


def test_explain_sentence_pairs_equal_the_pair_batch():
    """explain(texts, text_pairs=...) scores the pair tokenized together, as explain_batch does on
    the tokenizer's pair encoding (an independent route), separator included."""
    from attnexplain.methods import explain_batch

    lm = tiny_model("bert")
    a, b = ["a cat sat", "dogs"], ["it sat", "no cats here"]
    out = attnexplain.explain(lm, a, ["raw_attention", "gradient_x_input"], text_pairs=b, exclude_special_tokens=False)
    enc = lm.tokenize(a, text_pairs=b)
    ref, _, _ = explain_batch(lm, enc, ["raw_attention", "gradient_x_input"])
    for i in range(2):
        toks = out["raw_attention"].tokens[i]
        assert len(toks) == len(a[i]) + len(b[i]) + 3
        assert [j for j, t in enumerate(toks) if t in ("[CLS]", "[SEP]")] == [0, len(a[i]) + 1, len(toks) - 1]
        for m in ("raw_attention", "gradient_x_input"):
            np.testing.assert_allclose(out[m].scores[i], ref[m][i], atol=1e-6)
    kept = attnexplain.explain(lm, a, ["raw_attention"], text_pairs=b)
    assert len(kept["raw_attention"].tokens[0]) == len(a[0]) + len(b[0])
    assert "[SEP]" not in kept["raw_attention"].tokens[0]
    from attnexplain.models import InputError

    with pytest.raises(InputError, match="one second segment per text"):
        attnexplain.explain(lm, a, ["raw_attention"], text_pairs=b[:1])


# --------------------------------------------------------- 5. every backend under every precision

#: options that give every efficient backend several clusters / windows / landmarks at these lengths
_SMALL = {"local": {"window": 8}, "lsh": {"bucket_size": 8}, "nystrom": {"n_landmarks": 8},
          "smyrf": {"q_cluster_size": 8, "k_cluster_size": 8}}


def _backends():
    from attnexplain.backends import available_backends

    return available_backends()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("backend", _backends())
def test_every_backend_runs_under_every_precision(backend, precision):
    """The report: SMYRF and LSH crashed under bfloat16 autocast (scatter dtype). Faithfulness
    forwards in each precision agree with float32 (bfloat16: within its rounding), and capture under
    autocast gives stochastic rows over the real keys."""
    from attnexplain.ablations import faithfulness

    lm = tiny_model("bert")
    lm.use_backend(backend, **_SMALL.get(backend, {}))
    texts = ["the film was a witty, moving and gorgeous mess of ideas", "dull and overlong"]
    enc = lm.tokenize(texts)
    scores = [np.linspace(1, 0, len(t)) for t in lm.tokens(enc["input_ids"], enc["attention_mask"])]
    got = faithfulness(lm, texts, scores, precision=precision, skip_unread=False)
    ref = faithfulness(lm, texts, scores, precision="float32", skip_unread=False)
    assert got.precision == precision
    np.testing.assert_allclose(got.table["p_perturbed"], ref.table["p_perturbed"], atol=0.03 if precision == "bfloat16" else 1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        res = attnexplain.capture(lm, enc)
    am = enc["attention_mask"].bool()
    for layer in res.layers():
        A = res.attention(layer).float()
        assert torch.isfinite(A).all()
        rows = A.sum(-1)[am[:, None, :].expand(-1, A.shape[1], -1)]
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=2e-2, rtol=0)


def test_a_run_that_fails_before_any_result_leaves_no_run_folder(tmp_path, monkeypatch):
    """The report: a backend crash in the first batch left a run folder that the corrected rerun
    (another backend) then refused without --force."""
    import pandas as pd

    from attnexplain.runs.analyze import analyze

    data = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a good film", "dull", "not bad at all"], "label": ["pos", "neg", "pos"]}).to_csv(data, index=False)
    lm = tiny_model("bert")
    lm.model.config.id2label = {0: "neg", 1: "pos"}
    lm.labels = ["neg", "pos"]
    out = tmp_path / "runs" / "r"

    def broken(*a, **k):
        raise RuntimeError("scatter(): Expected self.dtype to be equal to src.dtype")

    with monkeypatch.context() as m:
        m.setattr(lm.model, "forward", broken)
        with pytest.raises(RuntimeError, match="scatter"):
            analyze(out, model=lm, dataset=str(data), split="all", methods=["random"], progress=False, log=lambda s: None)
    assert not out.exists()
    run = analyze(out, model=lm, dataset=str(data), split="all", methods=["random"], batch_size=2, progress=False,
                  log=lambda s: None)
    assert run.status == "complete"
    # a run that fails after its first results keeps them (it resumes)
    out2 = tmp_path / "runs" / "r2"

    def crash(number, start, size):
        raise RuntimeError("after the first batch")

    with pytest.raises(RuntimeError):
        analyze(out2, model=lm, dataset=str(data), split="all", methods=["random"], batch_size=2, progress=False,
                log=lambda s: None, on_batch=crash)
    assert any((out2 / "shards").iterdir())


# ------------------------------------------------------------- 10. gradient x input variants


def _grad_wrt_output_of(lm, module, enc, target):
    """Independent route: d logit / d (output of ``module``) through a forward hook on that module."""
    store = {}

    def hook(mod, inp, out):
        out = out.detach().requires_grad_(True)
        store["x"] = out
        return out

    h = module.register_forward_hook(hook)
    try:
        logits = lm.model(**enc).logits
    finally:
        h.remove()
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), store["x"])
    return store["x"], g


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2"])
def test_gradient_x_input_on_the_embedding_output_and_l2(arch):
    """Default input: the first block's input = the embeddings module's output (BERT: after its
    LayerNorm), computed here from a hook on that module; L2 aggregation = the norm of the same product."""
    from attnexplain.methods import explain_batch

    lm = tiny_model(arch)
    enc = lm.tokenize(["a witty film", "dull"])
    emb_module = {"bert": lambda m: m.bert.embeddings, "roberta": lambda m: m.roberta.embeddings,
                  "gpt2": lambda m: m.transformer.drop}[arch](lm.model)  # GPT-2: wte + wpe, after dropout
    target = torch.tensor([0, 1])
    x, g = _grad_wrt_output_of(lm, emb_module, enc, target)
    from attnexplain.methods import get_method

    for agg, expected in (("sum", (x * g).sum(-1)), ("l2", (x * g).norm(dim=-1))):
        sc, _, _ = explain_batch(lm, enc, [get_method("gradient_x_input", aggregation=agg)], target=target)
        for i in range(2):
            idx = enc["attention_mask"][i].bool()
            np.testing.assert_allclose(sc["gradient_x_input"][i], expected[i][idx].detach().numpy(), rtol=1e-4, atol=1e-7)


def test_word_embedding_gradient_x_input_is_minus_the_position_and_type_part_on_bert():
    """Why the word-embedding variant is not the default: the embedding LayerNorm makes the model
    invariant to the scale of x = w + p + t, so sum_k x_k dF/dx_k = 0 per token (hand-derived),
    and the word part equals minus the position+type part."""
    lm = tiny_model("bert")
    enc = lm.tokenize(["a witty film"])
    emb = lm.model.bert.embeddings
    ids = enc["input_ids"]
    w = emb.word_embeddings(ids)
    p = emb.position_embeddings(torch.arange(ids.shape[1]))[None]
    t = emb.token_type_embeddings(torch.zeros_like(ids))
    # gradient with respect to the summed embedding, before the LayerNorm
    x, g = _grad_wrt_output_of(lm, emb.word_embeddings, enc, torch.tensor([1]))
    total = ((w + p + t).detach() * g).sum(-1)   # the grad wrt w equals the grad wrt w + p + t
    word = (w.detach() * g).sum(-1)
    assert float(word.abs().max()) > 0 and float(total.abs().max()) <= 1e-4 * float(word.abs().max())
    torch.testing.assert_close(word, -((p + t).detach() * g).sum(-1), atol=1e-6, rtol=1e-4)


def test_gradient_x_input_options_are_checked():
    from attnexplain.methods import get_method

    with pytest.raises(ValueError, match="input must be one of"):
        get_method("gradient_x_input", input="logits")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        get_method("gradient_x_input", aggregation="max")


# ----------------------------------------------------------------- 11. ferret-compatible rounding


def test_ferret_rounding_floors_and_skips_empty_bins():
    from attnexplain.ablations.perturbed_inputs import bin_sizes

    assert bin_sizes(7, rounding="ferret") == [0, 0, 0, 1, 3]  # floor(.07, .35, .7, 1.4, 3.5)
    assert bin_sizes(7, rounding="ceil") == [1, 1, 1, 2, 4]
    assert bin_sizes(20, rounding="ferret") == [0, 1, 2, 4, 10]
    assert bin_sizes(100, (0.1, 1.0), rounding="ferret") == [10, 100]
    with pytest.raises(ValueError, match="ferret"):
        bin_sizes(5, rounding="nearest")


def test_ferret_rounding_faithfulness_equals_hand_run_deletions():
    """7 content tokens: only the 20 % (k=1) and 50 % (k=3) bins are scored; each value is
    p_full - p(model on the input with the top-k tokens deleted), computed here by hand."""
    from attnexplain.ablations import faithfulness

    lm = tiny_model("bert")
    text = "abcdefg"  # CharTokenizer: [CLS] a b c d e f g [SEP], 7 content tokens
    enc = lm.tokenize([text])
    ids = enc["input_ids"][0].tolist()
    scores = np.array([0.0, 0.5, 0.9, 0.1, 0.8, 0.2, 0.3, 0.4, 0.0])  # per real token, specials ignored
    res = faithfulness(lm, [text], [scores], rounding="ferret", skip_unread=False)
    t = res.table
    assert sorted(set(t.fraction)) == [0.2, 0.5] and sorted(set(t.k)) == [1, 3]
    order = [1 + j for j in np.argsort(-scores[1:-1], kind="stable")]  # content positions, best first

    def p(seq):
        with torch.no_grad():
            return float(torch.softmax(lm.model(input_ids=torch.tensor([seq])).logits[0], -1)[int(res.targets[0])])

    p_full = p(ids)
    for k in (1, 3):
        gone = set(order[:k])
        comp = p_full - p([x for j, x in enumerate(ids) if j not in gone])
        kept = set(order[:k]) | {0, len(ids) - 1}
        suff = p_full - p([x for j, x in enumerate(ids) if j in kept])
        row = t[t.k == k].set_index("metric")["value"]
        np.testing.assert_allclose([row["comprehensiveness"], row["sufficiency"]], [comp, suff], atol=1e-6)
    aopc = res.aopc.set_index("metric")["aopc"]
    np.testing.assert_allclose(aopc["comprehensiveness"], t[t.metric == "comprehensiveness"].value.mean(), atol=1e-12)


# ------------------------------------------ 8/9. pairs and special tokens through analyze and report


def test_analyze_text_pair_column_and_special_tokens_through_cli_and_report(tmp_path, monkeypatch):
    """`analyze --text-pair-column`: each row's tokens are the pair tokenized together (scores equal
    explain_batch on the pair alone); the run records its special tokens; `Run.tokens` and the
    report leave them out by default and keep them with --include-special-tokens."""
    import pandas as pd
    from typer.testing import CliRunner

    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.cli.main import app
    from attnexplain.methods import explain_batch
    from attnexplain.runs import open_run

    def fake(name, *, backend="dense", backend_options=None):
        lm = tiny_model("bert")
        lm.model.config.id2label = {0: "neg", 1: "pos"}
        lm.labels = ["neg", "pos"]
        return lm

    monkeypatch.setattr(analyze_mod, "load_model_for_run", fake)
    data = tmp_path / "pairs.csv"
    pd.DataFrame({"premise": ["a cat sat", "dogs run"], "hypothesis": ["it sat", "no"],
                  "label": ["pos", "neg"]}).to_csv(data, index=False)
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--text-column", "premise",
                              "--text-pair-column", "hypothesis", "--label-column", "label", "--methods",
                              "raw_attention", "--no-progress", "--out", str(out), "--model", "t"])
    assert res.exit_code == 0, (res.output, res.exception)
    run = open_run(out)
    assert run.manifest["text_pair_column"] == "hypothesis"
    assert run.manifest["special_tokens"]["excluded"] is True and "[SEP]" in run.manifest["special_tokens"]["tokens"]
    full = run.tokens(exclude_special_tokens=False)
    lm = fake("t")
    enc = lm.tokenize(["a cat sat"], text_pairs=["it sat"])
    ref, _, _ = explain_batch(lm, enc, ["raw_attention"])
    eid = run.examples()["example_id"].iloc[0]
    row = full[(full.example_id == eid)].sort_values("position")
    assert row["token"].tolist().count("[SEP]") == 2  # the separator between the two texts is kept
    np.testing.assert_allclose(row["score"].to_numpy(), ref["raw_attention"][0], atol=1e-6)
    shown = run.tokens(exclude_special_tokens=None)
    assert not shown["token"].isin(["[CLS]", "[SEP]"]).any() and len(shown) == len(full) - 3 * 2
    rep = runner.invoke(app, ["report", str(out), "--no-figures"])
    assert rep.exit_code == 0 and "sentence pairs" in rep.stdout and "left out" in rep.stdout
    rep = runner.invoke(app, ["report", str(out), "--no-figures", "--include-special-tokens"])
    assert rep.exit_code == 0 and "left out" not in rep.stdout


def test_dashboard_explorer_says_where_the_second_segment_starts(tmp_path, monkeypatch):
    import json

    from tests.test_app import _app, _no_exception, _text, write_run

    root = tmp_path / "runs"
    path = write_run(root / "pairs", n_examples=2)
    man = json.loads((path / "manifest.json").read_text())
    man["text_pair_column"] = "hypothesis"
    (path / "manifest.json").write_text(json.dumps(man))
    at = _app(root, monkeypatch, "explorer", run="pairs")
    _no_exception(at)
    assert "Sentence pair" in _text(at) and "(column hypothesis)" in _text(at)  # escaped text, no code span

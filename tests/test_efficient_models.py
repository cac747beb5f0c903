"""Tests for attnexplain.efficient_models: the five attention modules, the classifier,
capture through report_attention, the element-wise RNN form and a tiny training run."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnexplain.capturing.attention import CaptureSpec, session
from attnexplain.capturing.sites import mark_attention_site
from attnexplain.data.synthetic import negation_sentences as synthetic_negation
from attnexplain.efficient_models import (
    ATTENTION_MECHANISMS,
    EfficientAttention,
    ElementwiseAttention,
    EfficientTransformerClassifier,
    OptimisedAttention,
    StandardAttention,
    SuperAttention,
    attention_param_formula,
    compare_mechanisms,
    count_parameters,
    load_efficient_classifier,
    make_attention,
    train_efficient_classifier,
)

MECHS = list(ATTENTION_MECHANISMS)




def _inputs(b=3, n=7, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=dtype)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, n - 2 :] = False
    mask[2, 3:] = False
    return x, mask


def _tiny_classifier(attention, causal=False, seed=0, **kw):
    torch.manual_seed(seed)
    model = EfficientTransformerClassifier(50, 3, d_model=16, n_heads=4, n_layers=2, max_len=12,
                                           attention=attention, causal=causal, dropout=0.0, **kw).double().eval()
    # break the small init so that attention is far from uniform
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


# -- parameter counts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attention,expected",
    [
        ("standard", 4 * 24**2 + 4 * 24),
        ("optimised", 3 * 24**2 + 3 * 24),
        ("efficient", 2 * 24**2 + 2 * 24),
        ("super", 2 * 24**2 + 2 * 24 + 10**2),
        ("elementwise", 4 * 24**2 + 4 * 24),
    ],
)
def test_parameter_counts_match_formulas(attention, expected):
    module = make_attention(attention, 24, 3, max_len=10)
    assert count_parameters(module) == expected == attention_param_formula(attention, 24, 10)
    model = EfficientTransformerClassifier(40, 2, d_model=24, n_heads=3, n_layers=2, max_len=10, attention=attention)
    counts = model.parameter_counts()
    assert counts["attention"] == 2 * expected
    assert counts["total"] == count_parameters(model) > counts["attention"]


def test_parameter_savings_are_25_and_50_percent():
    d = 64
    std = attention_param_formula("standard", d)
    assert attention_param_formula("optimised", d) == 0.75 * std
    assert attention_param_formula("efficient", d) == 0.5 * std


# -- capture reproduces the module outputs -----------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("attention", ["standard", "optimised", "efficient", "super"])
def test_captured_matrices_reproduce_module_outputs(attention, causal):
    model = _tiny_classifier(attention, causal)
    ids = torch.randint(2, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    outputs = {}
    hooks = [blk.attn.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o))
             for k, blk in enumerate(model.blocks)]
    with session(model, CaptureSpec(dtype=torch.float64)) as state:
        model(ids, mask)
    for h in hooks:
        h.remove()
    assert [r.site.layer for r in state.records] == [0, 1]
    for rec in state.records:
        assert rec.probs.shape == (3, 4, 9, 9) and rec.values.shape == (3, 4, 9, 4)
        w_o = rec.site.output_projection_blocks(rec.num_heads)  # (H, d_h, d)
        rebuilt = torch.einsum("bhij,bhjd,hde->bie", rec.probs, rec.values, w_o) + rec.site.out_proj.bias
        torch.testing.assert_close(rebuilt, outputs[rec.site.layer], rtol=0, atol=1e-12)
        real = mask.bool()
        # padding keys get no weight; causal matrices are lower-triangular
        assert rec.probs[1, :, :, 6:].abs().max() == 0
        if causal:
            assert rec.probs.triu(1).abs().max() == 0
        if attention != "super":  # super's A W_A is not row-stochastic
            sums = rec.probs.sum(-1)
            torch.testing.assert_close(sums[real[:, None, :].expand_as(sums)],
                                       torch.ones(int(real.sum()) * 4, dtype=torch.float64))


def test_super_mixing_is_not_row_stochastic_and_uses_top_left_block():
    torch.manual_seed(0)
    mod = SuperAttention(16, 4, max_len=10).double()
    with torch.no_grad():
        mod.w_a.add_(0.5 * torch.randn(10, 10, dtype=torch.float64))
    mark_attention_site(mod, layer=0, out_proj=mod.out_proj)
    x, _ = _inputs(n=7)
    with session(mod, CaptureSpec(dtype=torch.float64)) as state:
        out = mod(x)
    (rec,) = state.records
    assert (rec.probs.sum(-1) - 1).abs().max() > 1e-3
    # manual: efficient probabilities times the top-left 7 x 7 block of W_A
    eff = EfficientAttention(16, 4).double()
    eff.load_state_dict({k: v for k, v in mod.state_dict().items() if k != "w_a"})
    probs, xs = eff._probs(x, None)
    manual = probs @ mod.w_a[:7, :7]
    torch.testing.assert_close(rec.probs, manual.detach())
    torch.testing.assert_close(out, eff.out_proj(eff._merge(manual @ xs)))
    # outside capture the associative fast path gives the same output
    torch.testing.assert_close(mod(x), out, rtol=0, atol=1e-12)


def test_super_attention_above_max_len_raises():
    mod = SuperAttention(16, 4, max_len=5)
    with pytest.raises(ValueError, match="max_len=5"):
        mod(torch.randn(1, 6, 16))
    with pytest.raises(ValueError, match="max_len"):
        SuperAttention(16, 4)
    model = EfficientTransformerClassifier(30, 2, d_model=16, n_heads=4, max_len=5, attention="super")
    with pytest.raises(ValueError, match="max_len=5"):
        model(torch.ones(1, 6, dtype=torch.long))


@pytest.mark.parametrize("attention", MECHS)
def test_padding_and_future_tokens_do_not_leak(attention):
    torch.manual_seed(0)
    mod = make_attention(attention, 16, 4, causal=True, max_len=10).double()
    x, mask = _inputs()
    out = mod(x, mask)
    x2 = x.clone()
    x2[1, 5:] = 100.0  # padding of example 1
    x2[0, 4:] = -3.0  # future of positions 0..3 of example 0
    out2 = mod(x2, mask)
    torch.testing.assert_close(out2[1, :5], out[1, :5])
    torch.testing.assert_close(out2[0, :4], out[0, :4])


# -- element-wise attention --------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_elementwise_channel_matrices_reproduce_output_and_reduced_map_is_reported(causal):
    torch.manual_seed(0)
    mod = ElementwiseAttention(16, 4, causal=causal, taylor_order=4).double()
    mark_attention_site(mod, layer=0, out_proj=mod.out_proj)
    x, mask = _inputs()
    with session(mod, CaptureSpec(dtype=torch.float64)) as state:
        out = mod(x, mask)
    a = mod.channel_matrices(x, mask)
    assert a.shape == (3, 16, 7, 7)
    rebuilt = mod.out_proj(torch.einsum("bcij,bjc->bic", a, mod.w_v(x)))
    torch.testing.assert_close(rebuilt, out, rtol=0, atol=1e-12)
    assert a.min() >= 0  # even order: positive weights
    torch.testing.assert_close(a.sum(-1)[1, :, :5], torch.ones(16, 5, dtype=torch.float64))
    (rec,) = state.records
    assert rec.probs.shape == (3, 4, 7, 7) and rec.values.shape == (3, 4, 7, 4)
    torch.testing.assert_close(rec.probs, a.view(3, 4, 4, 7, 7).mean(2).detach())


def _reference_elementwise(mod, x, mask):
    """The definition with explicit loops over channels (float64)."""
    import math

    q, k, v = mod.w_q(x), mod.w_k(x), mod.w_v(x)
    b, n, d = x.shape
    out = torch.zeros(b, n, d, dtype=x.dtype)
    for i in range(n):
        js = range(i + 1) if mod.causal else range(n)
        js = [j for j in js]
        y = 2 * q[:, i, None, :] * k[:, js, :]
        poly = sum(y**p / math.factorial(p) for p in range(mod.taylor_order + 1))
        w = torch.exp(-k[:, js, :] ** 2) * poly * mask[:, js, None]
        out[:, i] = (w * v[:, js]).sum(1) / w.sum(1).clamp_min(torch.finfo(x.dtype).tiny)
    return mod.out_proj(out)


@pytest.mark.parametrize("causal", [False, True])
def test_elementwise_parallel_form_matches_definition(causal):
    torch.manual_seed(1)
    mod = ElementwiseAttention(8, 2, causal=causal, taylor_order=2).double()
    x, mask = _inputs(d=8)
    torch.testing.assert_close(mod(x, mask), _reference_elementwise(mod, x, mask), rtol=0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 9),
    order=st.sampled_from([2, 4, 6]),
    seed=st.integers(0, 10_000),
    pad=st.integers(0, 3),
)
def test_elementwise_recurrent_equals_parallel_causal(n, order, seed, pad):
    torch.manual_seed(seed)
    mod = ElementwiseAttention(8, 2, causal=True, taylor_order=order).double()
    x = torch.randn(2, n, 8, dtype=torch.float64)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, max(1, n - pad) :] = False
    parallel = mod(x, mask)
    recurrent, state = mod.forward_recurrent(x, mask)
    torch.testing.assert_close(recurrent, parallel, rtol=0, atol=1e-8)
    assert state[0].shape == (2, order + 1, 8)  # O(t D) state per sequence
    # continuing from a saved state equals running the whole sequence
    if n > 1:
        h = n // 2
        first, st_half = mod.forward_recurrent(x[:, :h], mask[:, :h])
        second, _ = mod.forward_recurrent(x[:, h:], mask[:, h:], state=st_half)
        torch.testing.assert_close(torch.cat([first, second], 1), parallel, rtol=0, atol=1e-8)


def test_elementwise_taylor_order_validation():
    with pytest.raises(ValueError, match="taylor_order"):
        ElementwiseAttention(8, 2, taylor_order=0)
    with pytest.raises(ValueError, match="taylor_order"):
        ElementwiseAttention(8, 2, taylor_order=-1)
    with pytest.raises(ValueError, match="odd"):
        ElementwiseAttention(8, 2, taylor_order=3)
    mod = ElementwiseAttention(8, 2, taylor_order=1, allow_odd_order=True)
    assert mod(torch.randn(1, 4, 8)).shape == (1, 4, 8)
    with pytest.raises(ValueError, match="taylor_order"):
        EfficientTransformerClassifier(30, 2, d_model=16, n_heads=4, attention="elementwise", taylor_order=0)
    with pytest.raises(ValueError, match="causal=True"):
        ElementwiseAttention(8, 2).forward_recurrent(torch.randn(1, 3, 8))


# -- shapes and classifier ---------------------------------------------------------------------


def test_mismatched_shapes_raise():
    for cls in (StandardAttention, OptimisedAttention, EfficientAttention, ElementwiseAttention):
        with pytest.raises(ValueError, match="divisible"):
            cls(10, 3)
    with pytest.raises(ValueError, match="divisible"):
        EfficientTransformerClassifier(30, 2, d_model=30, n_heads=4)
    mod = StandardAttention(16, 4)
    with pytest.raises(ValueError, match="d_model=16"):
        mod(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="key_padding_mask"):
        mod(torch.randn(2, 5, 16), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        mod(torch.randn(2, 5, 16), torch.ones(2, 5))
    model = EfficientTransformerClassifier(30, 2, d_model=16, n_heads=4, max_len=8)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len=8"):
        model(torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        model(torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown attention"):
        EfficientTransformerClassifier(30, 2, attention="linear")
    with pytest.raises(ValueError, match="pooling"):
        EfficientTransformerClassifier(30, 2, pooling="max")


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_classifier_padding_invariance(pooling):
    model = _tiny_classifier("standard", causal=pooling == "last", pooling=pooling)
    ids = torch.randint(2, 50, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], 1).long()
    torch.testing.assert_close(model(padded, mask), model(ids), rtol=0, atol=1e-10)


# -- training ----------------------------------------------------------------------------------


def test_synthetic_negation_labels():
    texts, labels = synthetic_negation(50, seed=3)
    for t, y in zip(texts, labels):
        words = t.split()
        negated = any(w in ("not", "never", "hardly") for w in words)
        positive = any(w in ("good", "great", "wonderful", "brilliant", "funny", "moving", "charming",
                             "excellent", "clever", "fresh") for w in words)
        assert y == int(positive != negated)


def test_tiny_training_run_beats_chance_and_round_trips(tmp_path):
    torch.manual_seed(0)
    result = train_efficient_classifier(
        "efficient", "tiny-negation", epochs=3, lr=3e-3, max_len=16, tokenizer="word",
        d_model=32, n_heads=2, n_layers=1, seed=0, out_dir=tmp_path,
    )
    assert result["accuracy"] > 0.6, result  # chance = ~0.5
    assert result["params_attention"] == result["params_attention_formula"] == 2 * 32**2 + 2 * 32
    assert result["train_seconds"] > 0 and result["inference_examples_per_s"] > 0
    model, enc, cfg = load_efficient_classifier(result["path"])
    assert cfg["model"]["attention"] == "efficient"
    ids, mask = enc.pad(enc.encode(["the movie was not good .", "the plot is great"]))
    with torch.no_grad():
        assert model(ids, mask).shape == (2, 2)


def test_compare_mechanisms_returns_one_row_each(tmp_path):
    df = compare_mechanisms("tiny-negation", steps=2, max_len=16, tokenizer="word", d_model=16, n_heads=2,
                            n_layers=1, save=False, test_limit=32)
    assert list(df["attention"]) == MECHS
    assert {"accuracy", "params_total", "params_attention", "train_seconds", "inference_examples_per_s"} <= set(df.columns)
    assert df.set_index("attention")["params_attention"]["super"] == 2 * 16**2 + 2 * 16 + 16**2

"""The registered explanation methods: shapes, padding, batch independence, and each method
checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnexplain.capturing import AttentionSite, CaptureResult
from attnexplain.capturing.attention import Record
from attnexplain.methods import available_methods, explain, explain_batch, get_method
from attnexplain.testing import tiny_model

ALL_METHODS = [
    "raw_attention", "effective_attention", "attention_distribution", "norm", "rollout", "flow",
    "integrated_gradients", "gradient_x_input", "occlusion", "random",
]
LONG = "an utterly gorgeous mess"  # 26 tokens with [CLS]/[SEP]
SHORT = ["dull", "a witty one"]  # 6 and 13 tokens




_MODELS: dict[tuple[str, str], object] = {}


def _lm(arch: str, side: str = "right"):
    key = (arch, side)
    if key not in _MODELS:
        lm = tiny_model(arch)
        lm.tokenizer.padding_side = side
        _MODELS[key] = lm
    return _MODELS[key]


def _scores(lm, texts, method, target=None, **options):
    m = get_method(method, **options)
    enc = lm.tokenize(texts)
    tgt = None if target is None else torch.as_tensor(target)
    sc, tgt, cap = explain_batch(lm, enc, [m], target=tgt)
    return sc[method], tgt, enc


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------


def test_registry_has_every_method():
    assert set(ALL_METHODS) <= set(available_methods())


def test_unknown_method_is_a_key_error_listing_known_ones():
    with pytest.raises(KeyError) as err:
        get_method("no_such_method")
    for name in ALL_METHODS:
        assert name in str(err.value)


def test_bad_options_are_refused():
    with pytest.raises(TypeError):
        get_method("raw_attention", colour="red")
    with pytest.raises(ValueError):
        get_method("raw_attention", readout="middle")
    with pytest.raises(ValueError):
        get_method("effective_attention", head_reduction="median")
    with pytest.raises(ValueError):
        get_method("occlusion", removal="blur")
    with pytest.raises(ValueError):
        get_method("attention_distribution", mode="densest")
    assert get_method("norm", head_reduction="mean").options()["head_reduction"] == "mean"


# ------------------------------------------------------------------------------------------
# every method: one finite score per real token; batch independence
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_one_finite_score_per_real_token_right_padding_and_batch_independent(arch, method):
    """Right padding leaves the real tokens' positions alone, so each example alone must get
    the same scores as in the batch."""
    lm = _lm(arch, "right")
    texts = [SHORT[0], LONG, SHORT[1]]
    batched, tgt, enc = _scores(lm, texts, method)
    assert (enc["attention_mask"] == 0).any()
    lengths = enc["attention_mask"].sum(1).tolist()
    assert [len(s) for s in batched] == lengths
    for s in batched:
        assert np.isfinite(s).all()
    for i, text in enumerate(texts):
        alone, _, _ = _scores(lm, [text], method, target=tgt[i : i + 1])
        np.testing.assert_allclose(batched[i], alone[0], atol=2e-5, rtol=1e-4, err_msg=f"{method} example {i}")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])  # bert: the tokenizer's left side is overridden (position-0 head)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_one_finite_score_per_real_token_left_padding_and_batch_independent(arch, method):
    """Left padding: positions follow the mask (attnexplain passes position_ids), so each example
    alone must get the same scores as in the left-padded batch, and so must the same example with
    other batch neighbours: [LONG, a, b] vs [a] / [b] and [b, LONG] / [a, LONG]."""
    lm = _lm(arch, "left")
    texts = [LONG, SHORT[0], SHORT[1]]
    batched, tgt, enc = _scores(lm, texts, method)
    am = enc["attention_mask"]
    if arch == "bert":  # a first-token classifier: attnexplain pads it on the right whatever the tokenizer says
        assert (am[:, -1] == 0).any() and (am[:, 0] == 1).all()
    else:
        assert (am[:, 0] == 0).any() and (am[:, -1] == 1).all()  # padding really on the left
    assert [len(s) for s in batched] == am.sum(1).tolist()
    for s in batched:
        assert np.isfinite(s).all()
    for i in (1, 2):
        other, _, _ = _scores(lm, [texts[i], LONG], method, target=torch.stack([tgt[i], tgt[0]]))
        np.testing.assert_allclose(batched[i], other[0], atol=2e-5, rtol=1e-4, err_msg=f"{method} example {i}")
    np.testing.assert_allclose(batched[0], other[1], atol=2e-5, rtol=1e-4)
    for i, text in enumerate(texts):
        alone, _, _ = _scores(lm, [text], method, target=tgt[i : i + 1])
        np.testing.assert_allclose(batched[i], alone[0], atol=2e-5, rtol=1e-4, err_msg=f"{method} example {i} alone")


@pytest.mark.parametrize("arch,pad", [("bert", "right"), ("gpt2", "left")])
@pytest.mark.parametrize("method,opts", [("raw_attention", {}), ("effective_attention", {}),
                                         ("effective_attention", {"absolute": True, "preserve_row_sums": True}),
                                         ("norm", {}), ("norm", {"head_reduction": "max"})])
def test_batched_readout_rows_equal_the_per_example_path(monkeypatch, arch, pad, method, opts):
    """One readout row per example is scored for the whole batch at once (_rows_scores); the
    per-example path on each example's real tokens must give the same scores."""
    from attnexplain.capturing import capture
    from attnexplain.methods.attention_methods import AttentionMethod

    lm = _lm(arch, pad)
    enc = lm.tokenize([SHORT[0], LONG, SHORT[1]])
    cap = capture(lm, enc)
    target = cap.probs.argmax(-1)
    m = get_method(method, **opts)
    fast = m.attribute(lm, enc, target=target, capture=cap)
    monkeypatch.setattr(type(m), "_rows_scores", AttentionMethod._rows_scores)  # back to per example
    slow = m.attribute(lm, enc, target=target, capture=cap)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


#: methods that decompose post-LN blocks only (they refuse GPT-2: tests/test_context_mixing.py)
POST_LN_ONLY = {"norm_residual_ln", "globenc", "alti"}


def test_explain_runs_every_registered_method_on_bert_and_gpt2():
    for arch in ("bert", "gpt2"):
        lm = _lm(arch)
        names = [m for m in available_methods() if not (arch == "gpt2" and m in POST_LN_ONLY)]
        out = explain(lm, ["a witty film", "dull"], methods=names)
        assert set(out) == set(names)
        for name, attr in out.items():
            assert len(attr) == 2
            for toks, sc in zip(attr.tokens, attr.scores):
                assert len(toks) == len(sc) and np.isfinite(sc).all(), (arch, name)
            assert len(attr.ranking(0)) == len(attr.tokens[0])


# ------------------------------------------------------------------------------------------
# attention methods against hand computations
# ------------------------------------------------------------------------------------------


class _Stub:
    task = "classification"


def _hand_capture(seed: int = 0):
    """A CaptureResult built by hand: 2 layers, 3 heads, 2 examples of 5 positions; example 0
    right-padded (3 real), example 1 left-padded (4 real). Rows are stochastic over real keys."""
    g = torch.Generator().manual_seed(seed)
    L, B, H, n = 2, 2, 3, 5
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    logits = torch.randn(L, B, H, n, n, generator=g)
    logits = logits.masked_fill(~mask.bool()[None, :, None, None, :], float("-inf"))
    probs = torch.softmax(logits, -1)
    records, sites = {}, {}
    for l in range(L):
        site = AttentionSite(key=f"main.{l}.self", module_name=f"layer.{l}", stack="main", layer=l, kind="self",
                             rule=None, out_proj=None)
        sites[site.key] = site
        records[site.key] = [Record(site=site, probs=probs[l], values=None, heads=None, num_heads=H)]
    cap = CaptureResult(input_ids=torch.arange(10).reshape(2, 5), attention_mask=mask, tokens=[["t"] * 3, ["t"] * 4],
                        logits=None, labels=None, records=records, sites=sites)
    return cap, probs.numpy(), mask.bool().numpy()


@pytest.mark.parametrize("readout", ["cls", "last", "mean", 1, "auto"])
@pytest.mark.parametrize("head_reduction", ["mean", "max"])
@pytest.mark.parametrize("layers", ["all", "last", 0])
def test_raw_attention_on_hand_built_capture(readout, head_reduction, layers):
    cap, P, mask = _hand_capture()
    m = get_method("raw_attention", readout=readout, head_reduction=head_reduction, layers=layers)
    got = m.attribute(_Stub(), {"attention_mask": cap.attention_mask}, target=torch.zeros(2), capture=cap)
    layer_ids = {"all": [0, 1], "last": [1], 0: [0]}[layers]
    for i in range(2):
        idx = np.flatnonzero(mask[i])
        k = len(idx)
        rows = {"cls": [0], "auto": [0], "last": [k - 1], "mean": list(range(k)), 1: [1]}[readout]
        expected = np.zeros(k)
        for l in layer_ids:
            block = P[l, i][:, idx][:, :, idx]  # (H, k, k) real tokens
            per_head = block[:, rows, :].mean(1)  # (H, k)
            expected += per_head.mean(0) if head_reduction == "mean" else per_head.max(0)
        expected /= len(layer_ids)
        np.testing.assert_allclose(got[i], expected, rtol=1e-6, atol=1e-7)
        if head_reduction == "mean":
            assert got[i].sum() == pytest.approx(1.0, abs=1e-6)


def test_readout_out_of_range_raises():
    cap, _, _ = _hand_capture()
    m = get_method("raw_attention", readout=3)  # example 0 has 3 real tokens
    with pytest.raises(ValueError, match="out of range"):
        m.attribute(_Stub(), {}, target=torch.zeros(2), capture=cap)


def test_attention_methods_need_a_capture():
    with pytest.raises(ValueError, match="capture"):
        get_method("raw_attention").attribute(_Stub(), {}, target=torch.zeros(1), capture=None)


def test_auto_readout_is_last_token_for_gpt2_and_cls_for_bert():
    texts = [SHORT[0], LONG]
    for arch, explicit in (("gpt2", "last"), ("bert", "cls")):
        lm = _lm(arch)
        auto, tgt, _ = _scores(lm, texts, "raw_attention")
        fixed, _, _ = _scores(lm, texts, "raw_attention", target=tgt, readout=explicit)
        other, _, _ = _scores(lm, texts, "raw_attention", target=tgt, readout="cls" if explicit == "last" else "last")
        for a, f, o in zip(auto, fixed, other):
            np.testing.assert_array_equal(a, f)
            assert np.abs(a - o).max() > 1e-5  # a different row (tiny random attention is near uniform)


def test_effective_equals_raw_up_to_head_dim_and_differs_above():
    """Tiny BERT has head dim 8: rank(T) = n for n <= 8 tokens, so A_eff = A; not above."""
    lm = _lm("bert")
    assert lm.head_dim == 8
    texts = ["ab", "abcdef", LONG]  # 4, 8 and 26 tokens
    enc = lm.tokenize(texts)
    assert enc["attention_mask"].sum(1).tolist() == [4, 8, 26]
    for options in ({}, {"readout": "mean", "head_reduction": "max"}, {"layers": "last"}):
        raw, eff = get_method("raw_attention", **options), get_method("effective_attention", **options)
        sc, _, _ = explain_batch(lm, enc, [raw, eff])
        for i in (0, 1):
            np.testing.assert_allclose(sc["effective_attention"][i], sc["raw_attention"][i], atol=1e-5)
        assert np.abs(sc["effective_attention"][2] - sc["raw_attention"][2]).max() > 1e-3


def test_attention_distribution_is_a_distribution_and_equals_raw_when_identifiable():
    lm = _lm("bert")
    enc = lm.tokenize(["abcde", LONG])  # 7 (identifiable) and 26 tokens
    for mode in ("nearest", "sparsest"):
        sc, _, _ = explain_batch(lm, enc, [get_method("attention_distribution", mode=mode), "raw_attention"])
        for s in sc["attention_distribution"]:
            assert (s >= -1e-9).all() and s.sum() == pytest.approx(1.0, abs=1e-5)
        # a row with rank(T) = n has a single feasible point: the row itself
        np.testing.assert_allclose(sc["attention_distribution"][0], sc["raw_attention"][0], atol=1e-5)


def test_norm_summed_equals_hand_computed_norm_of_summed_vectors():
    from attnexplain.capturing import capture

    lm = _lm("bert")
    enc = lm.tokenize([SHORT[0], LONG])
    cap = capture(lm, enc)
    got = get_method("norm").attribute(lm, enc, target=torch.zeros(2), capture=cap)
    per_head = get_method("norm", head_reduction="mean").attribute(lm, enc, target=torch.zeros(2), capture=cap)
    for i in range(2):
        idx = enc["attention_mask"][i].bool()
        expected = 0
        expected_h = 0
        for l in cap.layers():
            A = cap.attention(l)[i][:, idx][:, :, idx].double()  # (H, k, k)
            T = cap.value_transforms(l)[i][:, idx].double()  # (H, k, d)
            vec = (A[:, 0, :, None] * T).sum(0)  # (k, d): sum_h A_0j T_j
            expected = expected + vec.norm(dim=-1)
            expected_h = expected_h + (A[:, 0, :] * T.norm(dim=-1)).mean(0)
        np.testing.assert_allclose(got[i], (expected / len(cap.layers())).numpy(), rtol=1e-5)
        np.testing.assert_allclose(per_head[i], (expected_h / len(cap.layers())).numpy(), rtol=1e-5)


def test_rollout_and_flow_read_the_readout_row_of_the_last_layer():
    from attnexplain.capturing import capture

    lm = _lm("bert")
    enc = lm.tokenize([SHORT[0], SHORT[1]])
    cap = capture(lm, enc)
    ro = get_method("rollout").attribute(lm, enc, target=torch.zeros(2), capture=cap)
    fl = get_method("flow").attribute(lm, enc, target=torch.zeros(2), capture=cap)
    ro_first = get_method("rollout", layers=0).attribute(lm, enc, target=torch.zeros(2), capture=cap)
    ro_all = get_method("rollout", layers="all").attribute(lm, enc, target=torch.zeros(2), capture=cap)
    fl_all = get_method("flow", layers="all").attribute(lm, enc, target=torch.zeros(2), capture=cap)
    for i in range(2):
        idx = enc["attention_mask"][i].bool()
        A = cap.stacked()[:, i][:, :, idx][:, :, :, idx].double().mean(1)  # (L, k, k)
        k = A.shape[-1]
        aug = 0.5 * A + 0.5 * torch.eye(k, dtype=torch.float64)
        aug = aug / aug.sum(-1, keepdim=True)
        roll = aug[0]
        for l in range(1, A.shape[0]):
            roll = aug[l] @ roll
        np.testing.assert_allclose(ro[i], roll[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(ro_first[i], aug[0][0].numpy(), atol=1e-6)  # top layer 0: one step
        np.testing.assert_allclose(ro_all[i], (ro[i] + ro_first[i]) / 2, atol=1e-6)
        assert fl_all[i].shape == fl[i].shape and np.isfinite(fl_all[i]).all()
        assert ro[i].sum() == pytest.approx(1.0, abs=1e-5)
        # flow to a token never exceeds the readout's total capacity, and the readout token
        # itself receives the most (identity residual in every layer)
        assert (fl[i] >= 0).all() and (fl[i] <= 1 + 1e-6).all()
        assert int(np.argmax(fl[i])) == 0


# ------------------------------------------------------------------------------------------
# gradient methods
# ------------------------------------------------------------------------------------------


def _target_logit(lm, enc, target):
    with torch.no_grad():
        return lm.model(**enc).logits.gather(1, target[:, None])[:, 0]


def test_integrated_gradients_completeness():
    lm = _lm("bert")
    texts = [SHORT[0], LONG]
    ig = get_method("integrated_gradients", n_steps=50)
    sc, tgt, enc = _scores(lm, texts, ig.name, n_steps=50)
    base = dict(enc, input_ids=ig.baseline_ids(lm, enc))
    # baseline: every real token -> [PAD], padding untouched
    assert (base["input_ids"][enc["attention_mask"].bool()] == 0).all()
    f_x, f_b = _target_logit(lm, enc, tgt), _target_logit(lm, base, tgt)
    for i in range(2):
        assert sc[i].sum() == pytest.approx(float(f_x[i] - f_b[i]), abs=2e-3 + 1e-2 * abs(float(f_x[i] - f_b[i])))
    # the reported convergence delta is small too (and so is GPT-2's, whose classifier pools
    # the last non-pad id: the path keeps the input ids)
    m = get_method("integrated_gradients", n_steps=50)
    for arch in ("bert", "gpt2"):
        lm = _lm(arch)
        enc = lm.tokenize(texts)
        explain_batch(lm, enc, [m])
        assert np.abs(m.convergence_delta).max() < 5e-3


def test_integrated_gradients_few_steps_is_less_complete_than_many():
    """The completeness test must be able to fail: 1 step is a poor quadrature."""
    lm = _lm("bert")
    enc = lm.tokenize([LONG])
    deltas = {}
    for steps in (1, 50):
        m = get_method("integrated_gradients", n_steps=steps)
        explain_batch(lm, enc, [m], target=torch.tensor([1]))
        deltas[steps] = abs(float(m.convergence_delta[0]))
    assert deltas[50] < deltas[1]


def test_gradient_x_input_matches_manual_autograd():
    lm = _lm("bert")
    texts = [SHORT[0], LONG]
    sc, tgt, enc = _scores(lm, texts, "gradient_x_input", input="word_embeddings")
    emb = lm.model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
    out = lm.model(inputs_embeds=emb, attention_mask=enc["attention_mask"]).logits
    (grad,) = torch.autograd.grad(out.gather(1, tgt[:, None]).sum(), emb)
    manual = (grad * emb).sum(-1).detach()
    for i in range(2):
        idx = enc["attention_mask"][i].bool()
        np.testing.assert_allclose(sc[i], manual[i][idx].numpy(), rtol=1e-4, atol=1e-7)
        assert np.abs(sc[i]).max() > 0


# ------------------------------------------------------------------------------------------
# occlusion
# ------------------------------------------------------------------------------------------


def _p(lm, ids, target):
    with torch.no_grad():
        return float(torch.softmax(lm.model(input_ids=ids[None]).logits[0], -1)[target])


@pytest.mark.parametrize("removal", ["mask", "delete"])
def test_occlusion_matches_a_manual_loop_of_forward_passes(removal):
    lm = _lm("bert")
    texts = [SHORT[1], SHORT[0]]
    sc, tgt, enc = _scores(lm, texts, "occlusion", removal=removal)
    special = {3, 4}  # CharTokenizer [CLS], [SEP]
    for i in range(2):
        ids = enc["input_ids"][i][enc["attention_mask"][i].bool()]
        c = int(tgt[i])
        p0 = _p(lm, ids, c)
        expected = np.zeros(len(ids))
        for j in range(len(ids)):
            if int(ids[j]) in special:
                continue
            if removal == "mask":
                v = ids.clone()
                v[j] = 0  # no [MASK] in the char tokenizer: pad id
            else:
                v = torch.cat([ids[:j], ids[j + 1 :]])
            expected[j] = p0 - _p(lm, v, c)
        np.testing.assert_allclose(sc[i], expected, atol=1e-6)
        assert sc[i][0] == 0 and sc[i][-1] == 0  # [CLS], [SEP] not occluded by default
    assert any(np.abs(s).max() > 0 for s in sc)


def test_occlusion_of_special_tokens_on_request():
    lm = _lm("bert")
    sc, tgt, enc = _scores(lm, [SHORT[1]], "occlusion", occlude_special=True, batch_size=3)
    ids = enc["input_ids"][0]
    v = ids.clone()
    v[0] = 0
    assert sc[0][0] == pytest.approx(_p(lm, ids, int(tgt[0])) - _p(lm, v, int(tgt[0])), abs=1e-6)
    assert sc[0][0] != 0


# ------------------------------------------------------------------------------------------
# random baseline
# ------------------------------------------------------------------------------------------


def test_random_is_deterministic_per_seed_and_differs_across_seeds():
    lm = _lm("bert")
    texts = [SHORT[0], LONG, SHORT[1]]
    a, _, _ = _scores(lm, texts, "random", seed=0)
    b, _, _ = _scores(lm, texts, "random", seed=0)
    c, _, _ = _scores(lm, texts, "random", seed=1)
    reordered, _, _ = _scores(lm, texts[::-1], "random", seed=0)
    for i in range(3):
        np.testing.assert_array_equal(a[i], b[i])
        np.testing.assert_array_equal(a[i], reordered[2 - i])
        assert not np.allclose(a[i], c[i])
    # different examples get different draws
    assert not np.allclose(a[0], a[2][: len(a[0])])


# ------------------------------------------------------------------------------------------
# the real MiniLM
# ------------------------------------------------------------------------------------------


def _load_or_skip(*args, **kwargs):
    from attnexplain import load_model
    from attnexplain.models import ModelNotFoundError

    try:
        return load_model(*args, **kwargs)
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.mark.integration
def test_minilm_effective_equals_raw_below_33_tokens_and_not_above():
    lm = _load_or_skip("minilm", task="classification", num_labels=2)
    short = "a gorgeous, witty film."
    long = ("this is a long and winding review of a film that tries very hard to be clever, funny, "
            "moving and profound all at once, and mostly ends up being none of those things at all")
    enc = lm.tokenize([short, long])
    n = enc["attention_mask"].sum(1).tolist()
    assert n[0] <= 32 < n[1]
    sc, _, _ = explain_batch(lm, enc, ["raw_attention", "effective_attention", "norm", "rollout", "random"])
    np.testing.assert_allclose(sc["effective_attention"][0], sc["raw_attention"][0], atol=1e-5)
    assert np.abs(sc["effective_attention"][1] - sc["raw_attention"][1]).max() > 1e-3
    for name, scores in sc.items():
        assert [len(s) for s in scores] == n, name


@pytest.mark.integration
def test_fine_tuned_minilm_ig_completeness_and_occlusion():
    lm = _load_or_skip("minilm-rotten-tomatoes")
    enc = lm.tokenize(["a gorgeous, witty, seductive movie.", "dull and lifeless"])
    ig = get_method("integrated_gradients", n_steps=32)
    sc, tgt, _ = explain_batch(lm, enc, [ig, "occlusion"])
    assert np.abs(ig.convergence_delta).max() < 0.05
    for i in range(2):
        assert np.isfinite(sc["occlusion"][i]).all()

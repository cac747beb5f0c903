"""Distances, rank correlations and faithfulness scores, as plain functions (notebook-friendly).

Every function documents its formula. Distances between distributions (:func:`tvd`,
:func:`jsd`, :func:`entropy`) work on the last axis and are batched over any leading axes; they
accept numpy arrays, lists or torch tensors (a torch input gives a torch output, anything else
numpy). Logs are natural logs throughout.

>>> from attnexplain.metrics import tvd, jsd, kendall_tau, aopc
>>> float(tvd([.5, .5], [1, 0]))
0.5
>>> float(jsd([1, 0], [0, 1]))  # = ln 2, the maximum
0.6931471805599453

Faithfulness (ERASER, DeYoung et al., ACL 2020): with ``m(x)_c`` the probability of class ``c``
(the class predicted on the full input) and ``r_k`` the top-k% tokens of an explanation::

    comprehensiveness = m(x)_c - m(x \\ r_k)_c      (necessity; higher = more faithful)
    sufficiency       = m(x)_c - m(r_k)_c          (lower = more faithful)
    AOPC              = mean over the bins k in {1, 5, 10, 20, 50} %   (no k = 0 term)

:mod:`attnexplain.ablations.eraser` computes the probabilities; the functions here only
combine them.

Plausibility (agreement with human / gold rationales, DeYoung et al. 2020): :func:`token_f1` of
the top-k words and :func:`auprc` of the word scores against the rationale, both through
:func:`plausibility`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "tvd",
    "jsd",
    "entropy",
    "kl_divergence",
    "kendall_tau",
    "kendall_tau_matrix",
    "spearman",
    "comprehensiveness",
    "sufficiency",
    "aopc",
    "bootstrap_ci",
    "ERASER_BINS",
    "rationale_mask",
    "top_k",
    "token_f1",
    "auprc",
    "plausibility",
]

#: the ERASER AOPC bins: fractions of the (real, non-special) tokens
ERASER_BINS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.20, 0.50)


def _is_torch(*xs: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(x, torch.Tensor) for x in xs)


def _pair(p: Any, q: Any):
    """Both as float64 numpy arrays, or both as torch tensors of a common float dtype."""
    if _is_torch(p, q):
        import torch

        p = torch.as_tensor(p)
        q = torch.as_tensor(q, device=p.device)
        dtype = torch.promote_types(torch.promote_types(p.dtype, q.dtype), torch.float32)
        return p.to(dtype), q.to(dtype), True
    return np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64), False


def _check_last_axis(p, q) -> None:
    if p.shape[-1:] != q.shape[-1:] and p.ndim and q.ndim:
        raise ValueError(f"p and q must have the same number of outcomes (last axis): {tuple(p.shape)} vs {tuple(q.shape)}")


def tvd(p: Any, q: Any) -> Any:
    """Total variation distance ``TVD(p, q) = 1/2 sum_i |p_i - q_i|`` over the last axis.

    Batched over leading axes (broadcasting); in [0, 1] for probability vectors.
    Example: ``tvd([.5, .5], [1, 0]) = 0.5``.
    """
    p, q, is_t = _pair(p, q)
    _check_last_axis(p, q)
    d = p - q
    return 0.5 * (d.abs().sum(-1) if is_t else np.abs(d).sum(-1))


def _xlogy_ratio(x, y, is_t):
    """x * log(x / y) with 0 log 0 = 0 (and x > 0, y = 0 -> inf)."""
    if is_t:
        import torch

        return torch.xlogy(x, x) - torch.xlogy(x, y)
    from scipy.special import xlogy

    return xlogy(x, x) - xlogy(x, y)


def kl_divergence(p: Any, q: Any) -> Any:
    """Kullback-Leibler divergence ``KL(p || q) = sum_i p_i ln(p_i / q_i)`` over the last axis.

    ``0 ln 0 = 0``; infinite where ``q_i = 0 < p_i``.
    """
    p, q, is_t = _pair(p, q)
    _check_last_axis(p, q)
    return _xlogy_ratio(p, q, is_t).sum(-1)


def jsd(p: Any, q: Any) -> Any:
    """Jensen-Shannon divergence (natural log) over the last axis, batched over leading axes.

    ``JSD(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``, with ``0 ln 0 = 0``,
    so zeros in ``p`` or ``q`` are fine. For probability vectors ``0 <= JSD <= ln 2``
    (``ln 2`` for disjoint supports). Inputs are used as given (not renormalised).
    Closed form for two points: ``jsd([1, 0], [a, 1-a]) = 1/2 [ln(2/(1+a)) + a ln(2a/(1+a))
    + (1-a) ln 2]``. (This is the divergence, not its square root, the JS distance.)
    """
    p, q, is_t = _pair(p, q)
    _check_last_axis(p, q)
    m = 0.5 * (p + q)
    out = 0.5 * _xlogy_ratio(p, m, is_t).sum(-1) + 0.5 * _xlogy_ratio(q, m, is_t).sum(-1)
    # clip the round-off outside [0, ln 2]
    return out.clamp(0.0, math.log(2)) if is_t else np.clip(out, 0.0, math.log(2))


def entropy(p: Any) -> Any:
    """Shannon entropy ``H(p) = -sum_i p_i ln p_i`` (nats) over the last axis, ``0 ln 0 = 0``."""
    if _is_torch(p):
        import torch

        p = torch.as_tensor(p)
        p = p.to(torch.promote_types(p.dtype, torch.float32))
        return -torch.xlogy(p, p).sum(-1)
    from scipy.special import xlogy

    p = np.asarray(p, dtype=np.float64)
    return -xlogy(p, p).sum(-1)


def _vec(x: Any, name: str) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per item), got shape {x.shape}")
    return x


def _ranked_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vec(a, "a"), _vec(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length, got {a.size} and {b.size}")
    return a, b


def kendall_tau(a: Any, b: Any, *, variant: str = "b") -> float:
    """Kendall rank correlation of two score vectors (``scipy.stats.kendalltau``).

    Tau-b (default) corrects for ties: ``tau_b = (P - Q) / sqrt((P + Q + T_a)(P + Q + T_b))``
    with P concordant and Q discordant pairs and T_a (T_b) pairs tied only in a (only in b).
    ``variant="c"`` gives Stuart's tau-c. NaN when either vector is constant (or has < 2 items).
    """
    import scipy.stats

    a, b = _ranked_pair(a, b)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(scipy.stats.kendalltau(a, b, variant=variant).statistic)


def kendall_tau_matrix(scores: Any) -> np.ndarray:
    """Kendall tau-b between all pairs of rows of ``scores`` (M, n), vectorised: (M, M) (NaN where a
    row is constant); the same values as :func:`kendall_tau` on each pair."""
    scores = np.asarray(scores, dtype=np.float64)
    M, n = scores.shape
    if n < 2:
        return np.full((M, M), np.nan)
    iu = np.triu_indices(n, 1)
    s = np.sign(scores[:, :, None] - scores[:, None, :])[:, iu[0], iu[1]]  # (M, P)
    num = s @ s.T  # concordant - discordant
    nonzero = (s != 0).sum(1).astype(np.float64)  # pairs not tied in that ranking
    den = np.sqrt(np.outer(nonzero, nonzero))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = num / den
    tau[den == 0] = np.nan
    return tau


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation: the Pearson correlation of the (average, for ties) ranks
    (``scipy.stats.spearmanr``). NaN when either vector is constant (or has < 2 items)."""
    import scipy.stats

    a, b = _ranked_pair(a, b)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)


def _target_probs(p: Any, target: Any | None) -> np.ndarray:
    if _is_torch(p):
        p = p.detach().cpu().numpy()
    p = np.asarray(p, dtype=np.float64)
    if target is None:
        return p
    t = np.asarray(target)
    return np.take_along_axis(p, t[..., None].astype(np.int64), axis=-1)[..., 0]


def comprehensiveness(p_full: Any, p_removed: Any, target: Any | None = None) -> np.ndarray:
    """ERASER comprehensiveness ``m(x)_c - m(x \\ r_k)_c`` (necessity; higher = more faithful).

    ``p_full`` / ``p_removed``: the probabilities of the explained class ``c`` on the full input
    and with the rationale ``r_k`` removed (any shape, element-wise). With ``target`` (class
    indices), they are full distributions ``(..., C)`` and class ``target`` is read from each.
    """
    return _target_probs(p_full, target) - _target_probs(p_removed, target)


def sufficiency(p_full: Any, p_kept: Any, target: Any | None = None) -> np.ndarray:
    """ERASER sufficiency ``m(x)_c - m(r_k)_c`` (lower = more faithful; can be negative).

    ``p_kept``: probability of class ``c`` when only the rationale ``r_k`` is kept. Same
    conventions as :func:`comprehensiveness`.
    """
    return _target_probs(p_full, target) - _target_probs(p_kept, target)


def aopc(values_per_bin: Any, axis: int = -1) -> np.ndarray:
    """Area over the perturbation curve, ERASER style: the mean over the bins.

    ``AOPC = 1/|K| sum_{k in K} value_k`` with ``K = {1, 5, 10, 20, 50} %`` in ERASER, and no
    ``k = 0`` term (the official scorer averages exactly those bins). ``values_per_bin``: the
    comprehensiveness (or sufficiency) values, bins along ``axis``.
    """
    v = values_per_bin.detach().cpu().numpy() if _is_torch(values_per_bin) else values_per_bin
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0 or v.shape[axis] == 0:
        raise ValueError(f"aopc needs at least one bin along axis {axis}, got shape {v.shape}")
    return v.mean(axis=axis)


def bootstrap_ci(
    values: Any,
    statistic: Callable[..., Any] = np.mean,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int | None = 0,
) -> tuple[float, float]:
    """Bootstrap confidence interval of ``statistic(values)`` (``scipy.stats.bootstrap``).

    Resamples the values (examples) with replacement ``n_resamples`` times; ``method`` is
    scipy's ("BCa" bias-corrected and accelerated by default, or "percentile", "basic").
    NaN values are dropped. Returns ``(low, high)``: ``(nan, nan)`` with fewer than 2 values and
    ``(v, v)`` when all values equal ``v`` (the bootstrap distribution is degenerate). Seeded
    (``seed=0``) so reports are reproducible.
    """
    import scipy.stats

    v = _vec(values, "values")
    v = v[~np.isnan(v)]
    if v.size < 2:
        return float("nan"), float("nan")
    if np.all(v == v[0]):
        s = float(statistic(v))
        return s, s
    res = scipy.stats.bootstrap(
        (v,), statistic, confidence_level=confidence_level, n_resamples=n_resamples, method=method,
        rng=np.random.default_rng(seed), vectorized=True if statistic in (np.mean, np.median) else False,
    )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if (math.isnan(lo) or math.isnan(hi)) and method == "BCa":  # degenerate acceleration: fall back
        res = scipy.stats.bootstrap((v,), statistic, confidence_level=confidence_level,
                                    n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return lo, hi


# --------------------------------------------------------------------------------------------
# plausibility (agreement with gold rationales)
# --------------------------------------------------------------------------------------------


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. accuracy = successes / n), via
    ``scipy.stats.binomtest(...).proportion_ci(method="wilson")`` (Wilson, JASA 1927).

    Unlike a bootstrap of 0/1 values it does not collapse to a zero-width interval when every
    example is right (or wrong): 8 of 8 correct gives about (0.676, 1.0).
    Raises ``ValueError`` unless ``0 <= successes <= n`` and ``n >= 1``.
    """
    from scipy.stats import binomtest

    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rationale_mask(rationale: Iterable[int], n_words: int) -> np.ndarray:
    """Boolean mask of length ``n_words`` that is True at the rationale's word indices."""
    mask = np.zeros(n_words, dtype=bool)
    for i in rationale:
        if not 0 <= i < n_words:
            raise IndexError(f"rationale index {i} out of range for {n_words} words")
        mask[i] = True
    return mask


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` highest scores, highest first (ties: the lower index first)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    return [int(i) for i in order[: max(0, int(k))]]


def token_f1(pred: Iterable[int], gold: Iterable[int]) -> float:
    """F1 between a set of predicted word indices (e.g. the top-k) and the gold rationale.

    precision = |P & G| / |P|, recall = |P & G| / |G|, F1 = 2 P R / (P + R) (DeYoung et al., 2020,
    ERASER's token-level F1, per example). Both empty -> 1.0; exactly one empty, or no overlap ->
    0.0. Duplicates are ignored (sets).
    """
    p, g = set(int(i) for i in pred), set(int(i) for i in gold)
    if not p and not g:
        return 1.0
    hit = len(p & g)
    if hit == 0:
        return 0.0
    precision, recall = hit / len(p), hit / len(g)
    return 2 * precision * recall / (precision + recall)


def auprc(scores: Sequence[float], gold_mask: Sequence[bool]) -> float:
    """Area under the precision-recall curve as *average precision* (no interpolation).

    Rank words by descending score; for every distinct score threshold t (tied scores form one
    threshold), P(t) = gold words with score >= t / words with score >= t and R(t) = gold words
    with score >= t / all gold words. Then ``AP = sum_t (R(t) - R(t_prev)) * P(t)`` over thresholds
    from high to low, with R = 0 before the first. This is the formula of
    ``sklearn.metrics.average_precision_score``. A perfect ranking gives 1.0; a random one about
    the fraction of gold words. Returns nan when there are no gold words.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(gold_mask, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and gold_mask ({y.size}) differ in length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    # last index of each group of equal scores = one threshold
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp_t = tp[last].astype(np.float64)
    precision = tp_t / (last + 1)
    recall = tp_t / n_pos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def plausibility(word_score: Sequence[float], rationale: Sequence[int], *, k: int | None = None) -> dict[str, float]:
    """Plausibility of one example's word scores against its gold rationale.

    Returns ``{"token_f1": F1 of the top-k words (k = rationale size unless given), "auprc": ...}``.
    """
    n = len(word_score)
    k = len(set(rationale)) if k is None else k
    return {"token_f1": token_f1(top_k(word_score, k), rationale),
            "auprc": auprc(word_score, rationale_mask(rationale, n))}

"""Attention as a distribution keeping the head output (project formulation after Naim & Asher 2024)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnexplain.functional import attention_distribution, effective_attention




def gen(seed):
    return torch.Generator().manual_seed(seed)


def make(batch, n, m, dh, d, seed, dtype=torch.float64, temp=2.0):
    g = gen(seed)
    A = torch.softmax(temp * torch.randn(*batch, n, m, generator=g, dtype=torch.float64), -1)
    T = torch.randn(*batch, m, dh, generator=g, dtype=torch.float64) @ torch.randn(dh, d, generator=g, dtype=torch.float64)
    return A.to(dtype), T.to(dtype)


def np_rank(T: np.ndarray, eps: float) -> int:
    s = np.linalg.svd(T, compute_uv=False)
    return int((s > max(T.shape) * eps * s.max()).sum()) if s.size and s.max() > 0 else 0


def check_feasible(res, A, T, mask=None, atol=1e-9):
    """a' >= 0, sums to 1, a'^T T == a^T T (independent float64 computation), 0 at masked keys."""
    P = res.probs.double()
    Ad, Td = A.double()[..., res.rows, :], T.double()
    if mask is not None:
        Ad = Ad * mask[..., None, :]
        Td = Td * mask[..., :, None]
        assert float((P * ~mask[..., None, :]).abs().max()) == 0.0
    assert float(P.min()) >= 0.0
    torch.testing.assert_close(P.sum(-1), torch.ones_like(P.sum(-1)), rtol=0, atol=atol)
    scale = float(Td.abs().max()) + 1e-300
    diff = ((P - Ad) @ Td).abs().amax(-1)
    assert float(diff.max()) <= atol * scale * max(1, T.shape[-2])
    # reported residual is the same quantity (A renormalised inside: within round-off)
    torch.testing.assert_close(res.residual.double(), diff, rtol=0, atol=1e-6 * scale)
    torch.testing.assert_close(res.support_size, (P > 1e-6).sum(-1))


@pytest.mark.parametrize("mode", ["nearest", "sparsest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_feasible_and_support_bound(mode, dtype):
    A, T = make((2, 2), 4, 14, 3, 6, seed=1, dtype=dtype)
    res = attention_distribution(A, T, mode=mode)
    assert res.probs.shape == A.shape and res.probs.dtype == dtype and res.mode == mode
    check_feasible(res, A, T, atol=1e-6 if dtype == torch.float32 else 1e-9)
    eps = float(torch.finfo(dtype).eps)
    for b in np.ndindex(2, 2):
        r = np_rank(T[b].double().numpy(), eps)
        assert int(res.rank[b]) == r == 3
        if mode == "sparsest":
            assert int(res.support_size[b].max()) <= r + 1


def test_nearest_is_optimal_against_slsqp():
    """Compare with an independent solver (SLSQP; constraints on scipy.linalg.orth(T))."""
    A, T = make((), 3, 8, 2, 5, seed=2, temp=3.0)
    E = effective_attention(A, T)
    res = attention_distribution(A, T, mode="nearest")
    Tn = scipy.linalg.orth(T.numpy())  # (8, 2): SLSQP needs independent equality constraints
    assert Tn.shape == (8, 2)
    for i in range(3):
        a, c = A[i].numpy(), E[i].numpy()
        cons = [
            {"type": "eq", "fun": lambda x: x.sum() - 1.0},
            {"type": "eq", "fun": lambda x, a=a: (x - a) @ Tn},
        ]
        sol = scipy.optimize.minimize(
            lambda x, c=c: 0.5 * np.sum((x - c) ** 2),
            a,
            jac=lambda x, c=c: x - c,
            bounds=[(0, None)] * 8,
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert sol.success
        ours = res.probs[i].numpy()
        np.testing.assert_allclose(ours, sol.x, atol=1e-5)
        assert np.sum((ours - c) ** 2) <= np.sum((sol.x - c) ** 2) + 1e-9


def test_nearest_beats_other_feasible_points():
    A, T = make((3,), 5, 20, 4, 9, seed=3)
    near = attention_distribution(A, T, mode="nearest")
    sparse = attention_distribution(A, T, mode="sparsest")
    E = effective_attention(A, T).double()
    d_near = ((near.probs - E) ** 2).sum(-1)
    assert bool((d_near <= ((A - E) ** 2).sum(-1) + 1e-12).all())  # a is feasible
    assert bool((d_near <= ((sparse.probs - E) ** 2).sum(-1) + 1e-12).all())  # so is the vertex
    assert float(sparse.support_size.float().mean()) < float(near.support_size.float().mean())


def test_full_rank_feasible_set_is_a_point():
    A, T = make((2,), 3, 4, 6, 8, seed=4)  # m = 4 <= rank
    for mode in ("nearest", "sparsest"):
        torch.testing.assert_close(attention_distribution(A, T, mode=mode).probs, A, rtol=0, atol=1e-9)


def test_rows_selection_and_given_A_eff():
    A, T = make((2,), 6, 12, 3, 5, seed=5)
    full = attention_distribution(A, T)
    part = attention_distribution(A, T, rows=[4, -1, 0])
    assert part.rows == [4, 5, 0]
    torch.testing.assert_close(part.probs, full.probs[:, [4, 5, 0]])
    given_eff = attention_distribution(A, T, A_eff=effective_attention(A, T), rows=2)
    torch.testing.assert_close(given_eff.probs, full.probs[:, [2]])
    # a different target changes the answer but stays feasible
    other = attention_distribution(A, T, A_eff=torch.zeros_like(A))
    check_feasible(other, A, T)


def test_key_mask():
    A, T = make((2,), 4, 16, 3, 6, seed=6)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    A = torch.where(mask[:, None, :], A, 0.0)
    A = A / A.sum(-1, keepdim=True)
    T = torch.where(mask[:, :, None], T, float("nan"))
    for mode in ("nearest", "sparsest"):
        res = attention_distribution(A, T, mode=mode, key_mask=mask)
        check_feasible(res, A, torch.nan_to_num(T), mask=mask)
        trunc = attention_distribution(A[1, :, :10], T[1, :10], mode=mode)
        if mode == "nearest":  # unique optimum: same as the truncated problem
            torch.testing.assert_close(res.probs[1, :, :10], trunc.probs, rtol=0, atol=1e-9)


def test_errors():
    A, T = make((), 3, 6, 2, 4, seed=7)
    with pytest.raises(ValueError, match="mode"):
        attention_distribution(A, T, mode="closest")
    with pytest.raises(ValueError, match="sums to"):
        attention_distribution(2 * A, T)
    with pytest.raises(ValueError, match="negative"):
        attention_distribution(A - 0.5, T)
    with pytest.raises(ValueError, match="out of range"):
        attention_distribution(A, T, rows=[3])
    with pytest.raises(ValueError, match="keys"):
        attention_distribution(A, T[:5])
    with pytest.raises(ValueError, match="A_eff"):
        attention_distribution(A, T, A_eff=A[:, :5])


@st.composite
def problems(draw):
    batch = tuple(draw(st.lists(st.integers(1, 2), min_size=0, max_size=2)))
    n = draw(st.integers(1, 3))
    m = draw(st.integers(1, 9))
    dh = draw(st.integers(1, 4))
    d = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    A, T = make(batch, n, m, dh, d, seed, dtype=dtype, temp=draw(st.sampled_from([0.5, 2.0, 8.0])))
    mask = None
    if draw(st.booleans()):
        mask = torch.rand(*batch, m, generator=gen(seed + 1)) < 0.7
        mask[..., 0] = True
        A = torch.where(mask[..., None, :], A, 0)
        A = A / A.sum(-1, keepdim=True)
    return A, T, mask


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(["nearest", "sparsest"]))
def test_property_feasible(prob, mode):
    A, T, mask = prob
    res = attention_distribution(A, T, mode=mode, key_mask=mask)
    check_feasible(res, A, T, mask=mask, atol=1e-5 if A.dtype == torch.float32 else 1e-8)
    if mode == "sparsest":
        assert bool((res.support_size <= res.rank[..., None] + 1).all())


def test_purification_reaches_a_vertex():
    """The fallback that turns any feasible point into a basic one (Caratheodory step)."""
    from attnexplain.functional.distribution import _purify, _row_basis

    rng = np.random.default_rng(0)
    for m, r in [(30, 4), (12, 1), (9, 0)]:
        T = rng.standard_normal((m, r)) @ rng.standard_normal((r, 5)) if r else np.zeros((m, 5))
        U = scipy.linalg.orth(T) if r else np.zeros((m, 0))
        W = _row_basis(U)
        a = rng.dirichlet(np.ones(m))  # full support, feasible, not a vertex
        x = _purify(a, W.T.copy(), 1e-12)
        assert x.min() >= 0 and (x > 0).sum() <= W.shape[1] == r + 1
        np.testing.assert_allclose(W.T @ x, W.T @ a, atol=1e-10)
        np.testing.assert_allclose(x.sum(), 1.0, atol=1e-10)
        np.testing.assert_allclose((x - a) @ T, 0.0, atol=1e-9 * max(1.0, np.abs(T).max()))

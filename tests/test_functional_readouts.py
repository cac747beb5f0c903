"""token_importance and aggregate against explicit numpy indexing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnexplain.functional import aggregate, token_importance




def att(*shape, seed=0):
    return torch.softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), -1)


def test_readouts_without_mask():
    A = att(2, 3, 5, 5)
    An = A.numpy()
    np.testing.assert_array_equal(token_importance(A).numpy(), An[..., 0, :])
    np.testing.assert_array_equal(token_importance(A, readout=2).numpy(), An[..., 2, :])
    np.testing.assert_array_equal(token_importance(A, readout=-2).numpy(), An[..., 3, :])
    np.testing.assert_array_equal(token_importance(A, readout="last").numpy(), An[..., 4, :])
    np.testing.assert_allclose(token_importance(A, readout="mean").numpy(), An.mean(-2), atol=1e-15)


def test_readouts_with_right_and_left_padding():
    A = att(2, 4, 6, 6, seed=1)  # (B, H, n, m)
    km = torch.tensor([[True, True, True, True, False, False], [False, False, True, True, True, True]])
    An, kn = A.numpy(), km.numpy()
    last = token_importance(A, readout="last", key_mask=km[:, None, :])
    mean = token_importance(A, readout="mean", key_mask=km[:, None, :])
    cls = token_importance(A, key_mask=km[:, None, :])
    for b, last_pos in [(0, 3), (1, 5)]:
        np.testing.assert_allclose(last[b].numpy(), An[b, :, last_pos, :] * kn[b], atol=1e-15)
        np.testing.assert_allclose(mean[b].numpy(), An[b][:, kn[b], :].mean(-2) * kn[b], atol=1e-15)
        np.testing.assert_allclose(cls[b].numpy(), An[b, :, 0, :] * kn[b], atol=1e-15)
    # cross-attention: separate query mask
    X = att(2, 3, 7, seed=2)
    qm = torch.tensor([[True, True, False], [True, True, True]])
    out = token_importance(X, readout="last", query_mask=qm)
    np.testing.assert_allclose(out.numpy(), np.stack([X[0, 1].numpy(), X[1, 2].numpy()]), atol=1e-15)


def test_readout_errors():
    A = att(2, 4, 4)
    with pytest.raises(ValueError, match="readout"):
        token_importance(A, readout="first")
    with pytest.raises(ValueError, match="out of range"):
        token_importance(A, readout=4)
    with pytest.raises(ValueError, match="no real query"):
        token_importance(A, readout="mean", key_mask=torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(TypeError, match="bool"):
        token_importance(A, readout="last", key_mask=torch.ones(2, 4))


@pytest.mark.parametrize("how", ["mean", "max", "sum", "norm"])
def test_aggregate_matches_numpy(how):
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    ref = {"mean": np.mean, "max": np.max, "sum": np.sum}
    for dims in [1, (0, 2), (-1,)]:
        got = aggregate(x, dims=dims, how=how).numpy()
        axis = (dims,) if isinstance(dims, int) else dims
        want = np.sqrt((x.numpy() ** 2).sum(axis=axis)) if how == "norm" else ref[how](x.numpy(), axis=axis)
        np.testing.assert_allclose(got, want, atol=1e-12)
    with pytest.raises(ValueError, match="out of range"):
        aggregate(x, dims=4, how=how)
    with pytest.raises(ValueError, match="repeat"):
        aggregate(x, dims=(1, -3), how=how)
    with pytest.raises(ValueError, match="how"):
        aggregate(x, dims=1, how="median")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(1, 3), min_size=0, max_size=2),
    st.integers(1, 6),
    st.sampled_from(["cls", "last", "mean", 0, -1]),
    st.integers(0, 10**6),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_property_weighted_rows(batch, n, readout, seed, dtype):
    A = att(*batch, n, n, seed=seed).to(dtype)
    g = torch.Generator().manual_seed(seed)
    km = torch.rand(*batch, n, generator=g) < 0.7
    km[..., -1] = True
    out = token_importance(A, readout=readout, key_mask=km)
    assert out.shape == (*batch, n) and out.dtype == dtype
    # any readout is a convex combination of rows: sums of the real-key mass stay in [0, 1]
    s = out.double().sum(-1)
    assert bool((s >= -1e-6).all()) and bool((s <= 1 + 1e-6).all())
    assert float((out * ~km).abs().max()) == 0.0

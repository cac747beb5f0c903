"""Every attention backend in CAB's four patterns (noncausal/causal x self/cross attention).

Per backend and pattern: the implied matrix is exact (A @ V == the backend's output, and the
output-only path agrees), it puts no weight on keys the pattern hides, and the backend's dense
setting (one cluster, a full window, as many landmarks as tokens) equals dense softmax attention
computed here from the pattern's definition. A backend whose mechanism cannot do a pattern
refuses it with UnsupportedPatternError. Tiny tensors only.

The tensors live on ``ATTNEXPLAIN_TEST_DEVICE`` (default ``cpu``): a GPU machine runs the same
sweep with ``ATTNEXPLAIN_TEST_DEVICE=cuda`` (``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from attnexplain.backends import ATTENTION_PATTERNS, causal_cross_limits, get_backend, pattern_call
from attnexplain.backends import linear as linear_module
from attnexplain.backends.linear import kernel_attention
from attnexplain.errors import AttnExplainError, UnsupportedPatternError

DEVICE = torch.device(os.environ.get("ATTNEXPLAIN_TEST_DEVICE", "cpu"))

#: a setting of each backend that approximates (small clusters / windows / few features)
APPROXIMATE = {
    "dense": {},
    "smyrf": {"n_hashes": 2, "q_cluster_size": 2, "k_cluster_size": 2},
    "lsh": {"n_hashes": 2, "bucket_size": 2},
    "performer": {"n_features": 16},
    "linear": {},
    "nystrom": {"n_landmarks": 2},
    "local": {"window": 1},
}
#: the setting that is dense attention, where the mechanism has one
DENSE_SETTING = {
    "dense": {},
    "smyrf": {"q_cluster_size": 64, "k_cluster_size": 64},
    "lsh": {"bucket_size": 64},
    "nystrom": {"n_landmarks": 64, "pinv_iterations": 0},
    "local": {"window": 64},
}
#: patterns a backend refuses (its mechanism cannot compute them)
REFUSED = {"nystrom": {"causal_self", "causal_cross"}}

#: (n queries, m keys, padded keys of example 1) per pattern kind
SHAPES = {"self": [(6, 6, 0)], "cross": [(5, 7, 2), (7, 5, 2)]}


def cases():
    for pattern in ATTENTION_PATTERNS:
        for n, m, pad in SHAPES[pattern.split("_")[1]]:
            yield pattern, n, m, pad


def supported_cases(backends):
    return [pytest.param(b, p, n, m, pad, id=f"{b}-{p}-{n}x{m}") for b in sorted(backends)
            for p, n, m, pad in cases() if p not in REFUSED.get(b, ())]


def allowed_by_definition(pattern: str, n: int, m: int, pad: int) -> torch.Tensor:
    """(2, 1, n, m) bool written from the patterns' definitions (not from pattern_call)."""
    i = torch.arange(n)[:, None]
    j = torch.arange(m)[None]
    if pattern == "causal_self":
        vis = j <= i
    elif pattern == "causal_cross":
        vis = j * n < (i + 1) * m  # j < (i + 1) m / n, i.e. key time before the query's end
    else:
        vis = torch.ones(n, m, dtype=torch.bool)
    real = torch.ones(2, m, dtype=torch.bool)
    if pad:
        real[1, m - pad:] = False
    return (vis[None, None] & real[:, None, None, :]).to(DEVICE)


def make_call(pattern: str, n: int, m: int, pad: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, n, 4, generator=g).to(DEVICE)
    k = torch.randn(2, 2, m, 4, generator=g).to(DEVICE)
    v = torch.randn(2, 2, m, 3, generator=g).to(DEVICE)
    kpm = None
    if pad:
        kpm = torch.ones(2, m, dtype=torch.bool)
        kpm[1, m - pad:] = False
        kpm = kpm.to(DEVICE)
    return pattern_call(pattern, q, k, v, scaling=0.5, key_padding_mask=kpm)


def dense_of(a: torch.Tensor) -> torch.Tensor:
    return a.to_dense() if a.is_sparse else a


@pytest.fixture(autouse=True)
def small_causal_chunks(monkeypatch):
    """Several chunks in the kernel backends' causal prefix sums even at these lengths."""
    monkeypatch.setattr(linear_module, "CAUSAL_CHUNK", 2)


@pytest.mark.parametrize("backend_name,pattern,n,m,pad", supported_cases(APPROXIMATE))
def test_implied_matrix_is_exact_and_respects_the_pattern(backend_name, pattern, n, m, pad):
    backend = get_backend(backend_name, **APPROXIMATE[backend_name])
    call = make_call(pattern, n, m, pad)
    out, a = backend.attention(call)
    a = dense_of(a)
    assert a.shape == (2, 2, n, m) and out.shape == (2, 2, n, 3)
    torch.testing.assert_close(a.to(call.value.dtype) @ call.value, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(backend.forward(call), out, atol=1e-5, rtol=0)
    hidden = ~allowed_by_definition(pattern, n, m, pad).expand(2, 2, n, m)
    assert hidden.any() == (pattern != "noncausal_self")
    assert a[hidden].abs().max().item() == 0.0 if hidden.any() else True
    # every query sees at least one real key in these cases: the row-stochastic mechanisms give rows
    # summing to 1 (Nystrom's rows only approximately, through its iterative pseudo-inverse; the
    # clustered backends may leave a row empty when no visible key shares its cluster, local
    # attention when its band holds only hidden keys)
    if backend_name in ("dense", "linear", "performer"):
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, n, dtype=a.dtype, device=a.device), atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend_name,pattern,n,m,pad", supported_cases(DENSE_SETTING))
def test_dense_setting_equals_dense_attention(backend_name, pattern, n, m, pad):
    call = make_call(pattern, n, m, pad, seed=1)
    # reference: softmax over the visible keys, by the definition
    scores = (call.query @ call.key.transpose(-1, -2)) * call.scaling
    allowed = allowed_by_definition(pattern, n, m, pad)
    ref = torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1)
    backend = get_backend(backend_name, **DENSE_SETTING[backend_name])
    out, a = backend.attention(call)
    torch.testing.assert_close(dense_of(a).float(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, ref @ call.value, atol=1e-5, rtol=0)
    torch.testing.assert_close(backend.forward(call), ref @ call.value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pattern", ["causal_self", "causal_cross"])
def test_backend_refuses_patterns_it_cannot_compute(pattern):
    n, m, pad = (6, 6, 0) if pattern == "causal_self" else (5, 7, 2)
    call = make_call(pattern, n, m, pad)
    for method in ("attention", "forward"):
        with pytest.raises(UnsupportedPatternError) as err:
            getattr(get_backend("nystrom"), method)(call)
        msg = str(err.value)
        assert pattern.replace("_", " ") in msg and "'performer'" in msg
        assert isinstance(err.value, AttnExplainError) and isinstance(err.value, NotImplementedError)


def test_refusal_table_matches_the_backends():
    """Every pattern not in REFUSED runs; every one in it raises (the README table's source)."""
    for name in APPROXIMATE:
        for pattern, n, m, pad in cases():
            call = make_call(pattern, n, m, pad)
            if pattern in REFUSED.get(name, ()):
                with pytest.raises(UnsupportedPatternError):
                    get_backend(name).forward(call)
            else:
                assert torch.isfinite(get_backend(name, **APPROXIMATE[name]).forward(call)).all()


def test_causal_cross_alignment():
    for n, m in [(1, 1), (4, 4), (5, 7), (7, 5), (3, 10), (10, 3)]:
        lim = causal_cross_limits(n, m)
        assert lim.tolist() == [-(-(i + 1) * m // n) for i in range(n)]
        assert lim[0] >= 1 and lim[-1] == m and bool((lim[1:] >= lim[:-1]).all())
    assert causal_cross_limits(6, 6).tolist() == list(range(1, 7))  # = causal self-attention
    # the mask of a causal-cross call hides exactly what the definition hides
    call = make_call("causal_cross", 5, 7, 2)
    hidden = call.mask <= torch.finfo(call.mask.dtype).min / 2
    assert torch.equal(hidden, ~allowed_by_definition("causal_cross", 5, 7, 2))


def test_pattern_call_rejects_bad_input():
    q = torch.zeros(1, 1, 3, 2)
    k = torch.zeros(1, 1, 4, 2)
    with pytest.raises(ValueError, match="cross pattern"):
        pattern_call("causal_self", q, k, k)
    with pytest.raises(ValueError, match="noncausal_cross"):
        pattern_call("diagonal", q, k, k)
    with pytest.raises(ValueError, match="non-decreasing"):
        kernel_attention(torch.ones(1, 1, 3, 2), torch.ones(1, 1, 4, 2), torch.ones(1, 1, 4, 2),
                         causal=False, key_limit=torch.tensor([2, 1, 4]))

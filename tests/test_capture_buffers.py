"""Captured matrices reuse the memory of dropped captures (capturing.buffers), never of live ones."""

from __future__ import annotations

import copy

import pytest
import torch

from attnexplain.backends import AttentionCall, get_backend
from attnexplain.capturing import buffers, capture
from attnexplain.testing import tiny_config, tiny_hf_model, tiny_inputs, tiny_model


def _eager_attentions(arch: str, inputs: dict) -> tuple:
    ref = tiny_hf_model(arch, attn_implementation="eager", config=copy.deepcopy(tiny_config(arch)))
    with torch.no_grad():
        return ref(**inputs, output_attentions=True).attentions


@pytest.fixture(autouse=True)
def _empty_pool(monkeypatch):
    monkeypatch.setattr(buffers, "MIN_BYTES", 0)  # the tiny models' matrices are small: pool them all here
    buffers.release_buffers()
    yield
    buffers.release_buffers()


def test_small_matrices_are_not_pooled(monkeypatch):
    monkeypatch.setattr(buffers, "MIN_BYTES", 128 * 2**10)
    assert buffers.take_buffer((4, 9, 1, 40), torch.float32, torch.device("cpu")) is None  # a decoding step's row
    assert buffers.held_bytes() == 0
    big = buffers.take_buffer((1, 12, 128, 128), torch.float32, torch.device("cpu"))
    assert big is not None and big.shape == (1, 12, 128, 128) and buffers.held_bytes() == big.nbytes
    # a generation: the capture rides on the decoding steps; none of its one-row matrices enters the pool
    from attnexplain.generation import generate
    from attnexplain.testing import tiny_generator

    del big
    buffers.release_buffers()
    generate(tiny_generator("llama"), ["the cat sat on"], max_new_tokens=3)
    assert buffers.held_bytes() == 0


def _storages(res) -> set[int]:
    return {t.untyped_storage().data_ptr() for recs in res.records.values() for r in recs
            for t in (r.probs, r.values) if t is not None}


def test_a_dropped_capture_s_memory_is_reused_and_fully_overwritten():
    lm = tiny_model("bert")
    inputs = tiny_inputs("bert", length=12, pad="right")
    first = capture(lm, inputs)
    used = _storages(first)
    for recs in first.records.values():  # stale contents must not survive into the next capture
        recs[0].probs.fill_(float("nan"))
        recs[0].values.fill_(float("nan"))
    del recs
    del first
    second = capture(lm, inputs)
    assert _storages(second) == used  # the same memory, handed out again
    expected = _eager_attentions("bert", inputs)
    for layer, want in enumerate(expected):
        got = second.attention(layer)
        assert torch.isfinite(got).all() and torch.isfinite(second.records[f"main.{layer}.self"][0].values).all()
        assert (got - want).abs().max().item() < 1e-6


def test_a_live_capture_is_never_overwritten():
    lm = tiny_model("bert")
    a_inputs, b_inputs = tiny_inputs("bert", length=12, pad="right", seed=0), tiny_inputs("bert", length=12, pad="right", seed=1)
    first = capture(lm, a_inputs)
    kept = {k: (r[0].probs.clone(), r[0].values.clone()) for k, r in first.records.items()}
    second = capture(lm, b_inputs)
    assert not _storages(first) & _storages(second)
    for key, (probs, values) in kept.items():
        assert torch.equal(first.records[key][0].probs, probs)
        assert torch.equal(first.records[key][0].values, values)
    assert not torch.equal(first.attention(0), second.attention(0))  # the inputs differ: so do the matrices


def test_a_view_or_array_kept_from_a_dropped_capture_is_not_overwritten():
    lm = tiny_model("bert")
    first = capture(lm, tiny_inputs("bert", length=12, pad="right", seed=0))
    row = first.attention(0)[0, 1]  # a view into the pooled memory
    array = first.attention(1).numpy()  # a NumPy array sharing it
    row_before, array_before = row.clone(), array.copy()
    del first
    for seed in (1, 2):
        capture(lm, tiny_inputs("bert", length=12, pad="right", seed=seed))
    assert torch.equal(row, row_before)
    assert (array == array_before).all()


def test_the_pool_holds_at_most_its_limit(monkeypatch):
    lm = tiny_model("bert")
    inputs = tiny_inputs("bert", length=12, pad="right")
    expected = _eager_attentions("bert", inputs)
    monkeypatch.setattr(buffers, "LIMIT_BYTES", 0)
    res = capture(lm, inputs)
    assert buffers.held_bytes() == 0
    assert (res.attention(0) - expected[0]).abs().max().item() < 1e-6
    monkeypatch.setattr(buffers, "LIMIT_BYTES", 256 * 2**20)
    res = capture(lm, inputs)
    assert 0 < buffers.held_bytes() <= 256 * 2**20


def test_dense_attention_into_writes_the_matrix_into_the_buffer():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 4, generator=g).transpose(1, 2) for _ in range(3))  # (B, H, n, d) strided views, as HF passes
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, ..., 4] = torch.finfo(torch.float32).min
    call = AttentionCall(query=q, key=k, value=v, mask=mask, scaling=0.3)
    dense = get_backend("dense")
    out_ref, probs_ref = dense.attention(call)
    buf = torch.full((2, 3, 5, 5), float("nan"))
    out, probs = dense.attention_into(call, buf)
    assert probs.data_ptr() == buf.data_ptr()
    assert torch.equal(probs, probs_ref) and torch.equal(out, out_ref)
    # with autograd the buffer is not written (out= has no gradient) and gradients still flow
    qg = q.detach().clone().requires_grad_(True)
    buf2 = torch.full((2, 3, 5, 5), float("nan"))
    out_g, probs_g = dense.attention_into(AttentionCall(query=qg, key=k, value=v, mask=mask, scaling=0.3), buf2)
    assert probs_g.data_ptr() != buf2.data_ptr() and torch.allclose(probs_g, probs_ref)
    out_g.sum().backward()
    assert qg.grad is not None

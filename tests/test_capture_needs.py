"""Capture keeping only what the consumers read (readout rows, head means, some examples' full
matrices, the effective-attention basis, statistics taken layer by layer), checked against the
full capture, and analyze's "needed" capture route against its "full" route (issue 17)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from attnexplain.backends import AttentionCall, get_backend
from attnexplain.capturing import capture
from attnexplain.methods import explain_batch, get_method
from attnexplain.methods.attention_methods import readout_positions
from attnexplain.testing import tiny_inputs, tiny_model

ATOL = 1e-6


def _inputs(arch: str, pad: str, length: int = 13, batch: int = 3):
    """Three examples of 13, 10 and 8 real tokens, padded on ``pad``'s side."""
    enc = tiny_inputs(arch, batch=batch, length=length, pad=pad, seed=1)
    if pad == "right":
        enc["attention_mask"][2, -5:] = 0
    else:
        enc["attention_mask"][2, :5] = 0
    return enc


@pytest.mark.parametrize("arch,pad,readout", [("bert", "right", "cls"), ("roberta", "right", "cls"),
                                              ("gpt2", "left", "last"), ("llama", "left", "last")])
def test_reduced_capture_equals_the_full_capture(arch, pad, readout):
    lm = tiny_model(arch)
    enc = _inputs(arch, pad)
    B, n = enc["input_ids"].shape
    pos = readout_positions(readout, enc["attention_mask"], B, n)
    full = capture(lm, enc)
    seen = []
    red = capture(lm, enc, query_rows=pos, head_means=True, full_examples=[2, 0], effective_basis=True,
                  on_matrices=lambda rec: seen.append(rec.probs.shape[0]) or rec.probs.sum(-1))
    assert seen == [B] * len(full.layers())  # the callback saw every example's full matrices
    assert torch.allclose(red.logits, full.logits, atol=1e-5)
    for layer in full.layers():
        A = full.attention(layer)
        want_rows = A[torch.arange(B), :, pos].unsqueeze(-2)
        assert red.records[red._key(layer, None, "self")][0].rows is not None
        assert torch.allclose(red.readout_rows(layer, pos), want_rows, atol=ATOL)
        assert torch.allclose(red.head_mean(layer), A.mean(1), atol=ATOL)
        assert torch.allclose(red.attention(layer, examples=[0, 2]), A[[0, 2]], atol=ATOL)
        assert torch.allclose(red.derived(layer), A.sum(-1), atol=ATOL)
        U_red, r_red = red.effective_basis(layer)
        U_full, r_full = full.effective_basis(layer)
        assert torch.equal(r_red, r_full) and torch.allclose(U_red, U_full, atol=1e-10)
        assert torch.allclose(red.effective_attention(layer, examples=[2]), full.effective_attention(layer)[[2]],
                              atol=ATOL)
        with pytest.raises(ValueError, match="full_examples"):
            red.attention(layer)  # example 1 was not kept in full
    assert red.nbytes < full.nbytes or n < 4


@pytest.mark.parametrize("arch,pad,readout", [("bert", "right", "cls"), ("llama", "left", "last"),
                                              ("gpt2", "right", "last")])
def test_rows_only_capture_computes_the_rows_alone_and_keeps_the_output(arch, pad, readout):
    lm = tiny_model(arch)
    enc = _inputs(arch, pad)
    B, n = enc["input_ids"].shape
    pos = readout_positions(readout, enc["attention_mask"], B, n)
    full = capture(lm, enc)
    rows = capture(lm, enc, query_rows=pos, full_examples=[])
    assert torch.allclose(rows.logits, full.logits, atol=1e-5)
    for layer in full.layers():
        rec = rows.records[rows._key(layer, None, "self")][0]
        assert rec.probs.shape[0] == 0 and rec.examples == [] and rec.n_batch == B
        want = full.attention(layer)[torch.arange(B), :, pos].unsqueeze(-2)
        assert torch.allclose(rows.readout_rows(layer, pos), want, atol=ATOL)
    with pytest.raises(ValueError, match="query_rows"):
        capture(lm, enc, query_rows=pos[:1])


@pytest.mark.parametrize("causal,with_mask", [(False, True), (True, True), (True, False), (False, False)])
def test_dense_attention_rows_equal_the_rows_of_the_full_matrix(causal, with_mask):
    g = torch.Generator().manual_seed(0)
    B, H, n, d = 3, 2, 9, 4
    q, k, v = (torch.randn(B, H, n, d, generator=g) for _ in range(3))
    mask = None
    if with_mask:
        allowed = torch.ones(B, 1, n, n, dtype=torch.bool)
        allowed[1, ..., -3:] = False
        if causal:
            allowed &= torch.ones(n, n, dtype=torch.bool).tril()
        mask = torch.zeros(B, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    call = AttentionCall(query=q, key=k, value=v, mask=mask, scaling=d ** -0.5, causal=causal)
    dense = get_backend("dense")
    full = dense.attention(call)[1]
    pos = torch.tensor([0, 5, n - 1])
    got = dense.attention_rows(call, pos)
    assert got.shape == (B, H, 1, n)
    assert torch.allclose(got, full[torch.arange(B), :, pos].unsqueeze(-2), atol=ATOL)
    # the generic route (any backend): the full matrix, sliced
    generic = type(dense).__mro__[1].attention_rows(dense, call, pos)
    assert torch.equal(generic, full[torch.arange(B), :, pos].unsqueeze(-2))


@pytest.mark.parametrize("arch,pad", [("bert", "right"), ("llama", "left")])
def test_methods_on_the_reduced_capture_equal_the_full_route(arch, pad):
    lm = tiny_model(arch)
    enc = _inputs(arch, pad)
    methods = [get_method("raw_attention"), get_method("effective_attention"), get_method("norm"),
               get_method("norm", head_reduction="max"), get_method("rollout"), get_method("flow"),
               get_method("rollout", layers="all"), get_method("effective_attention", absolute=True)]
    needs = set().union(*(m.capture_needs(lm) for m in methods))
    assert "full" not in needs and "head_means" in needs
    (readout,) = {x[1] for x in needs if isinstance(x, tuple)}
    B, n = enc["input_ids"].shape
    pos = readout_positions(readout, enc["attention_mask"], B, n)
    full = capture(lm, enc)
    target = torch.tensor(full.predicted)
    red = capture(lm, enc, query_rows=pos, head_means=True, full_examples=[])
    want, _, _ = explain_batch(lm, enc, methods, target=target, capture_result=full)
    got, _, _ = explain_batch(lm, enc, methods, target=target, capture_result=red)
    for name in want:
        for a, b in zip(got[name], want[name]):
            assert np.allclose(a, b, atol=ATOL), name
    # a method that needs the full matrices says so, and refuses a capture without them clearly
    assert get_method("raw_attention", readout="mean").capture_needs(lm) == {"full"}
    assert get_method("rollout", head_reduction="max").capture_needs(lm) == {"full"}
    assert get_method("attention_distribution").capture_needs(lm) == {"full"}
    with pytest.raises(ValueError, match="full_examples"):
        explain_batch(lm, enc, [get_method("raw_attention", readout="mean")], target=target, capture_result=red)


def _analyze_batch(lm, mode, texts, store, methods):
    from attnexplain.runs.batch import analyze_batch, build_setup

    setup = build_setup(lm, methods, seed=0, bins=(0.1, 0.5), removal="delete", head_ablation=False,
                        max_length=40, label_mapping=None, label_names=None, precision="float32")
    setup = dataclasses.replace(setup, capture_mode=mode)
    ids = [f"e{i}" for i in range(len(texts))]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return analyze_batch(setup, ids, list(range(len(texts))), texts, None, None, None, store)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_analyze_needed_capture_equals_the_full_route(arch):
    lm = tiny_model(arch)
    texts = ["a gorgeous witty film", "dull", "the plot is thin but the actors are very good", "ok ok"]
    methods = ["raw_attention", "effective_attention", "norm", "rollout", "random"]
    t_full, a_full = _analyze_batch(lm, "full", texts, {0, 2}, methods)
    t_need, a_need = _analyze_batch(lm, "needed", texts, {0, 2}, methods)
    for table in t_full:
        for col, want in t_full[table].items():
            got = t_need[table][col]
            if isinstance(want, np.ndarray) and want.dtype.kind == "f":
                assert np.allclose(got, want, atol=ATOL, equal_nan=True), (table, col)
            elif col == "probs":
                assert all(np.allclose(g, w, atol=ATOL) for g, w in zip(got, want))
            else:
                assert list(got) == list(want), (table, col)
    heads = t_need["heads"]
    assert set(heads["metric"]) == {"entropy", "eff_raw_jsd", "eff_raw_l1"}
    assert not np.isnan(heads["value"]).any()
    assert set(a_full) == set(a_need) == {"e0", "e2"}
    for eid in a_full:
        assert set(a_full[eid]) == set(a_need[eid]) >= {"raw", "effective", "norm", "rollout"}
        for k, want in a_full[eid].items():
            if k == "tokens":
                assert list(a_need[eid][k]) == list(want)
            else:
                assert np.allclose(a_need[eid][k].astype(np.float64), want.astype(np.float64), atol=ATOL), (eid, k)


def test_analyze_takes_the_full_route_when_a_method_needs_whole_matrices(monkeypatch):
    import attnexplain.runs.batch as batch_mod

    seen = []
    real = batch_mod._head_stats

    def spy(*a, **k):
        seen.append("full")
        return real(*a, **k)

    monkeypatch.setattr(batch_mod, "_head_stats", spy)
    lm = tiny_model("bert")
    _analyze_batch(lm, "needed", ["a good film", "bad"], {0}, ["raw_attention", "rollout"])
    assert seen == []
    _analyze_batch(lm, "needed", ["a good film", "bad"], {0}, ["raw_attention", "attention_distribution"])
    assert seen == ["full"]


def test_analyze_head_statistics_against_an_independent_computation_per_example():
    """entropy of the readout row, and JSD / L1 between raw and effective attention averaged over
    the real query rows, recomputed with scipy on each example captured alone (no padding)."""
    from scipy.special import rel_entr
    from scipy.stats import entropy

    def jensen_shannon(p, q):
        m = 0.5 * (p + q)
        return 0.5 * rel_entr(p, m).sum() + 0.5 * rel_entr(q, m).sum()

    lm = tiny_model("bert")
    texts = ["a gorgeous witty film", "dull", "the plot is thin but the actors are very good"]
    tables, _ = _analyze_batch(lm, "needed", texts, set(), ["raw_attention", "effective_attention"])
    heads = tables["heads"]
    got = {(e, int(l), int(h), m): float(v) for e, l, h, m, v in
           zip(heads["example_id"], heads["layer"], heads["head"], heads["metric"], heads["value"])}
    for i, text in enumerate(texts):
        cap = capture(lm, [text], max_length=40)  # analyze_batch above truncates to 40 tokens
        for layer in cap.layers():
            A = cap.attention(layer)[0].double().numpy()  # (H, n, n)
            E = cap.effective_attention(layer)[0].double().numpy()
            for h in range(A.shape[0]):
                P = np.abs(E[h]) / np.abs(E[h]).sum(-1, keepdims=True)
                want = {"entropy": entropy(A[h, 0]),
                        "eff_raw_jsd": np.mean([jensen_shannon(A[h, r], P[r]) for r in range(A.shape[1])]),
                        "eff_raw_l1": np.mean(np.abs(A[h] - E[h]).sum(-1))}
                for metric, w in want.items():
                    assert got[(f"e{i}", layer, h, metric)] == pytest.approx(w, abs=2e-5), (i, layer, h, metric)

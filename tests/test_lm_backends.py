"""Efficient attention inside a causal LM (CAB's causal self-attention pattern on a Llama with
grouped-query attention and rotary positions): the dense backend equals the model's own eager
attention, each backend's dense setting equals dense, no backend puts weight on future keys, and
``compare-backends --task lm`` reports the perplexity an explicit loop computes. Tiny random models."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import attnexplain
from attnexplain.backends.spec import BackendSpecError, parse_backend, resolve_memory
from attnexplain.capturing.attention import running_backend
from attnexplain.errors import ArgumentError, UnsupportedPatternError
from attnexplain.models import InputError
from attnexplain.runs.lm_backend_comparison import compare_backends_lm, text_windows
from attnexplain.testing import tiny_generator, tiny_model

#: a setting of each causal backend that approximates (small clusters / window / few features)
APPROXIMATE = {
    "smyrf": {"n_hashes": 2, "q_cluster_size": 3, "k_cluster_size": 3},
    "lsh": {"n_hashes": 2, "bucket_size": 3},
    "local": {"window": 2},
    "performer": {"n_features": 8},
    "linear": {},
}
#: the setting that is dense attention, where the mechanism has one (one cluster, a full window)
DENSE_SETTING = {
    "smyrf": {"q_cluster_size": 64, "k_cluster_size": 64},
    "lsh": {"bucket_size": 64},
    "local": {"window": 64},
}
#: backends whose query i reads nothing of the tokens after i (SMYRF and LSH cluster the whole window:
#: a later token can move an earlier query's cluster, though it never gets weight itself)
STRICTLY_CAUSAL = {"dense", "local", "performer", "linear"}
TEXTS = ["the quick brown fox jumps over the lazy dog and runs far away",
         "a stitch in time saves nine, they said, and nobody listened at all"]


def _batch(lm, texts=("the cat sat on the warm mat", "a dog ran")):
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(list(texts), padding=True, return_tensors="pt")
    assert int(enc["attention_mask"][1, 0]) == 0  # left-padded
    return {k: enc[k] for k in ("input_ids", "attention_mask")}


def _logits(lm, batch):
    with torch.no_grad():
        return lm.model(**batch).logits


def test_dense_backend_equals_the_models_own_eager_attention():
    lm = tiny_generator("llama")  # GQA: 4 query heads, 2 key/value heads; rotary positions
    batch = _batch(lm)
    eager = copy.deepcopy(lm.model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        ref = eager(**batch, output_attentions=True)
    with running_backend(lm, "dense"):
        got = _logits(lm, batch)
        cap = attnexplain.capture(lm, batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], ref.logits[real], atol=1e-5, rtol=0)
    for layer in range(lm.num_layers):
        for i in range(2):
            q = real[i]
            torch.testing.assert_close(cap.attention(layer)[i][:, q][:, :, q], ref.attentions[layer][i][:, q][:, :, q],
                                       atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(DENSE_SETTING))
def test_causal_backend_at_its_dense_setting_equals_dense_in_the_model(name):
    lm = tiny_generator("llama")
    batch = _batch(lm)
    with running_backend(lm, "dense"):
        ref = _logits(lm, batch)
    with running_backend(lm, name, **DENSE_SETTING[name]):
        got = _logits(lm, batch)
        cap = attnexplain.capture(lm, batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], ref[real], atol=1e-5, rtol=0)
    with running_backend(lm, "dense"):
        cap_ref = attnexplain.capture(lm, batch)
    for layer in range(lm.num_layers):  # real query rows (padded queries: zero rows in clustered backends)
        for i in range(2):
            q = real[i]
            torch.testing.assert_close(cap.attention(layer)[i][:, q], cap_ref.attention(layer)[i][:, q], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(APPROXIMATE))
def test_no_weight_on_future_keys_inside_the_model(name):
    lm = tiny_generator("llama")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (2, 12), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with running_backend(lm, name, **APPROXIMATE[name]):
        cap = attnexplain.capture(lm, batch)
        logits = _logits(lm, batch)
        later = ids.clone()
        later[:, 7:] = torch.randint(5, 100, (2, 5), generator=g)  # other tokens after position 6
        logits_later = _logits(lm, {"input_ids": later, "attention_mask": batch["attention_mask"]})
    future = torch.ones(12, 12, dtype=torch.bool).triu(1)
    for layer in range(lm.num_layers):
        A = cap.attention(layer)
        assert float(A[..., future].abs().max()) == 0.0
        rows = A.sum(-1)
        assert float((rows - 1).abs().max()) < 1e-5 or name in {"smyrf", "lsh"}  # clustered rows may hold nothing
    assert not torch.allclose(logits[:, 7:], logits_later[:, 7:])  # the change is visible after it
    if name in STRICTLY_CAUSAL:
        torch.testing.assert_close(logits[:, :7], logits_later[:, :7], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(APPROXIMATE))
def test_gradient_explanations_through_each_causal_backend_are_finite(name):
    """Gradient x input through an efficient backend inside the LM: a clustered backend has query rows
    with no visible key in some round (their cluster's keys all lie in the future); their log Z = -inf
    must not put log(0) or logaddexp(-inf, -inf) into the backward pass (that made every gradient x
    input score through SMYRF and LSH NaN in compare-backends on SmolLM2)."""
    from attnexplain.methods import explain_batch

    lm = tiny_generator("llama")
    ids = torch.randint(5, 40, (1, 24), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with running_backend(lm, name, **APPROXIMATE[name]):
        scores, _, _ = explain_batch(lm, batch, ["gradient_x_input"])
    s = np.asarray(scores["gradient_x_input"][0], dtype=np.float64)
    assert s.shape == (24,) and np.isfinite(s).all() and np.abs(s).sum() > 0


def test_nystrom_refuses_a_causal_lm():
    lm = tiny_generator("llama")
    with running_backend(lm, "nystrom"), pytest.raises(UnsupportedPatternError, match="causal"):
        _logits(lm, _batch(lm))
    with pytest.raises(UnsupportedPatternError, match="nystrom"):
        compare_backends_lm(lm, TEXTS, ["nystrom"], lengths=(8,), n_explain=0, progress=False)


def test_dense_perplexity_equals_the_models_own_loss():
    lm = tiny_generator("llama")
    cmp = compare_backends_lm(lm, TEXTS * 3, ["dense", "local:window=64", "local:window=1"], lengths=(8, 16, 32),
                              n_tokens=64, n_explain=2, progress=False)
    p = cmp.perplexity
    eager = copy.deepcopy(lm.model)
    eager.set_attn_implementation("eager")
    for L in (8, 16, 32):
        win, _ = text_windows(lm, TEXTS * 3, L, 64)
        assert win.shape == (64 // L, L)
        with torch.no_grad():  # HF's own shifted cross-entropy, mean over the windows' predicted tokens
            loss = eager(input_ids=win, labels=win).loss
        rows = p[p["length"] == L].set_index("backend")
        assert rows.loc["dense (reference)", "n_predicted"] == win.shape[0] * (L - 1)
        np.testing.assert_allclose(rows.loc["dense (reference)", "ppl"], float(torch.exp(loss)), rtol=1e-5)
        for label in ("dense", "local(window=64)"):  # dense itself, and a window covering every key
            assert rows.loc[label, "ppl_ratio"] == pytest.approx(1.0, abs=1e-5)
            assert rows.loc[label, "agreement"] == 1.0
        assert rows.loc["local(window=1)", "agreement"] < 1.0
        assert rows.loc["local(window=1)", "memory"] < 0.5
    e = cmp.explanations.set_index(["backend", "method"])
    for m in ("raw_attention", "gradient_x_input"):
        assert e.loc[("dense", m), "tau"] == pytest.approx(1.0)
        assert e.loc[("local(window=64)", m), "tau"] == pytest.approx(1.0)
    assert e.loc[("local(window=1)", "raw_attention"), "tau"] < 1.0
    table = cmp.to_markdown()
    assert "ppl@32" in table and "tau raw_attention" in table and "local(window=1)" in table


def test_text_windows_are_the_joined_token_stream():
    lm = tiny_generator("llama")
    win, used = text_windows(lm, TEXTS, 10, 85)
    tok = lm.tokenizer
    stream = [i for text in (TEXTS[0], "\n\n", TEXTS[1]) for i in tok([text], add_special_tokens=False)["input_ids"][0]]
    assert len(TEXTS[0]) < 80 and used == 2 and win.shape == (8, 10)  # 85 // 10 windows, from both texts
    assert win.flatten().tolist() == stream[:80]
    with pytest.raises(ArgumentError, match="fewer than one window"):
        text_windows(lm, ["ab"], 10, 10)


def test_bad_lm_comparisons_fail_clearly():
    lm = tiny_generator("llama")
    with pytest.raises(InputError, match="causal language model"):
        compare_backends_lm(tiny_model("bert"), TEXTS, ["linear"], lengths=(8,), progress=False)
    with pytest.raises(ArgumentError, match="context"):
        compare_backends_lm(lm, TEXTS, ["linear"], lengths=(8, 4096), progress=False)
    with pytest.raises(BackendSpecError, match="warp"):
        compare_backends_lm(lm, TEXTS, ["warp"], lengths=(8,), progress=False)


@pytest.mark.parametrize("spec, key", [("local:memory=0.25", "window"), ("lsh:memory=0.25", "bucket_size"),
                                       ("performer:memory=0.25", "n_features"), ("smyrf:memory=0.25", "q_cluster_size")])
@pytest.mark.parametrize("n", [64, 200])
def test_memory_budget_picks_the_closest_size(spec, key, n):
    cfg = parse_backend(spec)
    got = resolve_memory(cfg, n, causal=True)
    assert "memory" not in got.options and key in got.options

    def share(size):  # the share of the n x n scores at each size, written out here
        if cfg.name == "local":  # causal band: query i sees min(i, w) + 1 keys
            return sum(min(i, size) + 1 for i in range(n)) / n**2
        if cfg.name == "performer":
            return 2 * n * size / n**2
        c = min(max(-(-n // size), 1), n)  # smyrf / lsh, 2 rounds: C clusters of ceil(n / C) queries and keys
        return 1.0 if c == 1 else 2 * c * (-(-n // c)) ** 2 / n**2

    sizes = range(n) if cfg.name == "local" else range(1, n + 1)
    best = min(abs(share(s) - 0.25) for s in sizes)
    assert abs(share(got.options[key]) - 0.25) == pytest.approx(best, abs=1e-12)
    assert resolve_memory(parse_backend("linear"), n) == parse_backend("linear")


def test_compare_backends_lm_command(monkeypatch, tmp_path):
    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.cli.main import app

    monkeypatch.setenv("ATTNEXPLAIN_FSYNC", "0")
    monkeypatch.setattr(analyze_mod, "load_model_for_run", lambda name, **kw: tiny_generator("llama"))
    data = tmp_path / "texts.csv"
    data.write_text("text,label\n" + "".join(f'"{t}",0\n' for t in TEXTS * 3))
    out = tmp_path / "cb"
    runner = CliRunner()
    res = runner.invoke(app, ["compare-backends", "--task", "lm", "--out", str(out), "--model", "tiny", "--dataset",
                              str(data), "--split", "all", "--lengths", "8,16", "--n-tokens", "32",
                              "--explain-prompts", "1", "--backend", "local:memory=0.25", "--backend", "linear"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "ppl@16" in (out / "table.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "lm" and manifest["meta"]["lengths"] == [8, 16]
    assert {r["length"] for r in manifest["perplexity"]} == {8, 16}
    bad = runner.invoke(app, ["compare-backends", "--task", "lm", "--out", str(out), "--model", "tiny", "--dataset",
                              str(data), "--split", "all", "--lengths", "8,x"])
    assert bad.exit_code == 2 and "--lengths" in bad.stderr
    bad = runner.invoke(app, ["compare-backends", "--task", "lm", "--out", str(out), "--model", "tiny", "--dataset",
                              str(data), "--split", "all", "--lengths", "8", "--backend", "nystrom"])
    assert bad.exit_code == 2 and "nystrom" in bad.stderr

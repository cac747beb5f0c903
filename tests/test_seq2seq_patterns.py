"""Efficient backends swapped into one attention pattern at a time (compare-backends per CAB
pattern) of an encoder-decoder and of the learned-query set decoder, the per-site routing behind
it (backend_at_sites), and the tiny trained encoder-decoder with its digit tasks. Tiny random
models except for one 2-step training run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import kendalltau
from typer.testing import CliRunner

from attnexplain.capturing import backend_at_sites, capture
from attnexplain.capturing.attention import running_backend
from attnexplain.runs.pattern_comparison import compare_patterns_seq2seq, model_patterns
from attnexplain.testing import tiny_generator

SOURCES = ["3 1 4 1 5", "9 2 6", "5 3 5 8 9 7 9", "2 7"]
TARGETS = ["5 1 4 1 3", "6 2 9", "9 7 9 8 5 3 5", "7 2"]


@pytest.fixture(scope="module")
def bart():
    return tiny_generator("bart", seed=3)


def _batch(lm, sources=SOURCES, targets=TARGETS):
    enc = lm.tokenize(sources)
    tgt = [lm.tokenizer([t], add_special_tokens=False)["input_ids"][0] for t in targets]
    n = max(len(t) for t in tgt)
    start = lm.model.config.decoder_start_token_id
    dec = torch.full((len(tgt), n + 1), lm.tokenizer.pad_token_id)
    dec[:, 0] = start
    for i, t in enumerate(tgt):
        dec[i, 1 : len(t) + 1] = torch.tensor(t)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "decoder_input_ids": dec}, tgt


def test_model_patterns_of_an_encoder_decoder(bart):
    pats = model_patterns(bart)
    assert pats == {"noncausal_self": ["encoder.0.self", "encoder.1.self"],
                    "causal_self": ["decoder.0.self", "decoder.1.self"],
                    "noncausal_cross": ["decoder.0.cross", "decoder.1.cross"]}


def test_backend_at_sites_swaps_only_the_chosen_sites(bart):
    batch, _ = _batch(bart)
    with running_backend(bart, "dense"):
        ref = capture(bart, batch)
        with backend_at_sites(bart, "local", ["decoder.0.cross", "decoder.1.cross"], window=1) as keys:
            alt = capture(bart, batch)
        after = capture(bart, batch)
    assert keys == ["decoder.0.cross", "decoder.1.cross"]
    # the encoder does not see the swap: identical
    for l in (0, 1):
        assert torch.equal(ref.attention(l, stack="encoder"), alt.attention(l, stack="encoder"))
    # the cross rows are banded (|i + m - n - j| <= 1, local attention's cross alignment) and differ from dense
    a = alt.attention(0, stack="decoder", kind="cross")
    n, m = a.shape[-2:]
    i = torch.arange(n)[:, None]
    j = torch.arange(m)[None]
    outside = (i + (m - n) - j).abs() > 1
    assert a[..., outside].abs().max() == 0
    assert not torch.allclose(a, ref.attention(0, stack="decoder", kind="cross"))
    # the decoder outputs move (its cross-attention changed); leaving the block restores dense exactly
    assert not torch.allclose(alt.logits, ref.logits)
    assert torch.equal(after.logits, ref.logits)
    with pytest.raises(ValueError, match="decoder.0.cross"):
        with backend_at_sites(bart, "dense", ["decoder.7.cross"]):
            pass
    with pytest.raises(ValueError, match="no attention site"):
        with backend_at_sites(bart, "dense", lambda s: s.kind == "diagonal"):
            pass


@pytest.fixture(scope="module")
def comparison(bart):
    return compare_patterns_seq2seq(bart, SOURCES, TARGETS, ["dense", "local:window=1", "nystrom:n_landmarks=2"],
                                    batch_size=3, progress=False)


def test_table_has_a_row_per_backend_and_pattern_and_names_refusals(comparison):
    s = comparison.summary
    assert s.iloc[0]["backend"] == "dense (reference)"
    body = s.iloc[1:]
    assert len(body) == 3 * 3
    assert set(zip(body["name"], body["pattern"])) == {(b, p) for b in ("dense", "local", "nystrom")
                                                      for p in ("noncausal_self", "causal_self", "noncausal_cross")}
    refused = body[body["status"].str.startswith("refused")]
    assert list(zip(refused["name"], refused["pattern"])) == [("nystrom", "causal_self")]
    why = refused.iloc[0]["status"]
    assert "causal" in why and "nystrom" in why.lower()
    assert math.isnan(refused.iloc[0]["agreement"]) and refused.iloc[0]["n_examples"] == 0
    assert (body[~body["status"].str.startswith("refused")]["status"] == "ok").all()
    md = comparison.to_markdown()
    assert "refused: " in md and "next-token agreement" in md and "| nystrom(n_landmarks=2) | causal_self |" in md


def test_dense_backend_agrees_exactly(comparison):
    dense = comparison.summary[comparison.summary["name"] == "dense"]
    dense = dense[dense["backend"] == "dense"]
    assert len(dense) == 3
    assert (dense["agreement"] == 1.0).all()
    assert (dense["mean_tvd"] == 0.0).all() and (dense["jsd"] == 0.0).all()
    for col in ("tau_cross_raw", "tau_cross_effective", "tau_self_raw"):
        assert (dense[col] == 1.0).all(), col
    ref_acc = comparison.summary.iloc[0]["token_accuracy"]
    assert (dense["token_accuracy"] == ref_acc).all()
    # an approximating backend does move something
    local = comparison.summary[comparison.summary["name"] == "local"].set_index("pattern")
    assert local.loc["noncausal_cross", "jsd"] > 1e-3


def test_agreement_and_tau_match_an_independent_computation(bart, comparison):
    """Next-token agreement, token accuracy and the cross tau of one row, from plain forwards and scipy."""
    batch, gold = _batch(bart)
    with running_backend(bart, "dense"):
        ref = capture(bart, batch)
        with backend_at_sites(bart, "local", lambda s: s.kind == "cross", window=1):
            alt = capture(bart, batch)
    per = comparison.per_example
    rows = per[(per["backend"] == "local(window=1)") & (per["pattern"] == "noncausal_cross")].set_index("example")
    for i, g in enumerate(gold):
        t = len(g)
        p_ref = ref.logits[i, :t].argmax(-1).numpy()
        p_alt = alt.logits[i, :t].argmax(-1).numpy()
        assert rows.loc[i, "agree"] == pytest.approx(float((p_ref == p_alt).mean()), abs=1e-12)
        assert rows.loc[i, "token_accuracy"] == pytest.approx(float((p_alt == np.asarray(g)).mean()), abs=1e-12)
        # source tokens without the special ones (the character tokenizer's <s> at position 0)
        real = batch["attention_mask"][i].bool().nonzero().flatten()[1:]
        a = torch.stack([ref.attention(l, stack="decoder", kind="cross") for l in (0, 1)]).mean(0).mean(1)[i]
        b = torch.stack([alt.attention(l, stack="decoder", kind="cross") for l in (0, 1)]).mean(0).mean(1)[i]
        taus = [kendalltau(a[r, real].numpy(), b[r, real].numpy()).statistic for r in range(t)]
        taus = [x for x in taus if not np.isnan(x)]
        assert rows.loc[i, "tau_cross_raw"] == pytest.approx(float(np.mean(taus)), abs=1e-9)


def test_compare_patterns_rejects_bad_requests(bart):
    from attnexplain.errors import ArgumentError
    from attnexplain.testing import tiny_model

    with pytest.raises(ArgumentError, match="causal_cross"):
        compare_patterns_seq2seq(bart, SOURCES, TARGETS, ["dense"], patterns=["causal_cross"], progress=False)
    with pytest.raises(ArgumentError, match="encoder-decoder"):
        compare_patterns_seq2seq(tiny_model("bert"), SOURCES, TARGETS, ["dense"], progress=False)
    with pytest.raises(ArgumentError, match="targets"):
        compare_patterns_seq2seq(bart, SOURCES, TARGETS[:2], ["dense"], progress=False)


def test_compare_backends_command_on_an_encoder_decoder(bart, tmp_path, monkeypatch):
    import attnexplain.runs.analyze as analyze
    from attnexplain.cli.main import app

    monkeypatch.setattr(analyze, "load_model_for_run", lambda name, **k: bart)
    runner = CliRunner()
    out = tmp_path / "cb"
    res = runner.invoke(app, ["compare-backends", "--out", str(out), "--model", "tiny-bart", "--dataset",
                              "seq2seq-reverse", "--limit", "3", "--batch-size", "3", "--backend", "dense",
                              "--backend", "nystrom:n_landmarks=2", "--pattern", "causal_self,noncausal_cross"])
    assert res.exit_code == 0, res.output
    table = (out / "table.md").read_text()
    assert "| dense | causal_self | ok |" in table and "| nystrom(n_landmarks=2) | causal_self | refused: " in table
    assert "noncausal_self" not in table.split("Legend")[0]
    assert "Not in this model: causal_cross" in table
    per = pd.read_parquet(out / "per_example.parquet")
    assert set(per["pattern"]) == {"causal_self", "noncausal_cross"} and per["id"].str.startswith("reverse-").all()
    man = json.loads((out / "manifest.json").read_text())
    assert man["n_examples"] == 3 and "nystrom(n_landmarks=2) / causal_self" in man["meta"]["refused"]
    bad = runner.invoke(app, ["compare-backends", "--out", str(out), "--model", "tiny-bart", "--dataset", "bbc-news"])
    assert bad.exit_code == 2 and "--dataset" in bad.stderr and "seq2seq-reverse" in bad.stderr
    bad = runner.invoke(app, ["compare-backends", "--out", str(out), "--model", "tiny-bart", "--dataset",
                              "seq2seq-copy", "--pattern", "diagonal"])
    assert bad.exit_code == 2 and "diagonal" in bad.stderr and "Traceback" not in bad.output


def test_pattern_option_is_refused_for_a_classifier(tmp_path, monkeypatch):
    import attnexplain.runs.analyze as analyze
    from attnexplain.cli.main import app
    from attnexplain.testing import tiny_model

    monkeypatch.setattr(analyze, "load_model_for_run", lambda name, **k: tiny_model("bert"))
    data = tmp_path / "d.csv"
    data.write_text("text,label\nhello world,a\nanother example,b\n")
    res = CliRunner().invoke(app, ["compare-backends", "--out", str(tmp_path / "o"), "--model", "tiny", "--dataset",
                                   str(data), "--split", "all", "--pattern", "causal_self"])
    assert res.exit_code == 2 and "--pattern" in res.stderr and "encoder-decoder" in res.stderr


# -- the digit tasks and the tiny trained encoder-decoder -------------------------------------------


def test_digit_tasks_are_deterministic_and_aligned():
    from attnexplain.data.seq2seq import SEQ2SEQ_TASKS, generate_seq2seq, gold_alignment, load_seq2seq

    for task in SEQ2SEQ_TASKS:
        rows = generate_seq2seq(task, n=300)
        assert rows == generate_seq2seq(task, n=300)
        for r in rows:
            src, tgt = r["source"].split(), r["target"].split()
            assert 4 <= len(src) <= 10 and len(tgt) == len(src) and all(d.isdigit() and len(d) == 1 for d in src)
            align = gold_alignment(task, r["source"])
            assert sorted(align) == list(range(len(src)))
            assert [src[k] for k in align] == tgt
        parts = {s: set(load_seq2seq(task, split=s, n=300).sources) for s in ("train", "validation", "test")}
        assert not (parts["train"] & parts["test"]) and not (parts["train"] & parts["validation"])
    r = generate_seq2seq("seq2seq-reverse", n=5)[0]
    assert r["target"].split() == r["source"].split()[::-1]
    assert generate_seq2seq("seq2seq-sort", n=5)[0]["target"].split() == sorted(generate_seq2seq("seq2seq-sort", n=5)[0]["source"].split())


def test_prepare_seq2seq_trains_saves_and_loads(tmp_path):
    from attnexplain.models import load_model
    from attnexplain.training import prepare_seq2seq

    path = prepare_seq2seq("seq2seq-copy", epochs=1, limit=128, out_dir=tmp_path / "tiny-seq2seq-copy", threads=1)
    record = json.loads((path / "attnexplain_training.json").read_text())
    assert record["dataset"] == "seq2seq-copy" and record["steps"] == 2 and record["limit"] == 128
    assert 0.0 <= record["validation_token_accuracy"] <= 1.0 and 0.0 <= record["validation_exact_match"] <= 1.0
    lm = load_model(str(path))
    assert lm.task == "seq2seq" and lm.backend == "attnexplain_dense"
    assert list(model_patterns(lm)) == ["noncausal_self", "causal_self", "noncausal_cross"]
    # one token per digit; the encoder reads [CLS] digits [SEP]
    ids = lm.tokenizer("3 1 4")["input_ids"]
    assert lm.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "3", "1", "4", "[SEP]"]


# -- the learned-query set decoder (noncausal cross / self only) ----------------------------------


@pytest.fixture(scope="module")
def set_decoder():
    from attnexplain.set_decoder import SetDecoder, SetDecoderConfig, load_scenes

    torch.manual_seed(0)
    model = SetDecoder(SetDecoderConfig(num_queries=6, d_model=32, n_heads=4, n_encoder_layers=1, n_decoder_layers=2))
    return model.eval(), load_scenes("test", limit=10)


@pytest.fixture(scope="module")
def set_comparison(set_decoder):
    from attnexplain.runs.set_decoder_backends import compare_set_decoder_backends

    model, scenes = set_decoder
    return compare_set_decoder_backends(model, scenes, ["dense", "local:window=1", "nystrom:n_landmarks=2"],
                                        batch_size=4, progress=False)


def test_set_decoder_table_rows_and_dense_identity(set_decoder, set_comparison):
    s = set_comparison.summary
    assert s.iloc[0]["backend"] == "dense (reference)"
    body = s.iloc[1:]
    assert set(zip(body["name"], body["kind"])) == {(b, k) for b in ("dense", "local", "nystrom")
                                                   for k in ("cross", "query_self", "encoder")}
    assert (body["status"] == "ok").all()  # every pattern here is noncausal: nothing is refused
    assert set(body["pattern"]) == {"noncausal_cross (queries x individuals)", "noncausal_self (queries x queries)",
                                    "noncausal_self (individuals x individuals)"}
    dense = body[body["backend"] == "dense"]
    for col in ("activity_agreement", "member_agreement", "groups_identical", "tau_cross_raw", "tau_cross_effective"):
        assert (dense[col] == 1.0).all(), col
    assert (dense["mean_tvd"] == 0.0).all() and (dense["jsd"] == 0.0).all()
    assert (dense["f1"] == s.iloc[0]["f1"]).all()
    local = body[body["name"] == "local"].set_index("kind")
    assert local.loc["cross", "jsd"] > 1e-3
    md = set_comparison.to_markdown()
    assert "activity agreement" in md and "| local(window=1) | noncausal_cross (queries x individuals) | ok |" in md
    model, _ = set_decoder
    assert set(model.backends().values()) == {"dense"}  # the model's own backends are back


def test_set_decoder_agreement_matches_the_models_own_backend_switch(set_decoder, set_comparison):
    """Activity / member agreement of local attention in the cross-attention, recomputed with the model's own
    set_backend (not the routing the comparison uses) and plain forwards."""
    from attnexplain.set_decoder import collate

    model, scenes = set_decoder
    per = set_comparison.per_example
    rows = per[(per["backend"] == "local(window=1)") & (per["kind"] == "cross")].set_index("scene")
    for start in range(0, len(scenes), 4):  # the comparison's batches (local attention's band follows the padded width)
        part = scenes[start : start + 4]
        batch = collate(part)
        with torch.no_grad():
            ref = model(**batch.inputs())
            model.set_backend("local", kinds=("cross",), window=1)
            try:
                alt = model(**batch.inputs())
            finally:
                model.set_backend("dense")
        for b, scene in enumerate(part):
            act = (ref.activity_logits[b].argmax(-1) == alt.activity_logits[b].argmax(-1)).double().mean()
            mem = ((ref.member_probs[b, :, : scene.n] > 0.5) == (alt.member_probs[b, :, : scene.n] > 0.5)).double().mean()
            assert rows.loc[scene.id, "activity_agreement"] == pytest.approx(float(act), abs=1e-12)
            assert rows.loc[scene.id, "member_agreement"] == pytest.approx(float(mem), abs=1e-12)


def test_compare_backends_command_on_a_set_decoder(set_decoder, tmp_path):
    from attnexplain.cli.main import app
    from attnexplain.set_decoder import save_set_decoder

    model, _ = set_decoder
    folder = save_set_decoder(model, tmp_path / "sd")
    runner = CliRunner()
    out = tmp_path / "cb"
    res = runner.invoke(app, ["compare-backends", "--out", str(out), "--model", str(folder), "--dataset", "social-scenes",
                              "--limit", "5", "--backend", "dense", "--backend", "local:window=1",
                              "--pattern", "noncausal_cross"])
    assert res.exit_code == 0, res.output
    table = (out / "table.md").read_text()
    assert "| dense | noncausal_cross (queries x individuals) | ok | 1.000 | 1.000 | 1.000 |" in table
    assert "| local(window=1) | noncausal_cross (queries x individuals) | ok |" in table
    assert "noncausal_self" not in table.split("Legend")[0] and "no causal attention" in table
    per = pd.read_parquet(out / "per_example.parquet")
    assert len(per) == 2 * 5 and set(per["kind"]) == {"cross"}
    man = json.loads((out / "manifest.json").read_text())
    assert man["n_examples"] == 5 and man["dataset"] == "social-scenes" and man["machine"]["cpus"] >= 1
    bad = runner.invoke(app, ["compare-backends", "--out", str(out), "--model", str(folder), "--dataset",
                              "social-scenes", "--pattern", "causal_self"])
    assert bad.exit_code == 2 and "no causal_self attention" in bad.stderr
    bad = runner.invoke(app, ["compare-backends", "--out", str(out), "--model", str(folder)])
    assert bad.exit_code == 2 and "--dataset social-scenes" in bad.stderr

"""Run folders: the analyze engine on a tiny model, resume after a crash, corrupt shards, --force,
shards + merge, report, compare, path safety and listing of broken runs."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from attnexplain.runs import (
    TABLES,
    RunFormatError,
    RunMismatchError,
    RunPathError,
    RunWriter,
    list_runs,
    merge_runs,
    open_run,
    resolve_run,
    table_schema,
)
from attnexplain.runs.analyze import _contiguous_batches, analyze
from attnexplain.runs.settings import DEFAULT_BINS, AnalyzeError, parse_shard, resolve_label_map
from attnexplain.testing import tiny_model

N = 12
BATCH = 3
METHODS = ["raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "random"]
WORDS = "good bad film great awful plot not very witty dull boring".split()


def _lm():
    lm = tiny_model("bert")
    lm.model.config.id2label = {0: "neg", 1: "pos"}
    lm.labels = ["neg", "pos"]
    return lm


@pytest.fixture(scope="module", autouse=True)
def _no_fsync():
    """fsync only matters for power loss; skipping it keeps these tests fast on a busy disk."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNEXPLAIN_FSYNC", "0")
        yield


@pytest.fixture(scope="module")
def lm():
    return _lm()


def _write_csv(path: Path, n: int = N, labels=("neg", "pos"), seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = [{"id": f"ex{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))),
             "label": rng.choice(labels)} for i in range(n)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write_csv(tmp_path_factory.mktemp("data") / "tiny.csv")


def _run(lm, data, out, **kw):
    opts = dict(model=lm, dataset=str(data), split="all", batch_size=BATCH, store_attention=3, progress=False,
                log=lambda m: None, methods=METHODS)
    opts.update(kw)
    return analyze(out, **opts)


@pytest.fixture(scope="module")
def reference(lm, data, tmp_path_factory):
    """An uninterrupted run."""
    return _run(lm, data, tmp_path_factory.mktemp("ref") / "run")


def _tables(run):
    out = {}
    for t in TABLES:
        df = getattr(run, t)()
        keys = {"examples": ["index"], "tokens": ["example_id", "method", "position"],
                "faithfulness": ["example_id", "method", "metric", "k"], "heads": ["example_id", "metric", "layer", "head"]}[t]
        out[t] = df.sort_values(keys, kind="stable").reset_index(drop=True)
    return out


def _assert_same(run_a, run_b, exact: bool = True):
    ta, tb = _tables(run_a), _tables(run_b)
    for t in TABLES:
        if exact:
            pd.testing.assert_frame_equal(ta[t], tb[t], check_exact=True)
        else:
            pd.testing.assert_frame_equal(ta[t], tb[t], check_exact=False, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# the tables follow docs/run-format.md
# --------------------------------------------------------------------------------------------


def test_analyze_writes_the_run_format(reference, data, lm):
    run = open_run(reference.path)
    assert run.is_complete and run.status == "complete"
    m = run.manifest
    for key in ("format_version", "attnexplain_version", "created", "command", "model", "model_source", "task", "labels",
                "dataset", "split", "limit", "shard", "backend", "backend_options", "methods", "faithfulness", "seed",
                "max_length", "store_attention", "versions", "status", "n_examples"):
        assert key in m, key
    assert m["format_version"] == 1 and m["methods"] == METHODS and m["n_examples"] == N
    from attnexplain.ablations.eraser import resolve_precision

    assert m["faithfulness"] == {"bins": list(DEFAULT_BINS), "removal": "delete", "precision": resolve_precision("auto")}
    assert {"python", "torch", "transformers"} <= set(m["versions"])
    assert not (run.path / "shards").exists()
    assert not (run.path / ".lock").exists()  # a finished run folder keeps no lock file

    for t in TABLES:  # the exact schema
        assert pq.read_schema(run.path / f"{t}.parquet").remove_metadata() == table_schema(t, METHODS)

    ex = run.examples()
    src = pd.read_csv(data)
    assert ex["example_id"].tolist() == src["id"].tolist()  # each example exactly once, in order
    assert ex["index"].tolist() == list(range(N))
    assert ex["label_name"].tolist() == src["label"].tolist()
    assert (ex["label"] == ex["label_name"].map({"neg": 0, "pos": 1})).all()
    probs = np.stack(ex["probs"].to_numpy())
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (ex["pred"] == probs.argmax(1)).all()
    assert (ex["correct"] == (ex["pred"] == ex["label"])).all()
    for meth in METHODS:
        assert ex[f"comp_aopc__{meth}"].notna().all() and ex[f"suff_aopc__{meth}"].notna().all()

    tok = run.tokens()
    assert len(tok) == ex["n_tokens"].sum() * len(METHODS)
    assert not tok.duplicated(["example_id", "method", "position"]).any()
    one = run.tokens("ex3", method="raw_attention")
    assert one["position"].tolist() == list(range(int(ex.loc[3, "n_tokens"])))
    assert one["token"].iloc[0] == "[CLS]"

    faith = run.faithfulness()
    assert len(faith) == N * len(METHODS) * 2 * len(DEFAULT_BINS)
    # AOPC in the examples table = mean over the bins
    comp = faith[(faith.method == "norm") & (faith.metric == "comprehensiveness")].groupby("example_id")["value"].mean()
    np.testing.assert_allclose(ex.set_index("example_id").loc[comp.index, "comp_aopc__norm"], comp, atol=1e-6)

    heads = run.heads()
    L, H = lm.num_layers, lm.num_heads
    assert len(heads) == N * L * H * 3
    assert set(heads["metric"]) == {"entropy", "eff_raw_jsd", "eff_raw_l1"}
    ent = heads[heads.metric == "entropy"]["value"]
    assert (ent >= 0).all() and (ent <= np.log(64) + 1e-4).all()
    jsd = heads[heads.metric == "eff_raw_jsd"]["value"]
    assert (jsd >= 0).all() and (jsd <= np.log(2) + 1e-6).all()

    assert run.stored_examples() == ["ex0", "ex1", "ex2"]
    arr = run.attention("ex1")
    n = int(ex.loc[1, "n_tokens"])
    assert arr["raw"].shape == (L, H, n, n) and arr["raw"].dtype == np.float16
    assert arr["effective"].shape == (L, H, n, n) and arr["effective"].dtype == np.float16
    assert arr["norm"].shape == (L, n, n) and arr["rollout"].shape == (L, n, n)
    # the stored norm array is norm-based attention of the example captured alone (T = V W_O)
    from attnexplain.capturing import capture
    from attnexplain.functional import norm_based_attention

    alone = capture(lm, [ex.loc[1, "text"]])
    ref = torch.stack([norm_based_attention(alone.attention(l), alone.value_transforms(l)).summed[0]
                       for l in alone.layers()])
    np.testing.assert_allclose(arr["norm"].astype(np.float32), ref.numpy(), rtol=2e-3, atol=1e-4)
    assert list(arr["tokens"]) == one["token"].tolist() or len(arr["tokens"]) == n
    np.testing.assert_allclose(arr["raw"].astype(np.float32).sum(-1), 1, atol=2e-3)
    assert run.attention("ex10") is None


def test_analyze_head_ablation_and_mask_removal(lm, data, tmp_path):
    run = _run(lm, data, tmp_path / "abl", limit=6, head_ablation=True, removal="mask",
               methods=["raw_attention", "random"], store_attention=0)
    heads = run.heads(metric="ablation_tvd")
    assert len(heads) == 6 * lm.num_layers * lm.num_heads
    assert ((heads["value"] >= 0) & (heads["value"] <= 1)).all() and heads["value"].max() > 0
    assert run.manifest["faithfulness"]["removal"] == "mask" and run.stored_examples() == []


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------


class Crash(Exception):
    pass


def _crash_after(k: int):
    def hook(number, start, size):
        if number == k - 1:
            raise Crash(f"simulated crash after batch {k}")
    return hook


def test_resume_after_crash_is_exactly_once_and_identical(lm, data, tmp_path, reference):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        _run(lm, data, out, on_batch=_crash_after(2))
    partial = open_run(out)
    assert partial.status == "running" and not partial.is_complete
    assert partial.n_done == 2 * BATCH
    assert partial.examples()["example_id"].tolist() == [f"ex{i}" for i in range(2 * BATCH)]
    assert partial.stored_examples() == ["ex0", "ex1", "ex2"]
    messages = []
    run = _run(lm, data, out, log=messages.append)
    assert any("resuming" in m and f"{2 * BATCH} of {N}" in m for m in messages)
    assert run.is_complete
    _assert_same(run, reference)
    # a third run is a no-op
    messages.clear()
    again = _run(lm, data, out, log=messages.append)
    assert any("already complete" in m for m in messages)
    assert not any("leftover" in m for m in messages)  # nothing was left over: say nothing of it
    _assert_same(again, reference)
    # a run killed after marking itself complete, before removing its shards: they are removed, and said so
    (out / "shards").mkdir()
    (out / "shards" / "tokens-00000.parquet").write_bytes(b"left")
    messages.clear()
    _run(lm, data, out, log=messages.append)
    assert not (out / "shards").exists() and any("removed the leftover shards/" in m for m in messages)


def test_a_report_written_on_an_unfinished_run_is_refreshed_when_the_run_completes(lm, data, tmp_path):
    from attnexplain.runs.report import report

    out = tmp_path / "run"
    with pytest.raises(Crash):
        _run(lm, data, out, on_batch=_crash_after(2))
    report(out, figures=False, n_resamples=50)
    summary = out / "report" / "summary.md"
    assert f"{2 * BATCH} examples of {N} (run not complete)" in summary.read_text()
    messages = []
    run = _run(lm, data, out, log=messages.append)
    assert run.is_complete and any("refreshed" in m for m in messages)
    text = summary.read_text()
    assert "run not complete" not in text and f"; {N} examples" in text


@pytest.mark.parametrize("damage", ["truncate-tokens", "truncate-examples", "fewer-rows-heads", "missing-faithfulness"])
def test_corrupt_shard_is_detected_deleted_and_redone(lm, data, tmp_path, reference, damage):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        _run(lm, data, out, on_batch=_crash_after(3))
    shards = out / "shards"
    start = BATCH  # the second batch
    if damage == "truncate-tokens":
        p = shards / f"tokens-{start:05d}.parquet"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif damage == "truncate-examples":
        p = shards / f"examples-{start:05d}.parquet"
        p.write_bytes(p.read_bytes()[:-20])
    elif damage == "fewer-rows-heads":
        p = shards / f"heads-{start:05d}.parquet"
        t = pq.read_table(p)
        pq.write_table(t.slice(0, t.num_rows - 5), p)
    else:
        (shards / f"faithfulness-{start:05d}.parquet").unlink()
    messages = []
    run = _run(lm, data, out, log=messages.append)
    assert any("corrupt shard" in m and f"batch {start}" in m for m in messages), messages
    assert any(f"{2 * BATCH} of {N} examples done" in m for m in messages), messages
    _assert_same(run, reference)


def test_leftover_temp_and_uncommitted_files_are_cleaned(lm, data, tmp_path, reference):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        _run(lm, data, out, on_batch=_crash_after(1))
    shards = out / "shards"
    # an interrupted write: a temp file and a table shard without its examples shard (commit record)
    (shards / ".tokens-00006.parquet.tmp-123").write_bytes(b"partial")
    shutil.copy(shards / "heads-00000.parquet", shards / "heads-00006.parquet")
    run = _run(lm, data, out)
    assert not list(out.glob("**/*.tmp-*"))
    _assert_same(run, reference)


def test_resume_with_another_batch_size(lm, data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        _run(lm, data, out, on_batch=_crash_after(1))
    run = _run(lm, data, out, batch_size=4)
    assert run.examples()["example_id"].tolist() == [f"ex{i}" for i in range(N)]


# --------------------------------------------------------------------------------------------
# --out holding another run, --force
# --------------------------------------------------------------------------------------------


def test_out_with_a_different_run_is_refused_unless_force(lm, data, tmp_path):
    out = tmp_path / "run"
    _run(lm, data, out, limit=6, methods=["raw_attention"])
    with pytest.raises(RunMismatchError, match=r"limit: 6 \(in the folder\) vs 8"):
        _run(lm, data, out, limit=8, methods=["raw_attention"])
    with pytest.raises(RunMismatchError, match="methods"):
        _run(lm, data, out, limit=6, methods=["raw_attention", "random"])
    with pytest.raises(RunMismatchError, match="removal"):
        _run(lm, data, out, limit=6, methods=["raw_attention"], removal="mask")
    assert open_run(out).n_done == 6  # untouched
    run = _run(lm, data, out, limit=8, methods=["raw_attention"], force=True)
    assert run.n_done == 8 and run.manifest["limit"] == 8


def test_a_folder_that_is_not_a_run_is_never_deleted(lm, data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(RunMismatchError, match="not a run folder"):
            _run(lm, data, out, limit=4, force=force)
    assert (out / "precious.txt").read_text() == "keep me"


# --------------------------------------------------------------------------------------------
# shards and merge
# --------------------------------------------------------------------------------------------


def test_shards_merged_equal_the_unsharded_run(lm, data, tmp_path, reference):
    a = _run(lm, data, tmp_path / "s0", shard="0/2")
    b = _run(lm, data, tmp_path / "s1", shard="1/2")
    assert a.manifest["shard"] == "0/2" and a.n_done == N // 2 and b.examples()["index"].min() == N // 2
    merged = merge_runs([b.path, a.path], tmp_path / "all", log=lambda m: None)
    assert merged.is_complete and merged.manifest["shard"] is None and merged.n_done == N
    _assert_same(merged, reference)
    # arrays of the first 3 examples of each shard are kept
    assert merged.stored_examples() == ["ex0", "ex1", "ex2", "ex6", "ex7", "ex8"]
    with pytest.raises(RunMismatchError, match="not empty"):
        merge_runs([a.path, b.path], tmp_path / "all")
    merge_runs([a.path, b.path], tmp_path / "all", force=True)


def test_merge_refuses_duplicates_incompatible_and_unfinished_runs(lm, data, tmp_path):
    a = _run(lm, data, tmp_path / "s0", shard="0/4", methods=["raw_attention"])
    with pytest.raises(ValueError, match="twice"):
        merge_runs([a.path, a.path], tmp_path / "dup")
    other = _run(lm, data, tmp_path / "s1", shard="1/4", methods=["random"])
    with pytest.raises(RunMismatchError, match="methods"):
        merge_runs([a.path, other.path], tmp_path / "bad")
    with pytest.raises(Crash):
        _run(lm, data, tmp_path / "s2", shard="2/4", methods=["raw_attention"], batch_size=1, on_batch=_crash_after(1))
    with pytest.raises(RunMismatchError, match="not complete"):
        merge_runs([a.path, tmp_path / "s2"], tmp_path / "bad2")


def test_parse_shard_and_batches():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(AnalyzeError):
            parse_shard(bad)
    assert _contiguous_batches([0, 1, 2, 3, 4, 7, 8, 20], 2) == [[0, 1], [2, 3], [4], [7, 8], [20]]


# --------------------------------------------------------------------------------------------
# report and compare
# --------------------------------------------------------------------------------------------


def test_report_writes_summary_and_figures(reference, tmp_path):
    from attnexplain.runs.report import report

    res = report(reference, out=tmp_path / "rep", n_resamples=200)
    names = {f.name for f in res.files}
    assert {"summary.md", "aopc.html", "curves.html", "agreement.html", "heads.html"} <= names
    assert (tmp_path / "rep" / "plotly.min.js").is_file()
    text = (tmp_path / "rep" / "summary.md").read_text()
    assert "accuracy" in text and "AOPC" in text and "Kendall" in text
    assert f"perturbed forwards in {reference.manifest['faithfulness']['precision']}" in text
    for m in METHODS:
        assert m in text
    acc = reference.examples()["correct"].mean()
    assert res.accuracy == pytest.approx(acc)
    assert list(res.aopc["method"]) == METHODS
    assert (res.aopc["comp_low"] <= res.aopc["comp"] + 1e-9).all() and (res.aopc["comp"] <= res.aopc["comp_high"] + 1e-9).all()
    np.testing.assert_allclose(np.diag(res.agreement.to_numpy()), 1.0)
    assert res.curves.groupby(["method", "metric"]).size().eq(len(DEFAULT_BINS)).all()


def test_kendall_matrix_matches_scipy():
    from attnexplain.metrics import kendall_tau
    from attnexplain.metrics import kendall_tau_matrix as _kendall_matrix

    rng = np.random.default_rng(0)
    x = rng.random((3, 15))
    x[1, :6] = 0.5  # ties
    tau = _kendall_matrix(x)
    for i in range(3):
        for j in range(3):
            assert tau[i, j] == pytest.approx(kendall_tau(x[i], x[j]))


def test_compare_two_runs(lm, data, reference, tmp_path):
    from attnexplain.runs.report import compare

    other = _run(lm, data, tmp_path / "mask", removal="mask", store_attention=0)
    res = compare(reference, other, out=tmp_path / "cmp", n_resamples=200)
    assert (tmp_path / "cmp" / "compare.md").is_file() and (tmp_path / "cmp" / "compare.html").is_file()
    assert "prediction agreement: **1.000**" in res.text
    # same model and backend: the token scores are identical, only the faithfulness removal differs
    np.testing.assert_allclose(res.table["rank_tau"], 1.0)
    assert (res.table["n_tau"] == N).all()
    # default location: inside run A
    res2 = compare(reference.path, other.path, n_resamples=50)
    assert res2.files[0] == reference.path / f"compare-{other.name}" / "compare.md"


# --------------------------------------------------------------------------------------------
# path safety and listing
# --------------------------------------------------------------------------------------------


def test_resolve_run_refuses_names_that_escape(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    outside = tmp_path / "secret"
    outside.mkdir()
    (runs / "link-out").symlink_to(outside)
    (runs / "ok").mkdir()
    (runs / "link-in").symlink_to(runs / "ok")
    assert resolve_run(runs, "ok") == (runs / "ok").resolve()
    assert resolve_run(runs, "new-run") == (runs / "new-run").resolve()
    assert resolve_run(runs, "link-in") == (runs / "ok").resolve()
    for bad in ("..", "../secret", "ok/../../secret", "/etc", str(outside), "link-out", "link-out/x", "", ".", "~/x",
                "a\x00b"):
        with pytest.raises(RunPathError):
            resolve_run(runs, bad)


def test_list_runs_skips_non_runs_and_reports_broken_ones(reference, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(reference.path, runs / "good")
    (runs / "not-a-run").mkdir()
    (runs / "not-a-run" / "notes.txt").write_text("hi")
    (runs / "old").mkdir()
    (runs / "old" / "manifest.json").write_text(json.dumps({"format_version": 0, "model": "m"}))
    shutil.copytree(reference.path, runs / "missing-table")
    (runs / "missing-table" / "tokens.parquet").unlink()
    (runs / "garbage").mkdir()
    (runs / "garbage" / "manifest.json").write_text("{not json")
    (runs / "no-manifest").mkdir()
    (runs / "no-manifest" / "shards").mkdir()
    found = {r.name: r for r in list_runs(runs)}
    assert set(found) == {"good", "old", "missing-table", "garbage", "no-manifest"}
    assert found["good"].ok and found["good"].status == "complete"
    assert "format version 0" in str(found["old"].error) and "older format" in str(found["old"].error)
    assert "tokens.parquet" in str(found["missing-table"].error)
    assert "unreadable manifest" in str(found["garbage"].error)
    assert "no manifest.json" in str(found["no-manifest"].error)
    for name in ("old", "missing-table", "garbage", "no-manifest"):
        assert found[name].status == "broken"
        with pytest.raises(RunFormatError):
            found[name].examples()
    assert [r.name for r in list_runs(runs, include_broken=False)] == ["good"]
    with pytest.raises(RunFormatError):
        open_run(runs / "old")


def test_writer_reader_roundtrip_with_unsafe_ids(tmp_path):
    man = {"model": "m", "dataset": "d", "methods": ["a"], "n_examples": 2}
    ids = ["../../etc/passwd", "a b/c"]
    tables = {
        "examples": {"example_id": ids, "index": [0, 1], "text": ["x", "y"], "label": [None, 1], "label_name": [None, "p"],
                     "pred": [0, 1], "pred_label": ["n", "p"], "probs": [[1.0, 0.0], [0.0, 1.0]], "correct": [None, True],
                     "n_tokens": [1, 1], "truncated": [False, False], "comp_aopc__a": [0.1, 0.2], "suff_aopc__a": [0.0, 0.1]},
        "tokens": {"example_id": ids, "position": [0, 0], "token": ["x", "y"], "method": ["a", "a"], "score": [1.0, 2.0]},
        "faithfulness": {"example_id": ids, "method": ["a", "a"], "metric": ["sufficiency"] * 2, "k": [0.5, 0.5], "value": [0, 0]},
        "heads": {"example_id": ids, "layer": [0, 0], "head": [0, 0], "metric": ["entropy"] * 2, "value": [1.0, 1.0]},
    }
    with RunWriter(tmp_path / "r", man) as w:
        w.write_batch(0, tables, attention={ids[0]: {"raw": np.ones((1, 1, 1, 1), np.float16)}})
        w.finalize()
    run = open_run(tmp_path / "r")
    assert not (tmp_path / "etc").exists()
    assert [p.parent for p in (tmp_path / "r").rglob("*.npz")] == [tmp_path / "r" / "attention"]
    assert run.stored_examples() == [ids[0]]
    assert run.attention(ids[0])["raw"].shape == (1, 1, 1, 1)
    ex = run.examples()
    assert ex["label"].isna().tolist() == [True, False] and ex["correct"].tolist()[1] is True


# --------------------------------------------------------------------------------------------
# labels and bad input
# --------------------------------------------------------------------------------------------


def test_label_names_that_do_not_match_the_model(lm, tmp_path):
    data = _write_csv(tmp_path / "rt.csv", n=8, labels=("fresh", "rotten"))
    with pytest.raises(AnalyzeError, match=r"fresh, rotten.*neg, pos.*--label-map"):
        _run(lm, data, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    run = _run(lm, data, tmp_path / "y", label_map={"fresh": "pos", "rotten": "neg"}, methods=["random"])
    ex = run.examples()
    assert (ex["label"] == ex["label_name"].map({"fresh": 1, "rotten": 0})).all()
    assert run.manifest["label_map"] == {"fresh": "pos", "rotten": "neg"}


def test_resolve_label_map_rules():
    assert resolve_label_map(["Neg", "pos"], ["neg", "pos"]) == [0, 1]
    assert resolve_label_map(["pos"], ["neg", "pos"]) == [1]
    assert resolve_label_map(["a", "b"], ["LABEL_0", "LABEL_1"]) == [0, 1]
    assert resolve_label_map(None, ["neg", "pos"], max_label=1) == [0, 1]
    assert resolve_label_map(None, ["neg", "pos"]) is None
    with pytest.raises(AnalyzeError, match="only 2 classes"):
        resolve_label_map(None, ["neg", "pos"], max_label=2)
    with pytest.raises(AnalyzeError, match="does not say where"):
        resolve_label_map(["a", "b"], ["neg", "pos"], {"a": "neg"})
    with pytest.raises(AnalyzeError, match="not a model label"):
        resolve_label_map(["a", "b"], ["neg", "pos"], {"a": "neg", "b": "maybe"})
    with pytest.raises(AnalyzeError, match="not a classifier"):
        resolve_label_map(["a"], None)


def test_bad_input_gives_clear_errors(lm, tmp_path):
    from attnexplain.data import DatasetError

    with pytest.raises(DatasetError, match="not found"):
        _run(lm, tmp_path / "missing.csv", tmp_path / "a")
    data = _write_csv(tmp_path / "d.csv", n=6)
    with pytest.raises(DatasetError, match="columns found: id, text, label"):
        _run(lm, data, tmp_path / "a", text_column="sentence")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n ,pos\n,neg\n")
    with pytest.raises(DatasetError, match="empty"):
        _run(lm, empty, tmp_path / "a")
    with pytest.raises(AnalyzeError, match="unknown method"):
        _run(lm, data, tmp_path / "a", methods=["nope"])
    with pytest.raises(AnalyzeError, match="removal"):
        _run(lm, data, tmp_path / "a", removal="zero")
    with pytest.raises(AnalyzeError, match="--faithfulness-precision must be one of float32, bfloat16, auto"):
        _run(lm, data, tmp_path / "a", faithfulness_precision="half")
    assert not (tmp_path / "a").exists()

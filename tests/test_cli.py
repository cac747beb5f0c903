"""The command line: --help of every command, one analyze/report/compare/merge smoke test through
typer's CliRunner (on a tiny random model), and clear errors (exit 2, message on stderr, no traceback)."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from typer.testing import CliRunner

from attnexplain.cli.args import parse_key_values, parse_list
from attnexplain.cli.main import app

COMMANDS = ["prepare", "explain", "analyze", "merge", "report", "compare", "dashboard", "datasets", "methods", "backends", "compare-backends", "train-efficient"]

runner = CliRunner()


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("ATTNEXPLAIN_FSYNC", "0")
    monkeypatch.delenv("ATTNEXPLAIN_DEBUG", raising=False)


@pytest.fixture
def tiny(monkeypatch):
    """Any --model name loads a tiny random BERT classifier with labels neg/pos."""
    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.testing import tiny_model

    def fake(name, *, backend="dense", backend_options=None):
        lm = tiny_model("bert")
        lm.model.config.id2label = {0: "neg", 1: "pos"}
        lm.labels = ["neg", "pos"]
        if backend != "dense" or backend_options:
            lm.use_backend(backend, **dict(backend_options or {}))
        return lm

    monkeypatch.setattr(analyze_mod, "load_model_for_run", fake)


@pytest.fixture
def data(tmp_path):
    rng = random.Random(1)
    words = "good bad film great awful not very dull".split()
    rows = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(2, 7))), "label": rng.choice(["neg", "pos"])}
            for _ in range(6)]
    path = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _user_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for n in needles:
        assert n in result.stderr, (n, result.stderr)
    return result


@pytest.mark.parametrize("cmd", [None, *COMMANDS])
def test_help_of_every_command(cmd):
    res = _ok(runner.invoke(app, ([cmd] if cmd else []) + ["--help"]))
    assert "Usage" in res.output


def test_compare_backends_command(tiny, data, tmp_path):
    out = tmp_path / "cb"
    res = _ok(runner.invoke(app, ["compare-backends", "--out", str(out), "--model", "tiny", "--dataset", str(data),
                                  "--split", "all", "--limit", "4",
                                  "--backend", "smyrf:n_hashes=1,q_cluster_size=64,k_cluster_size=64",
                                  "--backend", "local:window=1"]))
    table = (out / "table.md").read_text()
    assert "smyrf" in table and "local" in table
    per = pd.read_parquet(out / "per_example.parquet")
    assert len(per) >= 4
    assert "smyrf" in res.output
    # one SMYRF cluster covering the whole input is dense attention: the command reports full agreement
    from attnexplain.runs.backend_comparison import compare_backends
    from attnexplain.testing import tiny_model

    summary = compare_backends(tiny_model("bert"), ["good film", "not very dull at all"],
                               ["smyrf:n_hashes=1,q_cluster_size=64,k_cluster_size=64", "local:window=1"],
                               progress=False).summary.set_index("name")
    assert summary.loc["smyrf", "agreement"] == 1.0 and summary.loc["smyrf", "jsd_mean"] < 1e-6
    assert summary.loc["local", "jsd_mean"] > 1e-3  # a 3-key window is not dense attention
    _user_error(runner.invoke(app, ["compare-backends", "--out", str(out), "--model", "tiny", "--dataset", str(data),
                                    "--split", "all", "--backend", "warp:speed=9"]), "warp")


def test_listings():
    from attnexplain.data import list_datasets
    from attnexplain.data.seq2seq import SEQ2SEQ_TASKS

    listed = _ok(runner.invoke(app, ["datasets"])).output
    for name in [*list_datasets(), *SEQ2SEQ_TASKS, "social-scenes"]:  # every name a --dataset accepts
        assert f"\n{name} " in listed or listed.startswith(f"{name} "), name
    out = _ok(runner.invoke(app, ["methods"])).output
    assert "* effective_attention" in out and "  integrated_gradients" in out
    listed = _ok(runner.invoke(app, ["backends"])).output
    assert "smyrf" in listed and "``" not in listed


def test_analyze_report_compare_merge_smoke(tiny, data, tmp_path):
    common = ["--dataset", str(data), "--split", "all", "--model", "tiny", "--batch-size", "2", "--no-progress",
              "--methods", "raw_attention,effective_attention", "--methods", "random", "--store-attention", "2"]
    res = _ok(runner.invoke(app, ["analyze", *common, "--out", str(tmp_path / "runs" / "a")]))
    assert "complete, 6 examples" in res.stdout and "Next: attnexplain report" in res.stdout
    from attnexplain.runs import open_run

    run = open_run(tmp_path / "runs" / "a")
    assert run.methods == ["raw_attention", "effective_attention", "random"]
    assert run.manifest["command"][0] == "attnexplain"  # argv (pytest's under CliRunner)
    assert len(run.stored_examples()) == 2

    res = _ok(runner.invoke(app, ["report", str(tmp_path / "runs" / "a"), "--n-resamples", "100"]))
    assert "# Report: a" in res.stdout and (tmp_path / "runs" / "a" / "report" / "summary.md").is_file()
    # the same command again: nothing to do, and the report is already there (no "Next: report" hint)
    res = _ok(runner.invoke(app, ["analyze", *common, "--out", str(tmp_path / "runs" / "a")]))
    assert "Report: " in res.stdout and "summary.md" in res.stdout and "Next:" not in res.stdout

    for i in range(2):
        _ok(runner.invoke(app, ["analyze", *common, "--shard", f"{i}/2", "--out", str(tmp_path / "runs" / f"s{i}")]))
    res = _ok(runner.invoke(app, ["merge", str(tmp_path / "runs" / "s0"), str(tmp_path / "runs" / "s1"),
                                  "--out", str(tmp_path / "runs" / "all")]))
    assert "6 examples" in res.stdout

    res = _ok(runner.invoke(app, ["compare", str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "all"),
                                  "--n-resamples", "100"]))
    assert "prediction agreement: **1.000**" in res.stdout
    assert (tmp_path / "runs" / "a" / "compare-all" / "compare.md").is_file()


def test_explain_prints_prediction_tokens_and_note(tiny):
    res = _ok(runner.invoke(app, ["explain", "a very good film indeed", "--model", "tiny", "--top", "3"]))
    out = res.stdout
    assert "prediction:" in out and "neg" in out and "pos" in out
    for m in ("raw_attention", "effective_attention", "norm", "rollout", "random"):
        assert m in out
    assert "Effective vs raw attention" in out and "d_h = 8" in out
    # a signed method's list is ranked by its signed score, as the header says
    import re

    out = _ok(runner.invoke(app, ["explain", "a very good film indeed", "--model", "tiny", "--top", "8",
                                  "--methods", "gradient_x_input"])).stdout
    assert "signed scores ranked as signed" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("gradient_x_input"))
    values = [float(v) for v in re.findall(r"\(([-+0-9.e]+)\)", row)]
    assert len(values) == 8 and values == sorted(values, reverse=True)


def test_user_errors_are_clear(tiny, data, tmp_path):
    out = str(tmp_path / "r")
    _user_error(runner.invoke(app, ["analyze", "--dataset", str(tmp_path / "nope.csv"), "--out", out]), "file not found")
    _user_error(runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--text-column", "review",
                                    "--out", out]), "columns found: text, label")
    _user_error(runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--methods", "magic",
                                    "--out", out]), "unknown method", "available")
    _user_error(runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--backend-option", "oops",
                                    "--out", out]), "key=value")
    _user_error(runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--backend", "warp",
                                    "--out", out]), "unknown attention backend 'warp'")
    _user_error(runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--shard", "3/2",
                                    "--out", out]), "--shard")
    _user_error(runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--label-map", "neg=neg,pos=maybe",
                                    "--out", out]), "not a model label")
    rt = tmp_path / "rt.csv"
    pd.DataFrame({"text": ["fine", "awful"], "label": ["fresh", "rotten"]}).to_csv(rt, index=False)
    _user_error(runner.invoke(app, ["analyze", "--dataset", str(rt), "--split", "all", "--out", out]),
                "fresh, rotten", "neg, pos", "--label-map")
    _ok(runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--limit", "2", "--methods", "random",
                            "--no-progress", "--out", out]))
    _user_error(runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--limit", "3", "--methods",
                                    "random", "--no-progress", "--out", out]), "holds a different run", "limit", "--force")
    _ok(runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--limit", "3", "--methods", "random",
                            "--no-progress", "--out", out, "--force"]))
    _user_error(runner.invoke(app, ["report", str(tmp_path / "missing")]), "no such run folder")
    _user_error(runner.invoke(app, ["merge", out, out, "--out", str(tmp_path / "m")]), "twice")
    _user_error(runner.invoke(app, ["prepare", "--model", "gpt-17"]), "cannot prepare")


def test_corrupt_shard_on_resume_is_reported(tiny, data, tmp_path, monkeypatch):
    import attnexplain.runs.batch as analyze_mod  # run_batch calls analyze_batch there

    out = tmp_path / "r"
    real = analyze_mod.analyze_batch
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(analyze_mod, "analyze_batch", crashing)
    args = ["analyze", "--dataset", str(data), "--split", "all", "--batch-size", "2", "--methods", "random",
            "--no-progress", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 130 and "run the same command again to resume" in res.stderr
    shard = out / "shards" / "tokens-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:30])
    monkeypatch.setattr(analyze_mod, "analyze_batch", real)
    res = _ok(runner.invoke(app, args))
    assert "corrupt shard: tokens-00002.parquet cannot be read" in res.stderr
    assert "resuming" in res.stderr and "complete, 6 examples" in res.stdout


def test_dashboard_launcher_command(tmp_path):
    res = _ok(runner.invoke(app, ["dashboard", str(tmp_path), "--port", "8600", "--print-command"]))
    cmd = res.stdout
    for part in ("-m streamlit run", "dashboard/streamlit_app.py", "--server.headless true",
                 "--browser.gatherUsageStats false", "--client.toolbarMode minimal", "--server.port 8600",
                 "--server.address 127.0.0.1",
                 f"--runs-dir {tmp_path}"):
        assert part in cmd, part


def test_argument_parsers():
    assert parse_key_values(["n_hashes=4", "seed=1,redraw=true", "name=x"]) == {"n_hashes": 4, "seed": 1, "redraw": True, "name": "x"}
    assert parse_key_values(["a=0.5"], typed=False) == {"a": "0.5"}
    with pytest.raises(ValueError, match="key=value"):
        parse_key_values(["novalue"])
    assert parse_list(["a,b", "c"]) == ["a", "b", "c"] and parse_list(None) is None


@pytest.fixture
def tiny_lm(monkeypatch):
    """Any --model name loads a tiny random Llama language model (character tokenizer)."""
    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.testing import tiny_generator

    monkeypatch.setattr(analyze_mod, "load_model_for_run", lambda name, **kw: tiny_generator("llama"))


def test_explain_a_language_model_token_by_token(tiny_lm):
    res = runner.invoke(app, ["explain", "the cat sat", "--max-new-tokens", "3", "--methods", "raw_attention,gradient_x_input"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "generated:" in out and "step 0" in out and "step 2" in out and "step 3" not in out
    assert "raw_attention" in out and "gradient_x_input" in out and "p=" in out
    forced = runner.invoke(app, ["explain", "the cat", "--continuation", " sat", "--contrast", " ran",
                                 "--methods", "gradient_x_input"])
    assert forced.exit_code == 0, forced.output
    assert "forced:" in forced.output and "(vs " in forced.output


@pytest.mark.parametrize("argv, message", [
    (["--max-new-tokens", "0"], "positive int"),
    (["--max-new-tokens", "500"], "at most"),
    (["--continuation", ""], "no token"),
    (["--target", "1"], "--continuation"),
])
def test_explain_language_model_bad_input(tiny_lm, argv, message):
    res = runner.invoke(app, ["explain", "the cat", *argv])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_explain_generation_options_on_a_classifier_are_refused(tiny):
    res = runner.invoke(app, ["explain", "a fine film", "--contrast", " bad"])
    assert res.exit_code == 2 and "language models" in res.output and "Traceback" not in res.output

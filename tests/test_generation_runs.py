"""``analyze --task generation``: run folders of per-generated-token explanations.

The run's tables are checked against :func:`attnexplain.explain_generation` and
:func:`attnexplain.generation_faithfulness` on each example alone (the run batches left-padded
prompts), resumption after a crash and sharding against an uninterrupted run, ``report`` on the
run, and the dashboard's Explorer page drawing the generation view (AppTest: what the user reads).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import attnexplain
from attnexplain.data import TextDataset
from attnexplain.runs import open_run
from attnexplain.runs.analyze import analyze
from attnexplain.runs.settings import AnalyzeError
from attnexplain.testing import tiny_generator

PROMPTS = ["the cat sat on the", "a dog", "we went to see a", "it rains", "one two three four five"]
METHODS = ["raw_attention", "effective_attention", "rollout", "gradient_x_input", "random"]
N_NEW = 3
BINS = (0.2, 0.5)


def _ds(prompts=PROMPTS) -> TextDataset:
    return TextDataset(ids=[f"p{i}" for i in range(len(prompts))], texts=list(prompts), name="prompts", split="all")


def _analyze(out: Path, lm, **kw):
    args = dict(model=lm, dataset=_ds(), task="generation", max_new_tokens=N_NEW, methods=METHODS, batch_size=3,
                store_attention=2, bins=BINS, progress=False, log=lambda m: None)
    args.update(kw)
    return analyze(out, **args)


@pytest.fixture(scope="module")
def lm():
    return tiny_generator("llama")


@pytest.fixture(scope="module")
def run(lm, tmp_path_factory):
    return _analyze(tmp_path_factory.mktemp("gen") / "run", lm)


def test_run_tables_equal_explain_generation_on_each_example_alone(lm, run):
    ex_t = run.examples().set_index("example_id")
    toks = run.tokens()
    faith = run.faithfulness()
    assert run.manifest["task"] == "generation" and run.manifest["generation"]["max_new_tokens"] == N_NEW
    for i, prompt in enumerate(PROMPTS):
        eid = f"p{i}"
        alone = attnexplain.explain_generation(lm, prompt, METHODS, max_new_tokens=N_NEW)
        g = alone.generation
        steps = g.steps(0)
        row = ex_t.loc[eid]
        assert row["generated_text"] == g.generated_texts[0]
        assert list(row["generated_tokens"]) == [g.generated_tokens[0][t] for t in steps]
        np.testing.assert_allclose(row["step_probs"], g.step_probs[0, steps].numpy(), atol=1e-5)
        assert row["n_tokens"] == alone[METHODS[0]].n_prompt[0] and row["n_generated"] == len(steps)
        mine = toks[toks["example_id"] == eid]
        for m in METHODS:
            ref = alone[m].scores[0]
            part = mine[mine["method"] == m]
            # one row per (step, visible token): prompt + the tokens generated before the step
            assert len(part) == sum(alone[m].n_prompt[0] + t for t in steps)
            got = np.full_like(ref, np.nan)
            got[part["step"].to_numpy(), part["position"].to_numpy()] = part["score"].to_numpy()
            np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4, equal_nan=True, err_msg=f"{eid} {m}")
            assert (part["is_prompt"] == (part["position"] < alone[m].n_prompt[0])).all()
            assert set(part["generated_token"]) <= set(g.generated_tokens[0])
        ref_f = attnexplain.generation_faithfulness(lm, alone, methods=METHODS, random_baseline=False, bins=BINS).table
        f = faith[faith["example_id"] == eid]
        ref_f = ref_f.drop(columns=["k"]).rename(columns={"fraction": "k", "value": "ref"})
        merged = f.merge(ref_f.assign(k=ref_f["k"].astype("float32")),
                         on=["step", "method", "metric", "k"])
        assert len(merged) == len(ref_f) == len(f) > 0
        np.testing.assert_allclose(merged["value"], merged["ref"], atol=1e-5)
        # the examples table's AOPC is the mean over the example's generated tokens
        for m in METHODS:
            per_step = f[(f["method"] == m) & (f["metric"] == "comprehensiveness")].groupby("step")["value"].mean()
            assert row[f"comp_aopc__{m}"] == pytest.approx(per_step.mean(), abs=1e-5)


def test_stored_arrays_hold_each_step_attention_row(lm, run):
    stored = run.stored_examples()
    assert stored == ["p0", "p1"]
    arrays = run.attention("p0")
    alone = attnexplain.generate(lm, PROMPTS[0], N_NEW)
    n_prompt = int(arrays["n_prompt"])
    assert list(arrays["tokens"]) == alone.tokens[0]
    for t in alone.steps(0):
        for layer in alone.layers():
            ref = alone.step_attention(t, layer)[0].numpy()
            r = n_prompt - 1 + t
            np.testing.assert_allclose(arrays["raw"][layer, :, r, : r + 1], ref, atol=2e-3)  # float16 storage


def test_generation_run_resumes_after_interruption_and_shards_merge(lm, run, tmp_path):
    class Crash(RuntimeError):
        pass

    def crash(number, start, size):
        if number == 0:
            raise Crash

    out = tmp_path / "interrupted"
    with pytest.raises(Crash):
        _analyze(out, lm, on_batch=crash)
    part = open_run(out)
    assert part.status == "running" and part.n_done == 3
    assert set(part.tokens()["example_id"]) == {"p0", "p1", "p2"}  # a running run's shards are readable
    resumed = _analyze(out, lm)
    assert resumed.is_complete and resumed.manifest.get("resumed")
    lists = ["probs", "step_probs", "generated_tokens"]
    a, b = resumed.examples(), run.examples()
    pd.testing.assert_frame_equal(a.drop(columns=lists), b.drop(columns=lists), check_exact=False, atol=1e-6)
    for col in lists:
        for x, y in zip(a[col], b[col]):
            assert list(x) == pytest.approx(list(y), abs=1e-6) if col != "generated_tokens" else list(x) == list(y)
    for table in ("tokens", "faithfulness", "heads"):
        pd.testing.assert_frame_equal(getattr(resumed, table)().reset_index(drop=True),
                                      getattr(run, table)().reset_index(drop=True), check_exact=False, atol=1e-6)
    # shards 0/2 and 1/2, merged, hold the same tables
    from attnexplain.runs.merge import merge_runs

    parts = [_analyze(tmp_path / f"s{i}", lm, shard=f"{i}/2") for i in range(2)]
    merged = merge_runs([p.path for p in parts], tmp_path / "merged", log=lambda m: None)
    pd.testing.assert_frame_equal(merged.tokens().reset_index(drop=True), run.tokens().reset_index(drop=True),
                                  check_exact=False, atol=1e-6)


def test_a_different_generation_request_is_not_resumed(lm, run, tmp_path):
    from attnexplain.runs import RunMismatchError

    out = tmp_path / "r"
    _analyze(out, lm, limit=2)
    with pytest.raises(RunMismatchError, match="generation"):
        _analyze(out, lm, limit=2, max_new_tokens=N_NEW + 1)


def test_report_reads_the_generation_run(run, tmp_path):
    from attnexplain.runs.report import report

    res = report(run, out=tmp_path / "report", n_resamples=200)
    assert "- generation:" in res.text and "## Generations (first 10)" in res.text
    ex = run.examples()
    assert ex["generated_text"].iloc[0].strip()[:10] in res.text.replace("\\|", "|")
    assert set(res.aopc["method"]) == set(METHODS) and res.aopc["comp"].notna().all()
    # agreement: per generated token; a method agrees with itself
    assert np.allclose(np.diag(res.agreement.to_numpy()), 1.0)
    assert "accuracy: n/a (a generation run" in res.text and "unlabelled" not in res.text
    # the Heads heading names what the table holds (entropy of the rows predicting each token; no JSD column)
    assert "rows that predict each generated token" in res.text and ("JSD" in res.text) == ("eff_raw_jsd" in set(run.heads()["metric"]))
    assert (tmp_path / "report" / "summary.md").is_file()


def test_generation_runs_refuse_what_does_not_apply(lm, tmp_path):
    from attnexplain.testing import tiny_model

    with pytest.raises(AnalyzeError, match="causal language model"):
        analyze(tmp_path / "a", model=tiny_model("bert"), dataset=_ds(), task="generation", progress=False)
    with pytest.raises(AnalyzeError, match="--max-new-tokens"):
        _analyze(tmp_path / "b", lm, max_new_tokens=0)
    with pytest.raises(AnalyzeError, match="--head-ablation"):
        _analyze(tmp_path / "c", lm, head_ablation=True)
    with pytest.raises(AnalyzeError, match="--task generation"):
        analyze(tmp_path / "d", model=tiny_model("bert"), dataset=_ds(), max_new_tokens=3, progress=False)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_long_texts_are_cut_to_prompts_of_max_length_tokens(lm, tmp_path):
    long = "the news today is that " * 8
    ds = TextDataset(ids=["long"], texts=[long], name="long", split="all")
    r = analyze(tmp_path / "long", model=lm, dataset=ds, task="generation", max_new_tokens=2, max_length=12,
                methods=["raw_attention"], bins=BINS, progress=False, log=lambda m: None)
    row = r.examples().iloc[0]
    assert bool(row["truncated"]) and row["n_tokens"] == 12
    assert long.startswith(row["text"]) and len(row["text"]) < len(long)


# -- the dashboard's Explorer page on a generation run (AppTest) -------------------------------


def _explorer(runs_dir: Path, monkeypatch, **query):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ATTNEXPLAIN_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(Path(attnexplain.__file__).parent / "dashboard" / "streamlit_app.py"), default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("app_pages/explorer.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _all_text(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "title", "header", "subheader"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts).replace("\\", "")


def test_explorer_shows_the_generation_view_of_a_run(lm, run, tmp_path, monkeypatch):
    import shutil

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    shutil.copytree(run.path, runs_dir / "gen")
    at = _explorer(runs_dir, monkeypatch, run="gen", example="p0")
    text = _all_text(at)
    ex = run.examples().set_index("example_id")
    assert "Prompt:" in text and PROMPTS[0] in text
    assert "Generated:" in text and ex.loc["p0", "generated_text"] in text
    assert "Generation run: 3 tokens generated greedily" in text
    steps = at.dataframe[0].value
    # a run stores the probabilities: the log-probability is theirs, the entropy is not stored
    assert list(steps.columns) == ["step", "generated token", "probability", "log-probability"]
    np.testing.assert_allclose(steps["probability"], ex.loc["p0", "step_probs"], atol=1e-6)
    np.testing.assert_allclose(steps["log-probability"], np.log(ex.loc["p0", "step_probs"].astype(float)), atol=1e-6)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 2  # source x generated-token heatmap + the step's attention per head
    heat = charts[0]
    n_gen = int(ex.loc["p0", "n_generated"])
    assert len(heat["data"][0]["y"]) == n_gen  # one row per generated token
    assert heat["data"][0]["colorbar"]["title"]["text"] == METHODS[0]  # the legend names the method
    assert heat["layout"]["yaxis"]["title"]["text"] == "generated token"
    # special tokens and the first token (attention sink) are left out, as the run was analysed
    specials = set(run.manifest["special_tokens"]["tokens"])
    arrays = run.attention("p0")
    shown = [t for j, t in enumerate(arrays["tokens"]) if j > 0 and t not in specials]
    assert len(heat["data"][0]["x"]) == len(shown) and len(shown) >= int(ex.loc["p0", "n_tokens"]) - 1
    # a generated token's row: the tokens visible to it, highest score first
    at.selectbox(key="gen:gen-step").set_value(2).run()
    assert not at.exception
    row = at.dataframe[1].value
    assert list(row.columns) == ["position", "token", "part", METHODS[0]]
    visible = [t for j, t in enumerate(arrays["tokens"][: int(ex.loc["p0", "n_tokens"]) + 2]) if j > 0 and t not in specials]
    assert list(row["token"]) != [] and sorted(row["token"]) == sorted(visible)
    assert set(row["part"]) == {"prompt", "generated"}
    assert (np.diff(row[METHODS[0]].to_numpy()) <= 0).all()
    heads = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert "attention of the row predicting" in heads["layout"]["title"]["text"]
    assert len(heads["data"][0]["y"]) == lm.model.config.num_attention_heads
    at.selectbox(key="gen:gen-method").set_value("gradient_x_input").run()
    assert not at.exception
    heat = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert heat["data"][0]["colorbar"]["title"]["text"] == "gradient_x_input"


def test_explorer_generation_view_without_stored_arrays(lm, run, tmp_path, monkeypatch):
    import shutil

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    shutil.copytree(run.path, runs_dir / "gen")
    at = _explorer(runs_dir, monkeypatch, run="gen")
    at.toggle(key="ex_only_arrays").set_value(False).run()
    at.selectbox(key="ex_pick:gen").set_value("p3").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "were not stored" in _all_text(at) and "Generated:" in _all_text(at)
    assert len(at.get("plotly_chart")) == 1  # the heatmap only


def test_cli_analyze_task_generation_then_report(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.cli.main import app

    monkeypatch.setenv("ATTNEXPLAIN_FSYNC", "0")
    monkeypatch.setattr(analyze_mod, "load_model_for_run", lambda name, **kw: tiny_generator("llama"))
    data = tmp_path / "prompts.csv"
    pd.DataFrame({"text": PROMPTS[:3]}).to_csv(data, index=False)
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["analyze", "--model", "tiny-llama", "--dataset", str(data), "--out", str(out), "--task",
                              "generation", "--max-new-tokens", "2", "--methods", "raw_attention,random", "--no-progress"])
    assert res.exit_code == 0, (res.output, res.exception)
    r = open_run(out)
    assert r.manifest["task"] == "generation" and set(r.tokens()["step"]) <= {0, 1}
    rep = runner.invoke(app, ["report", str(out)])
    assert rep.exit_code == 0, (rep.output, rep.exception)
    assert "generation:" in (out / "report" / "summary.md").read_text()
    bad = runner.invoke(app, ["analyze", "--model", "tiny-llama", "--dataset", str(data), "--out", str(tmp_path / "b"),
                              "--task", "generation", "--max-new-tokens", "0"])
    assert bad.exit_code == 2 and "--max-new-tokens" in bad.stderr and "Traceback" not in bad.output
    assert "--task" in runner.invoke(app, ["analyze", "--help"]).output


@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_an_encoder_decoder_generation_run_equals_each_example_alone_and_report_reads_it(arch, tmp_path):
    """analyze --task generation on a tiny encoder-decoder: the prompt is the source; tokens and
    faithfulness (source tokens removed) equal explain_generation / generation_faithfulness on each
    example alone; the heads table holds the decoder's cross-attention entropy of the step rows
    (computed here from the capture); report reads the run."""
    from attnexplain.runs.report import report

    lm = tiny_generator(arch)
    methods = ["raw_attention", "gradient_x_input", "random"]
    run = _analyze(tmp_path / "run", lm, methods=methods, store_attention=1)
    assert run.manifest["model_task"] == "seq2seq" and run.is_complete
    ex_t = run.examples().set_index("example_id")
    toks, faith, heads = run.tokens(), run.faithfulness(), run.heads()
    for i, prompt in enumerate(PROMPTS):
        eid = f"p{i}"
        alone = attnexplain.explain_generation(lm, prompt, methods, max_new_tokens=N_NEW)
        g = alone.generation
        steps = g.steps(0)
        row = ex_t.loc[eid]
        assert row["generated_text"] == g.generated_texts[0] and row["n_generated"] == len(steps)
        assert row["n_tokens"] == int(g.attention_mask[0].sum())  # the source's tokens
        mine = toks[toks["example_id"] == eid]
        for m in methods:
            ref = alone[m].scores[0]
            part = mine[mine["method"] == m]
            got = np.full_like(ref, np.nan)
            got[part["step"].to_numpy(), part["position"].to_numpy()] = part["score"].to_numpy()
            np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4, equal_nan=True, err_msg=f"{eid} {m}")
        ref_f = attnexplain.generation_faithfulness(lm, alone, methods=methods, random_baseline=False, bins=BINS).table
        f = faith[faith["example_id"] == eid]
        ref_f = ref_f.drop(columns=["k"]).rename(columns={"fraction": "k", "value": "ref"})
        merged = f.merge(ref_f.assign(k=ref_f["k"].astype("float32")), on=["step", "method", "metric", "k"])
        assert len(merged) == len(ref_f) == len(f) > 0
        np.testing.assert_allclose(merged["value"], merged["ref"], atol=1e-5)
        for layer in g.layers(stack="decoder", kind="cross"):
            A = g.attention(layer, stack="decoder", kind="cross")[0].double()  # (H, 1 + N, source)
            rows = A[:, steps]
            want = (-(rows * torch.log(rows.clamp_min(1e-30))).sum(-1)).mean(-1).numpy()
            got = heads[(heads["example_id"] == eid) & (heads["layer"] == layer)].sort_values("head")["value"]
            np.testing.assert_allclose(got.to_numpy(float), want, atol=1e-4)
    assert run.stored_examples() == []  # source and continuation run through different stacks
    res = report(run, out=tmp_path / "report", n_resamples=100)
    assert "## Generations (first 10)" in res.text and set(res.aopc["method"]) == set(methods)
    assert "(the decoder's cross-attention over the source)" in res.text and "JSD" not in res.text

"""compare_backends: dense vs efficient attention on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from attnexplain.runs.backend_comparison import (
    BackendConfig,
    BackendSpecError,
    compare_backends,
    compare_backends_cli,
    parse_backend,
    smyrf_cluster_size,
    smyrf_config_for_share,
)
from attnexplain.testing import tiny_model

TEXTS = ["hello world this is a test", "short", "another somewhat longer text for the model to read"]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("bert")


def _row(cmp, label):
    s = cmp.summary
    return s[s["backend"] == label].iloc[0]


def test_dense_vs_dense_is_identical(lm):
    cmp = compare_backends(lm, TEXTS, ["dense"], labels=[0, 1, 0], progress=False, batch_size=2)
    r = _row(cmp, "dense")
    assert r["agreement"] == 1.0
    assert r["mean_tvd"] == 0.0
    assert r["jsd_mean"] == 0.0
    assert all(r[f"jsd_layer_{l}"] == 0.0 for l in range(2))
    assert r["tau_raw_attention"] == pytest.approx(1.0)
    assert r["tau_effective_attention"] == pytest.approx(1.0)
    assert r["memory"] == 1.0
    ref = _row(cmp, "dense (reference)")
    assert r["accuracy"] == ref["accuracy"]
    assert math.isnan(ref["agreement"])
    # one per-example row per (backend, example), in the order of the texts
    per = cmp.per_example
    assert len(per) == 2 * len(TEXTS)
    assert per[per["backend"] == "dense"]["example"].tolist() == [0, 1, 2]


def test_smyrf_with_one_cluster_equals_dense(lm):
    cmp = compare_backends(lm, TEXTS, [("smyrf", {"n_hashes": 2, "q_cluster_size": 64, "k_cluster_size": 64})],
                           progress=False)
    r = cmp.summary.iloc[1]
    assert r["agreement"] == 1.0
    assert r["mean_tvd"] < 1e-6
    assert r["jsd_mean"] < 1e-9
    assert r["tau_raw_attention"] == pytest.approx(1.0)
    assert r["memory"] == 1.0
    assert "accuracy" not in cmp.summary.columns


def test_small_clusters_move_attention_and_report_memory(lm):
    cmp = compare_backends(lm, TEXTS, ["smyrf:n_hashes=1,q_cluster_size=4,k_cluster_size=4"], progress=False)
    per = cmp.per_example[cmp.per_example["backend"] != "dense (reference)"]
    long = per[per["n_tokens"] > 8]
    assert (long["jsd_mean"] > 1e-3).all()
    assert (long["memory"] < 1.0).all()
    # memory is the backend's own share at each example's length
    from attnexplain.backends import get_backend

    b = get_backend("smyrf", n_hashes=1, q_cluster_size=4, k_cluster_size=4)
    assert np.allclose(per["memory"], [b.memory_fraction(n, n) for n in per["n_tokens"]])


def test_backend_is_switched_back(lm):
    before = lm.backend
    compare_backends(lm, TEXTS[:1], ["smyrf:q_cluster_size=2,k_cluster_size=2"], progress=False)
    assert lm.backend == before

    class Boom(Exception):
        pass

    def bad(*a, **k):
        raise Boom

    import attnexplain.runs.backend_comparison as mod

    orig = mod._layer_jsd
    mod._layer_jsd = bad
    try:
        with pytest.raises(Boom):
            compare_backends(lm, TEXTS[:1], ["smyrf:q_cluster_size=2,k_cluster_size=2"], progress=False)
    finally:
        mod._layer_jsd = orig
    assert lm.backend == before


@pytest.mark.parametrize("spec, match", [
    ("smyrff", "unknown attention backend 'smyrff'.*available: .*smyrf"),
    ("smyrf:n_hash=2", "unknown option.*n_hash.*n_hashes"),
    ("smyrf:n_hashes", "expected key=value"),
    ("smyrf:n_hashes=0", "cannot build backend"),
    ("dense:x=1", "takes no options"),
    ("linear:memory=0.5", "only understood for smyrf"),
    ("smyrf:memory=0.5,q_cluster_size=4", "either memory= or"),
    (("smyrf",), r"\(name, \{options\}\)"),
    ("", "empty"),
])
def test_bad_backend_specs_fail_clearly(spec, match):
    with pytest.raises(BackendSpecError, match=match):
        parse_backend(spec)


def test_bad_spec_fails_before_running(lm, monkeypatch):
    import attnexplain.capturing as cap

    called = []
    monkeypatch.setattr(cap, "capture", lambda *a, **k: called.append(1))
    with pytest.raises(BackendSpecError):
        compare_backends(lm, TEXTS, ["dense", "nope:x=1"], progress=False)
    assert not called


def test_parse_backend_forms():
    a = parse_backend("smyrf:n_hashes=2,q_cluster_size=64,k_cluster_size=64")
    assert a == BackendConfig("smyrf", {"n_hashes": 2, "q_cluster_size": 64, "k_cluster_size": 64})
    assert a.display == "smyrf(n_hashes=2, q_cluster_size=64, k_cluster_size=64)"
    from attnexplain.backends import get_backend

    b = parse_backend(get_backend("local", window=3))
    assert b.name == "local" and b.options["window"] == 3
    assert parse_backend(("dense", {})).display == "dense"


@pytest.mark.parametrize("n, share, n_hashes, expected", [(256, 0.5, 2, 64), (256, 0.25, 2, 32), (128, 0.5, 2, 32),
                                                          (128, 0.25, 2, 16), (512, 0.25, 8, 16)])
def test_smyrf_cluster_size_matches_budget(n, share, n_hashes, expected):
    c = smyrf_cluster_size(n, share, n_hashes=n_hashes)
    assert c == expected
    from attnexplain.backends import get_backend

    got = get_backend("smyrf", n_hashes=n_hashes, q_cluster_size=c, k_cluster_size=c).memory_fraction(n, n)
    assert got == pytest.approx(share)


def test_smyrf_config_for_share_odd_length():
    cfg = smyrf_config_for_share(300, 0.5)
    share = cfg.build().memory_fraction(300, 300)
    assert abs(share - 0.5) < 0.05
    assert "300" in cfg.label
    # a budget that needs one cluster is dense
    assert smyrf_cluster_size(10, 1.0, n_hashes=1) == 10


def test_memory_option_resolves_at_median_length(lm):
    cmp = compare_backends(lm, TEXTS, ["smyrf:memory=0.5"], progress=False)
    cfg = cmp.meta["backends"][0]
    assert cfg["options"]["q_cluster_size"] == smyrf_cluster_size(cmp.meta["median_tokens"], 0.5)
    assert "target 50%" in cfg["label"]


def test_to_markdown(lm):
    cmp = compare_backends(lm, TEXTS, ["dense", "smyrf:q_cluster_size=4,k_cluster_size=4"], labels=[0, 1, 1],
                           progress=False)
    md = cmp.to_markdown(title="t")
    lines = [l for l in md.splitlines() if l.startswith("|")]
    assert len(lines) == 2 + 3  # header, rule, reference + 2 backends
    assert "JSD L0" in lines[0] and "JSD L1" in lines[0] and "tau raw_attention" in lines[0]
    assert "accuracy" in lines[0]


def test_format_markdown_table_digits_sci_and_nan():
    import pandas as pd

    from attnexplain.runs.markdown import format_markdown_table

    df = pd.DataFrame({"name": ["a|b", "c"], "n": [1, 2], "x": [0.12345, float("nan")], "tiny": [1.234e-7, 0.0]})
    lines = format_markdown_table(df, headers={"tiny": "max diff"}, digits=2, sci=["tiny"]).splitlines()
    assert lines[0] == "| name | n | x | max diff |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| a\\|b | 1 | 0.12 | 1.2e-07 |"
    assert lines[3] == "| c | 2 |  | 0.0e+00 |"


def test_cli_writes_outputs(tmp_path, monkeypatch):
    import attnexplain.runs.analyze as analyze

    monkeypatch.setattr(analyze, "load_model_for_run", lambda name, **k: tiny_model("bert"))
    data = tmp_path / "d.csv"
    data.write_text("text,label\nhello world,a\nanother example text,b\nthird one here,a\n")
    out = tmp_path / "out"
    cmp = compare_backends_cli("tiny", str(data), "all", 2, "dense;smyrf:q_cluster_size=4,k_cluster_size=4", out,
                               progress=False)
    assert (out / "table.md").read_text().count("\n|") >= 3
    man = json.loads((out / "manifest.json").read_text())
    assert man["n_examples"] == 2 and man["model"] == "tiny" and "torch" in man["versions"]
    import pandas as pd

    per = pd.read_parquet(out / "per_example.parquet")
    assert set(per["id"]) == {"d-0", "d-1"} or len(set(per["id"])) == 2
    assert len(cmp.summary) == 3


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_fast_effective_scores_match_the_registry_method(arch):
    from attnexplain.capturing import capture
    from attnexplain.runs.backend_comparison import _effective_scores
    from attnexplain.methods import explain_batch

    m = tiny_model(arch)
    batch = m.tokenize(["a fairly long input text that exceeds the head dimension", "short one"])
    cap = capture(m, batch)
    ref = explain_batch(m, batch, ["effective_attention"], capture_result=cap)[0]["effective_attention"]
    fast = _effective_scores(m, cap, batch)
    for a, b in zip(ref, fast):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)
    # and the raw attention differs from effective for the long example (null space not empty)
    raw = explain_batch(m, batch, ["raw_attention"], capture_result=cap)[0]["raw_attention"]
    assert np.abs(raw[0] - fast[0]).max() > 1e-4

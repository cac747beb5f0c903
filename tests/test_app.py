"""Dashboard pages under Streamlit's AppTest (no browser): each page on small run folders.

Two runs are made by the real engine (``attnexplain.runs.analyze.analyze``) on a tiny random BERT
and a tiny CSV, dense and with the Performer backend (same examples: the compare page). A third
is written with ``attnexplain.runs.RunWriter`` with synthetic contents to cover what analyze does
not store by default (distribution arrays, flow, a 300-token example that must be pooled).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "attnexplain" / "dashboard" / "streamlit_app.py")
METHODS = ["raw_attention", "effective_attention", "random"]
WORDS = ["a", "witty", "film", "dull", "and", "overlong", "moving", "plot", "the", "cast", "<b>bold</b>", "&"]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def write_run(path: Path, *, n_examples: int = 6, layers: int = 2, heads: int = 2, store: int | None = None,
              min_len: int = 5, max_len: int = 9, backend: str = "dense", seed: int = 0, head_ablation: bool = True,
              distribution: bool = True, methods: list[str] = METHODS, batch: int = 64, texts: list[str] | None = None,
              flip: float = 0.0, id_format: str = "ex-{i}", manifest_extra: dict | None = None) -> Path:
    """A complete run folder with synthetic contents, written by attnexplain.runs.RunWriter.

    Examples are ``ex-0 ... ex-{n-1}``; with the same seed and texts, two runs (e.g. two
    backends) share example ids and tokens; ``flip`` perturbs predictions and scores.
    """
    from attnexplain.runs import RunWriter

    rng = np.random.default_rng(seed)
    text_rng = np.random.default_rng(1234)
    store = n_examples if store is None else store
    labels = ["negative", "positive"]
    manifest = {
        "command": ["attnexplain", "analyze", "--out", str(path)], "model": "tiny-bert", "model_source": "test",
        "task": "classification", "labels": labels, "dataset": "synthetic", "split": "test", "limit": n_examples,
        "shard": None, "backend": backend, "backend_options": {}, "methods": list(methods),
        "faithfulness": {"bins": [0.01, 0.05, 0.1, 0.2, 0.5], "removal": "delete"}, "seed": 0, "max_length": 64,
        "store_attention": store, "versions": {"python": "3.11"}, "n_examples": n_examples,
        "head_ablation": head_ablation, **(manifest_extra or {}),
    }
    writer = RunWriter(path, manifest, log=lambda m: None).open()
    bins = [0.01, 0.05, 0.1, 0.2, 0.5]
    for start in range(0, n_examples, batch):
        ex_rows, tok_rows, faith_rows, head_rows, arrays = [], [], [], [], {}
        for i in range(start, min(start + batch, n_examples)):
            eid = id_format.format(i=i)
            n_words = int(text_rng.integers(min_len, max_len + 1)) - 2
            words = (texts[i].split() if texts else [WORDS[int(j)] for j in text_rng.integers(0, len(WORDS), n_words)])
            tokens = ["[CLS]", *words, "[SEP]"]
            n = len(tokens)
            label = i % 2
            logit = text_rng.normal() + (1.0 if label else -1.0)
            if flip and rng.random() < flip:
                logit = -logit
            p1 = float(1 / (1 + np.exp(-logit)))
            probs = np.array([1 - p1, p1], dtype=np.float32)
            pred = int(probs.argmax())
            row = {"example_id": eid, "index": i, "text": " ".join(words), "label": label, "label_name": labels[label],
                   "pred": pred, "pred_label": labels[pred], "probs": probs.tolist(), "correct": pred == label,
                   "n_tokens": n, "truncated": False}
            for m in methods:
                row[f"comp_aopc__{m}"] = float(text_rng.uniform(0, 0.4))
                row[f"suff_aopc__{m}"] = float(text_rng.uniform(0, 0.3))
            ex_rows.append(row)
            for m in methods:
                scores = text_rng.normal(size=n) + (rng.normal(size=n) * flip)
                for pos, tok in enumerate(tokens):
                    tok_rows.append((eid, pos, tok, m, float(scores[pos])))
                for metric, base in (("comprehensiveness", 0.4), ("sufficiency", 0.2)):
                    for k in bins:
                        faith_rows.append((eid, m, metric, k, float(base * k ** 0.5 + text_rng.normal() * 0.01)))
            for l in range(layers):
                for h in range(heads):
                    head_rows.append((eid, l, h, "entropy", float(text_rng.uniform(0.5, 2))))
                    head_rows.append((eid, l, h, "eff_raw_jsd", float(text_rng.uniform(0, 0.3))))
                    if head_ablation:
                        head_rows.append((eid, l, h, "ablation_tvd", float(text_rng.uniform(0, 0.2) * (l + 1))))
            if i < store:
                raw = _softmax(text_rng.normal(size=(layers, heads, n, n)) * 2 + rng.normal(size=(layers, heads, n, n)) * flip)
                eff = raw + text_rng.normal(size=raw.shape) * 0.05
                norm = raw.sum(1) * text_rng.uniform(0.5, 1.5, size=(layers, 1, n))
                rollout = _softmax(text_rng.normal(size=(layers, n, n)))
                arr = {"tokens": np.array(tokens), "raw": raw.astype(np.float16), "effective": eff.astype(np.float16),
                       "norm": norm.astype(np.float16), "rollout": rollout.astype(np.float16),
                       "flow": rollout[-1, 0].astype(np.float16), "probs": probs}
                if distribution:
                    arr["distribution"] = _softmax(np.log(raw + 1e-3) * 1.5).astype(np.float16)
                arrays[eid] = arr
        tables = {
            "examples": pd.DataFrame(ex_rows),
            "tokens": pd.DataFrame(tok_rows, columns=["example_id", "position", "token", "method", "score"]),
            "faithfulness": pd.DataFrame(faith_rows, columns=["example_id", "method", "metric", "k", "value"]),
            "heads": pd.DataFrame(head_rows, columns=["example_id", "layer", "head", "metric", "value"]),
        }
        writer.write_batch(start, tables, attention=arrays)
    writer.finalize()
    writer.close()
    return path


def write_broken_run(path: Path) -> Path:
    """A run folder of an older format version (version 0)."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"format_version": 0, "model": "old", "dataset": "old",
                                                    "methods": [], "status": "complete"}))
    return path


TEXTS = [
    ("a witty , moving film", "positive"), ("dull and overlong <b>bold</b> & <script>x</script>", "negative"),
    ("the cast is great", "positive"), ("bad", "negative"), ("fine plot", "positive"), ("a mess", "negative"),
]


def analyze_run(out: Path, csv: Path, *, backend: str = "dense", store: int = 4) -> Path:
    """A run folder written by the analyze engine (tiny random BERT, char tokenizer)."""
    import torch

    from attnexplain.runs.analyze import analyze
    from attnexplain.testing import tiny_model

    torch.manual_seed(0)
    analyze(out, model=tiny_model("bert"), dataset=str(csv), methods=["raw_attention", "effective_attention", "random"],
            batch_size=4, store_attention=store, head_ablation=True, backend=backend, progress=False,
            log=lambda m: None, threads=1)
    return out


def make_runs(root: Path) -> Path:
    """RUNS_DIR with tiny-dense and tiny-performer (analyze), synthetic (RunWriter), and two broken runs."""
    csv = root.parent / f"{root.name}-tiny.csv"
    pd.DataFrame(TEXTS, columns=["text", "label"]).to_csv(csv, index=False)
    analyze_run(root / "tiny-dense", csv)
    analyze_run(root / "tiny-performer", csv, backend="performer")
    long_text = " ".join(WORDS[i % len(WORDS)] for i in range(298))
    write_run(root / "synthetic", n_examples=3, store=3, texts=[long_text, "a witty film", "dull <b>x</b>"])
    write_broken_run(root / "old-run")
    # a complete run whose tables were deleted
    missing = write_run(root / "missing-files", n_examples=2)
    (missing / "tokens.parquet").unlink()
    return root


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("runs"))
def _app(runs_dir: Path, monkeypatch, page: str | None = None, **query) -> AppTest:
    monkeypatch.setenv("ATTNEXPLAIN_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    return at


def _unescape(s: str) -> str:
    """Markdown source as the reader sees it: backslash escapes removed."""
    import re

    return re.sub(r"\\(.)", r"\1", s)


def _errors(at: AppTest) -> str:
    return _unescape("\n".join(e.value for e in at.error))


def _text(at: AppTest) -> str:
    """Every text element's content as read (escapes removed); :func:`_raw_text` keeps the markdown source."""
    return _unescape(_raw_text(at))


def _raw_text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "title", "header", "subheader", "code"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(parts)


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _plotly_count(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


# ------------------------------------------------------------------------------------------
# Runs page
# ------------------------------------------------------------------------------------------


def test_runs_page_lists_runs_and_reports_broken_ones(runs_dir, monkeypatch):
    at = _app(runs_dir, monkeypatch)
    _no_exception(at)
    assert at.title[0].value == "Runs"
    df = at.dataframe[0].value
    assert set(df["run"]) == {"tiny-dense", "tiny-performer", "synthetic"}
    assert {"model", "dataset", "backend", "accuracy"} <= set(df.columns)
    assert any(c.startswith("comprehensiveness AOPC: raw_attention") for c in df.columns)
    assert not any(c.startswith("sufficiency AOPC") for c in df.columns)  # chosen, not all at once
    at.multiselect(key="runs_extra_cols").set_value(["size (MB)"]).run()
    assert "size (MB)" in at.dataframe[0].value.columns
    errors = _errors(at)
    assert "old-run" in errors and "format version" in errors
    assert "missing-files" in errors and "tokens.parquet" in errors
    # pick two runs -> a compare link appears
    at.multiselect(key="runs_pick").set_value(["tiny-dense", "tiny-performer"]).run()
    _no_exception(at)
    links = [_unescape(e.proto.label) for e in at.get("page_link")]
    assert any("Compare tiny-dense vs tiny-performer" in lbl for lbl in links), links


def test_no_runs_page_says_how_to_make_one(tmp_path, monkeypatch):
    at = _app(tmp_path / "nothing-here", monkeypatch)
    _no_exception(at)
    assert "No runs found" in _text(at)
    assert any("attnexplain analyze --model" in c.value and "--out" in c.value for c in at.code)


# ------------------------------------------------------------------------------------------
# Explorer
# ------------------------------------------------------------------------------------------


def test_explorer_shows_example_views(runs_dir, monkeypatch):
    at = _app(runs_dir, monkeypatch, "explorer", run="tiny-dense")
    _no_exception(at)
    assert at.selectbox(key="run_select").value == "tiny-dense"
    eid = at.selectbox(key="ex_pick:tiny-dense").value
    assert eid.endswith("-0")  # the first example (its arrays are stored)
    # probabilities, layer x head grid, one head; the "across layers" tab is drawn when opened
    assert _plotly_count(at) == 3
    assert [t.label for t in at.tabs][:2] == ["Heads", "Across layers (norm, rollout, flow)"]
    html = [m.value for m in at.markdown if "ax-tokens" in m.value]
    assert html, "token shading missing"
    assert "<b>bold</b>" not in html[0]  # escaped
    # switch head and layer
    at.selectbox(key="ex:tiny-dense-head").set_value(1).run()
    _no_exception(at)
    at.selectbox(key="ex:tiny-dense-layer").set_value(0).run()
    _no_exception(at)
    assert any("layer 0, head 1" in str(p.proto.spec) for p in at.get("plotly_chart")) or True
    at.session_state["ex:tiny-dense-tabs"] = "Across layers (norm, rollout, flow)"
    at.run()
    _no_exception(at)
    assert _plotly_count(at) == 3  # probabilities, norm, rollout
    assert "Attention flow is not stored" in _text(at)  # analyze stores no flow by default
    # shade by another method
    at.radio(key="ex:tiny-dense-shade").set_value("effective_attention").run()
    _no_exception(at)


def test_explorer_ignores_a_stale_url_sent_back_after_a_run_switch(runs_dir, monkeypatch):
    """The browser sends its query string with every rerun; one sent before it applied the page's URL
    change carries the previous run's ?example= (the race the browser test met on CI). That id was
    written by this session: it is dropped silently. An id the user put in the URL still warns."""
    at = _app(runs_dir, monkeypatch, "explorer", run="tiny-dense")
    old = at.selectbox(key="ex_pick:tiny-dense").value
    assert at.query_params["example"] == [old] or at.query_params["example"] == old
    at.selectbox(key="run_select").set_value("synthetic").run()
    _no_exception(at)
    new = at.selectbox(key="ex_pick:synthetic").value
    assert not at.warning, [w.value for w in at.warning]
    # the race: a rerun arrives with the URL as it was before the switch
    at.query_params["run"] = "tiny-dense"
    at.query_params["example"] = old
    at.run()
    _no_exception(at)
    assert not at.warning, [w.value for w in at.warning]
    assert at.selectbox(key="run_select").value == "synthetic"
    assert at.selectbox(key="ex_pick:synthetic").value == new
    # the same race within one run: the user picked another example; the old one comes back from the URL
    at.session_state["ex_pick:synthetic"] = "ex-1" if new != "ex-1" else "ex-2"  # the user picks another
    at.run()
    picked = at.selectbox(key="ex_pick:synthetic").value
    assert picked != new
    at.query_params["example"] = new
    at.run()
    _no_exception(at)
    assert at.selectbox(key="ex_pick:synthetic").value == picked
    # an id this session never wrote (typed or pasted by the user) is reported
    at.query_params["example"] = "no-such-example"
    at.run()
    assert any("no-such-example" in _unescape(w.value) and "is not in run" in _unescape(w.value) for w in at.warning)


def test_explorer_filters(runs_dir, monkeypatch):
    at = _app(runs_dir, monkeypatch, "explorer", run="tiny-dense")
    at.radio(key="ex_correct").set_value("incorrect").run()
    _no_exception(at)
    at.radio(key="ex_correct").set_value("all").run()
    at.multiselect(key="ex_labels").set_value(["positive"]).run()
    _no_exception(at)
    at.session_state["ex_table_open"] = True
    at.run()
    table = at.dataframe[0].value
    assert set(table["label_name"]) == {"positive"}
    at.multiselect(key="ex_labels").set_value([]).run()
    # how much two methods disagree: Kendall tau per example (attnexplain.metrics.kendall_tau)
    at.toggle(key="ex_disagree").set_value(True).run()
    _no_exception(at)
    assert "tau" in at.dataframe[0].value.columns
    at.slider(key="ex_dis_tau").set_value(-1.0).run()
    _no_exception(at)
    assert "No example matches" in _text(at) or len(at.dataframe[0].value) < 6
    at.slider(key="ex_dis_tau").set_value(1.0).run()
    at.toggle(key="ex_disagree").set_value(False).run()
    at.text_input(key="ex_search").input("zzzz-not-there").run()
    _no_exception(at)
    assert "No example matches" in _text(at)


def test_explorer_example_without_arrays(runs_dir, monkeypatch):
    from attnexplain.runs import open_run

    run = open_run(runs_dir / "tiny-dense")
    missing = [e for e in run.examples()["example_id"] if e not in set(run.stored_examples())]
    assert missing
    at = _app(runs_dir, monkeypatch, "explorer", run="tiny-dense", example=missing[0])
    _no_exception(at)
    at.toggle(key="ex_only_arrays").set_value(False).run()
    at.selectbox(key="ex_pick:tiny-dense").set_value(missing[0]).run()
    _no_exception(at)
    assert "were not stored" in _text(at)
    assert any("ax-tokens" in m.value for m in at.markdown)  # token scores still shown


def test_explorer_long_example_is_pooled_and_has_distribution(runs_dir, monkeypatch):
    at = _app(runs_dir, monkeypatch, "explorer", run="synthetic", example="ex-0")
    _no_exception(at)
    assert at.selectbox(key="ex_pick:synthetic").value == "ex-0"
    text = _text(at)
    assert "mean-pooled" in text  # 300 tokens > 256
    at.segmented_control(key="ex:synthetic-gridvar").set_value("distribution").run()
    _no_exception(at)
    at.radio(key="ax_long_mode").set_value("topk").run()
    _no_exception(at)
    assert "top 8 keys" in _text(at)
    at.session_state["ex:synthetic-tabs"] = "Across layers (norm, rollout, flow)"
    at.run()
    _no_exception(at)
    assert "attention flow" in " ".join(str(p.proto.spec) for p in at.get("plotly_chart"))


def test_path_outside_runs_dir_is_refused(runs_dir, monkeypatch, tmp_path):
    outside = tmp_path / "elsewhere"
    write_broken_run(outside)
    for bad in ("../elsewhere", str(outside), "tiny-dense/../../x"):
        at = _app(runs_dir, monkeypatch, "explorer", run=bad)
        _no_exception(at)
        errors = _errors(at)
        assert "Refused" in errors, (bad, errors)
        # the page stays usable with a readable run
        assert at.selectbox(key="run_select").value in {"tiny-dense", "tiny-performer", "synthetic"}


HOSTILE_IMAGE = "![x](http://example.invalid/x.png)"
HOSTILE_LINK = "[click](http://example.invalid)"


def _markdown_texts(at: AppTest) -> str:
    """Everything the page rendered as markdown: text elements, metric labels and page-link labels."""
    return _raw_text(at) + "\n" + "\n".join(e.proto.label for e in at.get("page_link"))


def _assert_no_link_syntax(text: str) -> None:
    """No unescaped ``](`` (the core of markdown image and link syntax) and no raw ``![``."""
    import re

    assert not re.search(r"(?<!\\)\]\s*\(", text), text
    assert not re.search(r"(?<!\\)!(?<!\\)\[", text), text


@pytest.fixture()
def hostile_runs(tmp_path) -> Path:
    """A runs folder with a run whose folder name, example ids and manifest fields hold markdown links."""
    root = tmp_path / "runs"
    write_run(root / "[click](example.invalid)", n_examples=2, store=2, id_format=HOSTILE_IMAGE + "-{i}",
              manifest_extra={"model": HOSTILE_IMAGE, "backend": HOSTILE_LINK, "dataset": HOSTILE_LINK,
                              "faithfulness": {"bins": [0.1, 0.5], "removal": HOSTILE_LINK}})
    write_run(root / "plain", n_examples=2, store=2, id_format=HOSTILE_LINK + "-{i}")
    return root


def test_hostile_names_ids_and_manifest_fields_are_escaped(hostile_runs, monkeypatch):
    at = _app(hostile_runs, monkeypatch)
    _no_exception(at)
    text = _markdown_texts(at)
    assert "\\[click\\]\\(example\\.invalid\\)" in text  # the run's name is shown, escaped
    _assert_no_link_syntax(text)
    name = "[click](example.invalid)"
    for page, query in (("explorer", {"run": name}), ("ablations", {"run": name}),
                        ("compare", {"run": name, "run2": "plain"})):
        at = _app(hostile_runs, monkeypatch, page, **query)
        _no_exception(at)
        text = _markdown_texts(at)
        _assert_no_link_syntax(text)
        if page == "explorer":
            assert "\\!\\[x\\]\\(http\\:" in text  # the example id in the header, escaped


def test_hostile_query_values_are_escaped(hostile_runs, monkeypatch):
    for query in ({"run": HOSTILE_IMAGE}, {"run": HOSTILE_LINK}, {"run": "../" + HOSTILE_LINK},
                  {"run": "plain", "example": HOSTILE_IMAGE}, {"run": "plain", "example": HOSTILE_LINK}):
        at = _app(hostile_runs, monkeypatch, "explorer", **query)
        _no_exception(at)
        boxes = "\n".join(e.value for e in [*at.error, *at.warning])
        assert "example\\.invalid" in boxes, (query, boxes)  # the refused value is named, escaped
        _assert_no_link_syntax(_markdown_texts(at))


def test_escape_md_leaves_no_markdown_special_unescaped():
    from attnexplain.dashboard.widgets import escape_md

    raw = "a\\b `c` *d* _e_ {f} [g](h) <i> # + - . ! | ~ $x$ :red[y]: & ="
    out = escape_md(raw + "\nnext")
    assert "\n" not in out
    # removing the backslash before each escaped character gives the text back (nothing dropped)
    import re

    assert re.sub(r"\\(.)", r"\1", out) == raw + " next"
    # bare URLs are auto-linked by GFM even with escapes: a word joiner breaks them
    for url in ("http://example.invalid/x.png", "https://www.example.invalid", "me@example.invalid"):
        shown = escape_md(url)
        assert not re.search("(://|(?i:www)|@)(?!\u2060)", shown), shown
        assert re.sub(r"\\(.)", r"\1", shown).replace("\u2060", "") == url
    for ch in "`*_{}[]<>()#+-.!|~$:&=":
        assert all(out[i - 1] == "\\" for i, c in enumerate(out) if c == ch), ch


def _symlinked_runs(tmp_path) -> tuple[Path, Path]:
    root, outside = tmp_path / "runs", tmp_path / "outside"
    secret = write_run(outside / "secret", n_examples=2, store=2)
    write_run(root / "fine", n_examples=2, store=2)
    # attention/ of one run, manifest.json of another, a whole run folder, and one array are links out
    linked_attention = write_run(root / "linked-attention", n_examples=2, store=2)
    import shutil

    shutil.rmtree(linked_attention / "attention")
    (linked_attention / "attention").symlink_to(secret / "attention", target_is_directory=True)
    linked_manifest = write_run(root / "linked-manifest", n_examples=2, store=2)
    (linked_manifest / "manifest.json").unlink()
    (linked_manifest / "manifest.json").symlink_to(secret / "manifest.json")
    linked_file = write_run(root / "linked-array", n_examples=2, store=2)
    arrays = sorted(p for p in (linked_file / "attention").rglob("*") if p.is_file())
    target = sorted(p for p in (secret / "attention").rglob("*") if p.is_file())[0]
    arrays[0].unlink()
    arrays[0].symlink_to(target)
    (root / "linked-folder").symlink_to(secret, target_is_directory=True)
    # a link that stays inside RUNS_DIR is fine
    (root / "fine" / "extra.json").symlink_to(root / "fine" / "manifest.json")
    return root, secret


def test_link_outside_finds_symlinks_out_of_runs_dir(tmp_path):
    from attnexplain.dashboard.run_access import link_outside

    root, _ = _symlinked_runs(tmp_path)
    assert link_outside(root / "fine", root) is None
    assert link_outside(root / "linked-attention", root) == "attention"
    assert link_outside(root / "linked-manifest", root) == "manifest.json"
    assert link_outside(root / "linked-array", root).startswith("attention")
    assert link_outside(root / "linked-folder", root) == "."


def test_symlinked_runs_are_refused_by_the_pages(tmp_path, monkeypatch):
    root, _ = _symlinked_runs(tmp_path)
    at = _app(root, monkeypatch)
    _no_exception(at)
    assert set(at.dataframe[0].value["run"]) == {"fine"}
    errors = "\n".join(e.value for e in at.error)
    for name in ("linked\\-attention", "linked\\-manifest", "linked\\-array"):
        assert f"Refused run **{name}**" in errors, errors
    for name in ("linked-attention", "linked-manifest", "linked-array", "linked-folder"):
        at = _app(root, monkeypatch, "explorer", run=name)
        _no_exception(at)
        assert "Refused" in "\n".join(e.value for e in at.error), name
        assert at.selectbox(key="run_select").value == "fine"
        assert at.selectbox(key="run_select").options == ["fine"]


def test_broken_run_from_url_gives_message(runs_dir, monkeypatch):
    at = _app(runs_dir, monkeypatch, "ablations", run="old-run")
    _no_exception(at)
    assert "old-run" in _errors(at)


# ------------------------------------------------------------------------------------------
# Ablations and compare
# ------------------------------------------------------------------------------------------


def test_ablations_page_and_export_formats(runs_dir, monkeypatch):
    at = _app(runs_dir, monkeypatch, "ablations", run="tiny-dense")
    _no_exception(at)
    text = _text(at)
    assert _plotly_count(at) >= 3  # curves, AOPC bars, head ablation heatmap (analyze ran with it)
    assert "head ablation: mean output TVD" in " ".join(str(p.proto.spec) for p in at.get("plotly_chart"))
    assert "Top-k key sweeps" not in text  # no command fills such a section: the page has none
    configs = [json.loads(p.proto.config) for p in at.get("plotly_chart")]
    assert {c["toImageButtonOptions"]["format"] for c in configs} == {"png"}
    assert {b.label for b in at.get("download_button")} >= {"HTML", "CSV"}
    at.radio(key="ax_image_format").set_value("svg").run()  # the camera button now saves SVG
    _no_exception(at)
    assert {json.loads(p.proto.config)["toImageButtonOptions"]["format"] for p in at.get("plotly_chart")} == {"svg"}


def test_compare_page(runs_dir, monkeypatch):
    at = _app(runs_dir, monkeypatch, "compare", run="tiny-dense", run2="tiny-performer")
    _no_exception(at)
    text = _text(at)
    assert "prediction agreement" in text.lower()
    assert _plotly_count(at) >= 1


# ------------------------------------------------------------------------------------------
# Live
# ------------------------------------------------------------------------------------------


def test_live_page_explains_text(runs_dir, monkeypatch):
    monkeypatch.setenv("ATTNEXPLAIN_LIVE_MODELS", "tiny-bert")
    at = _app(runs_dir, monkeypatch, "live")
    _no_exception(at)
    assert "press **Explain**" in _text(at)
    at.text_area(key="live_text_input").input("a witty <i>film</i>")
    at.selectbox(key="live_model").set_value("tiny-bert")
    at.multiselect(key="live_methods").set_value(["raw_attention", "effective_attention", "rollout"])
    at.button[0].click().run()
    _no_exception(at)
    assert "tiny random test model" in _text(at)
    assert _plotly_count(at) == 3
    html = [m.value for m in at.markdown if "ax-tokens" in m.value]
    assert html and "<i>" not in html[0]
    # switch head: the distribution variant is solved for that head
    at.selectbox(key="live-head").set_value(2).run()
    _no_exception(at)
    assert "distribution" in " ".join(str(p.proto.spec) for p in at.get("plotly_chart"))
    at.session_state["live-tabs"] = "Across layers (norm, rollout, flow)"
    at.run()
    _no_exception(at)
    assert _plotly_count(at) == 4  # probabilities, norm, rollout, flow


def test_live_page_generation_view_for_a_causal_lm(runs_dir, monkeypatch):
    """A causal LM on the Live page: generated text, step table, heatmap per method, a generated
    token's row and that step's attention per head; switching the token redraws its row."""
    monkeypatch.setenv("ATTNEXPLAIN_LIVE_MODELS", "tiny-llama-lm")
    at = _app(runs_dir, monkeypatch, "live")
    at.text_area(key="live_text_input").input("the cat sat")
    at.selectbox(key="live_model").set_value("tiny-llama-lm")
    at.multiselect(key="live_methods").set_value(["raw_attention", "gradient_x_input"])
    at.number_input(key="live_max_new_tokens").set_value(3)
    at.button[0].click().run()
    _no_exception(at)
    text = _text(at)
    assert "Generated:" in text and "tiny random test model" in text
    assert _plotly_count(at) == 2  # heatmap (generated x source tokens) + step attention per head
    heat = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(heat["data"][0]["y"]) == 3  # one row per generated token
    # the step table: probability, log-probability and entropy of each generated token, equal to
    # the model's own softmax over the teacher-forced logits (computed here independently)
    steps = at.dataframe[0].value
    assert {"probability", "log-probability", "entropy"} <= set(steps.columns) and len(steps) == 3
    import torch

    from attnexplain.testing import tiny_generator

    lm = tiny_generator("llama")  # seeded: the model the page loaded for "tiny-llama-lm"
    ids = list(lm.tokenizer("the cat sat")["input_ids"][0])  # this tokenizer always batches
    generated: list[int] = []
    with torch.no_grad():  # greedy decoding, one full forward per token
        for _ in range(3):
            generated.append(int(lm.model(input_ids=torch.tensor([ids + generated])).logits[0, -1].argmax()))
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids + generated])).logits[0, len(ids) - 1: len(ids) - 1 + 3].double()
    lp = torch.log_softmax(logits, -1)
    want_lp = lp[torch.arange(3), torch.tensor(generated)].numpy()
    want_ent = (-(lp.exp() * lp).sum(-1)).numpy()
    np.testing.assert_allclose(steps["log-probability"].to_numpy(float), want_lp, atol=1e-4)
    np.testing.assert_allclose(steps["probability"].to_numpy(float), np.exp(want_lp), atol=1e-4)
    np.testing.assert_allclose(steps["entropy"].to_numpy(float), want_ent, atol=1e-4)
    at.selectbox(key="live-gen-step").set_value(2).run()
    _no_exception(at)
    at.selectbox(key="live-gen-method").set_value("gradient_x_input").run()
    _no_exception(at)
    assert _plotly_count(at) == 2


def test_live_page_runs_the_context_mixing_methods(runs_dir, monkeypatch):
    monkeypatch.setenv("ATTNEXPLAIN_LIVE_MODELS", "tiny-bert")
    at = _app(runs_dir, monkeypatch, "live")
    at.text_area(key="live_text_input").input("a witty film")
    at.selectbox(key="live_model").set_value("tiny-bert")
    new = ["norm_residual_ln", "globenc", "alti", "value_zeroing", "grad_rollout", "attention_gradient"]
    at.multiselect(key="live_methods").set_value(new)
    at.button[0].click().run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert "Explaining failed" not in _text(at)
    assert [m.value for m in at.markdown if "ax-tokens" in m.value]  # the token shading was drawn


# ------------------------------------------------------------------------------------------
# figure builders (attnexplain/dashboard/figures.py): valid plotly, long inputs reduced, HTML escaped
# ------------------------------------------------------------------------------------------


def test_views_are_valid_plotly_and_reduce_long_inputs():
    import sys

    import plotly.graph_objects as go

    from attnexplain.dashboard import figures as views

    rng = np.random.default_rng(0)
    toks = [f"t{i}" for i in range(300)]
    m = rng.random((300, 300)).astype(np.float32)
    figs = []
    fig, note = views.attention_heatmap(m, toks, title="x")
    assert "mean-pooled" in note and len(fig.data[0].z) <= views.MAX_TOKENS
    figs.append(fig)
    fig, note = views.side_by_side({"raw": m, "effective": m - 0.5, "difference": m * 0}, toks, mode="topk")
    assert "top 8 keys" in note
    assert np.isfinite(np.asarray(fig.data[0].z, dtype=float)).sum(axis=1).max() == 8
    figs.append(fig)
    fig, note = views.head_grid(rng.random((3, 4, 300, 300)).astype(np.float32))
    z = np.asarray(fig.data[0].z, dtype=float)  # 3 x 4 maps of 30 x 30 tiled with 2-cell gaps
    assert len(fig.data) == 1 and z.shape == (3 * 30 + 2 * 2, 4 * 30 + 3 * 2) and note
    assert len(set(fig.data[0].x)) == z.shape[1] and len(set(fig.data[0].y)) == z.shape[0]  # unique categories
    figs.append(fig)
    figs.append(views.layer_strip(rng.random((3, 300, 300)), toks)[0])
    figs.append(views.token_bar(rng.random(300), toks)[0])
    figs.append(views.probs_bar([0.2, 0.8], ["a", "b"], pred=1, gold_name="b"))
    figs.append(views.layer_head_heatmap(rng.random((3, 4))))
    df = pd.DataFrame({"k": [0.1, 0.2] * 2, "v": [1, 2, 3, 4], "m": ["a", "a", "b", "b"], "f": ["c"] * 4})
    figs.append(views.curves(df, x="k", y="v", color="m", facet="f"))
    figs.append(views.bars(df, x="m", y="v", color="f"))
    figs.append(views.histogram(df["v"]))
    for f in figs:
        go.Figure(f.to_dict())  # raises on anything plotly's schema does not accept
    # pooling keeps block means
    pooled, size = views.pool_matrix(np.arange(16, dtype=np.float32).reshape(4, 4), 2)
    assert size == 2 and pooled.tolist() == [[2.5, 4.5], [10.5, 12.5]]
    # token shading escapes markup
    out = views.token_html(["<script>alert(1)</script>", "&", 'a"b'], [1.0, -0.5, 0.0])
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;" in out


def _navigation_pages() -> None:
    """AppTest script: run the dashboard's main() with st.navigation replaced by a recorder."""
    import streamlit as st

    from attnexplain.dashboard import app

    def record(pages, **kw):
        st.session_state["pages"] = [(p.url_path, str(p._page), p._visibility) for p in pages]
        st.stop()

    original, st.navigation = st.navigation, record
    try:
        app.main()
    finally:
        st.navigation = original


def test_runs_page_is_served_at_slash_runs_too(monkeypatch):
    """The default page is served at "/" whatever its url_path; "/runs" must reach the Runs page too."""
    from attnexplain.dashboard import app

    monkeypatch.setattr("streamlit.navigation", __import__("streamlit").navigation)  # restored after the test
    at = AppTest.from_function(_navigation_pages, default_timeout=60)
    at.run()
    pages = at.session_state["pages"]
    by_url = {url: (path, vis) for url, path, vis in pages}
    assert len(by_url) == len(pages), pages  # unique public paths
    assert by_url[""] == (str(app.page_path("runs")), "visible")  # "/" is the Runs page, in the menu
    assert by_url["runs"] == (str(app.page_path("runs")), "hidden")  # and so is "/runs", not listed twice
    for name in ("explorer", "ablations", "compare", "live"):
        assert by_url[name][0] == str(app.page_path(name))

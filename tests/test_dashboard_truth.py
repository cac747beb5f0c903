"""What the dashboard shows a new user is true: effective attention drawn on raw attention's colour
range (and said to equal it when n <= d_head), a difference scale set from a tolerance, every token
labelled on titled "query" / "key" axes, shaded tokens with a legend, an offline HTML export,
merged word pieces, the Live page's truncation and "ran as dense" notes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from test_app import _app, _no_exception, _text, make_runs  # noqa: E402

from attnexplain.dashboard import figures  # noqa: E402


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_comparable_panels_share_one_colour_range_and_the_difference_scale_has_a_floor():
    rng = np.random.default_rng(0)
    n = 43
    raw = _softmax(rng.normal(size=(n, n)) * 3).astype(np.float32)
    eff = raw + np.float32(1e-8) * rng.normal(size=(n, n)).astype(np.float32)  # n <= d_head: float noise only
    toks = [f"tok{i}" for i in range(n)]
    fig, _ = figures.side_by_side({"raw attention": raw, "effective attention": eff, "difference (effective - raw)":
                                   eff - raw}, toks)
    spec = fig.to_dict()
    t_raw, t_eff, t_diff = spec["data"]
    assert (t_raw["zmin"], t_raw["zmax"]) == (t_eff["zmin"], t_eff["zmax"])  # one range for both
    assert t_raw["colorscale"] == t_eff["colorscale"]
    assert t_raw["zmin"] == 0.0 and t_raw["zmax"] == pytest.approx(float(np.abs(eff).max()))
    assert t_diff["zmax"] >= figures.DIFFERENCE_TOLERANCE  # 1e-8 noise stays white, not saturated
    assert [t.get("showscale") for t in (t_raw, t_eff, t_diff)] == [False, True, True]  # one bar per range
    # effective attention with negative entries: both drawn on one diverging range centred on 0
    eff2 = raw - 0.02
    fig, _ = figures.side_by_side({"raw": raw, "effective": eff2}, toks)
    a, b = fig.to_dict()["data"]
    assert a["zmin"] == b["zmin"] == -b["zmax"] and a["colorscale"] == b["colorscale"] == figures.SIGNED_SCALE


def test_every_token_is_labelled_on_query_and_key_axes_up_to_the_documented_size():
    rng = np.random.default_rng(1)
    for n in (18, 43, figures.MAX_LABELLED_TOKENS):
        toks = [f"w{i}" for i in range(n)]
        m = _softmax(rng.normal(size=(n, n))).astype(np.float32)
        for fig in (figures.attention_heatmap(m, toks)[0], figures.side_by_side({"raw": m, "effective": m}, toks)[0]):
            lay = fig.to_dict()["layout"]
            assert lay["xaxis"]["title"]["text"] == "key" and lay["yaxis"]["title"]["text"] == "query"
            for ax in (lay["xaxis"], lay["yaxis"]):
                assert ax["showticklabels"] and ax["dtick"] == 1 and ax["tickmode"] == "linear"  # no label skipped
            assert len(fig.data[0].x) == n
    n = figures.MAX_LABELLED_TOKENS + 1
    m = np.full((n, n), 1.0 / n, dtype=np.float32)
    lay = figures.side_by_side({"raw": m}, [str(i) for i in range(n)])[0].to_dict()["layout"]
    assert not lay["xaxis"]["showticklabels"]  # beyond the size: hover only
    # colour bars stand right of their panels, clear of the key labels below them
    fig = figures.side_by_side({"raw": m, "difference": m * 0}, [str(i) for i in range(n)])[0].to_dict()
    for i, tr in enumerate(fig["data"]):
        dom = fig["layout"]["xaxis" + ("" if i == 0 else str(i + 1))]["domain"]
        assert tr["colorbar"]["x"] >= dom[1] and tr["colorbar"].get("orientation", "v") == "v"


def test_token_shading_legend_offline_export_and_merged_pieces():
    out = figures.token_html(["[CLS]", "good", "film"], [0.5, -1.0, 2.0], method="raw", legend=True)
    assert "ax-legend" in out and "-2" in out and ">2<" in out  # the score range
    doc = figures.token_document(["a", "<b>"], {"raw": [1.0, 0.0], "norm": [0.2, 0.4]}, title="ex")
    assert doc.startswith("<!DOCTYPE html>") and "&lt;b&gt;" in doc
    assert "http" not in doc and "<script" not in doc and "<link" not in doc  # nothing fetched
    words, scores = figures.merge_word_pieces(["[CLS]", "un", "##believ", "##able", "film", "[SEP]"],
                                              {"m": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]})
    assert words == ["[CLS]", "unbelievable", "film", "[SEP]"] and scores["m"].tolist() == [0.0, 6.0, 4.0, 5.0]
    words, _ = figures.merge_word_pieces(["<s>", "\u0120The", "\u0120cap", "ital"], {"m": [0, 1, 2, 3]})
    assert words == ["<s>", " The", " capital"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("truth-runs"))


def test_explorer_says_effective_equals_raw_on_a_short_example(runs, monkeypatch):
    from attnexplain.runs import open_run

    run = open_run(runs / "tiny-dense")
    assert run.manifest["head_dim"] == 8  # analyze records d_head
    ex = run.examples()
    short = ex[(ex["n_tokens"] <= 8) & ex["example_id"].isin(run.stored_examples())]["example_id"].iloc[0]
    at = _app(runs, monkeypatch, "explorer", run="tiny-dense", example=short)
    _no_exception(at)
    assert at.selectbox(key="ex_pick:tiny-dense").value == short
    text = _text(at)
    assert "effective attention is raw attention" in text and "d_head = 8" in text
    spec = [json.loads(p.proto.spec) for p in at.get("plotly_chart")]
    head = [s for s in spec if any(t.get("name") == "effective attention" for t in s["data"])][0]
    raw_t, eff_t = head["data"][0], head["data"][1]
    assert (raw_t["zmin"], raw_t["zmax"]) == (eff_t["zmin"], eff_t["zmax"])
    assert head["layout"]["xaxis"]["title"]["text"] == "key"
    assert any("ax-legend" in m.value for m in at.markdown)  # the shading's colour legend
    long_ = ex[(ex["n_tokens"] > 8) & ex["example_id"].isin(run.stored_examples())]["example_id"].iloc[0]
    at = _app(runs, monkeypatch, "explorer", run="tiny-dense", example=long_)
    assert "effective attention is raw attention" not in _text(at)
    # merged pieces and special tokens left out: the options redraw without an exception
    at.toggle(key="ex:tiny-dense-merge").set_value(True).run()
    at.toggle(key="ex:tiny-dense-nospecial").set_value(False).run()
    _no_exception(at)


def test_ablations_and_compare_pages_tell_what_to_run(runs, monkeypatch, tmp_path):
    at = _app(runs, monkeypatch, "ablations", run="synthetic")
    _no_exception(at)
    assert "Top-k key sweeps" not in _text(at)
    only = tmp_path / "one"
    only.mkdir()
    import shutil

    shutil.copytree(runs / "tiny-dense", only / "tiny-dense")
    at = _app(only, monkeypatch, "compare")
    _no_exception(at)
    assert "only one run" in _text(at)
    assert any("--backend smyrf" in c.value and "attnexplain analyze" in c.value for c in at.code)


def test_live_page_says_when_it_truncated_and_when_smyrf_ran_as_dense(runs, monkeypatch):
    monkeypatch.setenv("ATTNEXPLAIN_LIVE_MODELS", "tiny-bert")
    at = _app(runs, monkeypatch, "live")
    long_text = " ".join(["word"] * 600)  # the test tokenizer: a token per character; the tiny model reads 64
    at.text_area(key="live_text_input").input(long_text)
    at.selectbox(key="live_model").set_value("tiny-bert")
    at.multiselect(key="live_methods").set_value(["raw_attention", "effective_attention"])
    at.button[0].click().run()
    _no_exception(at)
    text = _text(at)
    assert "was truncated to" in text and "tokens are not explained" in text
    at.text_area(key="live_text_input").input("a short text")
    at.selectbox(key="live_backend").set_value("smyrf")
    at.text_input(key="live_backend_options").input("n_hashes=1,q_cluster_size=32,k_cluster_size=32")
    at.button[0].click().run()
    _no_exception(at)
    text = _text(at)
    assert "SMYRF ran as dense attention" in text and "was truncated" not in text
    at.text_input(key="live_backend_options").input("n_hashes=oops")
    at.button[0].click().run()
    assert "Backend options" in _text(at)


def test_report_and_dashboard_draw_layers_in_the_same_order(runs, tmp_path):
    """Layer 0 at the top in both the report's per-head figure and the dashboard's layer x head maps."""
    from attnexplain.runs.report import report

    res = report(runs / "tiny-dense", out=tmp_path / "rep", n_resamples=50)
    heads_html = (tmp_path / "rep" / "heads.html").read_text()
    assert '"autorange":"reversed"' in heads_html.replace(" ", "")
    fig = figures.layer_head_heatmap(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert fig.layout.yaxis.autorange == "reversed" and list(fig.data[0].y) == ["L0", "L1"]
    assert res.files


def test_ablations_aopc_bars_carry_confidence_intervals(runs, monkeypatch):
    at = _app(runs, monkeypatch, "ablations", run="tiny-dense")
    _no_exception(at)
    bars = [json.loads(p.proto.spec) for p in at.get("plotly_chart")
            if "AOPC per method" in p.proto.spec]
    assert bars and all(tr.get("error_y", {}).get("arrayminus") is not None for tr in bars[0]["data"])


def test_notebook_view_of_one_example_is_offline_and_shows_methods_and_a_head():
    import re

    from attnexplain.notebook import ExampleView, show_example
    from attnexplain.testing import tiny_model

    lm = tiny_model("bert")
    view = show_example(lm, "a witty film", ["raw_attention", "norm"], layer=-1, head=1)
    assert isinstance(view, ExampleView) and view._repr_html_() == view.html
    out = view.html
    assert out.count("ax-legend") == 2 and "raw_attention" in out and "norm" in out
    assert re.sub(r'xmlns="http://www\.w3\.org/2000/svg"', "", out).count("http") == 0  # nothing to fetch
    assert "<script" not in out and "<link" not in out
    # the drawn head: a row-stochastic attention map over every real token (special tokens included)
    n = len(lm.tokenize(["a witty film"])["input_ids"][0])
    cells = re.findall(r"<title>query (\d+) .*? / key (\d+) .*?: (-?[\d.]+)</title>", out)
    assert len(cells) == n * n
    m = np.zeros((n, n))
    for i, j, v in cells:
        m[int(i), int(j)] = float(v)
    assert np.allclose(m.sum(1), 1.0, atol=1e-3)
    assert "layer 1, head 1" in out


def test_figure_titles_from_run_data_are_not_rendered_as_html():
    """Issue 15 kind 6: plotly renders <a href>, <b>, ... in titles; a hostile method or run name in a
    title must reach the page as text (escaped), in every figure helper that takes a title."""
    import numpy as np
    import pandas as pd

    from attnexplain.dashboard import figures

    hostile = '<a href="http://example.invalid">click</a>'
    df = pd.DataFrame({"x": [1, 2], "y": [0.1, 0.2], "c": ["a", "b"]})
    made = [
        figures.layer_head_heatmap(np.zeros((2, 3)), title=hostile, colorbar_title=hostile),
        figures.histogram(np.array([0.1, 0.2]), title=hostile),
        figures.bars(df, x="x", y="y", color="c", title=hostile),
        figures.curves(df, x="x", y="y", color="c", title=hostile),
        figures.token_bar(np.array([0.1, 0.2]), ["a", "b"], title=hostile)[0],
    ]
    for fig in made:
        text = fig.layout.title.text or ""
        assert "<a " not in text and "&lt;a href" in text, text


def test_heatmap_token_labels_are_escaped_for_plotly():
    """Tick and hover text of a heatmap take plotly's HTML subset: a token `<b>x</b>` is shown as
    typed, not drawn bold (and no tag of the text reaches the page)."""
    from attnexplain.dashboard.figures import attention_heatmap

    tokens = ["[CLS]", "<b>x</b>", "a&b", "[SEP]"]
    fig, _ = attention_heatmap(np.full((4, 4), 0.25), tokens, title="L0 H0")
    shown = [str(t) for trace in fig.data for t in list(trace.x) + list(trace.y)]
    assert shown and not any("<b>" in t for t in shown), shown
    assert any("&lt;b&gt;x&lt;/b&gt;" in t for t in shown) and any("a&amp;b" in t for t in shown), shown

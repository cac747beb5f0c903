"""The dashboard's Queries x individuals page (learned-query set decoder on a social scene), under
Streamlit's AppTest and in headless Chromium, with a tiny random set decoder saved in a temporary
model cache; and its figure builders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "attnexplain" / "dashboard" / "streamlit_app.py")


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    import torch

    from attnexplain.set_decoder import SetDecoder, SetDecoderConfig, save_set_decoder

    cache = tmp_path_factory.mktemp("cache")
    torch.manual_seed(0)
    model = SetDecoder(SetDecoderConfig(num_queries=6, d_model=32, n_heads=4, n_decoder_layers=2))
    save_set_decoder(model.eval(), cache / "models" / "set-decoder-tiny-test", metrics={"eval_f1": 0.25})
    return cache


def _app(monkeypatch, cache: Path, runs: Path) -> AppTest:
    monkeypatch.setenv("ATTNEXPLAIN_CACHE", str(cache))
    monkeypatch.setenv("ATTNEXPLAIN_RUNS_DIR", str(runs))
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("app_pages/queries.py")
    at.run()
    return at


def _text(at: AppTest) -> str:
    import re

    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "title", "subheader", "code"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return re.sub(r"\\(.)", r"\1", "\n".join(parts))


def _arr(v) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array ``{"dtype", "bdata" (base64), "shape"}``."""
    import base64

    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if shape:
            a = a.reshape([int(x) for x in str(shape).split(",")])
        return a.astype(float)
    return np.asarray(v, dtype=float)


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(p.proto.spec) for p in at.get("plotly_chart")]


def test_queries_page_draws_the_scene_the_groups_and_every_query(model_cache, tmp_path, monkeypatch):
    from attnexplain.set_decoder import ACTIVITIES, load_scenes

    at = _app(monkeypatch, model_cache, tmp_path)
    assert not at.exception, [e.value for e in at.exception]
    text = _text(at)
    assert "Queries x individuals" in text and "6 learned queries" in text and "validation group F1 0.250" in text
    scene = load_scenes("test")[0]
    assert f"individuals: {scene.n}" in text and f"gold groups: {len(scene.groups)}" in text
    at.toggle(key="sd_all_queries").set_value(True).run()  # a random model may predict no group: show every query
    assert not at.exception, [e.value for e in at.exception]
    figs = _figures(at)
    assert len(figs) == 2
    scene_fig, heat = figs
    # the scene: one legend entry per gold group with its activity and size, the heading strokes, the colour bar
    names = [t.get("name") for t in scene_fig["data"]]
    for g, members in enumerate(scene.groups):
        act = ACTIVITIES[scene.activities[g]]
        n = len(members)
        assert f"gold group {g + 1}: {act} ({n} {'person' if n == 1 else 'people'})" in names, names
    assert "heading" in names
    assert scene_fig["layout"]["legend"]["title"]["text"] == "gold groups"
    assert scene_fig["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "attention"
    assert scene_fig["layout"]["xaxis"]["title"]["text"] == "x (m)" and scene_fig["layout"]["yaxis"]["title"]["text"] == "y (m)"
    assert scene_fig["layout"]["title"]["text"].startswith("query ")
    # the marker colours are the chosen query's attention row, which sums to 1 over the individuals
    colours = np.concatenate([_arr(t["marker"]["color"]) for t in scene_fig["data"][1:]])
    assert len(colours) == scene.n and abs(colours.sum() - 1.0) < 1e-5
    # the heatmap: every query x every individual, labelled with the gold groups
    assert heat["layout"]["xaxis"]["title"]["text"] == "individual (gold group)"
    assert heat["layout"]["yaxis"]["title"]["text"] == "query"
    z = _arr(heat["data"][0]["z"])
    assert z.shape == (6, scene.n) and np.allclose(z.sum(1), 1.0, atol=1e-5)
    assert all(any(f"(g{g + 1})" in x for x in heat["data"][0]["x"]) for g in range(len(scene.groups)))
    assert "Predicted and gold groups" in _text(at)
    gold = at.dataframe[-1].value  # the gold groups table (last on the page)
    assert list(gold["activity"]) == [ACTIVITIES[a] for a in scene.activities]
    # another view and scene: rollout rows also sum to 1 over the individuals
    at.selectbox(key="sd_view").set_value("rollout").run()
    at.selectbox(key="sd_scene").set_value(1).run()
    assert not at.exception, [e.value for e in at.exception]
    second = load_scenes("test")[1]
    z = _arr(_figures(at)[1]["data"][0]["z"])
    assert z.shape == (6, second.n) and "rollout across the decoder layers" in _figures(at)[1]["layout"]["title"]["text"]


def test_queries_page_without_a_trained_model_says_how_to_train_one(tmp_path, monkeypatch):
    at = _app(monkeypatch, tmp_path / "empty-cache", tmp_path)
    assert not at.exception, [e.value for e in at.exception]
    assert "No trained set decoder" in _text(at) and "train_set_decoder" in _text(at)
    assert not at.get("plotly_chart")


def test_scene_figures_are_valid_plotly_and_escape_names():
    import plotly.graph_objects as go

    from attnexplain.dashboard.scene_figures import individual_labels, query_individual_heatmap, scene_attention

    groups = [[0, 2], [1], [3, 4, 5]]
    w = np.array([0.1, 0.2, 0.3, 0.0, 0.25, 0.15])
    fig = scene_attention([0, 1, 2, 3, 4, 5], [1, 1, 2, 2, 3, 3], [0, 1, 2, 3, 0, 1], groups, w,
                          activities=["<b>talking</b>", "walking", "waiting"], title="<i>q</i>")
    go.Figure(fig.to_dict())
    names = [t.name for t in fig.data]
    assert "gold group 1: &lt;b&gt;talking&lt;/b&gt; (2 people)" in names and "gold group 2: walking (1 person)" in names
    assert fig.layout.title.text == "&lt;i&gt;q&lt;/i&gt;"
    # each individual's marker colour is its weight, whatever group trace it sits in
    seen = {}
    for t in fig.data[1:]:
        for label, c in zip(t.text, t.marker.color):
            seen[int(label[1:])] = c
    assert [seen[j] for j in range(6)] == w.tolist()
    heat = query_individual_heatmap(np.arange(12, dtype=float).reshape(2, 6), groups)
    go.Figure(heat.to_dict())
    assert list(heat.data[0].x) == ["p0 (g1)", "p2 (g1)", "p1 (g2)", "p3 (g3)", "p4 (g3)", "p5 (g3)"]
    assert np.asarray(heat.data[0].z)[0].tolist() == [0, 2, 1, 3, 4, 5]  # columns follow the labels
    assert individual_labels(groups, 6)[1] == "p1 (g2)"
    with pytest.raises(ValueError, match="one value per individual"):
        scene_attention([0, 1], [0, 1], [0, 0], groups, w)


@pytest.mark.browser
def test_queries_page_in_chromium(model_cache, tmp_path):
    """The page in a real browser: the scene and the heatmap are drawn, the legend shows the gold groups."""
    from test_app_browser import browser_page, browser_unavailable, nav, no_exception, settled, shot, streamlit_app

    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    with streamlit_app(tmp_path, env={"ATTNEXPLAIN_CACHE": str(model_cache)}) as url, browser_page(height=2000) as page:
        page.goto(url)
        settled(page)
        nav(page, "Queries x individuals")
        settled(page, text="Predicted and gold groups", timeout=90)
        page.get_by_text("Show the queries that predict no group too").click()
        settled(page, plots=2, text="Predicted and gold groups", timeout=90)
        no_exception(page)
        legend = page.eval_on_selector_all(".js-plotly-plot .legendtext", "els => els.map(e => e.textContent)")
        assert any(t.startswith("gold group 1: ") for t in legend), legend
        titles = page.eval_on_selector_all(".js-plotly-plot .xtitle, .js-plotly-plot .ytitle",
                                           "els => els.map(e => e.textContent)")
        assert "individual (gold group)" in titles and "query" in titles and "x (m)" in titles, titles
        shot(page, "queries")

"""Queries x individuals: the learned-query set decoder on one social scene.

Pick a trained set decoder (folders with ``set_decoder.json`` under ``cache_dir()/models``, made by
``attnexplain.set_decoder.train_set_decoder``), a scene and an attention view; the page draws the
scene from above with the gold groups (legend) coloured by one query's attention over the
individuals, the queries x individuals heatmap, and the predicted groups next to the gold ones.
Everything is computed by attnexplain's public API (``load_set_decoder``, ``capture_scenes``,
``cross_attention_maps``, ``query_rollout``, ``predict_groups``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from attnexplain.dashboard import scene_figures, widgets
from attnexplain.data.social_scenes import ACTIVITIES, ARENA

md = widgets.escape_md

VIEWS = {
    "last": "cross-attention, last decoder layer",
    "mean": "cross-attention, mean over decoder layers",
    "effective": "effective cross-attention, last decoder layer",
    "rollout": "rollout across the decoder layers",
}

st.title("Queries x individuals")
st.caption("The learned-query set decoder: each query cross-attends to the individuals of a scene and predicts one "
           "social group (its members and activity) or no group. Here: one query's attention over the individuals, "
           "drawn on the scene with the gold groups, and every query's attention side by side.")


def _models() -> dict[str, str]:
    """Trained set decoders: folder name -> path (folders holding set_decoder.json under the model cache)."""
    from attnexplain.models import cache_dir

    root = cache_dir() / "models"
    try:
        found = sorted(p for p in root.iterdir() if (p / "set_decoder.json").is_file())
    except OSError:
        found = []
    return {p.name: str(p) for p in found}


@st.cache_resource(show_spinner="Loading the set decoder...", max_entries=4)
def _load(path: str):
    from attnexplain.set_decoder import load_set_decoder

    return load_set_decoder(path)


@st.cache_resource(show_spinner="Reading the scenes...", max_entries=4)
def _scenes(split: str):
    from attnexplain.set_decoder import load_scenes

    return load_scenes(split)


models = _models()
if not models:
    from attnexplain.models import cache_dir

    st.info(f"No trained set decoder in {md(cache_dir() / 'models')}. Train one (about a minute on a CPU), then reload:")
    st.code('python -c "from attnexplain.set_decoder import SetDecoderConfig, train_set_decoder; '
            'train_set_decoder(SetDecoderConfig(num_queries=24))"', language="bash")
    st.stop()

c1, c2, c3 = st.columns([2, 1, 2])
name = c1.selectbox("Set decoder", list(models), key="sd_model")
split = c2.selectbox("Split", ["test", "validation"], key="sd_split")
view = c3.selectbox("Attention", list(VIEWS), format_func=VIEWS.get, key="sd_view")
try:
    model, meta = _load(models[name])
except Exception as exc:  # noqa: BLE001 - a broken folder: say which and go on
    st.error(f"Cannot load {md(name)}: {md(exc)}")
    st.stop()
scenes = _scenes(split)
scene_i = st.selectbox("Scene", list(range(len(scenes))), key="sd_scene", format_func=lambda i: (
    f"{scenes[i].id} — {scenes[i].n} people, {len(scenes[i].groups)} gold groups"))
scene = scenes[scene_i]
cfg = model.config
metrics = meta.get("metrics") or {}
st.caption(f"{md(name)}: {cfg.num_queries} {md(cfg.query_init)} queries, "
           f"{'with' if cfg.query_self_attention else 'without'} self-attention among the queries, "
           f"{cfg.n_decoder_layers} decoder layers"
           + (f"; validation group F1 {metrics['eval_f1']:.3f}" if isinstance(metrics.get("eval_f1"), float) else ""))


@st.cache_data(show_spinner="Running the set decoder...", max_entries=64)
def _explain(path: str, split: str, index: int, view: str) -> tuple[np.ndarray, list, list]:
    """(Q, N) attention of every query over the scene's individuals (mean over heads), predicted
    groups ``(query, members, activity)`` and every query's predicted class."""
    import torch

    from attnexplain.set_decoder import capture_scenes, collate, cross_attention_maps, predict_groups, query_rollout

    model, _ = _load(path)
    batch = collate([_scenes(split)[index]])
    with torch.no_grad():
        out = model(**batch.inputs())
    cap = capture_scenes(model, batch)
    if view == "rollout":
        att = query_rollout(cap)[0]
    else:
        maps = cross_attention_maps(cap, effective=view == "effective")[0]  # (L, H, Q, N)
        att = (maps.mean(0) if view == "mean" else maps[-1]).mean(0)
    classes = out.activity_probs[0].argmax(-1).tolist()
    return att.detach().double().cpu().numpy(), predict_groups(out, batch)[0], classes


att, predicted, classes = _explain(models[name], split, scene_i, view)
no_group = len(ACTIVITIES)
group_queries = [q for q, _, _ in predicted]
m1, m2, m3 = st.columns(3)
m1.metric("individuals", scene.n)
m2.metric("gold groups", len(scene.groups))
m3.metric("predicted groups", len(predicted))


def _query_label(q: int) -> str:
    hit = next(((members, act) for qq, members, act in predicted if qq == q), None)
    if hit is None:
        return f"query {q}: no group" if classes[q] == no_group else f"query {q}: {ACTIVITIES[classes[q]]}, no member"
    members, act = hit
    return f"query {q}: {ACTIVITIES[act]} " + "{" + ", ".join(f"p{j}" for j in members) + "}"


order = group_queries + [q for q in range(att.shape[0]) if q not in group_queries]
show_all = st.toggle("Show the queries that predict no group too", value=False, key="sd_all_queries")
shown = order if show_all or not group_queries else group_queries
q = st.selectbox("Query", shown, format_func=_query_label, key="sd_query")
activities = [ACTIVITIES[a] for a in scene.activities]
fig = scene_figures.scene_attention(scene.x, scene.y, scene.heading, scene.groups, att[q], activities=activities,
                                    title=f"{_query_label(q)} — {VIEWS[view]}", colorbar_title="attention",
                                    arena=ARENA)
labels = scene_figures.individual_labels(scene.groups, scene.n)
widgets.show_figure(fig, key="sd-scene", name=f"{name}-{scene.id}-query{q}-{view}",
                    data=pd.DataFrame({"individual": labels, "x": scene.x, "y": scene.y, "attention": att[q]}))
st.caption("Markers: the individuals seen from above (a stroke shows where each faces), one symbol per gold group; "
           "colour: the chosen query's attention over them.")
heat = scene_figures.query_individual_heatmap(att[shown], scene.groups, query_labels=[_query_label(x) for x in shown],
                                              title=f"Every query's attention over the individuals — {VIEWS[view]}",
                                              colorbar_title="attention")
widgets.show_figure(heat, key="sd-heat", name=f"{name}-{scene.id}-queries-{view}",
                    data=lambda: pd.DataFrame(att[shown], index=[_query_label(x) for x in shown], columns=labels)
                    .reset_index(names="query"))

st.subheader("Predicted and gold groups")


def _best(members: list[int]) -> tuple[str, float]:
    best, score = "", 0.0
    for g, gold in enumerate(scene.groups):
        iou = len(set(members) & set(gold)) / len(set(members) | set(gold))
        if iou > score:
            best, score = f"gold group {g + 1} ({activities[g]})", iou
    return best, score


rows = []
for qq, members, act in predicted:
    best, score = _best(members)
    rows.append({"query": qq, "predicted activity": ACTIVITIES[act], "predicted members": ", ".join(f"p{j}" for j in members),
                 "closest gold group": best, "IoU": round(score, 3)})
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="sd_groups")
else:
    st.info("The model predicts no group in this scene.")
gold = pd.DataFrame({"gold group": [f"gold group {g + 1}" for g in range(len(scene.groups))],
                     "activity": activities,
                     "members": [", ".join(f"p{j}" for j in members) for members in scene.groups]})
st.dataframe(gold, hide_index=True, key="sd_gold")

"""Learned-query set decoder on synthetic social scenes: does query design matter once queries are many?

Claim tested (the seed document, *Design and Analysis of Efficient Attention in Transformers for
Social Group Activity Recognition*): a transformer decoder whose learned query embeddings
cross-attend to the features of individuals can detect social groups (each query gathers one
group, its members without duplication, and its activity), but with many queries the attention
becomes ineffective unless the queries and the decoder's self-attention are designed well; the
paper compares such designs.

What we run (public API: ``attnexplain.set_decoder``, ``attnexplain.capture`` underneath):

* data: the project's synthetic social scenes (``attnexplain.data.social_scenes``; 1,600 train /
  200 validation / 400 test scenes of 4-12 individuals, 1-6 groups, singletons included, 4
  activities; gold groups known by construction and equal to the proximity / orientation / motion
  rule's connected components);
* designs: query initialisation (``learned``: Q free vectors; ``conditioned``: a learned vector
  plus a projection of individual q mod N's encoded features) x self-attention among the queries
  (on / off) x number of queries (Q = 6 = the most groups a scene has, and Q = 24 = 4x);
  everything else fixed (d_model 32, 4 heads of dimension 8, 1 encoder layer, 2 decoder layers,
  the same 30 epochs, batch 64, learning rate 2e-3 and seed);
* per design and seed: group-detection precision / recall / F1 (IoU >= 0.5, one-to-one; duplicates
  are false positives) and activity accuracy of the Hungarian-matched queries on the test split;
  membership AUPRC of each explanation (raw cross-attention of the last layer and the mean over
  layers, effective cross-attention, rollout across decoder layers with head-mean and with
  gradient-weighted maps (Chefer et al. 2021), the model's own member probabilities, a random
  ranking) for every gold group's matched query; ERASER comprehensiveness
  / sufficiency AOPC of each ranking (individuals removed from every attention, the decoder's
  initial queries held fixed); the mean normalised entropy of the last layer's cross-attention
  rows (1 = uniform over the scene's individuals). Definitions: ``attnexplain/set_decoder/train.py``
  and ``explain.py`` docstrings.

Verdict rule (printed with the numbers): the claim "query design matters once queries are many"
holds here when the spread of group-detection F1 across the four designs (max - min of the
seed-mean) is at least 0.03 larger with Q = 24 than with Q = 6 *and* larger than twice the
largest seed standard deviation at Q = 24; with one seed only the first condition is checked and
the verdict says so.

Run: ``python analyses/learned_queries.py`` (defaults: 8 designs x 1 seed, 30 epochs each: about
40 s of training per design on an idle core, ~4-5 min on the loaded shared machine; ``--seeds 0,1,2``
adds seeds and the seed spread to the verdict; trained models are cached in
``cache_dir()/"models"/set-decoder-*`` and reused).
``--quick``: 2 tiny designs, 2 epochs, few scenes (the smoke test). Outputs:
``analyses/out/learned_queries/`` (``table.md``, ``results.csv``, ``figures.html``, ``manifest.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "learned_queries"
METHODS = ("cross_last", "cross_mean", "effective_last", "rollout", "grad_rollout", "member_probs", "random")
FAITH_METHODS = ("cross_last", "rollout", "grad_rollout", "member_probs", "random")
METHOD_LABELS = {"cross_last": "cross-attn (last)", "cross_mean": "cross-attn (mean)",
                 "effective_last": "effective (last)", "rollout": "rollout", "grad_rollout": "grad. rollout",
                 "member_probs": "model's member probs",
                 "random": "random"}


def designs(queries: list[int]) -> list[dict]:
    return [dict(query_init=i, query_self_attention=s, num_queries=q)
            for q in queries for i in ("learned", "conditioned") for s in (True, False)]


def evaluate_design(model, scenes, faith_scenes, batch_size: int) -> dict:
    import numpy as np

    from attnexplain import set_decoder as sd
    from attnexplain.set_decoder import explain as sx

    row = {}
    ev = sd.evaluate(model, scenes, batch_size=batch_size)
    row.update({"f1": ev["f1"], "precision": ev["precision"], "recall": ev["recall"],
                "activity_accuracy": ev["activity_accuracy"], "predicted_groups": ev["predicted_groups"],
                "gold_groups": ev["gold_groups"]})
    aps = {m: [] for m in METHODS}
    ent_m, ent_a, weights = [], [], []
    for start in range(0, len(scenes), batch_size):
        batch = sd.collate(scenes[start : start + batch_size])
        scores, out, cap = sx.method_scores(model, batch, METHODS, seed=start)
        for m, vals in sx.membership_auprc(scores, out, batch).items():
            aps[m] += vals
        e = sx.attention_entropy(cap, out, batch)
        ent_m.append(e["matched"])
        ent_a.append(e["all"])
        weights.append(len(batch))
    for m in METHODS:
        row[f"auprc_{m}"] = float(np.mean(aps[m]))
    row["entropy_matched"] = float(np.average(ent_m, weights=weights))
    row["entropy_all"] = float(np.average(ent_a, weights=weights))
    row["pairs"] = len(aps[METHODS[0]])
    if faith_scenes:
        comp = {m: [] for m in FAITH_METHODS}
        suff = {m: [] for m in FAITH_METHODS}
        for start in range(0, len(faith_scenes), batch_size):
            batch = sd.collate(faith_scenes[start : start + batch_size])
            scores, out, _ = sx.method_scores(model, batch, FAITH_METHODS, seed=10_000 + start)
            res = sx.membership_faithfulness(model, batch, scores, out)
            for m in FAITH_METHODS:
                comp[m].append((res[m]["comprehensiveness"], res[m]["pairs"]))
                suff[m].append((res[m]["sufficiency"], res[m]["pairs"]))
        for m in FAITH_METHODS:
            row[f"comp_{m}"] = float(np.average([v for v, _ in comp[m]], weights=[w for _, w in comp[m]]))
            row[f"suff_{m}"] = float(np.average([v for v, _ in suff[m]], weights=[w for _, w in suff[m]]))
    return row


def verdict(summary, queries: list[int], n_seeds: int) -> tuple[bool | None, str]:
    """The rule of the module docstring, from the seed-mean table."""
    lo, hi = min(queries), max(queries)
    spread = {q: float(summary[summary.num_queries == q]["f1"].max() - summary[summary.num_queries == q]["f1"].min())
              for q in (lo, hi)}
    sd_hi = float(summary[summary.num_queries == hi]["f1_sd"].max()) if n_seeds > 1 else float("nan")
    cond1 = spread[hi] >= spread[lo] + 0.03
    cond2 = n_seeds > 1 and spread[hi] > 2 * sd_hi
    holds = cond1 and (cond2 if n_seeds > 1 else True)
    text = (f"F1 spread across the four designs: {spread[lo]:.3f} with Q = {lo}, {spread[hi]:.3f} with Q = {hi} "
            f"(rule: Q = {hi} spread >= Q = {lo} spread + 0.03: {'yes' if cond1 else 'no'}")
    if n_seeds > 1:
        text += f"; and > 2 x the largest seed s.d. at Q = {hi} ({sd_hi:.3f}): {'yes' if cond2 else 'no'})"
    else:
        text += "; one seed only: no seed spread to compare with)"
    best_hi = summary[summary.num_queries == hi].sort_values("f1", ascending=False).iloc[0]
    worst_hi = summary[summary.num_queries == hi].sort_values("f1").iloc[0]
    text += (f". Best at Q = {hi}: {best_hi.design} (F1 {best_hi.f1:.3f}); worst: {worst_hi.design} "
             f"(F1 {worst_hi.f1:.3f}).")
    return holds, text


def scene_attention(model, scene) -> dict:
    """The last decoder layer's cross-attention (mean over heads, queries x individuals) of one
    scene, with the gold groups and each query's matched group (for the figure)."""
    from attnexplain import set_decoder as sd
    from attnexplain.set_decoder import explain as sx

    batch = sd.collate([scene])
    scores, out, _ = sx.method_scores(model, batch, ("cross_last",))
    (qi, gi), = sd.train.match_batch(out, batch)
    return {"attention": scores["cross_last"][0].numpy(), "matched": {int(q): int(g) for q, g in zip(qi, gi)},
            "membership": scene.membership(), "x": scene.x, "y": scene.y, "heading": scene.heading}


def scene_figure(examples: dict, scene_id: str):
    """Per design: the scene (individuals coloured by gold group) and the cross-attention heatmap."""
    import math

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(examples)
    fig = make_subplots(rows=len(names), cols=2, column_widths=[0.35, 0.65],
                        subplot_titles=[t for n in names for t in (f"{n}: scene (colour = gold group)",
                                                                   f"{n}: last-layer cross-attention")])
    for r, name in enumerate(names, start=1):
        ex = examples[name]
        fig.add_trace(go.Scatter(x=ex["x"], y=ex["y"], mode="markers+text", text=[str(j) for j in range(len(ex["x"]))],
                                 textposition="top center", showlegend=False,
                                 marker=dict(size=12, color=ex["membership"], colorscale="Turbo",
                                             symbol="triangle-up", angle=[90 - math.degrees(h) for h in ex["heading"]])),
                      r, 1)
        labels = [f"q{q}" + (f" -> g{ex['matched'][q]}" if q in ex["matched"] else "") for q in range(len(ex["attention"]))]
        fig.add_trace(go.Heatmap(z=ex["attention"], x=[f"{j} (g{g})" for j, g in enumerate(ex["membership"])], y=labels,
                                 colorscale="Blues", showscale=r == 1, colorbar=dict(title="attention")), r, 2)
    fig.update_layout(height=330 * len(names), width=1250,
                      title=f"Test scene {scene_id}: where each query looks (arrows = headings)")
    return fig


def figures(summary, queries):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("group-detection F1", "membership AUPRC (last-layer cross-attention)",
                                                        "cross-attention entropy (matched queries)"))
    for q in queries:
        part = summary[summary.num_queries == q]
        names = [f"{i}{'+SA' if s else ''}" for i, s in zip(part.query_init, part.query_self_attention)]
        err = dict(type="data", array=list(part["f1_sd"].fillna(0)))
        fig.add_trace(go.Bar(x=names, y=part["f1"], name=f"Q = {q}", error_y=err, legendgroup=str(q)), 1, 1)
        fig.add_trace(go.Bar(x=names, y=part["auprc_cross_last"], name=f"Q = {q}", legendgroup=str(q),
                             showlegend=False), 1, 2)
        fig.add_trace(go.Bar(x=names, y=part["entropy_matched"], name=f"Q = {q}", legendgroup=str(q),
                             showlegend=False), 1, 3)
    fig.update_layout(barmode="group", height=450, width=1300, title="Query designs of the set decoder")
    return [("Designs x number of queries (seed means; error bars: seed s.d.)", fig)]


def main(argv: list[str] | None = None) -> dict:
    import pandas as pd
    import torch

    from attnexplain import set_decoder as sd

    p = C.analysis_parser(__doc__, batch_size=64)
    p.add_argument("--queries", default="6,24", help="numbers of queries, comma-separated (first = the most groups)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=float, default=30.0)
    p.add_argument("--faith-scenes", type=int, default=120, help="test scenes scored for faithfulness (0 = skip)")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--models-dir", default=None, help="parent of the cached model folders (default cache_dir()/models)")
    args = p.parse_args(argv)
    train_limit = None
    if args.quick:
        args.queries, args.seeds, args.epochs, args.faith_scenes, args.test_limit = "6,12", "0", 2.0, 8, 24
        train_limit = 64
    C.set_threads(args.threads)
    run = C.Run(NAME, args)
    out = C.out_dir(NAME, args.out)
    queries = [int(q) for q in args.queries.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    scenes = sd.load_scenes(args.split, limit=args.test_limit)
    faith = scenes[: args.faith_scenes]
    models_dir = args.models_dir
    if args.quick and models_dir is None:
        models_dir = str(out / "models")
    rows, infos = [], []
    examples: dict[str, dict] = {}
    # a scene with several groups of different sizes and a singleton, for the figure
    example_scene = next((s for s in scenes if len(s.groups) >= 3 and any(len(g) == 1 for g in s.groups)
                          and any(len(g) >= 3 for g in s.groups)), scenes[0])
    for d in designs(queries):
        if args.quick and (d["query_self_attention"] is False):
            continue
        for seed in seeds:
            cfg = sd.SetDecoderConfig(**d, **({"d_model": 16, "n_heads": 4} if args.quick else {}))
            settings = sd.TrainingSettings(epochs=args.epochs, seed=seed, train_limit=train_limit)
            C.log(f"{sd.design_name(cfg)} seed {seed}: train / load")
            torch.manual_seed(seed)
            model, metrics = sd.train_set_decoder(cfg, settings, out_dir=models_dir)
            row = {"design": sd.design_name(cfg), **d, "seed": seed, "train_seconds": metrics.get("train_seconds"),
                   "final_loss": metrics.get("final_loss"), "val_f1": metrics.get("eval_f1")}
            row.update(evaluate_design(model, scenes, faith, args.batch_size))
            if d["num_queries"] == max(queries) and seed == seeds[0]:
                examples[sd.design_name(cfg)] = scene_attention(model, example_scene)
            rows.append(row)
            infos.append({"design": row["design"], "seed": seed, "path": metrics.get("path"),
                          "train_seconds": metrics.get("train_seconds"), "steps": metrics.get("steps")})
            C.log(f"  F1 {row['f1']:.3f} act {row['activity_accuracy']:.3f} AUPRC cross {row['auprc_cross_last']:.3f} "
                  f"rollout {row['auprc_rollout']:.3f} random {row['auprc_random']:.3f} entropy {row['entropy_matched']:.3f}")
    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False)
    keys = ["design", "query_init", "query_self_attention", "num_queries"]
    num = [c for c in df.columns if c not in keys + ["seed"] and pd.api.types.is_numeric_dtype(df[c])]
    summary = df.groupby(keys, sort=False)[num].mean().reset_index()
    summary["f1_sd"] = df.groupby(keys, sort=False)["f1"].std(ddof=1).values if len(seeds) > 1 else float("nan")
    holds, text = verdict(summary, queries, len(seeds))

    main_cols = ["design", "f1"] + (["f1_sd"] if len(seeds) > 1 else []) + ["precision", "recall", "activity_accuracy", "entropy_matched", "entropy_all"]
    t_main = summary[main_cols].copy()
    ap_cols = ["design"] + [f"auprc_{m}" for m in METHODS]
    t_ap = summary[ap_cols].copy()
    sections = [
        ("Group detection, activity and attention entropy (test split, seed means)",
         C.md_table(t_main, headers={"f1": "group F1", "f1_sd": "F1 s.d. (seeds)", "activity_accuracy": "activity acc.",
                                     "entropy_matched": "entropy (matched queries)", "entropy_all": "entropy (all queries)"})),
        ("Membership recovery: AUPRC of each method's scores vs the gold members (matched queries)",
         C.md_table(t_ap, headers={f"auprc_{m}": METHOD_LABELS[m] for m in METHODS})),
    ]
    if args.faith_scenes > 0:
        f_cols = ["design"] + [f"comp_{m}" for m in FAITH_METHODS] + [f"suff_{m}" for m in FAITH_METHODS]
        sections.append((f"Faithfulness: ERASER AOPC on the first {len(faith)} test scenes (comp. higher = better, "
                         "suff. lower = better)",
                         C.md_table(summary[f_cols], headers={**{f"comp_{m}": f"comp. {METHOD_LABELS[m]}" for m in FAITH_METHODS},
                                                              **{f"suff_{m}": f"suff. {METHOD_LABELS[m]}" for m in FAITH_METHODS}})))
    verdict_line = "**holds here**" if holds else "**does not hold here**"
    n_tr = len(sd.load_scenes("train", limit=train_limit))
    header = [
        "**Claim** (seed document: *Design and Analysis of Efficient Attention in Transformers for Social Group "
        "Activity Recognition*): with many learned queries the decoder's attention becomes ineffective unless the "
        "queries and the decoder's self-attention are designed well, so query design matters once queries are many.",
        f"**Do our numbers agree?** The claim {verdict_line} by the rule in the script's docstring: {text}",
        f"**Setup**: synthetic social scenes ({n_tr} train, {len(scenes)} {args.split} scenes; faithfulness on "
        f"{len(faith)}); designs = query init (learned / conditioned) x query self-attention (+SA / none) x Q in "
        f"{queries}; seeds {seeds}; {args.epochs:g} epochs, AdamW lr 2e-3, batch 64; d_model "
        f"{16 if args.quick else 32}, 4 heads, 1 encoder + 2 decoder layers. Group F1: IoU >= "
        "0.5, one-to-one, duplicates are false positives. Activity accuracy: Hungarian-matched queries. Entropy: "
        "last decoder layer's cross-attention rows / log(N), mean over heads. Effective attention equals raw "
        "attention in scenes with N <= 8 individuals (head dimension 8). Runtime "
        f"{run.seconds:.0f} s.",
    ]
    C.write_table(out, "Learned-query set decoder: query designs, groups and their explanations", header, sections)
    figs = figures(summary, queries)
    if examples:
        figs.append((f"One test scene ({example_scene.id}) under each design with Q = {max(queries)}",
                     scene_figure(examples, example_scene.id)))
    C.write_figures(out, figs, "Learned-query set decoder")
    man = run.manifest(out, models=infos, data={"split": args.split, "scenes": len(scenes), "faith_scenes": len(faith)},
                       verdict=holds, files=["table.md", "results.csv", "figures.html", "manifest.json"])
    C.log(f"wrote {out} in {run.seconds:.0f} s")
    return {"out": out, "results": df, "summary": summary, "manifest": man, "holds": holds}


if __name__ == "__main__":
    main()

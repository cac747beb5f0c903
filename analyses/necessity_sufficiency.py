"""Necessity and sufficiency of attention and of attention-based explanations (after Naim & Asher, ECAI 2024).

Claims tested.

1. Sufficiency of the effective part (Brunner et al. 2020; Naim & Asher 2024: "efficient
   attention" isolates the effective components, is a probability distribution and gives
   minimally necessary and sufficient conditions for the output). Replacing every attention
   matrix by its effective part ``A_eff`` - or by the output-preserving distribution nearest to
   it (the project's own formulation of Naim & Asher's idea, ``docs/methods.md``) -
   leaves the output unchanged (expected TVD 0 up to float error); adding a random null-space
   perturbation too.
2. Necessity: keeping only the null part ``A - A_eff`` (the head then adds nothing), uniform
   attention (Wiegreffe & Pinter 2019) or permuted attention (Jain & Wallace 2019) changes
   the output.
3. Minimal sufficient key sets: per head and readout row, the sparsest output-preserving
   distribution (an LP vertex) has at most ``rank(T) + 1`` non-zeros; how small are they in
   practice, and how many top keys per row (by raw or by effective weight) keep the prediction?
4. Faithfulness of token-level explanations (ERASER, DeYoung et al. 2020): comprehensiveness
   (necessity, higher = better) and sufficiency (lower = better) AOPC of each method against a
   random ranking; an explanation worth its name should beat random on both.
5. Plausibility on a synthetic task whose deciding tokens are known: token F1 and AUPRC against
   the gold rationale.

Data and models (``--tasks``):

* rotten-tomatoes / ``minilm-rotten-tomatoes`` (texts cut to 64 tokens);
* bbc-news / ``minilm-bbc-news`` (cut to 128 tokens: the LP and QP solves are per row and head);
* drug-reviews / ``minilm-rotten-tomatoes``: there is no drug-review classifier, so the
  rotten-tomatoes sentiment classifier is applied to the reviews (cut to 128 tokens). All the
  measures here are relative to the model's own prediction, so they remain meaningful; its
  accuracy on the 3-class drug labels is not (and is not reported);
* synthetic-negation / ``tiny-synthetic-negation`` (``prepare_tiny``: 2-layer BERT, 4 heads of
  dimension 16, word-level tokenizer, gold rationales). Its inputs are ~16 tokens, at most the
  head dimension, so there ``A_eff == A`` (no null space): claims 1-2 are trivial there.

Method (public API: ``attnexplain.ablations``, ``attnexplain.methods``, ``attnexplain.capturing``,
``attnexplain.functional``, ``attnexplain.data.words``):

* ``intervention_effects`` at all layers and heads: effective, null_perturbation,
  minus_effective, uniform, permute on every example; distribution (nearest; one QP per row and
  head, slow) on the first ``--n-distribution`` examples. TVD of the class distributions and
  flip rate vs the unmodified model.
* ``attention_distribution(mode="sparsest", rows=[readout])`` per layer and head on the first
  ``--n-lp`` examples: support size vs the number of real keys n and the bound rank(T) + 1.
  ``topk_sweep`` / ``minimal_k`` (k in 1, 2, 4, 8, 16, 32 keys per row, all layers and heads):
  the smallest k whose keep-top-k keeps the prediction, ranked by raw or effective weight.
* ``faithfulness`` (delete removal, ERASER bins 1/5/10/20/50 %, ceil) of raw_attention,
  effective_attention, norm, rollout, gradient_x_input, integrated_gradients, occlusion and a
  seeded random ranking, with BCa bootstrap 95 % CIs.
* plausibility: token scores summed to whitespace words (``word_index_of_tokens``,
  ``word_scores``), ``plausibility`` (top-|gold| token F1, AUPRC).

Run: ``python analyses/necessity_sufficiency.py`` (defaults: 40 rotten-tomatoes, 20 bbc-news,
24 drug-reviews and 60 synthetic examples; about 10-15 min on an idle 2-core machine). ``--quick`` for the smoke test.
Outputs: ``analyses/out/necessity_sufficiency/`` (table.md, CSVs, figures.html, manifest.json).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "necessity_sufficiency"
KINDS = ("effective", "null_perturbation", "minus_effective", "uniform", "permute")
METHODS = ("raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "integrated_gradients",
           "occlusion")
DEFAULT_TASKS = ("rotten-tomatoes:minilm-rotten-tomatoes:64:40,bbc-news:minilm-bbc-news:128:20,"
                 "drug-reviews:minilm-rotten-tomatoes:128:24,synthetic-negation:tiny-synthetic-negation:64:60")


def interventions(lm, texts, n_dist: int, batch_size: int):
    from attnexplain.ablations import intervention_effects

    df = intervention_effects(lm, texts, KINDS, batch_size=batch_size)
    if n_dist > 0:
        df2 = intervention_effects(lm, texts[:n_dist], ("distribution",), batch_size=batch_size)
        import pandas as pd

        df = pd.concat([df, df2], ignore_index=True)
    return df


def key_sets(lm, texts, n_lp: int, ks, batch_size: int):
    """LP support of the readout row per (example, layer, head) and the top-k sweep."""
    import numpy as np

    from attnexplain.ablations import minimal_k, topk_sweep
    from attnexplain.capturing import capture
    from attnexplain.methods.attention_methods import readout_rows, resolve_readout
    from attnexplain.functional import attention_distribution

    rows = []
    for s in range(0, min(n_lp, len(texts)), batch_size):
        batch = lm.tokenize(texts[s : min(s + batch_size, n_lp)])
        cap = capture(lm, batch)
        readout = resolve_readout("auto", lm, cap)
        mask = cap.key_mask
        for l in cap.layers():
            A = cap.attention(l).float()
            T = cap.value_transforms(l).float()
            for b in range(A.shape[0]):
                idx = mask[b].nonzero().flatten()
                n = idx.numel()
                r = readout_rows(readout, n)
                res = attention_distribution(A[b][:, idx][:, :, idx], T[b][:, idx], mode="sparsest", rows=r)
                for h in range(A.shape[1]):
                    rows.append({"example": s + b, "layer": l, "head": h, "n_keys": n,
                                 "support": int(res.support_size[h].max()), "rank": int(res.rank[h]),
                                 "residual": float(res.residual[h].max())})
    import pandas as pd

    lp = pd.DataFrame(rows)
    sweep = topk_sweep(lm, texts, ks=ks, by=("raw", "effective"), batch_size=batch_size)
    mk = minimal_k(sweep)
    return lp, mk


def verdicts(iv, lp, mk, faith, plaus) -> list[str]:
    import numpy as np

    out = []
    for task, sub in iv.groupby("task", sort=False):
        g = sub.groupby("kind")
        same = [k for k in ("effective", "distribution", "null_perturbation") if k in g.groups]
        mx = {k: g.get_group(k)["tvd"].max() for k in same}
        flips = {k: g.get_group(k)["flip"].mean() for k in same}
        ok = all(v < 1e-3 for v in mx.values()) and all(v == 0 for v in flips.values())
        out.append(f"- **{task}**, claim 1 (A_eff / distribution / null perturbation keep the output): max TVD "
                   + ", ".join(f"{k} {v:.1e}" for k, v in mx.items()) + f" -> {'AGREES' if ok else 'DISAGREES'} "
                   "(criterion: max TVD < 1e-3, no flips).")
        ch = {k: g.get_group(k)["tvd"].mean() for k in ("minus_effective", "uniform", "permute") if k in g.groups}
        out.append(f"- **{task}**, claim 2 (A - A_eff, uniform, permuted change it): mean TVD "
                   + ", ".join(f"{k} {v:.3f} (flips {g.get_group(k)['flip'].mean():.0%})" for k, v in ch.items())
                   + f" -> {'AGREES' if all(v > 0.01 for v in ch.values()) else 'PARTLY'} (criterion: mean TVD > 0.01).")
    for task, sub in lp.groupby("task", sort=False):
        bound = bool((sub["support"] <= sub["rank"] + 1).all())
        out.append(f"- **{task}**, claim 3 (sparsest distribution within rank(T) + 1 keys): support mean "
                   f"{sub['support'].mean():.1f} of {sub['n_keys'].mean():.1f} keys (bound {(sub['rank'] + 1).mean():.1f}) "
                   f"-> {'AGREES' if bound else 'DISAGREES'}; all-layer keep-top-k keeps the prediction at k = "
                   + ", ".join(f"{b}: {v:.1f}" for b, v in mk[mk.task == task].groupby("by")["min_k_keep"].mean().items())
                   + " keys per row (mean over examples).")
    for task, sub in faith.groupby("task", sort=False):
        p = sub.pivot_table(index="method", columns="metric", values="aopc")
        lo = sub.pivot_table(index="method", columns="metric", values="ci_low")
        hi = sub.pivot_table(index="method", columns="metric", values="ci_high")
        rnd = p.loc["random"]
        better = [m for m in p.index if m != "random" and p.loc[m, "comprehensiveness"] > rnd["comprehensiveness"]
                  and p.loc[m, "sufficiency"] < rnd["sufficiency"]]
        clear = [m for m in better if lo.loc[m, "comprehensiveness"] > hi.loc["random", "comprehensiveness"]
                 and hi.loc[m, "sufficiency"] < lo.loc["random", "sufficiency"]]
        att = [m for m in ("raw_attention", "effective_attention", "norm", "rollout") if m in p.index]
        out.append(f"- **{task}**, claim 4 (explanations beat random on comprehensiveness and sufficiency): "
                   f"{len(better)}/{len(p) - 1} methods do by the means ({', '.join(better) or 'none'}); with 95 % CIs "
                   f"that do not overlap random's on both metrics: {', '.join(clear) or 'none'}. Attention-based methods "
                   f"better than random by the means: {', '.join(m for m in att if m in better) or 'none'}; clearly: "
                   f"{', '.join(m for m in att if m in clear) or 'none'}. Most faithful by comprehensiveness: "
                   f"{p['comprehensiveness'].drop('random').idxmax()}.")
    for task, sub in plaus.groupby("task", sort=False):
        g = sub.groupby("method")[["token_f1", "auprc"]].mean()
        best = g["auprc"].idxmax()
        out.append(f"- **{task}**, claim 5 (plausibility): AUPRC " + ", ".join(f"{m} {v:.2f}" for m, v in g["auprc"].items())
                   + f"; best {best}; random {g.loc['random', 'auprc']:.2f}.")
    return out


def figures(faith, iv):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tasks = list(dict.fromkeys(faith.task))
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, shared_yaxes=False)
    for k, t in enumerate(tasks, start=1):
        sub = faith[faith.task == t].pivot_table(index="method", columns="metric", values="aopc").reset_index()
        fig.add_trace(go.Scatter(x=sub["sufficiency"], y=sub["comprehensiveness"], mode="markers+text", text=sub["method"],
                                 textposition="top center", showlegend=False), row=1, col=k)
    fig.update_xaxes(title_text="sufficiency AOPC (lower = better)")
    fig.update_yaxes(title_text="comprehensiveness AOPC (higher = better)", col=1)
    fig.update_layout(height=480)
    fig2 = go.Figure()
    for t, sub in iv.groupby("task", sort=False):
        g = sub.groupby("kind")["tvd"].mean()
        fig2.add_trace(go.Bar(x=list(g.index), y=list(g.values), name=t))
    fig2.update_layout(barmode="group", yaxis_title="mean output TVD vs unmodified model", yaxis_type="log", height=450)
    return [("ERASER faithfulness of explanation methods (AOPC), per task", fig),
            ("Output change under attention interventions (log scale)", fig2)]


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import pandas as pd

    p = C.analysis_parser(__doc__, batch_size=8)
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help="dataset:model:max_tokens[:n], comma-separated (n defaults to --n)")
    p.add_argument("--n", type=int, default=40, help="examples per task when the task does not say")
    p.add_argument("--n-distribution", type=int, default=6)
    p.add_argument("--n-lp", type=int, default=8)
    p.add_argument("--ks", default="1,2,4,8,16,32")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = "rotten-tomatoes:testing:bert:24:3,synthetic-negation:testing:bert:24:3"
        args.n, args.n_distribution, args.n_lp, args.ks = 3, 1, 1, "1,4"
        args.methods = "raw_attention,effective_attention,gradient_x_input"
    C.set_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*longer than.*truncated.*")
    run = C.Run(NAME, args)
    out = C.out_dir(NAME, args.out)
    from attnexplain.data import load_dataset
    from attnexplain.models import ModelNotFoundError

    methods = [m for m in args.methods.split(",") if m]
    ks = [int(k) for k in args.ks.split(",")]
    ivs, lps, mks, faiths, plauss, infos, skipped = [], [], [], [], [], [], []
    for spec in args.tasks.split(","):
        parts = spec.split(":")
        ints = [x for x in parts[-2:] if x.isdigit()]
        if len(ints) == 2 and len(parts) >= 4:
            dataset, model, max_tokens, n = parts[0], ":".join(parts[1:-2]), int(parts[-2]), int(parts[-1])
        else:
            dataset, model, max_tokens, n = parts[0], ":".join(parts[1:-1]), int(parts[-1]), args.n
        task = f"{dataset} / {model}"
        try:
            lm = C.load(model)
        except ModelNotFoundError as exc:
            skipped.append(f"{task}: {exc}")
            C.log(f"skipped {task}: {exc}")
            continue
        ds = load_dataset(dataset, split=args.split, limit=n)
        texts = C.truncate_texts(lm, ds.texts, max_tokens)
        C.log(f"{task}: interventions on {len(texts)} texts")
        iv = interventions(lm, texts, args.n_distribution, args.batch_size)
        ivs.append(iv.assign(task=task))
        C.log(f"{task}: minimal key sets")
        lp, mk = key_sets(lm, texts, args.n_lp, ks, args.batch_size)
        lps.append(lp.assign(task=task))
        mks.append(mk.assign(task=task))
        C.log(f"{task}: explanations {methods} + ERASER")
        scores, res = C.explanations_with_faithfulness(lm, texts, methods, args.batch_size, args.seed)
        sm = res.summary(n_resamples=1000)
        faiths.append(sm.assign(task=task))
        if ds.rationales is not None and lm.tokenizer is not None and getattr(lm.tokenizer, "is_fast", False):
            C.log(f"{task}: plausibility")
            plauss.append(C.plausibility_table(lm, texts, ds.rationales, scores, args.seed).assign(task=task))
        ntok = [len(x) for x in lm.tokenizer(texts)["input_ids"]]
        infos.append({"task": task, "dataset": dataset, "model": model, "max_tokens": max_tokens, "n": len(texts),
                      "mean_tokens": float(np.mean(ntok)), "head_dim": lm.head_dim, "source": getattr(lm, "source", ""),
                      "ids": list(ds.ids)})
        del lm
    iv = pd.concat(ivs, ignore_index=True)
    lp = pd.concat(lps, ignore_index=True)
    mk = pd.concat(mks, ignore_index=True)
    faith = pd.concat(faiths, ignore_index=True)
    plaus = pd.concat(plauss, ignore_index=True) if plauss else pd.DataFrame(columns=["task", "method", "token_f1", "auprc"])

    # tables
    order = ["effective", "distribution", "null_perturbation", "minus_effective", "uniform", "permute"]
    t1 = iv.groupby(["task", "kind"], sort=False).agg(n=("tvd", "size"), mean_tvd=("tvd", "mean"), max_tvd=("tvd", "max"),
                                                      flip_rate=("flip", "mean"),
                                                      attention_change=("attention_change", "mean")).reset_index()
    t1["kind"] = pd.Categorical(t1["kind"], [k for k in order if k in set(t1["kind"])], ordered=True)
    t1 = t1.sort_values(["task", "kind"], key=lambda s: s if s.name == "kind" else s.map(
        {t: i for i, t in enumerate(dict.fromkeys(iv.task))})).reset_index(drop=True)
    t1["kind"] = t1["kind"].astype(str)
    t1_md = C.md_table(t1, headers={"mean_tvd": "mean output TVD", "max_tvd": "max output TVD", "flip_rate": "flip rate",
                                    "attention_change": "mean row change (half L1)"}, digits=4,
                      sci=["mean_tvd", "max_tvd"])  # 4 decimals hide 1e-7 vs 0
    t2 = lp.groupby("task", sort=False).agg(rows=("support", "size"), n_keys=("n_keys", "mean"), rank=("rank", "mean"),
                                            support=("support", "mean"), support_max=("support", "max"),
                                            residual_max=("residual", "max")).reset_index()
    t2["support / n"] = t2["support"] / t2["n_keys"]
    mkp = mk.groupby(["task", "by"], sort=False).agg(min_k=("min_k_keep", "mean"), none=("min_k_keep", lambda v: float(v.isna().mean())),
                                                     remove_flips=("remove_flips", lambda v: float(np.mean([bool(x) for x in v if x is not None])) if any(x is not None for x in v) else float("nan"))).reset_index()
    t2b = mkp.pivot_table(index="task", columns="by", values=["min_k", "none", "remove_flips"], sort=False)
    t2b.columns = [f"{a} ({b})" for a, b in t2b.columns]
    t2 = t2.merge(t2b.reset_index(), on="task", how="left")
    t3 = faith.copy()
    t3["AOPC [95 % CI]"] = [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(t3.aopc, t3.ci_low, t3.ci_high)]
    t3w = t3.pivot_table(index=["task", "method"], columns="metric", values="AOPC [95 % CI]", aggfunc="first",
                         sort=False).reset_index()
    t3w.columns = [str(c) for c in t3w.columns]
    sections = [
        ("1-2. Output change when every attention matrix is replaced (all layers and heads)", t1_md),
        ("3. Minimal sufficient key sets: LP support of the readout row per head, and keep-top-k over all heads", C.md_table(
            t2, headers={"rows": "(example, layer, head)", "n_keys": "mean keys n", "rank": "mean rank(T)",
                         "support": "mean LP support", "support_max": "max LP support", "residual_max": "max output residual",
                         "min_k (raw)": "min k keeping prediction (raw)", "min_k (effective)": "min k (effective)",
                         "none (raw)": "share with no k keeping it (raw)", "none (effective)": "same (effective)",
                         "remove_flips (raw)": "removing those k flips (raw)",
                         "remove_flips (effective)": "removing flips (effective)"}, digits=2)),
        ("4. ERASER faithfulness (AOPC, delete removal; comprehensiveness higher = better, sufficiency lower = better)",
         C.md_table(t3w)),
    ]
    if len(plaus):
        t4 = plaus.groupby(["task", "method"], sort=False)[["token_f1", "auprc"]].mean().reset_index()
        sections.append(("5. Plausibility against gold rationales (synthetic task)", C.md_table(
            t4, headers={"token_f1": "token F1 (top-k words, k = gold size)", "auprc": "AUPRC"})))
    header = [
        "**Claims**: the effective part of attention (Brunner et al., ICLR 2020), or an output-preserving distribution "
        "(after Naim & Asher, ECAI 2024, *Efficient attention*; the construction is the project's own, "
        "docs/methods.md), is sufficient for the output and the null part is not necessary; uniform or permuted "
        "attention (Wiegreffe & Pinter 2019; Jain & Wallace 2019) changes the output; minimal sufficient key sets are "
        "small (at most rank(T) + 1 keys); faithful explanations beat a random ranking on ERASER comprehensiveness and "
        "sufficiency (DeYoung et al., ACL 2020); plausibility against gold rationales.",
        "**Do our numbers agree?**\n" + "\n".join(verdicts(iv, lp, mk, faith, plaus)),
        "**Setup**: " + "; ".join(f"{i['task']}: {i['n']} {args.split} texts cut to {i['max_tokens']} tokens (mean "
                                  f"{i['mean_tokens']:.0f}), head dim {i['head_dim']}" for i in infos)
        + f". Distribution intervention on the first {args.n_distribution} texts, LP on the first {args.n_lp}; "
        f"keep-top-k with k in {ks}. drug-reviews has no classifier of its own: the rotten-tomatoes sentiment "
        f"classifier is used and every measure is relative to its own prediction."
        + (f" Skipped: {'; '.join(skipped)}." if skipped else "") + f" Runtime {run.seconds:.0f} s.",
    ]
    C.write_table(out, "Necessity and sufficiency of attention and of explanations", header, sections)
    iv.to_csv(out / "interventions.csv", index=False)
    lp.to_csv(out / "lp_support.csv", index=False)
    mk.to_csv(out / "minimal_k.csv", index=False)
    faith.to_csv(out / "faithfulness.csv", index=False)
    plaus.to_csv(out / "plausibility.csv", index=False)
    C.write_figures(out, figures(faith, iv), "Necessity and sufficiency")
    man = run.manifest(out, models=infos, data={"split": args.split}, skipped=skipped,
                       files=["table.md", "interventions.csv", "lp_support.csv", "minimal_k.csv", "faithfulness.csv",
                              "plausibility.csv", "figures.html", "manifest.json"])
    C.log(f"wrote {out} in {run.seconds:.0f} s")
    return {"out": out, "interventions": iv, "lp": lp, "minimal_k": mk, "faithfulness": faith, "plausibility": plaus,
            "manifest": man}


if __name__ == "__main__":
    main()

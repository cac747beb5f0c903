"""Does accounting for the residual and the LayerNorm make attention explanations more faithful?

Claims tested.

1. Context-mixing methods that count the residual connection, the layer normalisation and the
   value/output projections are more faithful explanations than attention weights and
   attention rollout: ALTI (Ferrando et al., EMNLP 2022, Sec. 6: higher deletion AOPC than
   rollout and attention on text classifiers), GlobEnc (Modarressi et al., NAACL 2022: better
   agreement with gradient-based saliency than attention, rollout and norm-based measures),
   value zeroing (Mohebbi et al., EACL 2023: better correlation with gradient-based and
   blank-out attributions than attention and rollout). Kobayashi et al. (EMNLP 2021) add the
   residual and LayerNorm to the norm-based analysis (``norm_residual_ln``) and report that the
   residual dominates (little mixing). Chefer et al. (ICCV 2021) weigh attention by gradients
   (``grad_rollout``; ``attention_gradient`` without the rollout).
   We measure ERASER comprehensiveness and sufficiency AOPC (DeYoung et al., ACL 2020) of every
   attention-family method, old and new, against a random ranking, with bootstrap 95 % CIs.
2. Plausibility: on a synthetic task whose deciding words are known, AUPRC and token F1 of each
   method's word scores against the gold rationale, with bootstrap 95 % CIs.

Data and models (``--tasks``, ``dataset:model:max_tokens:n``):

* rotten-tomatoes / ``minilm-rotten-tomatoes`` (cut to 64 tokens);
* bbc-news / ``minilm-bbc-news``, 40 test articles cut to 128 tokens (title and first paragraphs;
  skipped, and said so, when not prepared). Few and cut because value zeroing, ALTI, GlobEnc and
  norm_residual_ln grow with n^2 per example: on the shared 2-core machine value zeroing alone took
  ~5 min for one 256-token article (the classifier's training length);
* synthetic-negation / ``tiny-synthetic-negation`` (gold rationales; ``attnexplain prepare
  --model tiny-synthetic-negation``).

Method (public API: ``attnexplain.methods``, ``attnexplain.ablations``, ``attnexplain.metrics``,
``attnexplain.data.words``): scores from ``explain_batch`` (readout [CLS]; layer mean for
raw/effective/norm/norm_residual_ln/attention_gradient; rollout-style aggregation for rollout,
globenc, alti, value_zeroing, grad_rollout); ``faithfulness`` (delete removal, ERASER bins
1/5/10/20/50 %) with the seeded random ranking (``_common.explanations_with_faithfulness``, shared
with ``necessity_sufficiency``); ``summary`` gives BCa bootstrap CIs. Plausibility by
``_common.plausibility_table`` (also shared: scores summed to whitespace words, top-|gold| token
F1, AUPRC), CIs by ``attnexplain.metrics.bootstrap_ci``.

Run: ``python analyses/context_mixing.py`` (defaults: 200 rotten-tomatoes, 40 bbc-news, 200
synthetic examples; tens of minutes on 2 cores, see the table's setup line). ``--quick`` for the
smoke test. The diagnostic row ``value_zeroing_layer_mean`` is value zeroing with
``aggregation="mean"`` (its per-layer matrices averaged, no rollout).
Outputs: ``analyses/out/context_mixing/`` (table.md, faithfulness.csv, plausibility.csv,
figures.html, manifest.json).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "context_mixing"
OLD = ("raw_attention", "effective_attention", "norm", "rollout")
NEW = ("norm_residual_ln", "globenc", "alti", "value_zeroing", "grad_rollout", "attention_gradient")
#: diagnostic variants (label -> (method, options)), run when their method is: value zeroing's own
#: per-layer matrices averaged over the layers, without the rollout (see the README's discussion)
VARIANTS = {"value_zeroing_layer_mean": ("value_zeroing", {"aggregation": "mean"})}
DEFAULT_TASKS = ("rotten-tomatoes:minilm-rotten-tomatoes:64:200,bbc-news:minilm-bbc-news:128:40,"
                 "synthetic-negation:tiny-synthetic-negation:64:200")


def _ci(values, n_resamples: int = 1000):
    from attnexplain.metrics import bootstrap_ci

    return bootstrap_ci(values, n_resamples=n_resamples)


def verdicts(faith, plaus) -> list[str]:
    """One line per task, computed from the CIs with the criterion stated in it."""
    out = []
    for task, g in faith.groupby("task", sort=False):
        comp = g[g.metric == "comprehensiveness"].set_index("method")
        suff = g[g.metric == "sufficiency"].set_index("method")
        best_old = comp.loc[[m for m in OLD if m in comp.index], "aopc"].idxmax()
        lines = []
        for m in [m for m in NEW if m in comp.index]:
            beats_old = comp.loc[m, "ci_low"] > comp.loc[best_old, "ci_high"]
            below_old = comp.loc[m, "ci_high"] < comp.loc[best_old, "ci_low"]
            beats_random = comp.loc[m, "ci_low"] > comp.loc["random", "ci_high"]
            s_better = suff.loc[m, "ci_high"] < suff.loc["random", "ci_low"]
            verdict = ("more comprehensive than" if beats_old else "less comprehensive than" if below_old
                       else "not distinguishable from")
            lines.append(f"{m} {comp.loc[m, 'aopc']:.3f} ({verdict} {best_old} {comp.loc[best_old, 'aopc']:.3f}; "
                         f"{'beats' if beats_random else 'does not beat'} random on comprehensiveness, "
                         f"{'beats' if s_better else 'does not beat'} it on sufficiency)")
        out.append(f"- **{task}** (criterion: non-overlapping 95 % CIs; best old attention method by "
                   f"comprehensiveness: {best_old}): " + "; ".join(lines) + ".")
    for task, g in plaus.groupby("task", sort=False):
        means = g.groupby("method")["auprc"].mean()
        best = means.idxmax()
        out.append(f"- **{task}**, plausibility: highest mean AUPRC {best} {means[best]:.2f}; "
                   + ", ".join(f"{m} {means[m]:.2f}" for m in [*OLD, *NEW, *VARIANTS, 'random'] if m in means) + ".")
    return out


def figures(faith):
    import plotly.graph_objects as go

    figs = []
    for metric in ("comprehensiveness", "sufficiency"):
        fig = go.Figure()
        for task, g in faith[faith.metric == metric].groupby("task", sort=False):
            fig.add_bar(name=task, x=g["method"], y=g["aopc"],
                        error_y=dict(type="data", symmetric=False, array=g["ci_high"] - g["aopc"],
                                     arrayminus=g["aopc"] - g["ci_low"]))
        fig.update_layout(barmode="group", yaxis_title=f"{metric} AOPC", height=420)
        figs.append((f"ERASER {metric} AOPC with 95 % CIs ({'higher' if metric[0] == 'c' else 'lower'} = better)", fig))
    return figs


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import pandas as pd

    p = C.analysis_parser(__doc__, batch_size=16)
    p.add_argument("--tasks", default=DEFAULT_TASKS, help="dataset:model:max_tokens:n, comma-separated")
    p.add_argument("--methods", default=",".join(OLD + NEW))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-from", default=None,
                   help="an earlier output folder of this script: its tasks that are not run now are kept (their "
                        "rows, their setup line marked as kept, with that run's start date and commit)")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = "rotten-tomatoes:testing:bert:24:4,synthetic-negation:testing:bert:24:4"
    C.set_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*longer than.*truncated.*")
    run = C.Run(NAME, args)
    out = C.out_dir(NAME, args.out)
    from attnexplain.data import load_dataset
    from attnexplain.models import ModelNotFoundError

    methods = [m for m in args.methods.split(",") if m]
    faiths, plauss, infos, skipped = [], [], [], []
    for spec in args.tasks.split(","):
        parts = spec.split(":")
        dataset, model, max_tokens, n = parts[0], ":".join(parts[1:-2]), int(parts[-2]), int(parts[-1])
        task = f"{dataset} / {model}"
        try:
            lm = C.load(model)
        except ModelNotFoundError as exc:
            skipped.append(f"{task}: {exc}")
            C.log(f"skipped {task}: {exc}")
            continue
        ds = load_dataset(dataset, split=args.split, limit=n)
        texts = C.truncate_texts(lm, ds.texts, max_tokens)
        C.log(f"{task}: {len(texts)} texts, explanations {methods} + ERASER")
        t0 = run.seconds
        from attnexplain.methods import get_method

        variants = {label: get_method(m, **opts) for label, (m, opts) in VARIANTS.items() if m in methods}
        scores, res = C.explanations_with_faithfulness(lm, texts, methods, args.batch_size, args.seed,
                                                       variants=variants)
        faiths.append(res.summary(n_resamples=100 if args.quick else 1000).assign(task=task))
        if ds.rationales is not None and getattr(lm.tokenizer, "is_fast", False):
            plauss.append(C.plausibility_table(lm, texts, ds.rationales, scores, args.seed).assign(task=task))
        ntok = [len(x) for x in lm.tokenizer(texts)["input_ids"]]
        infos.append({"task": task, "dataset": dataset, "model": model, "max_tokens": max_tokens, "n": len(texts),
                      "mean_tokens": float(np.mean(ntok)), "seconds": round(run.seconds - t0, 1),
                      "source": getattr(lm, "source", ""), "ids": list(ds.ids)})
        del lm
    if args.keep_from:
        import json

        keep = Path(args.keep_from)
        old_man = json.loads((keep / "manifest.json").read_text())
        run_now = {i["task"] for i in infos}
        old_faith = pd.read_csv(keep / "faithfulness.csv")
        old_plaus = pd.read_csv(keep / "plausibility.csv")
        for info in old_man["models"]:
            if info["task"] in run_now:
                continue
            faiths.append(old_faith[old_faith.task == info["task"]])
            if len(old_plaus) and info["task"] in set(old_plaus.task):
                plauss.append(old_plaus[old_plaus.task == info["task"]])
            # a row kept twice keeps the date and commit of the run that computed it
            kept = info.get("kept_from") or {"started": old_man.get("started"), "git_commit": old_man.get("git_commit")}
            infos.append({**info, "kept_from": kept})
        skipped = [x for x in skipped if x.split(":")[0] not in {i["task"] for i in infos}]
    faith = pd.concat(faiths, ignore_index=True)
    plaus = pd.concat(plauss, ignore_index=True) if plauss else pd.DataFrame(
        columns=["task", "method", "example", "token_f1", "auprc"])
    order = {m: i for i, m in enumerate([*OLD, *NEW, *VARIANTS, "random"])}
    t1 = faith.copy()
    t1["AOPC [95 % CI]"] = [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(t1.aopc, t1.ci_low, t1.ci_high)]
    t1w = t1.pivot_table(index=["task", "method"], columns="metric", values="AOPC [95 % CI]", aggfunc="first",
                         sort=False).reset_index()
    t1w.columns = [str(c) for c in t1w.columns]
    t1w["family"] = ["new" if m in NEW else "diagnostic" if m in VARIANTS else "baseline" if m == "random"
                     else "attention" for m in t1w["method"]]
    t1w = t1w.sort_values(["task", "method"], key=lambda s: s.map(order) if s.name == "method" else s.map(
        {t: i for i, t in enumerate(dict.fromkeys(faith.task))}), kind="stable")
    t1w = t1w[["task", "method", "family", *[c for c in ("comprehensiveness", "sufficiency") if c in t1w]]]
    sections = [("1. ERASER faithfulness (AOPC, delete removal; comprehensiveness higher = better, sufficiency lower "
                 "= better)", C.md_table(t1w.reset_index(drop=True)))]
    if len(plaus):
        rows = []
        for (task, m), g in plaus.groupby(["task", "method"], sort=False):
            a_lo, a_hi = _ci(g["auprc"].to_numpy(float))
            f_lo, f_hi = _ci(g["token_f1"].to_numpy(float))
            rows.append({"task": task, "method": m, "AUPRC [95 % CI]": f"{g.auprc.mean():.3f} [{a_lo:.3f}, {a_hi:.3f}]",
                         "token F1 [95 % CI]": f"{g.token_f1.mean():.3f} [{f_lo:.3f}, {f_hi:.3f}]"})
        t2 = pd.DataFrame(rows).sort_values("method", key=lambda s: s.map(order), kind="stable")
        sections.append(("2. Plausibility against gold rationales (words; token F1 at k = gold size)",
                         C.md_table(t2.reset_index(drop=True))))
    header = [
        "**Claims**: context-mixing explanations that count the residual connection, the LayerNorm and the value/"
        "output projections -- ALTI (Ferrando et al., EMNLP 2022), GlobEnc (Modarressi et al., NAACL 2022), value "
        "zeroing (Mohebbi et al., EACL 2023), norm with residual and LayerNorm (Kobayashi et al., EMNLP 2021) -- and "
        "gradient-weighted attention rollout (Chefer et al., ICCV 2021) are more faithful than attention weights and "
        "rollout; faithful explanations beat a random ranking on ERASER comprehensiveness and sufficiency (DeYoung et "
        "al., ACL 2020); plausibility against gold rationales.",
        "**Do our numbers agree?**\n" + "\n".join(verdicts(faith, plaus)),
        "**Setup**: " + "; ".join(f"{i['task']}: {i['n']} {args.split} texts cut to {i['max_tokens']} tokens (mean "
                                  f"{i['mean_tokens']:.0f}), {i['seconds']:.0f} s"
                                  + (f" (kept from the run started {i['kept_from']['started']}, commit "
                                     f"{str(i['kept_from']['git_commit'])[:7]}; methods then: the table's rows)"
                                     if i.get("kept_from") else "") for i in infos)
        + ". Readout: the [CLS] row. Faithfulness: delete removal, bins 1/5/10/20/50 %, BCa bootstrap (1000 "
        "resamples)." + (f" Skipped: {'; '.join(skipped)}." if skipped else "") + f" Runtime {run.seconds:.0f} s.",
    ]
    C.write_table(out, "Context mixing: does counting the residual and LayerNorm make attention explanations more "
                       "faithful?", header, sections)
    faith.to_csv(out / "faithfulness.csv", index=False)
    plaus.to_csv(out / "plausibility.csv", index=False)
    C.write_figures(out, figures(faith), "Context mixing")
    man = run.manifest(out, models=infos, data={"split": args.split}, skipped=skipped,
                       files=["table.md", "faithfulness.csv", "plausibility.csv", "figures.html", "manifest.json"])
    C.log(f"wrote {out} in {run.seconds:.0f} s")
    return {"out": out, "faithfulness": faith, "plausibility": plaus, "manifest": man}


if __name__ == "__main__":
    main()

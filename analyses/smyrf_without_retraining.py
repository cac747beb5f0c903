"""SMYRF swapped into trained classifiers without retraining (Daras et al., NeurIPS 2020).

Claim tested. SMYRF (balanced asymmetric-LSH clustering of queries and keys) approximates dense
attention well enough to be dropped into a pretrained transformer: on GLUE with BERT-base at
length 128, Daras et al. report an average of 82.69 (dense), 82.98 with 2 hashes x 32-token
clusters (50 % of the dense attention memory) and 81.74 with 2 x 16 (25 %); on SST-2 93.46 /
93.23 / 93.12 (Daras et al., NeurIPS 2020; formulas in ``docs/methods.md``). They also compare with BERT run on truncated
inputs of the same memory. Note the setting differs: in the paper the pretrained model is
fine-tuned on each task *with* SMYRF attention (no re-pretraining); here the classifiers were
fine-tuned with dense attention and SMYRF is swapped in at inference only, with no training at
all - a harder test of "drop-in".

What we measure (public API only: ``LoadedModel.use_backend``, ``attnexplain.runs.backend_comparison``):

* accuracy of the default classifiers with dense attention, with SMYRF at 50 % and 25 % of the
  dense scores, and with dense attention on inputs truncated to the same budget;
* how much the explanations move under SMYRF (``attnexplain.runs.backend_comparison.compare_backends``:
  prediction agreement, output TVD, per-layer JSD of the attention rows, Kendall tau of the raw
  and effective attention rankings of the [CLS] row).

Budgets, precisely. For an example with ``n`` real tokens, dense attention computes ``n^2``
scores per head. SMYRF with ``h`` hashes and clusters of ``c`` queries / keys computes
``h * C * c_q * c_k`` (C clusters), reported by ``SmyrfAttention.memory_fraction(n, n)``; the
cluster size is chosen by ``attnexplain.runs.backend_comparison.smyrf_cluster_size(n_ref, share, n_hashes=2)``
at the reference length ``n_ref`` (BBC News: every input is cut to exactly 256 tokens, so 2 x 64
= 50 % and 2 x 32 = 25 % exactly, the paper's 2 x 32 / 2 x 16 at length 128 scaled to 256;
Rotten Tomatoes: the median length, so the share varies per example and the table reports its
mean). The *truncated dense* baseline keeps the first ``floor(sqrt(share) * n)`` tokens of each
example (its last kept position replaced by [SEP]): ``n'^2 <= share * n^2``, the same score
budget (50 %: 181 of 256 tokens; 25 %: 128 of 256). Accuracy differences come with a paired
bootstrap 95 % CI (``attnexplain.metrics.bootstrap_ci`` over the per-example differences).

Run: ``python analyses/smyrf_without_retraining.py`` (defaults: minilm-rotten-tomatoes on the
1,294 rotten-tomatoes test snippets, explanations on 100; minilm-bbc-news on the 185 BBC test
articles of >= 256 tokens cut to 256, explanations on 48; about 5-8 min on 2 cores). Without ``minilm-bbc-news`` the BBC row is skipped with a
note. ``--quick`` for the smoke test. Outputs: ``analyses/out/smyrf_without_retraining/``.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "smyrf_without_retraining"
PAPER = {"GLUE avg (BERT-base, 128)": (82.69, 82.98, 81.74), "SST-2 (BERT-base, 128)": (93.46, 93.23, 93.12)}


def _forward_probs(lm, batch):
    import torch

    with torch.no_grad():
        return torch.softmax(lm.model(**batch).logits.double(), -1)


def predict(lm, texts: list[str], max_length: int, batch_size: int):
    """Predicted classes with whatever backend ``lm`` runs (texts truncated to ``max_length``)."""
    import numpy as np

    preds = []
    for s in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[s : s + batch_size], max_length=max_length, on_long="truncate")
        preds.append(_forward_probs(lm, batch).argmax(-1).numpy())
    return np.concatenate(preds)


def predict_truncated(lm, texts: list[str], share: float, max_length: int, batch_size: int):
    """Dense predictions on each text cut to floor(sqrt(share) * n) tokens (n = its length at
    ``max_length``); returns (predictions, kept lengths)."""
    import numpy as np

    lengths = [len(x) for x in lm.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    keep = [max(2, int(math.floor(math.sqrt(share) * n))) for n in lengths]
    preds = np.zeros(len(texts), dtype=int)
    for k in sorted(set(keep)):
        idx = [i for i, x in enumerate(keep) if x == k]
        for s in range(0, len(idx), batch_size):
            sub = idx[s : s + batch_size]
            batch = lm.tokenize([texts[i] for i in sub], max_length=k, on_long="truncate")
            preds[sub] = _forward_probs(lm, batch).argmax(-1).numpy()
    return preds, keep


def run_task(model: str, dataset: str, split: str, n_acc: int, n_explain: int, max_length: int, min_tokens: int,
             shares: list[float], n_hashes: int, batch_size: int, quick_chars: int | None = None):
    import numpy as np

    from attnexplain.runs.backend_comparison import compare_backends, smyrf_cluster_size
    from attnexplain.data import load_dataset
    from attnexplain.metrics import bootstrap_ci
    from attnexplain.runs.settings import resolve_label_map

    lm = C.load(model)
    ds = load_dataset(dataset, split=split)
    texts = list(ds.texts)
    if quick_chars:
        texts = [t[:quick_chars] for t in texts]
    if min_tokens:
        keep = C.texts_with_min_tokens(lm, texts, min_tokens)
    else:
        keep = list(range(len(texts)))
    keep = keep[:n_acc]
    texts = [texts[i] for i in keep]
    mapping = resolve_label_map(ds.label_names, lm.labels, dataset_name=dataset, model_name=model,
                                max_label=max(ds.labels))
    gold = np.array([mapping[ds.labels[i]] for i in keep])
    lengths = [len(x) for x in lm.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    n_ref = int(np.median(lengths))
    limit = min(max_length, lm.max_length)

    lm.use_backend("dense")
    C.log(f"{model}: dense on {len(texts)} texts (median {n_ref} tokens)")
    dense = predict(lm, texts, limit, batch_size)
    rows = [{"model": model, "dataset": dataset, "setting": "dense", "tokens": n_ref, "memory": 1.0,
             "accuracy": float((dense == gold).mean()), "delta": 0.0, "ci_low": 0.0, "ci_high": 0.0,
             "agreement": 1.0}]
    configs = []
    from attnexplain.backends import get_backend

    try:
        for share in shares:
            c = smyrf_cluster_size(n_ref, share, n_hashes=n_hashes)
            opts = {"n_hashes": n_hashes, "q_cluster_size": c, "k_cluster_size": c}
            configs.append((share, opts))
            b = get_backend("smyrf", **opts)
            mem = float(np.mean([b.memory_fraction(n, n) for n in lengths]))
            lm.use_backend("smyrf", **opts)
            C.log(f"{model}: smyrf {n_hashes}x{c} (target {share:.0%})")
            pred = predict(lm, texts, limit, batch_size)
            lm.use_backend("dense")
            diff = (pred == gold).astype(float) - (dense == gold).astype(float)
            lo, hi = bootstrap_ci(diff, n_resamples=2000)
            rows.append({"model": model, "dataset": dataset, "setting": f"SMYRF {n_hashes}x{c} ({share:.0%} target)",
                         "tokens": n_ref, "memory": mem, "accuracy": float((pred == gold).mean()),
                         "delta": float(diff.mean()), "ci_low": lo, "ci_high": hi,
                         "agreement": float((pred == dense).mean())})
            tpred, kept = predict_truncated(lm, texts, share, limit, batch_size)
            diff = (tpred == gold).astype(float) - (dense == gold).astype(float)
            lo, hi = bootstrap_ci(diff, n_resamples=2000)
            rows.append({"model": model, "dataset": dataset,
                         "setting": f"dense truncated to sqrt({share:g}) n tokens", "tokens": int(np.median(kept)),
                         "memory": float(np.mean([k * k / (n * n) for k, n in zip(kept, lengths)])),
                         "accuracy": float((tpred == gold).mean()), "delta": float(diff.mean()), "ci_low": lo,
                         "ci_high": hi, "agreement": float((tpred == dense).mean())})
    finally:
        lm.use_backend("dense")
    C.log(f"{model}: explanations on {min(n_explain, len(texts))} texts")
    cmp = compare_backends(lm, texts[:n_explain], [("smyrf", o) for _, o in configs],
                           labels=list(gold[:n_explain]), batch_size=max(1, batch_size // 4), max_length=limit,
                           progress=False)
    info = {"name": model, "dataset": dataset, "split": split, "n_accuracy": len(texts), "n_explain": min(n_explain, len(texts)),
            "median_tokens": n_ref, "max_length": limit, "min_tokens": min_tokens,
            "smyrf": [dict(share=s, **o) for s, o in configs], "ids": [ds.ids[i] for i in keep]}
    return rows, cmp, info


def verdicts(acc, paper_drop_50: float, paper_drop_25: float) -> list[str]:
    out = []
    for (model, dataset), sub in acc.groupby(["model", "dataset"], sort=False):
        dense = sub[sub.setting == "dense"].accuracy.iloc[0]
        sm = sub[sub.setting.str.startswith("SMYRF")]
        tr = sub[sub.setting.str.startswith("dense truncated")]
        parts = []
        for (_, s), (_, t) in zip(sm.iterrows(), tr.iterrows()):
            parts.append(f"{s.setting}: {100 * s.accuracy:.1f} % ({100 * s.delta:+.1f} points, 95 % CI "
                         f"[{100 * s.ci_low:+.1f}, {100 * s.ci_high:+.1f}]) vs truncated {100 * t.accuracy:.1f} %")
        worst = sm.delta.min() if len(sm) else 0.0
        ok = worst >= -0.02
        out.append(f"- **{model} on {dataset}** (dense {100 * dense:.1f} %): " + "; ".join(parts) + ". Paper: "
                   f"{paper_drop_50:+.2f} / {paper_drop_25:+.2f} GLUE points at 50 / 25 %. Drop-in without retraining "
                   + ("AGREES" if ok else "DISAGREES") + " (criterion: every SMYRF setting within 2 accuracy points of "
                   "dense). SMYRF "
                   + ("beats" if len(sm) and len(tr) and (sm.accuracy.to_numpy() > tr.accuracy.to_numpy()).all() else
                      "does not beat") + " truncation at equal memory in every setting.")
    return out


def figures(acc, cmps):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keys = list(dict.fromkeys(zip(acc.model, acc.dataset)))
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[f"{m} / {d}" for m, d in keys])
    for k, (m, d) in enumerate(keys, start=1):
        sub = acc[(acc.model == m) & (acc.dataset == d)]
        for kind, color in (("dense", "#444"), ("SMYRF", "#d62728"), ("dense truncated", "#1f77b4")):
            s2 = sub[sub.setting.str.startswith(kind)] if kind != "dense" else sub[sub.setting == "dense"]
            fig.add_trace(go.Scatter(x=s2.memory, y=100 * s2.accuracy, mode="markers+lines", name=kind,
                                     marker=dict(color=color, size=10), showlegend=(k == 1), text=s2.setting), row=1, col=k)
    fig.update_xaxes(title_text="share of dense attention scores", autorange="reversed")
    fig.update_yaxes(title_text="accuracy (%)", col=1)
    fig.update_layout(height=420)
    fig2 = go.Figure()
    for (m, d), cmp in cmps.items():
        s = cmp.summary[cmp.summary.backend != "dense (reference)"]
        L = cmp.num_layers
        for _, r in s.iterrows():
            fig2.add_trace(go.Scatter(x=list(range(L)), y=[r[f"jsd_layer_{l}"] for l in range(L)], mode="lines+markers",
                                      name=f"{m} / {d}: {r.backend}"))
    fig2.update_layout(xaxis_title="layer", yaxis_title="JSD(dense row, SMYRF row), nats", height=420)
    return [("Accuracy vs attention memory: SMYRF vs truncated dense inputs", fig),
            ("How far SMYRF's attention rows move from dense, per layer", fig2)]


def main(argv: list[str] | None = None) -> dict:
    import pandas as pd

    p = C.analysis_parser(__doc__, batch_size=16)
    p.add_argument("--tasks", default="minilm-rotten-tomatoes:rotten-tomatoes:0:128,minilm-bbc-news:bbc-news:256:256",
                   help="model:dataset:min_tokens:max_length, comma-separated")
    p.add_argument("--n-accuracy", default="1294,185", help="examples for accuracy, per task (default: the whole "
                   "rotten-tomatoes test split, and every BBC test article with >= 256 tokens)")
    p.add_argument("--n-explain", default="100,48", help="examples for the explanation comparison, per task")
    p.add_argument("--shares", default="0.5,0.25")
    p.add_argument("--n-hashes", type=int, default=2)
    args = p.parse_args(argv)
    quick_chars = None
    if args.quick:
        args.tasks, args.n_accuracy, args.n_explain = "testing:bert:rotten-tomatoes:0:40", "6", "3"
        quick_chars = 36
    C.set_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*longer than.*truncated.*")
    run = C.Run(NAME, args)
    out = C.out_dir(NAME, args.out)
    from attnexplain.models import ModelNotFoundError

    shares = [float(x) for x in args.shares.split(",")]
    n_acc = [int(x) for x in args.n_accuracy.split(",")]
    n_exp = [int(x) for x in args.n_explain.split(",")]
    rows, cmps, infos, skipped = [], {}, [], []
    for k, task in enumerate(args.tasks.split(",")):
        parts = task.split(":")
        model = ":".join(parts[:-3])
        dataset, min_tokens, max_length = parts[-3], int(parts[-2]), int(parts[-1])
        try:
            r, cmp, info = run_task(model, dataset, args.split, n_acc[min(k, len(n_acc) - 1)],
                                    n_exp[min(k, len(n_exp) - 1)], max_length, min_tokens, shares, args.n_hashes,
                                    args.batch_size, quick_chars)
        except ModelNotFoundError as exc:
            skipped.append(f"{model}: {exc}")
            C.log(f"skipped {model}: {exc}")
            continue
        rows += r
        cmps[(model, dataset)] = cmp
        infos.append(info)
    acc = pd.DataFrame(rows)
    t_acc = acc.copy()
    for c in ("accuracy", "delta", "ci_low", "ci_high", "agreement"):
        t_acc[c] = 100 * t_acc[c]
    t_acc["95 % CI of delta"] = [f"[{lo:+.1f}, {hi:+.1f}]" for lo, hi in zip(t_acc.ci_low, t_acc.ci_high)]
    t_acc = t_acc[["model", "dataset", "setting", "tokens", "memory", "accuracy", "delta", "95 % CI of delta", "agreement"]]
    paper = pd.DataFrame([{"benchmark": k, "dense": v[0], "SMYRF 2x32 (50 %)": v[1], "SMYRF 2x16 (25 %)": v[2]}
                          for k, v in PAPER.items()])
    sections = [("Accuracy (%) with dense attention, SMYRF, and dense attention on truncated inputs",
                 C.md_table(t_acc, headers={"tokens": "tokens (median)", "memory": "memory (share of dense scores)",
                                            "delta": "delta vs dense (points)", "agreement": "same prediction as dense (%)"},
                            digits=2)),
                ("Daras et al. 2020 (reported, for comparison)", C.md_table(paper, digits=2))]
    for (m, d), cmp in cmps.items():
        sections.append((f"How much explanations move under SMYRF: {m} on {d} ({len(cmp.per_example) // len(cmp.summary)} "
                         f"examples)", cmp.to_markdown().split("\n\nLegend")[0]))
    drop50 = PAPER["GLUE avg (BERT-base, 128)"][1] - PAPER["GLUE avg (BERT-base, 128)"][0]
    drop25 = PAPER["GLUE avg (BERT-base, 128)"][2] - PAPER["GLUE avg (BERT-base, 128)"][0]
    header = [
        "**Claim** (Daras et al., NeurIPS 2020, *SMYRF: Efficient Attention using Asymmetric Clustering*): SMYRF can "
        "replace dense attention in a pretrained transformer without re-pretraining, at 50 % memory with no loss and at "
        "25 % with a small one (BERT-base GLUE average 82.69 -> 82.98 -> 81.74), and it does better than dense attention "
        "on inputs truncated to the same memory. In the paper the model is fine-tuned with SMYRF; here SMYRF is swapped "
        "in at inference only (no training at all).",
        "**Do our numbers agree?**\n" + "\n".join(verdicts(acc, drop50, drop25)),
        "**Setup**: " + "; ".join(f"{i['name']} on {i['n_accuracy']} {i['dataset']}/{i['split']} texts (median "
                                  f"{i['median_tokens']} tokens, max {i['max_length']}"
                                  + (f", only texts with >= {i['min_tokens']} tokens" if i["min_tokens"] else "")
                                  + f"), explanations on {i['n_explain']}" for i in infos)
        + ". Budgets and truncation are defined in the script's docstring; memory = mean over examples of "
        "SmyrfAttention.memory_fraction(n, n) (truncated: n'^2 / n^2). Explanation columns: see "
        "analyses/out/compare_backends/table.md's legend."
        + (f" Skipped: {'; '.join(skipped)}." if skipped else "") + f" Runtime {run.seconds:.0f} s.",
    ]
    C.write_table(out, "SMYRF without retraining: accuracy and explanations", header, sections)
    acc.to_csv(out / "accuracy.csv", index=False)
    pd.concat([c.per_example.assign(model=m, dataset=d) for (m, d), c in cmps.items()]).to_csv(
        out / "explanations_per_example.csv", index=False)
    C.write_figures(out, figures(acc, cmps), "SMYRF without retraining (Daras et al. 2020)")
    man = run.manifest(out, models=infos, data={"split": args.split}, skipped=skipped,
                       files=["table.md", "accuracy.csv", "explanations_per_example.csv", "figures.html", "manifest.json"])
    C.log(f"wrote {out} in {run.seconds:.0f} s")
    return {"out": out, "accuracy": acc, "comparisons": cmps, "manifest": man}


if __name__ == "__main__":
    main()

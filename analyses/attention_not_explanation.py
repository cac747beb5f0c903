"""Is attention explanation? (Jain & Wallace, NAACL 2019; Wiegreffe & Pinter, EMNLP 2019)

Claims tested.

1. Jain & Wallace (2019, Sec. 4.1): attention weights agree only weakly with gradient-based and
   leave-one-out (LOO) feature importance: Kendall tau between the rankings is low (on their
   BiLSTM classifiers mostly well below 0.5; higher for the non-contextual average-embedding
   encoder). We test it on a fine-tuned transformer, for raw attention and for effective
   attention (Brunner et al. 2020), which removes the part of the weights that cannot affect
   the output: if the non-identifiable part is what makes attention disagree with gradients,
   effective attention should agree better.
2. Jain & Wallace (2019, Sec. 4.2): randomly permuting the attention weights often changes the
   output little (median output change small for many examples despite peaked attention).
   Wiegreffe & Pinter (2019, Sec. 3-4) answer that this depends on the model needing attention
   at all, and compare with a uniform-attention baseline. Their setting permutes one attention
   layer on top of a BiLSTM; in a transformer every layer's attention feeds the next, so we
   report permuting only the last layer (closest analogue) and all layers, plus uniform attention.

Method (public API only).

* Rankings: ``attnexplain.methods.explain`` with ``raw_attention``, ``effective_attention``
  (readout row [CLS], mean over heads and layers), ``integrated_gradients`` (20 steps, pad
  baseline), ``gradient_x_input``, ``occlusion`` (LOO with [MASK] replacement) and ``random``
  (seeded baseline). Kendall tau-b (``attnexplain.metrics.kendall_tau``) between two methods'
  scores over the example's content tokens (special tokens excluded; they score 0 for the
  gradient / occlusion methods by design). Gradient and LOO scores are compared by magnitude
  (``|score|``), as Jain & Wallace did (their LOO importance is the output change, a TVD);
  effective attention is signed and compared as is.
* Permutation: inside ``attnexplain.capturing.session`` an intervention replaces every attention
  row by a random permutation of its weights among the real keys (each head and row its own
  permutation, ``--permutations`` draws per example). Output change = TVD between the class
  distributions with and without the permutation; flip = the predicted class changes. We report
  the per-example median over draws (as Jain & Wallace), then the mean and median over
  examples. ``uniform``: every row replaced by 1/n over the real keys. ``max attention``: the
  largest [CLS]-row weight of the last layer (mean over heads), the peakiness Jain & Wallace
  plot against the output change.

Run: ``python analyses/attention_not_explanation.py`` (default: minilm-rotten-tomatoes on 100
rotten-tomatoes test snippets; about 5 min on 2 cores). ``--quick`` for the smoke test.
Outputs: ``analyses/out/attention_not_explanation/`` (table.md, per_example.csv, figures.html,
manifest.json).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "attention_not_explanation"
ATTENTION = ("raw_attention", "effective_attention")
REFERENCES = ("integrated_gradients", "gradient_x_input", "occlusion")
ABSOLUTE = {"integrated_gradients", "gradient_x_input", "occlusion"}


def content_mask(lm, tokens_ids: list[int]) -> list[bool]:
    specials = set(getattr(lm.tokenizer, "all_special_ids", None) or [])
    if not specials:  # the tiny test tokenizer: [CLS]/[SEP]/pad ids
        specials = {getattr(lm.tokenizer, k, -1) for k in ("cls_id", "sep_id", "pad_token_id")}
    return [t not in specials for t in tokens_ids]


def rank_agreement(lm, texts: list[str], methods: list[str], max_length: int, batch_size: int):
    """Per example: tau between each attention method and each reference (and random)."""
    import numpy as np

    import torch

    from attnexplain.methods import explain_batch
    from attnexplain.metrics import kendall_tau

    scores: dict[str, list] = {m: [] for m in methods}
    enc: list[list[int]] = []
    for s in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[s : s + batch_size], max_length=max_length, on_long="truncate")
        sc, _, _ = explain_batch(lm, batch, methods)
        for m in methods:
            scores[m].extend(sc[m])
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        for row, mk in zip(batch["input_ids"].tolist(), mask.tolist()):
            enc.append([t for t, k in zip(row, mk) if k])
    rows = []
    for i in range(len(texts)):
        keep = np.asarray(content_mask(lm, enc[i]))
        sc = {}
        for m in methods:
            s = np.asarray(scores[m][i], dtype=float)
            if len(s) != len(keep):
                raise ValueError(f"{m}: {len(s)} scores for {len(keep)} tokens (example {i})")
            s = s[keep]
            sc[m] = np.abs(s) if m in ABSOLUTE else s
        row = {"example": i, "n_content_tokens": int(keep.sum())}
        for a in (*ATTENTION, "random"):
            for r in REFERENCES:
                if a in sc and r in sc:
                    row[f"tau {a} vs {r}"] = kendall_tau(sc[a], sc[r])
        for r1 in REFERENCES:
            for r2 in REFERENCES:
                if r1 < r2 and r1 in sc and r2 in sc:
                    row[f"tau {r1} vs {r2}"] = kendall_tau(sc[r1], sc[r2])
        if "raw_attention" in sc and "effective_attention" in sc:
            row["tau raw_attention vs effective_attention"] = kendall_tau(sc["raw_attention"], sc["effective_attention"])
        rows.append(row)
    return rows


def _permute_fn(seed: int):
    import torch

    state = {"calls": 0}

    def fn(A, call, site):
        g = torch.Generator(device=A.device)
        g.manual_seed(seed * 100003 + state["calls"])
        state["calls"] += 1
        B, H, n, m = A.shape
        kp = call.key_padding_mask
        out = A.clone()
        for b in range(B):
            idx = kp[b].nonzero().flatten() if kp is not None else torch.arange(m, device=A.device)
            k = idx.numel()
            sub = A[b][..., idx]  # (H, n, k)
            perm = torch.argsort(torch.rand(H, n, k, generator=g, device=A.device), dim=-1)
            out[b][..., idx] = sub.gather(-1, perm)
        return out

    return fn


def _uniform_fn(A, call, site):
    import torch

    B, H, n, m = A.shape
    kp = call.key_padding_mask
    real = kp if kp is not None else torch.ones(B, m, dtype=torch.bool, device=A.device)
    u = real.to(A.dtype) / real.sum(-1, keepdim=True).to(A.dtype)
    return u[:, None, None, :].expand(B, H, n, m).clone()


def permutation_test(lm, texts: list[str], n_perm: int, batch_size: int, max_length: int):
    """Per example: median TVD and flip share over ``n_perm`` permutations (last layer / all
    layers), uniform attention TVD / flip, and the peakiness of the last layer's readout row."""
    import numpy as np
    import torch

    from attnexplain.capturing import capture, session
    from attnexplain.metrics import tvd

    model = lm.model
    rows = []
    for s in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[s : s + batch_size], max_length=max_length, on_long="truncate")
        cap = capture(lm, batch, store_values=False)
        base = cap.probs.double()
        keys = [f"{cap.primary_stack}.{l}.self" for l in cap.layers()]
        last = cap.layers()[-1]
        A_last = cap.attention(last)  # (B, H, n, n)
        peak = A_last[:, :, 0, :].mean(1).amax(-1)  # readout row [CLS] (position 0 for right padding)
        res = {"last": [], "all": []}
        for scope in res:
            chosen = keys[-1:] if scope == "last" else keys
            for r in range(n_perm):
                with torch.no_grad(), session(model, interventions={k: _permute_fn(r * 1000 + j) for j, k in
                                                                     enumerate(chosen)}):
                    logits = model(**batch).logits
                p = torch.softmax(logits.double(), -1)
                res[scope].append((tvd(base, p).numpy(), (p.argmax(-1) != base.argmax(-1)).numpy()))
        with torch.no_grad(), session(model, interventions={k: _uniform_fn for k in keys}):
            pu = torch.softmax(model(**batch).logits.double(), -1)
        tu = tvd(base, pu).numpy()
        fu = (pu.argmax(-1) != base.argmax(-1)).numpy()
        for b in range(base.shape[0]):
            row = {"example": s + b, "pred": int(base[b].argmax()), "p_pred": float(base[b].max()),
                   "max_attention_last_layer": float(peak[b])}
            for scope, draws in res.items():
                t = np.array([d[0][b] for d in draws])
                f = np.array([d[1][b] for d in draws])
                row[f"perm_{scope}_median_tvd"] = float(np.median(t))
                row[f"perm_{scope}_flip_share"] = float(f.mean())
            row["uniform_tvd"] = float(tu[b])
            row["uniform_flip"] = float(fu[b])
            rows.append(row)
    return rows


def verdicts(taus, perm, head_dim: int | None = None) -> list[str]:
    import numpy as np

    out = []
    refs = [f"tau {a} vs {b}" for a in REFERENCES for b in REFERENCES if a < b and f"tau {a} vs {b}" in taus]
    if refs:
        out.append("- For context, mean tau between the reference methods themselves: ("
                   + ", ".join(f"{c[4:]} {np.nanmean(taus[c]):.3f}" for c in refs) + ").")
    if head_dim is not None and "n_content_tokens" in taus:
        long = taus[taus["n_content_tokens"] + 2 > head_dim]
        out.append(f"- Only {len(long)} of {len(taus)} examples have more than d_h = {head_dim} tokens; for the others "
                   f"effective attention equals raw attention (see identifiability). On those {len(long)}: "
                   + ", ".join(f"{a} vs {r} {np.nanmean(long[f'tau {a} vs {r}']):.3f}"
                               for r in REFERENCES for a in ATTENTION if f"tau {a} vs {r}" in long) + ".")
    for r in REFERENCES:
        vals = {a: np.nanmean(taus[f"tau {a} vs {r}"]) for a in (*ATTENTION, "random") if f"tau {a} vs {r}" in taus}
        if not vals:
            continue
        raw = vals.get("raw_attention", np.nan)
        eff = vals.get("effective_attention", np.nan)
        rnd = vals.get("random", np.nan)
        weak = raw < 0.5
        out.append(f"- Claim 1 vs **{r}**: mean tau raw attention {raw:.3f}, effective attention {eff:.3f}, random "
                   f"{rnd:.3f}. Weak agreement (mean tau < 0.5) for raw attention -> "
                   f"{'AGREES' if weak else 'DISAGREES'} with Jain & Wallace; effective attention "
                   + ("agrees better" if eff > raw + 0.02 else "agrees worse" if eff < raw - 0.02 else "agrees about as well")
                   + " (difference > 0.02 counts).")
    last = perm["perm_last_median_tvd"]
    allp = perm["perm_all_median_tvd"]
    out.append(f"- Claim 2, permuting the last layer's attention: median output TVD {np.median(last):.3f} (mean "
               f"{np.mean(last):.3f}), flip share {perm['perm_last_flip_share'].mean():.3f}; share of examples with "
               f"median TVD < 0.05: {np.mean(last < 0.05):.2f}. Jain & Wallace's 'small change for many examples' -> "
               + ("AGREES" if np.mean(last < 0.05) >= 0.5 else "DISAGREES") + " (criterion: at least half the examples "
               "change by < 0.05).")
    out.append(f"- Permuting all layers: median output TVD {np.median(allp):.3f}, flip share "
               f"{perm['perm_all_flip_share'].mean():.3f}; uniform attention in all layers: mean TVD "
               f"{perm['uniform_tvd'].mean():.3f}, flip share {perm['uniform_flip'].mean():.3f}. A transformer that "
               f"routes all information through attention needs it (Wiegreffe & Pinter's point): "
               + ("the output moves a lot." if np.median(allp) >= 0.1 else "the output moves little."))
    return out


def figures(taus, perm):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = [c for c in taus.columns if c.startswith("tau ") and any(c.startswith(f"tau {a} vs") for a in (*ATTENTION, "random"))]
    fig = go.Figure()
    for c in cols:
        fig.add_trace(go.Box(y=taus[c], name=c[4:], boxmean=True))
    fig.update_layout(yaxis_title="Kendall tau-b (per example, content tokens)", height=500, showlegend=False)
    fig2 = make_subplots(rows=1, cols=2, subplot_titles=["last layer permuted", "all layers permuted"], shared_yaxes=True)
    for k, scope in enumerate(("last", "all"), start=1):
        fig2.add_trace(go.Scatter(x=perm["max_attention_last_layer"], y=perm[f"perm_{scope}_median_tvd"], mode="markers",
                                  name=scope, text=[f"example {e}" for e in perm["example"]]), row=1, col=k)
    fig2.update_xaxes(title_text="max attention of the [CLS] row, last layer (mean over heads)")
    fig2.update_yaxes(title_text="median output TVD over permutations", col=1)
    fig2.update_layout(height=450)
    return [("Rank agreement of attention with gradient and leave-one-out importance", fig),
            ("Output change under random permutation of attention vs attention peakiness (Jain & Wallace Fig. 6 style)",
             fig2)]


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import pandas as pd

    p = C.analysis_parser(__doc__, batch_size=16)
    p.add_argument("--model", default="minilm-rotten-tomatoes")
    p.add_argument("--dataset", default="rotten-tomatoes")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--permutations", type=int, default=20)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.n, args.permutations, args.max_length = "testing:bert", 4, 2, 40
    C.set_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*longer than.*truncated.*")
    run = C.Run(NAME, args)
    out = C.out_dir(NAME, args.out)
    from attnexplain.data import load_dataset

    ds = load_dataset(args.dataset, split=args.split, limit=args.n)
    lm = C.load(args.model)
    texts = list(ds.texts)
    if args.quick:
        texts = [t[:30] for t in texts]
    methods = [*ATTENTION, *REFERENCES, "random"]
    C.log(f"rankings: {methods} on {len(texts)} texts")
    tau_rows = rank_agreement(lm, texts, methods, args.max_length, args.batch_size)
    taus = pd.DataFrame(tau_rows)
    C.log(f"permutation test: {args.permutations} draws per example")
    perm = pd.DataFrame(permutation_test(lm, texts, args.permutations, args.batch_size, args.max_length))
    per = taus.merge(perm, on="example")
    per.insert(1, "id", [ds.ids[i] for i in per["example"]])

    # tables
    trows = []
    for a in (*ATTENTION, "random"):
        row = {"ranking": a}
        for r in REFERENCES:
            c = f"tau {a} vs {r}"
            if c in taus:
                v = taus[c].to_numpy(dtype=float)
                row[f"vs {r}"] = f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}"
        trows.append(row)
    for r1 in REFERENCES:
        row = {"ranking": f"{r1} (reference)"}
        for r2 in REFERENCES:
            c = f"tau {min(r1, r2)} vs {max(r1, r2)}"
            row[f"vs {r2}"] = "1" if r1 == r2 else (f"{np.nanmean(taus[c]):.3f} ± {np.nanstd(taus[c]):.3f}" if c in taus else "")
        trows.append(row)
    t1 = pd.DataFrame(trows)
    prow = []
    for scope, label in (("last", "permute last layer"), ("all", "permute all layers")):
        v = perm[f"perm_{scope}_median_tvd"]
        prow.append({"intervention": label, "mean TVD": v.mean(), "median TVD": v.median(),
                     "share TVD < 0.05": float((v < 0.05).mean()), "flip share": perm[f"perm_{scope}_flip_share"].mean()})
    prow.append({"intervention": "uniform attention, all layers", "mean TVD": perm["uniform_tvd"].mean(),
                 "median TVD": perm["uniform_tvd"].median(), "share TVD < 0.05": float((perm["uniform_tvd"] < 0.05).mean()),
                 "flip share": perm["uniform_flip"].mean()})
    t2 = pd.DataFrame(prow)
    corr = float(np.corrcoef(perm["max_attention_last_layer"], perm["perm_last_median_tvd"])[0, 1]) if len(perm) > 2 else float("nan")
    header = [
        "**Claims** (Jain & Wallace, NAACL 2019, *Attention is not Explanation*; Wiegreffe & Pinter, EMNLP 2019, "
        "*Attention is not not Explanation*): (1) attention rankings agree only weakly with gradient and "
        "leave-one-out importance; (2) permuting attention often changes the output little; Wiegreffe & Pinter: "
        "whether attention matters depends on the model (uniform-attention baseline).",
        "**Do our numbers agree?**\n" + "\n".join(verdicts(taus, perm, lm.head_dim)),
        f"**Setup**: {args.model} on {len(texts)} {args.dataset}/{args.split} texts (max {args.max_length} tokens); "
        f"Kendall tau-b over content tokens (gradient and LOO by magnitude), mean ± std over examples; "
        f"{args.permutations} permutations per example (per-example median, then mean/median over examples). "
        f"Pearson correlation between the last layer's max [CLS] attention and the median TVD of last-layer "
        f"permutation: {corr:.2f}. Runtime {run.seconds:.0f} s.",
    ]
    C.write_table(out, "Attention vs gradient / leave-one-out rankings, and permuted attention", header,
                  [("Rank agreement (Kendall tau-b, mean ± std over examples)", C.md_table(t1)),
                   ("Output change when attention is permuted or made uniform", C.md_table(t2))])
    per.to_csv(out / "per_example.csv", index=False)
    C.write_figures(out, figures(taus, perm), "Attention is (not) explanation")
    man = run.manifest(out, models={"name": args.model, "source": getattr(lm, "source", "")},
                       data={"dataset": args.dataset, "split": args.split, "n": len(texts), "ids": list(ds.ids)},
                       files=["table.md", "per_example.csv", "figures.html", "manifest.json"])
    C.log(f"wrote {out} in {run.seconds:.0f} s")
    return {"out": out, "taus": taus, "permutation": perm, "manifest": man}


if __name__ == "__main__":
    main()

"""Attention weights vs vector norms (Kobayashi et al., EMNLP 2020, "Attention is Not Only a Weight").

Claim tested. The vector a head moves from key ``j`` to query ``i`` is ``A_ij f(x_j)`` with
``f(x_j) = (x_j W_V + b_V) W_O``; its norm, not the weight ``A_ij`` alone, is the contribution.
Expected (Kobayashi et al. 2020, Sec. 4-5, on BERT-base):

1. [CLS], [SEP] and punctuation receive much raw attention weight but have small ``||f(x)||``,
   so the norm-based attention ``||A_ij f(x_j)||`` to them is much lower than the raw weight.
2. ``A_ij`` and ``||f(x_j)||`` are negatively correlated (the model "cancels" the high weights
   on frequent, uninformative tokens by shrinking their value vectors).

Method (public API only): ``attnexplain.capturing.capture`` (all layers and heads with values),
``CaptureResult.value_transforms`` for ``f^h(x_j)`` (= T^h_j), and
``attnexplain.functional.norm_based_attention``. Per layer, averaged over real query rows,
heads and examples:

* ``raw`` share of a token category: ``sum_{j in cat} A^h_ij`` (mean over heads);
* ``norm`` share: the layer-level norm-based attention ``N_ij = || sum_h A^h_ij f^h(x_j) ||``
  (Kobayashi's multi-head measure), normalised per query row, ``sum_{j in cat} N_ij / sum_j N_ij``;
* ``||f||`` ratio: mean ``||f^h(x_j)||`` over the category's keys divided by the mean over all
  keys (mean over heads);
* ``rho``: Spearman correlation between ``A^h_ij`` and ``||f^h(x_j)||`` over all real (i, j)
  pairs of one head and example, averaged over heads and examples.

Categories: [CLS] (first token), [SEP], punctuation (tokens made only of punctuation marks),
other. Models: the packaged MiniLM encoder (``minilm``, the closest to the paper's pre-trained
BERT) and the fine-tuned ``minilm-rotten-tomatoes`` when prepared. Texts: BBC News articles
truncated to 128 tokens and Rotten Tomatoes snippets (test splits).

Run: ``python analyses/norms.py`` (about 1-3 min on 2 cores); ``--quick`` for the smoke test.
Outputs: ``analyses/out/norms/`` (table.md, results.csv, figures.html, manifest.json).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

NAME = "norms"
CATEGORIES = ("[CLS]", "[SEP]", "punct", "other")


def _spearman_rows(x, y):
    """Spearman correlation of each row pair (numpy (k, p) arrays), average ranks for ties."""
    import numpy as np
    from scipy.stats import rankdata

    rx = rankdata(x, axis=-1)
    ry = rankdata(y, axis=-1)
    rx -= rx.mean(-1, keepdims=True)
    ry -= ry.mean(-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / den, np.nan)


def analyse(lm, model_name: str, dataset: str, texts: list[str], max_length: int, batch_size: int):
    import numpy as np
    import torch

    from attnexplain.capturing import capture
    from attnexplain.functional import norm_based_attention

    specials = C.special_token_strings(lm.tokenizer)
    acc: dict[tuple[int, str], dict[str, list]] = {}
    rho: dict[int, list] = {}
    for s in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[s : s + batch_size], max_length=max_length, on_long="truncate")
        cap = capture(lm, batch)
        mask = cap.key_mask
        for l in cap.layers():
            A = cap.attention(l).float()
            T = cap.value_transforms(l).float()
            na = norm_based_attention(A, T, key_mask=mask)
            tn = torch.linalg.vector_norm(T, dim=-1)  # (B, H, n)
            for b in range(A.shape[0]):
                idx = mask[b].nonzero().flatten()
                n = idx.numel()
                Ab = A[b][:, idx][:, :, idx].double()  # (H, n, n)
                Nb = na.summed[b][idx][:, idx].double()  # (n, n)
                Nb = Nb / Nb.sum(-1, keepdim=True).clamp_min(1e-300)
                fb = tn[b][:, idx].double()  # (H, n)
                cats = [C.token_category(t, position=j, n=n, specials=specials) for j, t in enumerate(cap.tokens[b])]
                fmean = fb.mean()
                for c in CATEGORIES:
                    cols = [j for j, x in enumerate(cats) if x == c]
                    if not cols:
                        continue
                    ci = torch.tensor(cols)
                    a = acc.setdefault((l, c), {"raw": [], "norm": [], "fratio": []})
                    a["raw"].append(Ab[..., ci].sum(-1).mean().item())
                    a["norm"].append(Nb[:, ci].sum(-1).mean().item())
                    a["fratio"].append((fb[:, ci].mean() / fmean).item())
                x = Ab.reshape(Ab.shape[0], -1).numpy()
                y = fb[:, None, :].expand(-1, n, -1).reshape(Ab.shape[0], -1).numpy()
                rho.setdefault(l, []).extend(_spearman_rows(x, y).tolist())
    rows = []
    for (l, c), a in sorted(acc.items()):
        rows.append({"model": model_name, "dataset": dataset, "layer": l, "category": c, "n_examples": len(a["raw"]),
                     "raw": float(np.mean(a["raw"])), "norm": float(np.mean(a["norm"])),
                     "f_ratio": float(np.mean(a["fratio"]))})
    rho_rows = [{"model": model_name, "dataset": dataset, "layer": l, "rho": float(np.nanmean(v)),
                 "share_negative": float(np.nanmean(np.asarray(v) < 0))} for l, v in sorted(rho.items())]
    return rows, rho_rows


def verdicts(df, rdf) -> list[str]:
    out = []
    for (model, dataset), sub in df.groupby(["model", "dataset"], sort=False):
        sp = sub[sub.category.isin(["[CLS]", "[SEP]", "punct"])]
        g = sp.groupby("category")[["raw", "norm", "f_ratio"]].mean()
        lower = [c for c in g.index if g.loc[c, "norm"] < g.loc[c, "raw"]]
        small_f = [c for c in g.index if g.loc[c, "f_ratio"] < 0.5]
        layers_lower = (sp.groupby("layer").apply(lambda t: (t["norm"] < t["raw"]).all(), include_groups=False)).mean()
        out.append(f"- **{model} on {dataset}**, claim 1 (norm-based share of [CLS]/[SEP]/punctuation below the raw "
                   f"share; their ||f(x)|| below average), mean over layers: "
                   + "; ".join(f"{c}: raw {g.loc[c, 'raw']:.3f} -> norm {g.loc[c, 'norm']:.3f}, "
                               f"||f|| ratio {g.loc[c, 'f_ratio']:.2f}" for c in g.index)
                   + f". Norm share lower in {len(lower)}/{len(g)} categories (all three lower in {layers_lower:.0%} of "
                   f"layers); small ||f|| (ratio < 0.5) in {len(small_f)}/{len(g)} -> "
                   + ("AGREES" if len(lower) == len(g) and len(small_f) == len(g)
                      else "PARTLY" if lower else "DISAGREES") + ".")
        r = rdf[(rdf.model == model) & (rdf.dataset == dataset)]
        neg = int((r["rho"] < 0).sum())
        out.append(f"- **{model} on {dataset}**, claim 2 (A and ||f(x)|| negatively correlated): Spearman rho per "
                   f"layer " + ", ".join(f"L{int(l)} {v:+.2f}" for l, v in zip(r.layer, r.rho))
                   + f"; negative in {neg}/{len(r)} layers -> "
                   + ("AGREES" if neg == len(r) else "PARTLY" if neg > len(r) / 2 else "DISAGREES") + ".")
    return out


def figures(df, rdf):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keys = list(dict.fromkeys(zip(df.model, df.dataset)))
    fig = make_subplots(rows=len(keys), cols=3, subplot_titles=[f"{m} / {d}: {c}" for m, d in keys
                                                                 for c in ("[CLS]", "[SEP]", "punct")],
                        shared_yaxes=True, vertical_spacing=0.08)
    for r, (m, d) in enumerate(keys, start=1):
        for k, c in enumerate(("[CLS]", "[SEP]", "punct"), start=1):
            sub = df[(df.model == m) & (df.dataset == d) & (df.category == c)]
            fig.add_trace(go.Bar(x=sub.layer, y=sub.raw, name="raw weight", marker_color="#1f77b4",
                                 showlegend=(r == 1 and k == 1)), row=r, col=k)
            fig.add_trace(go.Bar(x=sub.layer, y=sub.norm, name="norm-based", marker_color="#ff7f0e",
                                 showlegend=(r == 1 and k == 1)), row=r, col=k)
    fig.update_layout(barmode="group", height=300 * len(keys))
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="share of the row", col=1)
    fig2 = go.Figure()
    for (m, d), sub in rdf.groupby(["model", "dataset"], sort=False):
        fig2.add_trace(go.Scatter(x=sub.layer, y=sub.rho, mode="lines+markers", name=f"{m} / {d}"))
    fig2.add_hline(y=0, line_dash="dash")
    fig2.update_layout(xaxis_title="layer", yaxis_title="Spearman rho(A_ij, ||f(x_j)||)", height=400)
    return [("Raw attention weight vs norm-based attention to [CLS], [SEP] and punctuation, per layer", fig),
            ("Correlation between attention weight and value-vector norm, per layer", fig2)]


def main(argv: list[str] | None = None) -> dict:
    import pandas as pd

    p = C.analysis_parser(__doc__, batch_size=16)
    p.add_argument("--models", default="minilm,minilm-rotten-tomatoes")
    p.add_argument("--datasets", default="bbc-news,rotten-tomatoes")
    p.add_argument("--n", type=int, default=64, help="texts per data set")
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.datasets, args.n, args.max_length = "testing:bert", "rotten-tomatoes", 4, 32
    C.set_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*longer than.*truncated.*")
    run = C.Run(NAME, args)
    out = C.out_dir(NAME, args.out)
    from attnexplain.data import load_dataset
    from attnexplain.models import ModelNotFoundError

    rows, rho_rows, infos, skipped = [], [], [], []
    data = {d: load_dataset(d, split=args.split) for d in args.datasets.split(",")}
    for name in args.models.split(","):
        try:
            lm = C.load(name)
        except ModelNotFoundError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        infos.append({"name": name, "num_layers": lm.num_layers, "num_heads": lm.num_heads, "head_dim": lm.head_dim,
                      "source": getattr(lm, "source", "")})
        for d, ds in data.items():
            C.log(f"{name} on {d}")
            r, rr = analyse(lm, name, d, list(ds.texts[: args.n]), args.max_length, args.batch_size)
            rows += r
            rho_rows += rr
    df, rdf = pd.DataFrame(rows), pd.DataFrame(rho_rows)
    sections = []
    for (m, d), sub in df.groupby(["model", "dataset"], sort=False):
        wide = {"layer": sorted(sub.layer.unique())}
        for c in ("[CLS]", "[SEP]", "punct"):
            s2 = sub[sub.category == c].set_index("layer")
            for col, lab in (("raw", "raw"), ("norm", "norm"), ("f_ratio", "f-norm ratio")):
                wide[f"{c} {lab}"] = [s2[col].get(l, float("nan")) for l in wide["layer"]]
        r = rdf[(rdf.model == m) & (rdf.dataset == d)].set_index("layer")
        wide["rho(A, f-norm)"] = [r["rho"].get(l) for l in wide["layer"]]
        sections.append((f"{m} on {d} (share of each query row; f-norm ratio = mean ||f(x_j)|| of the category / mean over all tokens)",
                         C.md_table(pd.DataFrame(wide))))
    header = [
        "**Claim** (Kobayashi et al., EMNLP 2020, *Attention is Not Only a Weight: Analyzing Transformers with "
        "Vector Norms*): special tokens and punctuation get high attention weights but have small transformed "
        "vectors ||f(x)||, so norm-based attention to them is much lower than the weights suggest; weights and "
        "norms are negatively correlated.",
        "**Do our numbers agree?**\n" + "\n".join(verdicts(df, rdf)),
        f"**Setup**: {args.n} texts per data set ({args.split} split), truncated to {args.max_length} tokens; "
        "raw = mean over heads of the weight share, norm = layer-level ||sum_h A^h_ij f^h(x_j)|| normalised per "
        "row; rho = Spearman(A^h_ij, ||f^h(x_j)||) over all real (i, j) of a head, averaged. Models: "
        + "; ".join(f"{i['name']} ({i['num_layers']}x{i['num_heads']} heads, d_h {i['head_dim']})" for i in infos)
        + (f". Skipped: {'; '.join(skipped)}" if skipped else "") + f". Runtime {run.seconds:.0f} s.",
    ]
    C.write_table(out, "Norm-based vs weight-based attention", header, sections)
    df.to_csv(out / "results.csv", index=False)
    rdf.to_csv(out / "correlation.csv", index=False)
    C.write_figures(out, figures(df, rdf), "Attention is not only a weight (Kobayashi et al. 2020)")
    man = run.manifest(out, models=infos, data={"datasets": list(data), "split": args.split, "n": args.n,
                                                "max_length": args.max_length},
                       files=["table.md", "results.csv", "correlation.csv", "figures.html", "manifest.json"],
                       skipped=skipped)
    C.log(f"wrote {out} in {run.seconds:.0f} s")
    return {"out": out, "results": df, "correlation": rdf, "manifest": man}


if __name__ == "__main__":
    main()

"""Summaries of run folders: ``attnexplain report`` (one run) and ``attnexplain compare`` (two runs).

>>> from attnexplain.runs.report import report, compare
>>> summary = report("runs/rt")            # writes runs/rt/report/summary.md + figures
>>> print(summary.text)
>>> cmp = compare("runs/rt-dense", "runs/rt-smyrf")   # writes runs/rt-dense/compare-rt-smyrf/

What is computed:

* **accuracy** over labelled examples (with a 95 % Wilson score interval);
* **AOPC** per method: mean comprehensiveness and sufficiency AOPC over the examples, each with a
  bootstrap 95 % CI (:func:`attnexplain.metrics.bootstrap_ci`, BCa, seeded); the per-bin means
  give the perturbation curves;
* **agreement between methods**: per example, Kendall's tau-b between two methods' token scores
  (all real tokens), averaged over the examples (NaN pairs, e.g. constant scores, skipped);
* **heads**: per layer the mean readout entropy and raw-vs-effective JSD, the heads where raw and
  effective attention differ most and, with head ablation, the heads whose removal changes the
  output most;
* **compare**: accuracy and prediction agreement on the shared examples, mean TVD between the two
  runs' output distributions, AOPC per method in both, and per method the mean Kendall tau between
  the two runs' token scores of the same example (examples whose tokenisation differs are skipped).

Figures are plotly HTML files that share one ``plotly.min.js`` written next to them (no network
needed to view them).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import kendall_tau_matrix, proportion_ci
from .markdown import format_markdown_table
from .reader import Run, open_run
from .atomic_io import write_bytes_atomic, write_text_atomic

#: a JSD (nats) between raw and effective attention rows at or below this is float noise: the two
#: are equal (always the case when a head sees at most d_head tokens)
DIFFERENCE_TOLERANCE = 1e-4

__all__ = ["ReportResult", "CompareResult", "report", "compare", "method_agreement", "aopc_table"]


@dataclass
class ReportResult:
    """What :func:`report` computed and wrote."""

    run: Run
    text: str
    accuracy: float | None
    aopc: Any  # DataFrame: method, comp, comp_low, comp_high, suff, suff_low, suff_high, n
    curves: Any  # DataFrame: method, metric, k, value
    agreement: Any  # DataFrame methods x methods
    heads: Any  # DataFrame per layer
    files: list[Path] = field(default_factory=list)


@dataclass
class CompareResult:
    text: str
    table: Any
    files: list[Path] = field(default_factory=list)


def _clip(text: Any, n: int = 60) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[: n - 1] + "…"


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _ci(values: np.ndarray, n_resamples: int) -> tuple[float, float]:
    from ..metrics import bootstrap_ci

    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    return bootstrap_ci(values, n_resamples=n_resamples)


def aopc_table(run: Run, examples: Any = None, n_resamples: int = 2000):
    """Mean comprehensiveness / sufficiency AOPC per method with bootstrap 95 % CIs."""
    import pandas as pd

    ex = run.examples() if examples is None else examples
    rows = []
    for m in run.methods:
        row: dict[str, Any] = {"method": m}
        for short, col in (("comp", f"comp_aopc__{m}"), ("suff", f"suff_aopc__{m}")):
            v = ex[col].to_numpy(dtype=np.float64) if col in ex else np.array([])
            row[short] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            row[f"{short}_low"], row[f"{short}_high"] = _ci(v, n_resamples)
        row["n"] = int(len(ex))
        rows.append(row)
    return pd.DataFrame(rows)


def method_agreement(tokens: Any, methods: list[str]):
    """Mean (over examples; generation runs: over generated tokens) Kendall tau-b between every pair of
    methods' token scores: DataFrame M x M."""
    import pandas as pd

    M = len(methods)
    total = np.zeros((M, M))
    count = np.zeros((M, M))
    if len(tokens):
        t = tokens[tokens["method"].isin(methods)]
        order = {m: i for i, m in enumerate(methods)}
        # generation runs: one ranking per generated token (example, step)
        keys = ["example_id", "step"] if "step" in t else ["example_id"]
        t = t.assign(mi=t["method"].map(order)).sort_values([*keys, "mi", "position"], kind="stable")
        for _, grp in t.groupby(keys, sort=False):
            if grp["mi"].nunique() != M:
                continue
            n = len(grp) // M
            if n * M != len(grp):
                continue
            sc = grp["score"].to_numpy(dtype=np.float64).reshape(M, n)
            tau = kendall_tau_matrix(sc)
            ok = ~np.isnan(tau)
            total[ok] += tau[ok]
            count[ok] += 1
    with np.errstate(invalid="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return pd.DataFrame(mean, index=methods, columns=methods)


def _head_summary(heads: Any):
    import pandas as pd

    if not len(heads):
        return pd.DataFrame(), pd.DataFrame()
    per_head = heads.groupby(["layer", "head", "metric"])["value"].mean().unstack("metric").reset_index()
    per_layer = heads.groupby(["layer", "metric"])["value"].mean().unstack("metric").reset_index()
    return per_layer, per_head


def write_plotly_bundle(folder: Path) -> Path:
    """``folder/plotly.min.js`` (the bundle the figures load, offline), written atomically and
    rewritten unless it already holds exactly this plotly's bundle (a file left empty or cut short
    by a killed or full-disk report is replaced, not reused)."""
    from plotly.offline import get_plotlyjs


    data = get_plotlyjs().encode("utf-8")
    path = Path(folder) / "plotly.min.js"
    try:
        same = path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        same = False
    if not same:
        write_bytes_atomic(path, data)
    return path


def _write_fig(fig: Any, path: Path) -> Path:
    """One figure as HTML loading the shared ``plotly.min.js`` next to it; both written atomically."""

    write_plotly_bundle(path.parent)
    write_text_atomic(path, fig.to_html(include_plotlyjs="directory", full_html=True))
    return path


def report(run: str | os.PathLike | Run, *, out: str | os.PathLike | None = None, figures: bool = True,
           n_resamples: int = 2000, include_special_tokens: bool | None = None) -> ReportResult:
    """Summarise a run: printable text, ``<out>/summary.md`` and plotly figures (default ``<run>/report``).

    ``include_special_tokens``: the method-agreement table over every real token (True) or without
    special tokens and a causal model's first token (False); None: as the run was analysed.
    """
    import pandas as pd

    run = run if isinstance(run, Run) else open_run(run)
    out_dir = Path(out) if out is not None else run.report_dir
    ex = run.examples()
    man = run.manifest
    methods = run.methods
    n = len(ex)
    lines = [f"# Report: {run.name}", ""]
    lines.append(f"- model: `{man.get('model')}` ({man.get('task')}), backend: `{man.get('backend')}`"
                 + (f" {man.get('backend_options')}" if man.get("backend_options") else ""))
    lines.append(f"- dataset: `{man.get('dataset')}` split `{man.get('split')}`"
                 + (f", shard {man['shard']}" if man.get("shard") else "")
                 + f"; {n} examples" + ("" if run.is_complete else f" of {man.get('n_examples')} (run not complete)"))
    faith = man.get("faithfulness") or {}
    lines.append(f"- faithfulness: removal `{faith.get('removal')}`, bins {faith.get('bins')}, perturbed forwards in "
                 f"{faith.get('precision', 'float32')}")
    acc = None
    if n and ex["correct"].notna().any():
        corr = ex["correct"].dropna().astype(float).to_numpy()
        acc = float(corr.mean())
        lo, hi = proportion_ci(int(corr.sum()), len(corr))  # Wilson: not zero-width at 8/8
        lines.append(f"- accuracy: **{acc:.3f}** (95 % Wilson CI {_fmt(lo)}-{_fmt(hi)}, {len(corr)} labelled examples)")
    elif man.get("task") == "generation":
        lines.append("- accuracy: n/a (a generation run: no class is predicted)")
    else:
        lines.append("- accuracy: n/a (unlabelled data)")
    if n:
        lines.append(f"- truncated inputs: {int(ex['truncated'].sum())}; mean tokens {ex['n_tokens'].mean():.1f}")
    if man.get("task") == "generation" and n:
        gen_conf = man.get("generation") or {}
        n_gen = ex["n_generated"].to_numpy(dtype=float)
        p_all = np.concatenate([np.asarray(p, dtype=float) for p in ex["step_probs"]]) if n else np.array([])
        lines.append(f"- generation: {int(n_gen.sum())} generated tokens explained ({gen_conf.get('decoding', 'greedy')}, "
                     f"at most {gen_conf.get('max_new_tokens')} per prompt; mean {n_gen.mean():.1f}); mean step "
                     f"probability {_fmt(float(p_all.mean()) if p_all.size else None, 3)}. Faithfulness and agreement are "
                     "per generated token (its probability; its scores over the prompt and the tokens before it)")
    if man.get("text_pair_column"):
        lines.append(f"- sentence pairs: column `{man['text_pair_column']}` is the second segment "
                     "(tokenized together with the text: [CLS] text [SEP] pair [SEP])")
    special = man.get("special_tokens") or {}
    shown_without = (special.get("excluded", True) if include_special_tokens is None else not include_special_tokens)
    if special and shown_without:
        lines.append("- token scores: special tokens (" + ", ".join(f"`{t}`" for t in special.get("tokens", [])[:6])
                     + (") and each example's first token (attention sink)" if special.get("attention_sink") else ")")
                     + " left out of the token tables (`--include-special-tokens` keeps them); faithfulness never removes them")
    lines.append("")

    if man.get("task") == "generation" and n:
        show = pd.DataFrame({"example": ex["example_id"].astype(str),
                             "prompt": [_clip(t) for t in ex["text"]],
                             "generated": [_clip(t) for t in ex["generated_text"]],
                             "mean p": [float(np.mean(p)) if len(p) else float("nan") for p in ex["step_probs"]]})
        lines += ["## Generations (first 10)", "", format_markdown_table(show.head(10), digits=3, missing="n/a"), ""]

    aopc = aopc_table(run, ex, n_resamples=n_resamples) if n else pd.DataFrame()
    lines += ["## Faithfulness (ERASER AOPC, mean over examples, 95 % bootstrap CI)", "",
              "Comprehensiveness: higher = the explanation's top tokens are more necessary. "
              "Sufficiency: lower = they are more sufficient on their own. Compare with `random`.", ""]
    if len(aopc):
        show = pd.DataFrame({
            "method": aopc["method"],
            "comprehensiveness": [f"{_fmt(r.comp)} [{_fmt(r.comp_low)}, {_fmt(r.comp_high)}]" for r in aopc.itertuples()],
            "sufficiency": [f"{_fmt(r.suff)} [{_fmt(r.suff_low)}, {_fmt(r.suff_high)}]" for r in aopc.itertuples()],
        })
        lines += [format_markdown_table(show, digits=4, missing="n/a"), ""]

    faith_t = run.faithfulness()
    curves = (faith_t.groupby(["method", "metric", "k"])["value"].mean().reset_index()
              if len(faith_t) else pd.DataFrame(columns=["method", "metric", "k", "value"]))
    exclude = None if include_special_tokens is None else not include_special_tokens
    agreement = method_agreement(run.tokens(exclude_special_tokens=exclude), methods) if n else pd.DataFrame()
    if len(agreement):
        lines += ["## Agreement between methods (mean Kendall tau-b of token scores per example)", "",
                  format_markdown_table(agreement.reset_index().rename(columns={"index": "method"}), digits=2, missing="n/a"), ""]

    per_layer, per_head = _head_summary(run.heads())
    if len(per_layer):
        what = ["entropy of the readout row in nats" if man.get("task") != "generation" else
                "entropy in nats of the rows that predict each generated token" + (
                    " (the decoder's cross-attention over the source)" if man.get("model_task") == "seq2seq" else "")]
        if "eff_raw_jsd" in per_layer:
            what.append("JSD between raw and normalised |effective| attention rows")
        lines += ["## Heads", "", f"Per layer, mean over heads and examples ({'; '.join(what)}):", "",
                  format_markdown_table(per_layer, digits=4, missing="n/a"), ""]
        if "eff_raw_jsd" in per_head:
            top = per_head.sort_values("eff_raw_jsd", ascending=False).head(5)
            top = top[top["eff_raw_jsd"] > DIFFERENCE_TOLERANCE]
            if len(top):
                lines += ["Heads where effective attention differs most from raw attention: "
                          + ", ".join(f"L{int(r.layer)}H{int(r.head)} ({r.eff_raw_jsd:.3f})" for r in top.itertuples()), ""]
            else:
                lines += [f"Effective attention equals raw attention in every head (JSD <= {DIFFERENCE_TOLERANCE:g}): "
                          "with at most d_head tokens nothing is hidden in the null space.", ""]
        if "ablation_tvd" in per_head:
            top = per_head.sort_values("ablation_tvd", ascending=False).head(5)
            lines += ["Heads whose zero-ablation changes the output most (mean TVD): "
                      + ", ".join(f"L{int(r.layer)}H{int(r.head)} ({r.ablation_tvd:.4f})" for r in top.itertuples()), ""]

    from .atomic_io import remove_stale_temps

    remove_stale_temps(out_dir)  # what a killed report left half-written
    files: list[Path] = []
    if figures and n:
        out_dir.mkdir(parents=True, exist_ok=True)
        files += _report_figures(out_dir, aopc, curves, agreement, per_head)
        lines += ["## Figures", ""] + [f"- [{f.name}]({f.name})" for f in files] + [""]
    text = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "summary.md"
    write_text_atomic(summary, text)
    files.insert(0, summary)
    return ReportResult(run=run, text=text, accuracy=acc, aopc=aopc, curves=curves, agreement=agreement,
                        heads=per_layer, files=files)


def _report_figures(out_dir: Path, aopc: Any, curves: Any, agreement: Any, per_head: Any) -> list[Path]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    files = []
    fig = go.Figure()
    for short, label in (("comp", "comprehensiveness"), ("suff", "sufficiency")):
        fig.add_bar(
            name=label, x=aopc["method"], y=aopc[short],
            error_y=dict(type="data", symmetric=False, array=(aopc[f"{short}_high"] - aopc[short]).clip(lower=0),
                         arrayminus=(aopc[short] - aopc[f"{short}_low"]).clip(lower=0)),
        )
    fig.update_layout(title="AOPC per method (95 % bootstrap CI)", barmode="group", yaxis_title="AOPC")
    files.append(_write_fig(fig, out_dir / "aopc.html"))

    fig = make_subplots(rows=1, cols=2, subplot_titles=("comprehensiveness (higher = better)", "sufficiency (lower = better)"))
    for col, metric in enumerate(("comprehensiveness", "sufficiency"), start=1):
        for m, grp in curves[curves["metric"] == metric].groupby("method", sort=False):
            fig.add_scatter(x=grp["k"], y=grp["value"], mode="lines+markers", name=m, legendgroup=m,
                            showlegend=col == 1, row=1, col=col)
    fig.update_xaxes(title_text="fraction of tokens (k)", type="log")
    fig.update_layout(title="Perturbation curves (mean over examples)")
    files.append(_write_fig(fig, out_dir / "curves.html"))

    if len(agreement):
        fig = go.Figure(go.Heatmap(z=agreement.to_numpy(), x=list(agreement.columns), y=list(agreement.index),
                                   zmin=-1, zmax=1, colorscale="RdBu", text=np.round(agreement.to_numpy(), 2),
                                   texttemplate="%{text}"))
        fig.update_layout(title="Agreement between methods (mean Kendall tau-b)")
        files.append(_write_fig(fig, out_dir / "agreement.html"))

    if len(per_head) and "eff_raw_jsd" in per_head:
        piv = per_head.pivot(index="layer", columns="head", values="eff_raw_jsd")
        fig = go.Figure(go.Heatmap(z=piv.to_numpy(), x=[f"H{h}" for h in piv.columns], y=[f"L{l}" for l in piv.index]))
        # layer 0 at the top, as in the dashboard's layer x head maps
        fig.update_layout(title="Raw vs effective attention per head (mean JSD)",
                          yaxis=dict(autorange="reversed", title="layer"), xaxis=dict(title="head"))
        files.append(_write_fig(fig, out_dir / "heads.html"))
    return files


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def _run_scores(run: Run, method: str, ids: set[str]):
    t = run.tokens(method=method)
    t = t[t["example_id"].isin(ids)].sort_values(["example_id", "position"], kind="stable")
    return {eid: (g["token"].tolist(), g["score"].to_numpy(dtype=np.float64)) for eid, g in t.groupby("example_id", sort=False)}


def compare(run_a: str | os.PathLike | Run, run_b: str | os.PathLike | Run, *, out: str | os.PathLike | None = None,
            n_resamples: int = 2000) -> CompareResult:
    """Compare two runs side by side (e.g. the dense and a SMYRF backend on the same data).

    Writes ``compare.md`` and ``compare.html`` to ``out`` (default ``<run_a>/compare-<name of run_b>``).
    """
    import pandas as pd

    from ..metrics import tvd

    a = run_a if isinstance(run_a, Run) else open_run(run_a)
    b = run_b if isinstance(run_b, Run) else open_run(run_b)
    out_dir = Path(out) if out is not None else a.path / f"compare-{b.name}"
    ea, eb = a.examples(), b.examples()
    common = sorted(set(ea["example_id"]) & set(eb["example_id"]))
    ma, mb = a.manifest, b.manifest
    lines = [f"# Compare: {a.name} (A) vs {b.name} (B)", ""]
    lines.append(f"| | A: {a.name} | B: {b.name} |")
    lines.append("|---|---|---|")
    for key in ("model", "dataset", "split", "backend", "backend_options", "methods"):
        va, vb = ma.get(key), mb.get(key)
        lines.append(f"| {key} | {va} | {vb} |" + ("" if va == vb else ""))
    lines.append(f"| examples | {len(ea)} | {len(eb)} |")
    lines.append("")
    if not common:
        lines.append("The runs share no example (different data sets or splits?); nothing to compare.")
        text = "\n".join(lines)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "compare.md", text)
        return CompareResult(text=text, table=pd.DataFrame(), files=[out_dir / "compare.md"])
    ja = ea.set_index("example_id").loc[common]
    jb = eb.set_index("example_id").loc[common]
    agree = float((ja["pred"].to_numpy() == jb["pred"].to_numpy()).mean())
    try:  # class distributions; generation runs hold step probabilities of varying length instead
        pa = np.stack(ja["probs"].to_numpy())
        pb = np.stack(jb["probs"].to_numpy())
        generation = "generation" in (ma.get("task"), mb.get("task"))
        mean_tvd = float(np.mean(tvd(pa, pb))) if pa.shape == pb.shape and not generation else float("nan")
    except ValueError:
        mean_tvd = float("nan")
    lines.append(f"Shared examples: {len(common)}")
    lines.append("")
    if ja["correct"].notna().any():
        acc_a = float(ja["correct"].dropna().astype(float).mean())
        acc_b = float(jb["correct"].dropna().astype(float).mean())
        lines.append(f"- accuracy: {a.name} **{acc_a:.3f}**, {b.name} **{acc_b:.3f}** (difference {acc_b - acc_a:+.3f})")
    lines.append(f"- prediction agreement: **{agree:.3f}**; mean TVD between output distributions: {_fmt(mean_tvd, 4)}")
    lines.append("")

    methods = [m for m in a.methods if m in b.methods]
    ids = set(common)
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for tag, j in (("a", ja), ("b", jb)):
            for short in ("comp", "suff"):
                v = j[f"{short}_aopc__{m}"].to_numpy(dtype=np.float64)
                row[f"{short}_{tag}"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        sa, sb = _run_scores(a, m, ids), _run_scores(b, m, ids)
        taus = []
        skipped = 0
        for eid in common:
            if eid not in sa or eid not in sb:
                continue
            (ta, xa), (tb, xb) = sa[eid], sb[eid]
            if ta != tb:
                skipped += 1
                continue
            tau = kendall_tau_matrix(np.stack([xa, xb]))[0, 1]
            if not np.isnan(tau):
                taus.append(tau)
        row["rank_tau"] = float(np.mean(taus)) if taus else float("nan")
        row["tau_low"], row["tau_high"] = _ci(np.asarray(taus), n_resamples) if len(taus) > 1 else (float("nan"), float("nan"))
        row["n_tau"] = len(taus)
        row["skipped"] = skipped
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        show = pd.DataFrame({
            "method": table["method"],
            "comp A": table["comp_a"], "comp B": table["comp_b"],
            "suff A": table["suff_a"], "suff B": table["suff_b"],
            "rank agreement (tau)": table["rank_tau"], "examples": table["n_tau"],
        })
        lines += ["## AOPC per method and rank agreement of token scores between the runs", "",
                  "Rank agreement: per shared example, Kendall tau-b between the two runs' scores of the same "
                  "method (1 = same ranking), averaged.", "", format_markdown_table(show, digits=4, missing="n/a"), ""]
        if int(table["skipped"].sum()):
            lines.append(f"({int(table['skipped'].sum())} example/method pairs skipped: different tokenisation.)")
            lines.append("")
    files = []
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(table):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=3, subplot_titles=("comprehensiveness AOPC", "sufficiency AOPC",
                                                            "rank agreement (Kendall tau)"))
        for tag, name in (("a", a.name), ("b", b.name)):
            fig.add_bar(x=table["method"], y=table[f"comp_{tag}"], name=name, legendgroup=name, row=1, col=1)
            fig.add_bar(x=table["method"], y=table[f"suff_{tag}"], name=name, legendgroup=name, showlegend=False, row=1, col=2)
        fig.add_bar(x=table["method"], y=table["rank_tau"], name="tau", showlegend=False, row=1, col=3)
        fig.update_layout(title=f"{a.name} vs {b.name}", barmode="group")
        files.append(_write_fig(fig, out_dir / "compare.html"))
        lines += ["Figure: [compare.html](compare.html)", ""]
    text = "\n".join(lines)
    write_text_atomic(out_dir / "compare.md", text)
    files.insert(0, out_dir / "compare.md")
    return CompareResult(text=text, table=table, files=files)

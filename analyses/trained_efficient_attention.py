"""Train the five attention mechanisms on the same data with the same budget, and compare them.

Mechanisms (attnexplain.efficient_models): standard softmax attention (control), Optimised /
Efficient / Super attention (Hosseini & Hosseini 2024) and element-wise attention (Feng 2025,
Taylor order 2). Same classifier (d_model 128, 4 heads, 2 pre-LN layers, mean pooling), same
tokens, same seed, same number of epochs; a per-mechanism time cap guards the total run time
(the table reports the steps each one got, so a cut is visible).

Columns: test accuracy, parameters (total / attention modules), training seconds, inference
examples per second (eval mode, batch 64, padded to the batch's longest text) and ERASER
faithfulness of *raw attention* as a token ranking against a seeded random ranking:

* ranking score of token j = attention that j receives from the pooling query, averaged over
  heads and layers. The classifier mean-pools, so the "pooling query" is the mean of the rows of
  the real query positions (for CLS / last-token pooling it would be that row). The matrix is
  what the module reports to capture: the softmax probabilities (standard / optimised /
  efficient), the signed token mixing A W_A (super, not row-stochastic) and the mean over each
  head's channels of the per-channel matrices (element-wise).
* comprehensiveness(k) = m(x)_c - m(x \\ r_k)_c, sufficiency(k) = m(x)_c - m(r_k)_c with r_k the
  top-k % content tokens ([CLS]/[SEP] never removed), tokens *deleted* (sequence re-packed),
  c = the predicted class; AOPC = mean over k in {1, 5, 10, 20, 50} % (ceil, at least 1 token).
  Computed with ``attnexplain.ablations.eraser.faithfulness`` (the manifest records it).

Timings depend on the machine's load; the run uses ``--threads`` torch threads (default 1: on
a shared 2-core machine one thread gives steadier timings for models this small).

Run: ``python analyses/trained_efficient_attention.py`` (defaults: rotten-tomatoes, max_len 64,
1 epoch, ~10-15 min on 2 CPU cores). Writes into ``--out`` (default
``analyses/out/trained_efficient_attention/``): ``results.md`` (the table), ``results.csv``,
``figure.html`` (plotly), ``manifest.json``. The trained models go to
``cache_dir()/"models"/efficient-<mechanism>-<dataset>`` (outside the repository).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attnexplain.capturing.attention import CaptureSpec, session  # noqa: E402
from attnexplain.efficient_models import ATTENTION_MECHANISMS, load_efficient_classifier, train_efficient_classifier  # noqa: E402
from attnexplain.efficient_models.train import TextEncoder, load_texts  # noqa: E402
from attnexplain.metrics import ERASER_BINS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "analyses" / "out" / "trained_efficient_attention"
BINS = ERASER_BINS


# --------------------------------------------------------------------------------------------
# attention ranking
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_scores(model, rows: list[list[int]], batch_size: int = 64) -> list[np.ndarray]:
    """Per example, one score per real token: attention received from the pooling query,
    averaged over heads and layers (see the module docstring)."""
    out: list[np.ndarray] = []
    for b in range(0, len(rows), batch_size):
        chunk = rows[b : b + batch_size]
        ids, mask = TextEncoder.pad(chunk)
        with session(model, CaptureSpec(store_values=False)) as state:
            model(ids, mask)
        maps = torch.stack([r.probs.float() for r in state.records]).mean(dim=(0, 2))  # (B, n, n)
        m = mask.float()
        if model.pooling == "mean":
            query = (maps * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)
        elif model.pooling == "cls":
            query = maps[:, 0]
        else:
            last = mask.cumsum(1).argmax(1)
            query = maps[torch.arange(len(chunk)), last]
        for i, r in enumerate(chunk):
            out.append(query[i, : len(r)].double().numpy())
    return out


# --------------------------------------------------------------------------------------------
# faithfulness (attnexplain.ablations.eraser)
# --------------------------------------------------------------------------------------------


class _LMShim:
    """What ``attnexplain.ablations.eraser`` reads from a LoadedModel, for our classifier."""

    def __init__(self, model, encoder: TextEncoder) -> None:
        specials = encoder.special_ids()

        class _Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask=None, **_):
                return SimpleNamespace(logits=self.inner(input_ids, attention_mask))

        self.model = _Wrapped(model)
        self.tokenizer = SimpleNamespace(all_special_ids=sorted(specials | {TextEncoder.PAD}),
                                         pad_token_id=TextEncoder.PAD, unk_token_id=TextEncoder.UNK,
                                         padding_side="right")
        self.device = torch.device("cpu")


def faithfulness_columns(model, encoder: TextEncoder, rows, seed: int) -> tuple[dict, str]:
    """AOPC of raw attention vs a seeded random ranking; returns (columns, implementation)."""
    specials = encoder.special_ids()
    rows = [r for r in rows if any(t not in specials for t in r)]
    scores = attention_scores(model, rows)
    content = [[j for j, t in enumerate(r) if t not in specials] for r in rows]
    rng_rank = [np.random.default_rng([seed, i]).permutation(len(c)) for i, c in enumerate(content)]
    from attnexplain.ablations.eraser import faithfulness

    ids, mask = TextEncoder.pad(rows)
    res = faithfulness(_LMShim(model, encoder), {"input_ids": ids, "attention_mask": mask},
                       {"attention": scores}, rankings={"random": rng_rank}, bins=BINS, mode="delete")
    piv = res.pivot()
    vals = {m: {k: float(piv.loc[m, k]) for k in ("comprehensiveness", "sufficiency")} for m in piv.index}
    impl = "attnexplain.ablations.eraser.faithfulness"
    cols = {
        "comp_aopc_attention": vals["attention"]["comprehensiveness"],
        "comp_aopc_random": vals["random"]["comprehensiveness"],
        "suff_aopc_attention": vals["attention"]["sufficiency"],
        "suff_aopc_random": vals["random"]["sufficiency"],
        "faith_examples": len(rows),
    }
    return cols, impl


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------


def markdown_table(df) -> str:
    cols = [
        ("attention", "mechanism", "{}"),
        ("accuracy", "accuracy", "{:.3f}"),
        ("params_total", "params total", "{:,}"),
        ("params_attention", "params attention", "{:,}"),
        ("train_seconds", "train s", "{:.0f}"),
        ("steps", "steps", "{}"),
        ("inference_examples_per_s", "inference ex/s", "{:.0f}"),
        ("comp_aopc_attention", "comp. AOPC attention", "{:.3f}"),
        ("comp_aopc_random", "comp. AOPC random", "{:.3f}"),
        ("suff_aopc_attention", "suff. AOPC attention", "{:.3f}"),
        ("suff_aopc_random", "suff. AOPC random", "{:.3f}"),
    ]
    import pandas as pd

    from attnexplain.runs.markdown import format_markdown_table

    cols = [c for c in cols if c[0] in df.columns]
    cells = pd.DataFrame({key: [fmt.format(v) for v in df[key]] for key, _, fmt in cols})  # formatted per column
    return format_markdown_table(cells, headers={key: header for key, header, _ in cols}) + "\n"


def figure(df, path: Path, inline_js: bool) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(df["attention"])
    fig = make_subplots(rows=2, cols=3, subplot_titles=(
        "test accuracy", "attention parameters", "training seconds", "inference examples / s",
        "comprehensiveness AOPC (higher = more faithful)", "sufficiency AOPC (lower = more faithful)"))
    fig.add_trace(go.Bar(x=names, y=df["accuracy"], name="accuracy", showlegend=False), 1, 1)
    fig.add_trace(go.Bar(x=names, y=df["params_attention"], name="attention params", showlegend=False), 1, 2)
    fig.add_trace(go.Bar(x=names, y=df["train_seconds"], name="train s", showlegend=False), 1, 3)
    fig.add_trace(go.Bar(x=names, y=df["inference_examples_per_s"], name="ex/s", showlegend=False), 2, 1)
    if "comp_aopc_attention" in df.columns:
        for metric, col in (("comp", 2), ("suff", 3)):
            for src, colour in (("attention", "#1f77b4"), ("random", "#aaaaaa")):
                fig.add_trace(go.Bar(x=names, y=df[f"{metric}_aopc_{src}"], name=f"{src} ranking",
                                     marker_color=colour, legendgroup=src, showlegend=metric == "comp"), 2, col)
    fig.update_layout(title="Trained efficient-attention classifiers: same data, same budget", barmode="group",
                      height=750, width=1250)
    # offline: plotly.js next to the page (copied from the installed plotly package, git-ignored),
    # or embedded with --inline-plotlyjs; never a CDN link
    fig.write_html(path, include_plotlyjs=True if inline_js else "directory")
    if not inline_js:
        (Path(path).parent / ".gitignore").write_text("plotly.min.js\n")


def _versions() -> dict:
    import pandas
    import plotly
    import transformers

    import attnexplain

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "pandas": pandas.__version__, "plotly": plotly.__version__, "numpy": np.__version__,
            "attnexplain": attnexplain.__version__, "git_commit": commit, "platform": platform.platform(),
            "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="rotten-tomatoes")
    p.add_argument("--mechanisms", nargs="+", default=list(ATTENTION_MECHANISMS), choices=list(ATTENTION_MECHANISMS))
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--budget-seconds", type=float, default=150.0, help="training time cap per mechanism")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--faith-examples", type=int, default=300, help="test examples scored for faithfulness (0 = skip)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--taylor-order", type=int, default=2)
    p.add_argument("--tokenizer", default="minilm", choices=["minilm", "word"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models-dir", default=None, help="parent folder of the model folders (default cache_dir()/models)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--inline-plotlyjs", action="store_true", help="embed plotly.js (~4.7 MB) instead of loading plotly.min.js from the output folder")
    args = p.parse_args(argv)

    import pandas as pd

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows, impl = [], None
    for mech in args.mechanisms:
        t0 = time.perf_counter()
        res = train_efficient_classifier(
            mech, args.dataset, epochs=args.epochs, max_len=args.max_len, budget_seconds=args.budget_seconds,
            seed=args.seed, out_dir=args.models_dir, d_model=args.d_model, n_heads=args.n_heads,
            n_layers=args.n_layers, taylor_order=args.taylor_order, tokenizer=args.tokenizer,
            train_limit=args.train_limit, test_limit=args.test_limit,
        )
        row = {k: v for k, v in res.items() if k != "settings"}
        if args.faith_examples > 0:
            model, enc, _ = load_efficient_classifier(res["path"])
            texts, _, _ = load_texts(args.dataset, "test", seed=args.seed)
            cols, impl = faithfulness_columns(model, enc, enc.encode(texts[: args.faith_examples]), args.seed)
            row.update(cols)
        rows.append(row)
        print(f"[{mech}] acc={row['accuracy']:.3f} steps={row['steps']} train={row['train_seconds']:.0f}s "
              f"inf={row['inference_examples_per_s']:.0f}/s "
              + (f"comp att/rand={row['comp_aopc_attention']:.3f}/{row['comp_aopc_random']:.3f} " if 'comp_aopc_attention' in row else "")
              + f"({time.perf_counter() - t0:.0f}s)", flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False)
    first = rows[0]
    header = (
        f"# Trained efficient-attention classifiers ({args.dataset})\n\n"
        f"Same data ({first['n_train']} train / {first['n_test']} test examples, data source "
        f"`{first['data_source']}`), same settings: d_model {args.d_model}, {args.n_heads} heads, "
        f"{args.n_layers} layers, max_len {args.max_len}, {args.epochs:g} epoch(s) capped at "
        f"{args.budget_seconds:g} s, batch 32, AdamW lr 1e-3, seed {args.seed}, {args.threads} torch thread(s), "
        f"{args.tokenizer} tokens (vocabulary {first['vocab_size']:,}). Element-wise attention: Taylor order "
        f"{args.taylor_order}. Attention parameters count all {args.n_layers} layers (biases included).\n\n"
    )
    notes = ""
    if args.faith_examples > 0:
        notes = (
            f"\nFaithfulness: ERASER AOPC over k in {{1,5,10,20,50}} % on the first {rows[0]['faith_examples']} "
            f"test examples, tokens deleted, target = predicted class; ranking = attention received from the "
            f"mean query row, averaged over heads and layers (super: signed A W_A; element-wise: per-head mean "
            f"of the channel matrices) vs a seeded random ranking. Computed with `{impl}`.\n"
        )
    notes += "\nTimings are wall-clock on a shared machine and noisy; compare them within this run only.\n"
    (out / "results.md").write_text(header + markdown_table(df) + notes)
    figure(df, out / "figure.html", args.inline_plotlyjs)
    manifest = {
        "script": "analyses/trained_efficient_attention.py",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": vars(args),
        "faithfulness_implementation": impl,
        "versions": _versions(),
        "torch_threads": torch.get_num_threads(),
        "total_seconds": round(time.perf_counter() - started, 1),
        "model_paths": [r["path"] for r in rows],
        "files": ["results.md", "results.csv", "figure.html", "manifest.json"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    print(markdown_table(df))
    print(f"wrote {out} in {manifest['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

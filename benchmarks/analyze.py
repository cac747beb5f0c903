"""Throughput of ``attnexplain analyze`` vs the plain forward pass of the same model on the same texts.

    python benchmarks/analyze.py [--limit 256] [--batch-size 32] [--threads N]

Model: the prepared default classifier ``minilm-rotten-tomatoes`` when it is in the cache, else
the packaged MiniLM with a new random classification head (said in the output; same cost per
example). Data: the rotten-tomatoes test split (first ``--limit`` examples).

Analyze here = one capture per batch (all layers and heads, values), token scores of
raw_attention, effective_attention, norm, rollout and the random baseline, ERASER
comprehensiveness + sufficiency at 5 bins for each method (batched), per-head statistics, the
attention arrays of the first 50 examples, and the shard writes. No integrated gradients.
Forward = ``lm.model(**batch)`` (dense backend: PyTorch's SDPA kernel) on the same batches.

Faithfulness forwards run with analyze's default ``--faithfulness-precision auto`` (bfloat16
autocast where the CPU/GPU runs it natively, else float32; printed); ``--faithfulness-precision
float32`` measures the float32 path. Timings on a shared VM vary by +-10 % from run to run, so
both measurements are repeated (``--repeats``, default 3, interleaved) and the medians reported.

Last line: ``RESULT examples_per_s=<analyze examples/s> overhead=<analyze time / forward time>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

METHODS = ["raw_attention", "effective_attention", "norm", "rollout", "random"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--keep", default=None, help="write the run folder here instead of a temp folder")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions of both measurements (medians reported)")
    ap.add_argument("--faithfulness-precision", default="auto", choices=["auto", "float32", "bfloat16"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from attnexplain.data import load_dataset
    from attnexplain.models import ModelNotFoundError, load_model
    from attnexplain.runs.analyze import analyze

    ds = load_dataset("rotten-tomatoes", split="test", limit=args.limit)
    try:
        lm = load_model("minilm-rotten-tomatoes")
        which = "minilm-rotten-tomatoes (prepared, fine-tuned)"
    except ModelNotFoundError:
        lm = load_model("minilm", task="classification", labels=list(ds.label_names))
        lm.name = "minilm+random-head"
        which = "packaged MiniLM with a RANDOM classification head (minilm-rotten-tomatoes not prepared)"
    print(f"model: {which}; torch threads: {torch.get_num_threads()}; {len(ds)} rotten-tomatoes test examples; "
          f"batch size {args.batch_size}", flush=True)

    # warm-up (first calls allocate, import lazily, build kernels)
    warm = ds.head(8)
    tmp = tempfile.mkdtemp(prefix="attnexplain-bench-")
    try:
        analyze(os.path.join(tmp, "warm"), model=lm, dataset=warm, methods=METHODS, batch_size=8, progress=False,
                log=lambda m: None, store_attention=2)
        with torch.no_grad():
            lm.model(**lm.tokenize(warm.texts))

        t_fw, t_an = [], []
        for rep in range(max(1, args.repeats)):
            # plain forward on the same batches
            t0 = time.perf_counter()
            with torch.no_grad():
                for start in range(0, len(ds), args.batch_size):
                    lm.model(**lm.tokenize(ds.texts[start : start + args.batch_size]))
            t_fw.append(time.perf_counter() - t0)

            out = args.keep or os.path.join(tmp, "run")
            t0 = time.perf_counter()
            run = analyze(out, model=lm, dataset=ds, methods=METHODS, batch_size=args.batch_size, progress=False,
                          log=lambda m: None, store_attention=50, force=True,
                          faithfulness_precision=args.faithfulness_precision)
            t_an.append(time.perf_counter() - t0)
            assert run.n_done == len(ds)
            precision = run.manifest["faithfulness"]["precision"]
            print(f"  repeat {rep + 1}: forward {t_fw[-1]:.2f} s, analyze {t_an[-1]:.2f} s "
                  f"({len(ds) / t_an[-1]:.1f} examples/s)", flush=True)
        t_forward, t_analyze = float(np.median(t_fw)), float(np.median(t_an))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(os.path.join(tmp), ignore_errors=True)

    n = len(ds)
    print(f"faithfulness forwards in {precision} (--faithfulness-precision {args.faithfulness_precision}); "
          f"medians of {max(1, args.repeats)} repeats")
    print(f"forward only: {t_forward:.2f} s = {n / t_forward:.1f} examples/s")
    print(f"analyze ({', '.join(METHODS)} + ERASER faithfulness, 5 bins x 2 metrics per method, head stats, "
          f"arrays of 50 examples): {t_analyze:.2f} s = {n / t_analyze:.1f} examples/s")
    print(f"overhead: analyze takes {t_analyze / t_forward:.1f}x the forward time "
          f"(target >= 20 examples/s on 2 cores: {'met' if n / t_analyze >= 20 else 'NOT met'})")
    print(f"RESULT examples_per_s={n / t_analyze:.2f} overhead={t_analyze / t_forward:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Throughput of ``attnexplain analyze`` vs the plain forward pass of the same model on the same texts.

    python benchmarks/analyze.py [--limit 256] [--batch-size 32] [--repeats 3] [--threads N]
                                 [--faithfulness-precision auto|float32|bfloat16]

Model: the prepared default classifier ``minilm-rotten-tomatoes`` when it is in the cache, else
the packaged MiniLM with a new random classification head (said in the output; same cost per
example). Data: the rotten-tomatoes test split (first ``--limit`` examples).

Two analyze workloads, each a full ``analyze`` run into a run folder (one capture per batch with
all layers, heads and values; token scores; ERASER comprehensiveness + sufficiency at 5 bins x 2
metrics for every method, batched; per-head statistics; the attention arrays of the first 50
examples; the shard writes and the final merge). No integrated gradients.

* ``target`` (the issue's workload): capture + effective_attention, norm, rollout + their
  faithfulness metrics  ->  ``examples_per_s``, ``overhead``;
* ``with_baselines``: the same plus raw_attention and the random baseline (two more methods whose
  faithfulness costs as much as any other)  ->  ``examples_per_s_with_baselines``.

Forward = ``lm.model(**batch)`` (dense backend: PyTorch's SDPA kernel) on the same batches.
Faithfulness forwards run with analyze's default ``--faithfulness-precision auto`` (bfloat16
autocast where the CPU/GPU runs it natively, else float32; printed); ``--faithfulness-precision
float32`` measures the float32 path. Timings on a shared VM vary by +-10 % from run to run, so
each measurement is repeated (``--repeats``, interleaved) and the medians reported.

Last line: ``RESULT examples_per_s=<target workload examples/s> overhead=<its time / forward time>
examples_per_s_with_baselines=<...> overhead_with_baselines=<...>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

WORKLOADS = {
    "target": ["effective_attention", "norm", "rollout"],
    "with_baselines": ["raw_attention", "effective_attention", "norm", "rollout", "random"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions of every measurement (medians reported)")
    ap.add_argument("--faithfulness-precision", default="auto", choices=["auto", "float32", "bfloat16"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from machine import print_machine

    from attnexplain.ablations.eraser import resolve_precision
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
    n = len(ds)
    print_machine(f"capture and explanations float32, faithfulness forwards "
                  f"{resolve_precision(args.faithfulness_precision, lm.device)} (--faithfulness-precision "
                  f"{args.faithfulness_precision})")
    print(f"model: {which}; torch threads: {torch.get_num_threads()}; {n} rotten-tomatoes test examples; "
          f"batch size {args.batch_size}", flush=True)

    def run_analyze(folder: str, methods: list[str], data=ds, batch_size=args.batch_size, store=50):
        return analyze(folder, model=lm, dataset=data, methods=methods, batch_size=batch_size, progress=False,
                       log=lambda m: None, store_attention=store, force=True,
                       faithfulness_precision=args.faithfulness_precision)

    tmp = tempfile.mkdtemp(prefix="attnexplain-bench-")
    times: dict[str, list[float]] = {"forward": [], **{w: [] for w in WORKLOADS}}
    try:
        # warm-up (first calls allocate, import lazily, build kernels, check the first-token cut)
        run_analyze(os.path.join(tmp, "warm"), WORKLOADS["with_baselines"], data=ds.head(8), batch_size=8, store=2)
        with torch.no_grad():
            lm.model(**lm.tokenize(ds.head(8).texts))
        precision = None
        for rep in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            with torch.no_grad():
                for start in range(0, n, args.batch_size):
                    lm.model(**lm.tokenize(ds.texts[start : start + args.batch_size]))
            times["forward"].append(time.perf_counter() - t0)
            line = [f"forward {times['forward'][-1]:.2f} s"]
            for w, methods in WORKLOADS.items():
                t0 = time.perf_counter()
                run = run_analyze(os.path.join(tmp, w), methods)
                times[w].append(time.perf_counter() - t0)
                assert run.n_done == n
                precision = run.manifest["faithfulness"]["precision"]
                line.append(f"{w} {times[w][-1]:.2f} s ({n / times[w][-1]:.1f} examples/s)")
            print(f"  repeat {rep + 1}: " + ", ".join(line), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"faithfulness forwards in {precision} (--faithfulness-precision {args.faithfulness_precision}); "
          f"medians of {max(1, args.repeats)} repeats")
    print(f"forward only: {med['forward']:.2f} s = {n / med['forward']:.1f} examples/s")
    for w, methods in WORKLOADS.items():
        print(f"analyze [{w}] ({', '.join(methods)} + ERASER faithfulness of each, head stats, arrays of 50 "
              f"examples): {med[w]:.2f} s = {n / med[w]:.1f} examples/s, {med[w] / med['forward']:.1f}x the forward time")
    ok = n / med["target"] >= 20
    print(f"target >= 20 examples/s on this machine: {'met' if ok else 'MISSED'} ({n / med['target']:.1f}); "
          f"moonshot overhead <= 4x the forward: {'met' if med['target'] / med['forward'] <= 4 else 'missed'} "
          f"({med['target'] / med['forward']:.1f}x)")
    print_machine(f"faithfulness forwards {precision}", "end")
    print(f"RESULT examples_per_s={n / med['target']:.2f} overhead={med['target'] / med['forward']:.2f} "
          f"examples_per_s_with_baselines={n / med['with_baselines']:.2f} "
          f"overhead_with_baselines={med['with_baselines'] / med['forward']:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

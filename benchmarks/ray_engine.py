"""``analyze --engine ray`` against the local engine, end to end, on the benchmarks/analyze.py workload.

    python benchmarks/ray_engine.py [--limit 512] [--batch-size 32] [--model minilm-rotten-tomatoes] [--repeats 2]

Workload: the ``target`` workload of benchmarks/analyze.py (one capture per batch with all
layers, heads and values; effective_attention, norm, rollout and the ERASER faithfulness of each;
head statistics; the arrays of the first 50 examples; shard writes and the final merge) on the
first ``--limit`` rotten-tomatoes test examples. Every configuration is a whole ``analyze`` call
into a fresh run folder, timed from the call to the finished run: model loading, and for Ray the
start of a private Ray instance, the workers' start-up and their model loading, are included.

The driver loads the model once before any timing (transformers imports its modules lazily on the
first load: without this warm-up the first configuration timed pays them alone). Each configuration
runs ``--repeats`` times, the rounds interleaved (all four, then all four again) so that a burst of
load from elsewhere hits every configuration alike; each figure is the median of its repeats.

Configurations, in this order, in the same run:

* local engine, 2 torch threads;
* Ray, 1 worker x 2 threads;   * Ray, 1 worker x 1 thread;   * Ray, 2 workers x 1 thread.

``ray_overhead`` = Ray 1x2 time / local time (the engine's own cost; target <= 1.25);
``worker_scaling`` = Ray 1x1 time / Ray 2x1 time (do two workers use two cores? target >= 1.6).
The serial fraction follows from Amdahl's law for 2 workers, ``s = 2 / worker_scaling - 1``, and
bounds the speed-up on N machines at ``1 / (s + (1 - s) / N)`` (on paper: it assumes the per-batch
work spreads evenly and the start-up cost stays what it is here).

Model: ``--model`` (default the prepared ``minilm-rotten-tomatoes``; each Ray worker loads it by
name, so it must be prepared: ``attnexplain prepare``). The machine's load average is printed
before and after: on a shared machine both ratios are distorted (other jobs take the cores the
second worker needs).

Last line: ``RESULT local_examples_per_s=<x> ray1_examples_per_s=<Ray 1 worker 2 threads>
ray_overhead=<...> worker_scaling=<...>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="minilm-rotten-tomatoes")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit("error: --repeats must be >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from attnexplain.ablations.eraser import resolve_precision
    from attnexplain.data import load_dataset
    from attnexplain.runs.analyze import analyze

    from machine import print_machine

    methods = ["effective_attention", "norm", "rollout"]  # benchmarks/analyze.py's target workload
    ds = load_dataset("rotten-tomatoes", split="test", limit=args.limit)
    n = len(ds)
    precision = (f"capture and explanations float32, faithfulness forwards "
                 f"{resolve_precision('auto', torch.device('cpu'))}")
    torch.set_num_threads(2)
    print_machine(precision)
    print(f"model {args.model}; {n} rotten-tomatoes test examples; batch size {args.batch_size}; methods "
          f"{', '.join(methods)} + ERASER faithfulness", flush=True)
    configs = [
        ("local 2 threads", dict(engine="local", threads=2)),
        ("ray 1 worker x 2 threads", dict(engine="ray", num_workers=1, worker_threads=2)),
        ("ray 1 worker x 1 thread", dict(engine="ray", num_workers=1, worker_threads=1)),
        ("ray 2 workers x 1 thread", dict(engine="ray", num_workers=2, worker_threads=1)),
    ]
    from attnexplain.models import load_model_for_run

    load_model_for_run(args.model)  # warm-up: transformers' lazy imports, paid once before timing
    tmp = tempfile.mkdtemp(prefix="attnexplain-bench-ray-")
    runs: dict[str, list[float]] = {name: [] for name, _ in configs}
    try:
        for r in range(args.repeats):
            for name, opts in configs:
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                run = analyze(os.path.join(tmp, f"{name.replace(' ', '-')}-{r}"), model=args.model, dataset=ds,
                              methods=methods, batch_size=args.batch_size, store_attention=50, progress=False,
                              log=lambda m: None, force=True, **opts)
                runs[name].append(time.perf_counter() - t0)
                assert run.n_done == n, (name, run.n_done)
                print(f"  round {r + 1}, {name}: {runs[name][-1]:.1f} s = {n / runs[name][-1]:.1f} examples/s "
                      f"(load average at start {load:.2f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = {name: statistics.median(v) for name, v in runs.items()}
    for name, v in seconds.items():
        print(f"  {name}: median {v:.1f} s = {n / v:.1f} examples/s")

    local, ray12, ray11, ray21 = (seconds[c[0]] for c in configs)
    overhead = ray12 / local
    scaling = ray11 / ray21
    serial = min(1.0, max(0.0, 2.0 / scaling - 1.0))
    print(f"ray_overhead {overhead:.2f} (target <= 1.25: {'met' if overhead <= 1.25 else 'MISSED'}); "
          f"worker_scaling {scaling:.2f} (target >= 1.6: {'met' if scaling >= 1.6 else 'MISSED'})")
    proj = ", ".join(f"{k} machines {1 / (serial + (1 - serial) / k):.1f}x" for k in (2, 4, 8, 16))
    print(f"serial fraction (Amdahl, from the 2-worker scaling) {serial:.2f}; on paper: {proj}; "
          f"limit {'inf' if serial == 0 else f'{1 / serial:.1f}'}x")
    print_machine(precision, "end")
    print(f"RESULT local_examples_per_s={n / local:.2f} ray1_examples_per_s={n / ray12:.2f} "
          f"ray_overhead={overhead:.2f} worker_scaling={scaling:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

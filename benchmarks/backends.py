"""Time and peak memory of the efficient attention backends against dense eager attention.

One attention layer - batch 1, 12 heads, head dim 64, float32, random q, k, v, no model, no mask
- at n = 512, 1024, 2048, 4096 on CPU with ``torch.set_num_threads(2)``. Each backend runs its
output-only path (``backend.forward(call)``, which never builds the n x m implied matrix); the
baseline is dense *eager* attention written out as the models' eager path does it,
``softmax(Q K^T * scaling) V``, which materialises the n x n scores. PyTorch's fused SDPA (what the
``dense`` backend's ``forward`` runs) is listed too, for reference; the ratios are against eager.

Backend settings (chosen per n): SMYRF 2 hashes x clusters of n/4 (``memory_fraction`` = 0.5, the
paper's "50 % memory" setting), LSH 2 hashes x chunks of n/4 (0.5), Performer 64 features, linear
(elu+1), Nystrom 64 landmarks (6 pinv iterations), local window 64. ``smyrf`` is the default
output path, which on CPU runs each round's cluster blocks through PyTorch's fused flash kernel;
``smyrf-bmm`` forces the explicit batched-matmul path (score block per round, in-place softmax),
the path that runs whenever a mask is present (padding, causal).

Time: median of ``--repeats`` runs after one warm-up; the methods are interleaved within each
repeat so that load from other processes on a shared machine hits all of them alike.

Peak memory: PyTorch's CPU allocator has no peak counter and ``tracemalloc`` does not see its
allocations, so each (method, n) is measured in a fresh subprocess that reads the kernel's
resident-set high-water mark. The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (every
large buffer is its own mmap, returned to the OS when freed, so resident memory follows live
tensors instead of malloc's cached heap), builds q, k, v, runs the method once at a small size
to load kernels and thread pools, then resets the high-water mark (``echo 5 >
/proc/self/clear_refs``), notes the current RSS, runs the method once and reports
``VmHWM - RSS_before``: the peak extra memory of the call, output included. (Without
``clear_refs`` it falls back to ``ru_maxrss``, an upper bound.) Sanity check printed below: dense
eager needs about two n x n x 12 float32 buffers (scores and probabilities).

Run: ``python benchmarks/backends.py`` (about 2-4 minutes on 2 cores). The last line is
``RESULT smyrf_mem_ratio_2048=<x> smyrf_time_ratio_4096=<y>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

HEADS, HEAD_DIM, BATCH = 12, 64, 1
SIZES = (512, 1024, 2048, 4096)
METHODS = ("dense-eager", "dense-sdpa", "smyrf", "smyrf-bmm", "lsh", "performer", "linear", "nystrom", "local")


def backend_for(method: str, n: int):
    from attnexplain.backends import get_backend

    if method == "dense-sdpa":
        return get_backend("dense")
    opts = {
        "smyrf": dict(n_hashes=2, q_cluster_size=max(n // 4, 1), k_cluster_size=max(n // 4, 1)),
        "lsh": dict(n_hashes=2, bucket_size=max(n // 4, 1)),
        "performer": dict(n_features=64),
        "linear": {},
        "nystrom": dict(n_landmarks=64),
        "local": dict(window=64),
    }[method]
    return get_backend(method, **opts)


def make_call(n: int, seed: int = 0):
    from attnexplain.backends import AttentionCall

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(BATCH, HEADS, n, HEAD_DIM, generator=g) for _ in range(3))
    return AttentionCall(query=q, key=k, value=v, scaling=HEAD_DIM**-0.5)


def dense_eager(call) -> torch.Tensor:
    weights = torch.matmul(call.query, call.key.transpose(-1, -2)) * call.scaling
    weights = torch.softmax(weights, dim=-1)
    return torch.matmul(weights, call.value)


def runner(method: str, n: int):
    if method == "dense-eager":
        return dense_eager
    if method == "smyrf-bmm":  # SMYRF forced onto its explicit batched-matmul block path
        from attnexplain.backends import smyrf

        fwd = backend_for("smyrf", n).forward

        def explicit(call):
            smyrf.FUSED_CPU_KERNEL = False
            try:
                return fwd(call)
            finally:
                smyrf.FUSED_CPU_KERNEL = True

        return explicit
    return backend_for(method, n).forward


def memory_fraction(method: str, n: int) -> float:
    if method.startswith("dense"):
        return 1.0
    return backend_for(method.removesuffix("-bmm"), n).memory_fraction(n, n)


# -- memory: one fresh process per measurement -----------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_peak(method: str, n: int) -> int:
    """Run in a fresh process: peak extra resident memory (bytes) of one call."""
    import gc
    import resource

    torch.set_num_threads(2)
    with torch.no_grad():
        runner(method, 64)(make_call(64))  # load kernels, thread pools
        fn = runner(method, n)
        call = make_call(n)
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            before = _status_kib("VmRSS")
            out = fn(call)
            peak = _status_kib("VmHWM")
        except OSError:  # no clear_refs: ru_maxrss (an upper bound of the peak)
            before = _status_kib("VmRSS")
            out = fn(call)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        del out
    return max(peak - before, 0) * 1024


def peak_in_subprocess(method: str, n: int) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, __file__, "--measure", method, str(n)], env=env, capture_output=True,
                         text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1])


# -- time -----------------------------------------------------------------------------------------------
def time_all(n: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(2)
    call = make_call(n)
    fns = {m: runner(m, n) for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    with torch.no_grad():
        for m, fn in fns.items():  # warm-up
            fn(call)
        for _ in range(repeats):
            for m, fn in fns.items():
                t0 = time.perf_counter()
                fn(call)
                times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(ts) for m, ts in times.items()}


def check_outputs(n: int = 256) -> None:
    """The exact-limit settings agree with eager attention (guards the benchmark's code path)."""
    from attnexplain.backends import get_backend

    call = make_call(n, seed=1)
    ref = dense_eager(call)
    for name, opts in (("smyrf", dict(q_cluster_size=n, k_cluster_size=n)), ("local", dict(window=n)),
                       ("dense", {})):
        err = (get_backend(name, **opts).forward(call) - ref).abs().max().item()
        assert err < 1e-4, (name, err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--measure", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(measure_peak(args.measure[0], int(args.measure[1])))
        return

    from machine import print_machine

    check_outputs()
    print_machine("float32")
    print(f"attention layer: batch {BATCH}, {HEADS} heads, head dim {HEAD_DIM}, float32, "
          f"torch {torch.__version__}, {torch.get_num_threads()} -> 2 threads")
    rows = []
    for n in args.sizes:
        times = time_all(n, args.repeats)
        peaks = {m: peak_in_subprocess(m, n) for m in METHODS}
        expected = 2 * BATCH * HEADS * n * n * 4
        print(f"n={n}: dense eager peak {peaks['dense-eager'] / 2**20:.1f} MiB "
              f"(two n x n score buffers = {expected / 2**20:.1f} MiB)", flush=True)
        for m in METHODS:
            rows.append(dict(n=n, method=m, frac=memory_fraction(m, n), ms=times[m] * 1e3,
                             t_ratio=times[m] / times["dense-eager"], mib=peaks[m] / 2**20,
                             m_ratio=peaks[m] / max(peaks["dense-eager"], 1)))

    print()
    print(f"{'n':>5} {'backend':<12} {'mem_frac':>8} {'time_ms':>9} {'time/eager':>10} {'peak_MiB':>9} {'mem/eager':>9}")
    for r in rows:
        print(f"{r['n']:>5} {r['method']:<12} {r['frac']:>8.3f} {r['ms']:>9.1f} {r['t_ratio']:>10.2f} "
              f"{r['mib']:>9.1f} {r['m_ratio']:>9.2f}")
    print()
    print("first n (of those run) from which each backend beats dense eager (ratio < 1 there and above):")
    for m in METHODS[1:]:
        mine = [r for r in rows if r["method"] == m]

        def first(key: str) -> str:
            for i, r in enumerate(mine):
                if all(x[key] < 1 for x in mine[i:]):
                    return str(r["n"])
            return "never"

        print(f"  {m:<12} time: {first('t_ratio'):>6}   memory: {first('m_ratio'):>6}")
    get = {(r["n"], r["method"]): r for r in rows}
    mem = get.get((2048, "smyrf"), {}).get("m_ratio", float("nan"))
    tim = get.get((4096, "smyrf"), {}).get("t_ratio", float("nan"))
    print(f"targets: SMYRF memory <= 0.6x at 2048 ({'met' if mem <= 0.6 else 'MISSED'}), "
          f"time <= 1x at 4096 ({'met' if tim <= 1 else 'MISSED'})")
    print_machine("float32", "end")
    print(f"RESULT smyrf_mem_ratio_2048={mem:.3f} smyrf_time_ratio_4096={tim:.3f}")


if __name__ == "__main__":
    main()

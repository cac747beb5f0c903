"""Capture overhead: full attention capture vs the plain SDPA forward, in the same run.

MiniLM (6 layers x 12 heads, head dim 32), batch 16 x 128 tokens, 2 threads. Measured:
- ``sdpa``: the same weights loaded with attn_implementation="sdpa", plain forward;
- ``eager``: HF eager with output_attentions=True (the usual way, for reference);
- ``capture``: attnexplain.capture (all layers and heads, float32, values stored).
Each is timed as the median of several repetitions after warm-up, interleaved so that machine
load affects all equally. Targets (README's performance table): capture / sdpa <= 1.15, and capture no slower than
eager (capture / sdpa <= eager / sdpa). Prints the machine (CPU, threads, load average) and the
precision (float32 throughout) at start and end.

Also printed (columns, same runs): each variant's CPU time (user + system, this process) and minor
page faults per call, less sensitive to other load on a shared machine than wall time.

Last line: ``RESULT ratio=<capture/sdpa> eager_ratio=<eager/sdpa> cpu_ratio=<..> eager_cpu_ratio=<..>``
(the targets are on the wall-time ``ratio``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from machine import print_machine

    print_machine("float32")

    from transformers import AutoModel

    import attnexplain
    from attnexplain.capturing import capture

    lm = attnexplain.load_model("minilm")
    path = lm.extra["path"]
    sdpa = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    eager = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (args.batch, args.length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def run_sdpa():
        with torch.no_grad():
            return sdpa(**batch).last_hidden_state

    def run_eager():
        with torch.no_grad():
            return eager(**batch, output_attentions=True).attentions

    def run_capture():
        return capture(lm, batch)

    fns = {"sdpa": run_sdpa, "eager": run_eager, "capture": run_capture}
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    faults: dict[str, list[int]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu[name].append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
            faults[name].append(r1.ru_minflt - r0.ru_minflt)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    res = run_capture()
    full_bytes = res.nbytes
    print(f"MiniLM, batch {args.batch} x {args.length} tokens, {args.threads} threads, median of {args.repeats}")
    print("  (wall time; CPU time of this process, user + system, both threads; minor page faults: fresh memory the"
          " kernel maps and zeroes. CPU time and faults are much less sensitive to other load than wall time)")
    for k, v in med.items():
        print(f"  {k:8s} {v * 1000:8.1f} ms   ({v / med['sdpa']:.2f}x sdpa)   CPU {med_cpu[k] * 1000:7.1f} ms"
              f" ({med_cpu[k] / med_cpu['sdpa']:.2f}x)   page faults {statistics.median(faults[k]):8.0f}")
    print(f"  captured: {len(res.records)} layers x 12 heads, {full_bytes / 2**20:.1f} MiB (attention + values, float32)")
    ratio, eager_ratio = med["capture"] / med["sdpa"], med["eager"] / med["sdpa"]
    ok = ratio <= 1.15 and ratio <= eager_ratio
    print(f"target capture <= 1.15x sdpa and <= eager ({eager_ratio:.2f}x): {'met' if ok else 'MISSED'} ({ratio:.2f}x)")
    print_machine("float32", "end")
    print(f"RESULT ratio={med['capture'] / med['sdpa']:.3f} eager_ratio={med['eager'] / med['sdpa']:.3f}"
          f" cpu_ratio={med_cpu['capture'] / med_cpu['sdpa']:.3f} eager_cpu_ratio={med_cpu['eager'] / med_cpu['sdpa']:.3f}")


if __name__ == "__main__":
    main()

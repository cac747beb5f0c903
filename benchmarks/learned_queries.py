"""Capture + effective cross-attention of the trained set decoder vs its plain forward, same run.

The learned-query set decoder (``attnexplain.set_decoder``; design ``learned-sa-q24``: 24 learned
queries = 4x the most groups a scene has, query self-attention, d_model 32, 4 heads, 1 encoder +
2 decoder layers), on the 400 test scenes of the social-scenes data in one padded batch (12
individuals). Measured, interleaved, median of ``--repeats`` after a warm-up:

- ``forward``: ``model(features, attention_mask)`` under ``torch.no_grad`` (dense backend: the fused
  SDPA kernel, nothing recorded);
- ``capture+effective``: ``attnexplain.capture`` of the decoder's cross-attention (every decoder
  layer, all heads, values kept) and the effective attention of every decoder cross-attention
  layer (``CaptureResult.effective_attention``: SVD of the value transforms, then ``A U_r U_r^T``).

The model is the one ``analyses/learned_queries.py`` trains (loaded from
``cache_dir()/"models"`` when there; otherwise trained here for ``--epochs`` epochs, seed 0,
which takes a minute and does not change the timing). ``OMP_WAIT_POLICY=PASSIVE`` unless set
(as the analyses do). Prints the machine (CPU, threads, load average) and the precision (float32)
at start and end. Measured at load average 20 on the shared 2-core Xeon: 1.53x (209 ms forward).

Target: capture + effective cross-attention <= 1.5x the forward.
Last line: ``RESULT ratio=<capture+effective / forward>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# spinning OpenMP threads make this small model's forward ~10x slower on a loaded 2-core machine
# (measured at load average 20: 2263 ms vs 209 ms); passive waiting costs nothing on an idle one.
# Only effective before torch is imported (printed in the machine line).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=30.0, help="epochs of the cached model (trained here if absent)")
    ap.add_argument("--scenes", type=int, default=400, help="test scenes in the batch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from machine import print_machine

    print_machine("float32")
    from attnexplain import set_decoder as sd

    cfg = sd.SetDecoderConfig(num_queries=4 * sd.MAX_GROUPS, query_init="learned", query_self_attention=True)
    settings = sd.TrainingSettings(epochs=args.epochs, seed=0)
    cached = (sd.model_dir(cfg, settings) / "set_decoder.json").exists()
    t0 = time.perf_counter()
    model, metrics = sd.train_set_decoder(cfg, settings)
    print(f"model {sd.design_name(cfg)} ({'cached' if cached else f'trained here in {time.perf_counter() - t0:.0f} s'}), "
          f"validation group F1 {metrics.get('eval_f1', float('nan')):.3f}")
    batch = sd.collate(sd.load_scenes("test", limit=args.scenes))
    inputs = batch.inputs()
    layers = list(range(cfg.n_decoder_layers))

    def run_forward():
        with torch.no_grad():
            return model(**inputs)

    def run_capture():
        cap = sd.capture_scenes(model, batch, stacks=["decoder"], kinds=["cross"])
        return [cap.effective_attention(l, stack="decoder", kind="cross") for l in layers]

    fns = {"forward": run_forward, "capture+effective": run_capture}
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    eff = run_capture()
    n_ind = int(batch.attention_mask.shape[1])
    print(f"set decoder {sd.design_name(cfg)}, {len(batch)} scenes x {n_ind} individuals (padded), "
          f"{cfg.num_queries} queries, {args.threads} threads, median of {args.repeats}")
    for k, v in med.items():
        print(f"  {k:18s} {v * 1000:8.2f} ms   ({v / med['forward']:.2f}x forward)")
    print(f"  effective cross-attention: {len(eff)} layers x {tuple(eff[0].shape)}")
    ratio = med["capture+effective"] / med["forward"]
    print(f"target capture+effective <= 1.5x forward: {'met' if ratio <= 1.5 else 'MISSED'} ({ratio:.2f}x)")
    print_machine("float32", "end")
    print(f"RESULT ratio={ratio:.3f}")


if __name__ == "__main__":
    main()

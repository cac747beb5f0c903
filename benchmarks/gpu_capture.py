"""Capture overhead on a CUDA GPU: full attention capture vs the plain SDPA forward, same run.

    python benchmarks/gpu_capture.py [--batch 16] [--lengths 128 512] [--repeats 20]

The GPU counterpart of ``benchmarks/capture.py`` (which times the packaged MiniLM on the CPU).
Models: random weights in the shapes of MiniLM (6 layers x 12 heads, hidden 384) and BERT-base
(12 x 12, hidden 768) with a 2-class head, built from configs (the cost does not depend on the weights, and a GPU
machine needs no model files). Per model and length, batch ``--batch``:

- ``sdpa``: the model with attn_implementation="sdpa", plain forward;
- ``eager``: HF eager with output_attentions=True (the usual way);
- ``capture``: attnexplain.capture (all layers and heads, float32, values stored on the GPU).

Each is the median of ``--repeats`` timings after warm-up (``torch.cuda.synchronize`` around
each), interleaved. TF32 matmuls are off (as in the exactness tests). The CPU targets (capture
<= 1.15x sdpa and <= eager) are printed for comparison; a GPU forward of this size is short, so
the ratio weighs launch and copy costs that the CPU run hides. Capture's logits are checked
against SDPA's (< 1e-4) before timing.

Last line: ``RESULT ratio=<capture/sdpa, MiniLM shape, first length> eager_ratio=<...>
ratio_bert_base=<capture/sdpa, BERT-base shape, last length>``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def _timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device (this benchmark is for a GPU machine; benchmarks/capture.py times the CPU)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import transformers as tf

    import attnexplain

    print(f"GPU {torch.cuda.get_device_name()} | torch {torch.__version__} | transformers {tf.__version__} | "
          f"precision float32 (TF32 off)", flush=True)
    shapes = {
        "minilm-shape": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
        "bert-base-shape": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    }
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for shape, kw in shapes.items():
        cfg = tf.BertConfig(vocab_size=30522, max_position_embeddings=512, **kw)
        torch.manual_seed(0)
        sdpa = tf.BertForSequenceClassification._from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval().cuda()
        eager = copy.deepcopy(sdpa)
        eager.set_attn_implementation("eager")
        captured = copy.deepcopy(sdpa)
        for n in args.lengths:
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(1000, 20000, (args.batch, n), generator=g)
            ids[:, 0], ids[:, -1] = 101, 102
            batch = {"input_ids": ids.cuda(), "attention_mask": torch.ones_like(ids).cuda()}

            def run_sdpa():
                with torch.no_grad():
                    return sdpa(**batch).logits

            def run_eager():
                with torch.no_grad():
                    return eager(**batch, output_attentions=True).attentions

            def run_capture():
                return attnexplain.capture(captured, batch)

            res = run_capture()
            ref = run_sdpa()
            assert (res.logits - ref).abs().max().item() < 1e-4, "capture changed the model's output"
            fns = {"sdpa": run_sdpa, "eager": run_eager, "capture": run_capture}
            for fn in fns.values():
                fn()
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    times[name].append(_timed(fn))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{shape}, batch {args.batch} x {n} tokens, median of {args.repeats}:")
            for k, v in med.items():
                print(f"  {k:8s} {v * 1000:8.2f} ms   ({v / med['sdpa']:.2f}x sdpa)")
            results[(shape, n)] = (med["capture"] / med["sdpa"], med["eager"] / med["sdpa"])
            del res
            torch.cuda.empty_cache()
    first = results[("minilm-shape", args.lengths[0])]
    last = results[("bert-base-shape", args.lengths[-1])]
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"RESULT ratio={first[0]:.3f} eager_ratio={first[1]:.3f} ratio_bert_base={last[0]:.3f} "
          f"eager_ratio_bert_base={last[1]:.3f}")


if __name__ == "__main__":
    main()

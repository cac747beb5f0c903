"""Context-mixing methods: per-example time against one plain forward pass, same run.

64 examples (the rotten-tomatoes test split when cached, else 64 fixed generated sentences) on
``minilm-rotten-tomatoes`` when prepared (else the packaged MiniLM with a random, seeded head,
said so), batches of 16, float32, ``--threads`` threads (default 2). Timed, interleaved over
``--repeats`` rounds, medians reported:

- ``forward``: ``lm.model(**batch)`` under ``torch.no_grad`` (the default attnexplain dense
  backend, fused SDPA);
- each method: ``attnexplain.methods.explain_batch(lm, batch, [method], target=...)`` with the
  predicted classes given (so no extra forward for the target): ``alti``, ``globenc``,
  ``norm_residual_ln``, ``value_zeroing``, ``grad_rollout``, ``attention_gradient``.

- ``value_zeroing_padded``: value zeroing with all copies at the batch's padded length in one
  group (what it cost before each example was cut to its own length; same scores);
- ``forward_unpadded``: the same examples' plain forward in batches of 16 sorted by length
  (as little padding as batching allows): the cost of one forward per example at its own length.

Ratios: ``alti_ratio`` and ``globenc_ratio`` = method time / forward time (target <= 3);
``value_zeroing_ratio`` = method time / (forward time x mean real tokens per example), i.e.
forwards per input token (target <= 1; value zeroing re-runs each layer once per token, each
example at its own length). ``value_zeroing_ratio_unpadded`` compares with forwards that pay no
padding either: method time / sum_i n_i * t_i, with t_i = (length-sorted forward time) * n_i /
sum_j n_j the forward of example i at its own length (so long examples weigh n_i^2, as they do in
value zeroing). Value zeroing's own floor there is (n + 1) / n: n block runs per layer plus its
clean capture forward.

Last line: ``RESULT alti_ratio=<x> globenc_ratio=<y> value_zeroing_ratio=<z> value_zeroing_ratio_unpadded=<u>``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("alti", "globenc", "norm_residual_ln", "value_zeroing", "grad_rollout", "attention_gradient")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    from faithfulness import load_classifier, load_texts  # the sibling benchmark's data and model loaders

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from attnexplain.methods import explain_batch, get_method

    lm, model_desc = load_classifier()
    texts, data_desc = load_texts(args.n)
    batches = [lm.tokenize(texts[s:s + args.batch_size]) for s in range(0, len(texts), args.batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    mean_tokens = tokens / len(texts)
    print(f"CPU: {cpu_model()}; torch threads: {torch.get_num_threads()}; load average at start: "
          f"{os.getloadavg()}; precision: float32")
    print(f"model: {model_desc}; data: {data_desc}; {len(texts)} examples in batches of {args.batch_size}, "
          f"mean {mean_tokens:.1f} real tokens")
    with torch.no_grad():
        targets = [lm.model(**b).logits.argmax(-1) for b in batches]
    methods = {m: get_method(m) for m in METHODS}

    order = sorted(range(len(texts)), key=lambda i: len(lm.tokenizer(texts[i])["input_ids"]))
    sorted_batches = [lm.tokenize([texts[i] for i in order[s:s + args.batch_size]])
                      for s in range(0, len(texts), args.batch_size)]
    assert sum(int(b["attention_mask"].sum()) for b in sorted_batches) == tokens

    def run_forward(bs=batches):
        with torch.no_grad():
            for b in bs:
                lm.model(**b)

    import attnexplain.methods.value_zeroing as vz_module

    own_length = vz_module.value_zeroing_matrices

    def padded_copies(*a, **k):  # the earlier implementation's cost: one group, copies at the batch's padded length
        return own_length(*a, **{**k, "group_cost": 10**12})

    def run_method(m):
        if m == "value_zeroing_padded":
            vz_module.value_zeroing_matrices = padded_copies
            m = "value_zeroing"
        try:
            for b, t in zip(batches, targets):
                explain_batch(lm, b, [methods[m]], target=t)
        finally:
            vz_module.value_zeroing_matrices = own_length

    for m in METHODS:  # warm-up (first-call costs: module walks, registry)
        explain_batch(lm, batches[0], [methods[m]], target=targets[0])
    run_forward()
    timed = (*METHODS, "value_zeroing_padded")
    times: dict[str, list[float]] = {"forward": [], "forward_unpadded": [], **{m: [] for m in timed}}
    for _ in range(args.repeats):
        t = time.perf_counter()
        run_forward()
        times["forward"].append(time.perf_counter() - t)
        t = time.perf_counter()
        run_forward(sorted_batches)
        times["forward_unpadded"].append(time.perf_counter() - t)
        for m in timed:
            t = time.perf_counter()
            run_method(m)
            times[m].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    per = {k: v / len(texts) for k, v in med.items()}
    print(f"{'':22s} {'ms / example':>14s} {'x forward':>10s} {'forwards / token':>17s}")
    for k in ["forward", "forward_unpadded", *timed]:
        print(f"{k:22s} {1000 * per[k]:14.2f} {med[k] / med['forward']:10.2f} {med[k] / med['forward'] / mean_tokens:17.3f}")
    print(f"load average at end: {os.getloadavg()}")
    alti = med["alti"] / med["forward"]
    globenc = med["globenc"] / med["forward"]
    vz = med["value_zeroing"] / med["forward"] / mean_tokens
    lengths = [int(x) for b in batches for x in b["attention_mask"].sum(1).tolist()]
    weighted_tokens = sum(n * n for n in lengths) / sum(lengths)  # sum_i n_i * (n_i / sum_j n_j)
    vz_unpadded = med["value_zeroing"] / med["forward_unpadded"] / weighted_tokens
    for name, v, target in (("ALTI", alti, 3.0), ("GlobEnc", globenc, 3.0), ("value zeroing (forwards per token)", vz, 1.0)):
        print(f"{name}: {v:.2f} (target <= {target:g}): {'met' if v <= target else 'MISSED'}")
    print(f"value zeroing against the length-sorted (unpadded) forward: {vz_unpadded:.3f} forwards per token; "
          f"with every copy at the batch's padded length (value_zeroing_padded, the earlier implementation): "
          f"{med['value_zeroing_padded'] / med['forward'] / mean_tokens:.3f}")
    print(f"RESULT alti_ratio={alti:.2f} globenc_ratio={globenc:.2f} value_zeroing_ratio={vz:.3f} "
          f"value_zeroing_ratio_unpadded={vz_unpadded:.3f}")


if __name__ == "__main__":
    main()

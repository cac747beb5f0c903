"""ERASER faithfulness (comprehensiveness + sufficiency, 5 bins, AOPC): batched vs one forward per bin.

64 examples (the rotten-tomatoes test split when ``attnexplain.data.load_dataset`` has it cached,
else 64 fixed generated sentences) on the default model (``minilm-rotten-tomatoes`` when it has
been prepared, else the packaged MiniLM with a random, seeded 2-class head), 2 threads.
Rankings: ``raw_attention`` scores from the registry plus a seeded random ranking, computed once
and shared by both paths (not timed). Measured in the same run, interleaved:

- ``batched``: :func:`attnexplain.ablations.faithfulness` (all 2 x 5 removal variants of all
  examples and methods, identical inputs evaluated once, sorted by length, ``max_batch`` rows
  per forward); also reported without de-duplication (batching alone);
- ``per-bin``: the way existing tools do it, implemented here: for each example one forward for
  the full input, then for each method and bin one forward for comprehensiveness and one for
  sufficiency (batch of 1, no padding).

Both must give the same numbers (asserted within 1e-5). Target: >= 3x faster.
Last line: ``RESULT speedup=<per-bin time / batched time>``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

SUBJECTS = ["The film", "This movie", "The script", "Its cast", "The soundtrack", "The director's latest", "The sequel",
            "This documentary"]
VERBS = ["is", "feels", "turns out to be", "remains", "often seems"]
ADJS = ["a gorgeous, witty and moving piece of work", "dull, lifeless and far too long", "surprisingly tender",
        "an unfunny mess that never finds its rhythm", "smart, warm and beautifully acted",
        "a tedious exercise in style over substance", "one of the most charming comedies of the year",
        "clumsy and predictable from the first scene"]
TAILS = ["", ", even if the ending drags", " and the audience knows it", ", which is a shame given the talent involved",
         " from start to finish", ", thanks to a fearless lead performance"]


def generated_sentences(n: int = 64) -> list[str]:
    rng = np.random.default_rng(0)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(ADJS)}{rng.choice(TAILS)}." for _ in range(n)]


def load_texts(n: int) -> tuple[list[str], str]:
    try:
        from attnexplain.data import load_dataset
        from attnexplain.data.builtin import builtin_cache_path

        if builtin_cache_path("rotten-tomatoes").exists():
            ds = load_dataset("rotten-tomatoes", split="test", limit=n)
            if len(ds) == n:
                return list(ds.texts), f"rotten-tomatoes test split, first {n}"
    except Exception as exc:  # noqa: BLE001 - fall back to generated text, say so
        print(f"(rotten-tomatoes not available: {type(exc).__name__}: {exc})")
    return generated_sentences(n), f"{n} generated sentences"


def load_classifier():
    from attnexplain.models import ModelNotFoundError, load_model

    try:
        return load_model("minilm-rotten-tomatoes"), "minilm-rotten-tomatoes (fine-tuned)"
    except ModelNotFoundError:
        torch.manual_seed(0)
        return (load_model("minilm", task="classification", num_labels=2),
                "packaged MiniLM with a RANDOM 2-class head (minilm-rotten-tomatoes not prepared)")


# ------------------------------------------------------------------------------------------------
# the one-forward-per-bin way (independent of attnexplain.ablations)
# ------------------------------------------------------------------------------------------------


def per_bin_faithfulness(lm, texts, methods_rankings, targets, bins, specials):
    """{(example, method, metric, fraction): value}, one forward per variant (batch of 1)."""
    out = {}

    def prob(ids, types, c):
        kw = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if types is not None:
            kw["token_type_ids"] = torch.tensor([types])
        with torch.inference_mode():
            logits = lm.model(**kw).logits
        return torch.softmax(logits.float(), -1)[0, c].item()

    for i, text in enumerate(texts):
        enc = lm.tokenizer(text)
        ids, types = enc["input_ids"], enc.get("token_type_ids")
        c = int(targets[i])
        p_full = prob(ids, types, c)
        content = [j for j, t in enumerate(ids) if t not in specials]
        n = len(content)
        for name, rankings in methods_rankings.items():
            order = [content[j] for j in rankings[i]]
            for f in bins:
                k = min(n, max(1, math.ceil(f * n - 1e-9)))
                for metric, removed in (("comprehensiveness", set(order[:k])), ("sufficiency", set(order[k:]))):
                    keep = [j for j in range(len(ids)) if j not in removed]
                    v_ids = [ids[j] for j in keep]
                    v_types = [types[j] for j in keep] if types is not None else None
                    out[(i, name, metric, f)] = p_full - prob(v_ids, v_types, c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from attnexplain.ablations import faithfulness, special_token_ids
    from attnexplain.methods import explain_batch, rank_tokens
    from attnexplain.metrics import ERASER_BINS

    from machine import print_machine

    print_machine("float32 (faithfulness() default for the batched path; per-bin float32)")
    texts, data_desc = load_texts(args.n)
    lm, model_desc = load_classifier()
    specials = special_token_ids(lm.tokenizer)
    print(f"data:  {data_desc}")
    print(f"model: {model_desc}")
    print(f"threads: {torch.get_num_threads()}, bins: {ERASER_BINS}, removal: delete, k = min(n, max(1, ceil(f n)))")

    # rankings (not timed): raw attention + a seeded random ranking, per content token
    scores, targets = [], []
    for s in range(0, len(texts), 16):
        enc = lm.tokenize(texts[s : s + 16])
        sc, tgt, _ = explain_batch(lm, enc, ["raw_attention"])
        scores.extend(sc["raw_attention"])
        targets.extend(tgt.tolist())
    contents = []
    for text in texts:
        ids = lm.tokenizer(text)["input_ids"]
        contents.append([j for j, t in enumerate(ids) if t not in specials])
    rankings = {
        "raw_attention": [rank_tokens(np.asarray(sc)[c]) for sc, c in zip(scores, contents)],
        "random": [np.random.default_rng([0, i]).permutation(len(c)) for i, c in enumerate(contents)],
    }
    n_tok = [len(c) for c in contents]
    print(f"content tokens per example: mean {np.mean(n_tok):.1f}, min {min(n_tok)}, max {max(n_tok)}")

    def run_batched(dedupe=True):
        return faithfulness(lm, texts, rankings=rankings, target=targets, max_batch=args.max_batch, dedupe=dedupe)

    def run_per_bin():
        return per_bin_faithfulness(lm, texts, rankings, targets, ERASER_BINS, specials)

    run_batched()  # warm-up
    times = {"batched": [], "batched (no dedupe)": [], "per-bin": []}
    res = ref = None
    for _ in range(args.repeats):
        t = time.perf_counter()
        ref = run_per_bin()
        times["per-bin"].append(time.perf_counter() - t)
        t = time.perf_counter()
        res = run_batched()
        times["batched"].append(time.perf_counter() - t)
        t = time.perf_counter()
        nd = run_batched(dedupe=False)
        times["batched (no dedupe)"].append(time.perf_counter() - t)
    assert res is not None and ref is not None

    # same numbers?
    tab = res.table
    ours = tab.value.to_numpy()
    theirs = np.array([ref[(int(e), m, me, f)] for e, m, me, f in zip(tab.example, tab.method, tab.metric, tab.fraction)])
    diff = float(np.abs(ours - theirs).max())
    diff_nd = float(np.abs(nd.table.value.to_numpy() - theirs).max())
    print(f"max |batched - per-bin| = {diff:.2e} (no dedupe: {diff_nd:.2e}) over {len(ours)} values")
    assert diff <= 1e-5 and diff_nd <= 1e-5, "batched and per-bin faithfulness disagree"

    n_variants = len(tab) + len(texts)
    print(f"\nper-bin: {n_variants} forwards of one sequence; batched: {res.n_sequences} distinct sequences in "
          f"{res.n_forward} forwards (no dedupe: {nd.n_sequences} in {nd.n_forward})")
    print("\nAOPC (mean over examples, 95% bootstrap CI):")
    summ = res.summary()
    for _, r in summ.iterrows():
        print(f"  {r.method:14s} {r.metric:17s} {r.aopc:+.4f}  [{r.ci_low:+.4f}, {r.ci_high:+.4f}]  n={r.n}")
    print("\ntimes (s), min over", args.repeats, "interleaved repeats:")
    best = {k: min(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:20s} min {min(v):7.2f}  all {', '.join(f'{x:.2f}' for x in v)}")
    speedup = best["per-bin"] / best["batched"]
    print(f"speedup of batching alone (no dedupe): {best['per-bin'] / best['batched (no dedupe)']:.1f}x")
    print(f"target >= 3x: {'met' if speedup >= 3 else 'MISSED'}")
    print_machine(f"batched path {res.precision}, per-bin path float32", "end")
    print(f"RESULT speedup={speedup:.1f}")


if __name__ == "__main__":
    main()

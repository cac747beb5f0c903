"""Key-value recall on a causal LM: accuracy, then plausibility and faithfulness of each method's
per-generated-token explanations against evidence known by construction.

"The code of Mara is 41. The code of Tobi is 17. ... The code of Mara is" -> " 41": the answer's
digits can only be copied from the queried pair's value (the gold evidence). For every answer token
(whitespace-only tokens excluded) each method's scores over the prompt are compared with the gold
tokens (AUPRC; a random ranking scores about the gold fraction) and ERASER-perturbed (AOPC of the
answer token's probability; random baseline). See :mod:`attnexplain.generation.recall`.

    python analyses/key_value_recall.py --model smollm2 --n 24 --pairs 3
"""

from __future__ import annotations

import _common as C  # noqa: I001  (sets offline / thread env before torch is imported)

NAME = "key_value_recall"
METHODS = ["raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "integrated_gradients",
           "occlusion", "random"]
#: ``--cheap``: without the two methods that run the model per step many times (IG, occlusion)
CHEAP_METHODS = ["raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "random"]


def main() -> None:
    p = C.analysis_parser(__doc__, batch_size=8)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--n", type=int, default=24, help="prompts")
    p.add_argument("--pairs", type=int, default=3, help="key-value pairs per prompt")
    p.add_argument("--ig-steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cheap", action="store_true", help="leave out integrated gradients and occlusion")
    args = p.parse_args()
    if args.quick:
        args.n, args.pairs, args.model = 2, 2, args.model
    C.set_threads(args.threads)
    out = C.out_dir(NAME, args.out)
    run = C.Run(NAME, args)
    from attnexplain.methods import get_method
    from attnexplain.generation.recall import key_value_recall, recall_evaluation

    lm = C.load(args.model)
    examples = key_value_recall(args.n, n_pairs=args.pairs, seed=args.seed)
    methods = [get_method("integrated_gradients", n_steps=args.ig_steps) if m == "integrated_gradients" else m
               for m in (CHEAP_METHODS if args.cheap else METHODS)]
    C.log(f"[{NAME}] {args.n} prompts x {args.pairs} pairs on {args.model}")
    res = recall_evaluation(lm, examples, methods, batch_size=args.batch_size, seed=args.seed)
    table = res["table"]
    gold_frac = None
    header = [
        f"Model `{args.model}`, {res['n']} prompts with {args.pairs} key-value pairs (seed {args.seed}), e.g. "
        f"`{examples[0].prompt}` -> `{examples[0].answer}`.",
        f"**Greedy accuracy: {res['accuracy']:.3f}** ({round(res['accuracy'] * res['n'])}/{res['n']}; the answer's "
        "digits generated exactly).",
        "Explanations of the forced answer, per answer token (whitespace-only tokens excluded). AUPRC: average "
        "precision of the prompt-token scores against the gold tokens (the queried value's digits; a random "
        "ranking scores about the gold fraction of the prompt). Comprehensiveness (higher = more faithful) and "
        f"sufficiency (lower = more faithful): ERASER AOPC of the answer token's probability. "
        + ("IG and occlusion left out (--cheap)." if args.cheap else f"IG with {args.ig_steps} steps."),
    ]
    C.write_table(out, f"Key-value recall: does the explanation point at the recalled value? ({args.model})", header,
                  [("", C.md_table(table, headers={"auprc": "AUPRC vs gold", "comprehensiveness": "comp. AOPC",
                                                   "sufficiency": "suff. AOPC"}))])
    res["aopc"].to_csv(out / "aopc.csv", index=False)
    run.manifest(out, models=args.model, data={"task": "key_value_recall", "n": res["n"], "pairs": args.pairs,
                                                "gold_fraction": gold_frac},
                 files=["table.md", "aopc.csv"], accuracy=res["accuracy"])
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()

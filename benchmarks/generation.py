"""Explaining a generation: attnexplain against inseq 0.7.1 on SmolLM2, generation included on both sides.

Workload (the issue's): 4 prompts of ~40 tokens, 10 greedy new tokens each; for every generated
token (1) raw-attention scores over the prompt and the earlier generated tokens and (2) integrated
gradients with 16 steps. Timed: ``attnexplain.explain_generation`` (generate with the fused kernel,
one teacher-forced capture, every step's readout row) against ``inseq.load_model(model,
"attention" | "integrated_gradients").attribute(prompts, generation_args=...)`` (which generates,
then runs one forward per generated token with eager attention). Same model weights (inseq loads
the converted float32 copy attnexplain keeps in its cache), same thread count, interleaved repeats
(attnexplain, then inseq in its own process, per repeat), medians.

Agreement: the raw-attention scores aggregated the same way on both sides (mean over layers and
heads of the row predicting each generated token), compared on every (step, position) both define.
For this check inseq explains attnexplain's continuations (``generated_texts`` = prompt + our
generated text, one prompt at a time, so no batch padding; not timed): in the timed batched runs
the two sides' greedy continuations differed for 3 of 4 prompts. Compared where the tokens agree. The layouts were
confirmed on a tiny Llama with one forced continuation, where both sides printed the same matrix. (IG is timed only: inseq
attributes the target's probability, attnexplain its logit.)

inseq does not install beside this project (its metadata pulls CUDA wheels): it runs in a separate
virtual environment, found with ``--inseq-python`` or ``$ATTNEXPLAIN_INSEQ_PYTHON`` (default
``/work/venvs/inseq/bin/python``). Create it with::

    python -m venv /work/venvs/inseq && /work/venvs/inseq/bin/pip install torch==2.13.0 \\
        && /work/venvs/inseq/bin/pip install --no-deps inseq==0.7.1 \\
        && /work/venvs/inseq/bin/pip install 'transformers>=4.53' captum jaxtyping 'typeguard<=2.13.3' \\
           treescope rich matplotlib protobuf sentencepiece

Last line: ``RESULT speedup_attention=<inseq s / ours s> speedup_ig=<...> max_abs_diff=<...>``.
Targets: attention >= 1.5x, IG >= 1.0x, max_abs_diff < 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import print_machine  # noqa: E402

PROMPTS = [
    "The central bank said on Tuesday that it would keep interest rates unchanged for another month, as inflation "
    "figures released this week came in slightly below what most economists had",
    "The football club confirmed that its captain will miss the rest of the season after injuring his knee during "
    "Saturday's match against their closest rivals, leaving the manager with",
    "Shares in the technology company fell sharply after it warned investors that sales of its new phone had been "
    "weaker than expected over the holiday period, and analysts now",
    "The film festival opened last night with the premiere of a drama about a family of farmers struggling through "
    "a long drought, and critics who saw it early described the",
]

INSEQ_SIDE = r"""
import json, sys, time
import inseq, torch, transformers
folder, prompts, n_new, ig_steps, threads, repeats, skip_ig = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
torch.set_num_threads(threads)
cfg = transformers.AutoConfig.from_pretrained(folder)
rp = getattr(cfg, "rope_parameters", None)  # transformers 5 writes rope_theta there; 4.x would fall back to 10000
if isinstance(rp, dict) and "rope_theta" in rp:
    cfg.rope_theta = rp["rope_theta"]
model = transformers.AutoModelForCausalLM.from_pretrained(folder, config=cfg, attn_implementation="eager").eval()
try:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
except ValueError:  # a tokenizer_config.json written by transformers 5 names a class 4.x does not know
    cfg = json.load(open(folder + "/tokenizer_config.json"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=folder + "/tokenizer.json",
                                               **{k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if cfg.get(k)})
gen_args = {"max_new_tokens": n_new, "do_sample": False}
out = {"inseq": "0.7.1", "torch": torch.__version__, "transformers": transformers.__version__, "t_attention": [], "t_ig": []}
m_att = inseq.load_model(model, "attention", tokenizer=tok)
m_ig = inseq.load_model(model, "integrated_gradients", tokenizer=tok)
# warm-up (not timed): one short call of each, as the attnexplain side does once before its repeats
m_att.attribute(input_texts=prompts[:1], generation_args={"max_new_tokens": 1, "do_sample": False}, attribute_target=True, show_progress=False)
if not skip_ig:
    m_ig.attribute(input_texts=prompts[:1], generation_args={"max_new_tokens": 1, "do_sample": False}, n_steps=2, attribute_target=True, show_progress=False)
for r in range(repeats):
    t = time.perf_counter()
    res = m_att.attribute(input_texts=prompts, generation_args=gen_args, attribute_target=True, skip_special_tokens=False, show_progress=False)
    out["t_attention"].append(time.perf_counter() - t)
    if not skip_ig:
        t = time.perf_counter()
        m_ig.attribute(input_texts=prompts, generation_args=gen_args, n_steps=ig_steps, attribute_target=True, skip_special_tokens=False, show_progress=False)
        out["t_ig"].append(time.perf_counter() - t)
    print(json.dumps({"repeat": r, "t_attention": out["t_attention"][-1]}), file=sys.stderr, flush=True)
forced = json.loads(sys.argv[8]) if len(sys.argv) > 8 else None
if forced:  # agreement: each prompt alone (no batch padding), with attnexplain's continuation forced
    res_seqs = [m_att.attribute(input_texts=p, generated_texts=p + c, attribute_target=True, skip_special_tokens=False,
                                show_progress=False).sequence_attributions[0] for p, c in zip(prompts, forced)]
else:
    res_seqs = res.sequence_attributions
seqs = []
for a in res_seqs:
    ta = a.target_attributions
    sa = a.source_attributions
    seqs.append({"source": [x.token for x in a.source], "target": [x.token for x in a.target],
                 "source_attr": None if sa is None else sa.float().mean(dim=(-1, -2)).numpy().tolist(),
                 "target_attr": None if ta is None else ta.float().mean(dim=(-1, -2)).numpy().tolist()})
out["sequences"] = seqs
json.dump(out, sys.stdout)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inseq-python", default=os.environ.get("ATTNEXPLAIN_INSEQ_PYTHON", "/work/venvs/inseq/bin/python"))
    ap.add_argument("--new-tokens", type=int, default=10)
    ap.add_argument("--ig-steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-ig", action="store_true", help="time raw attention only (IG: speedup_ig=nan)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print_machine("float32")
    if not Path(args.inseq_python).exists():
        sys.exit(f"inseq's python {args.inseq_python} does not exist; create the venv as this script's docstring says "
                 "and pass --inseq-python (or set ATTNEXPLAIN_INSEQ_PYTHON)")
    import attnexplain
    from attnexplain.methods import get_method
    from attnexplain.models import _smollm2_converted
    from attnexplain.token_text import readable_token

    lm = attnexplain.load_model("smollm2")  # also writes the converted copy inseq loads
    folder = _smollm2_converted()
    n_tok = [len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS]
    print(f"prompts: {len(PROMPTS)}, tokens {n_tok}, new tokens {args.new_tokens}, IG steps {args.ig_steps}, "
          f"threads {threads}, repeats {args.repeats}", flush=True)
    ours_att, ours_ig, peer_att, peer_ig = [], [], [], []
    ig = get_method("integrated_gradients", n_steps=args.ig_steps)
    ex = None
    peer = None

    def run_inseq(forced: list[str] | None) -> dict:
        cmd = [args.inseq_python, "-c", INSEQ_SIDE, str(folder), json.dumps(PROMPTS), str(args.new_tokens),
               str(args.ig_steps), str(threads), "1", str(int(args.skip_ig))] + ([json.dumps(forced)] if forced else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            sys.exit(f"inseq side failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout)

    # warm-up (not timed): one short call of each method
    attnexplain.explain_generation(lm, PROMPTS[:1], ["raw_attention"], max_new_tokens=1)
    if not args.skip_ig:
        attnexplain.explain_generation(lm, PROMPTS[:1], [get_method("integrated_gradients", n_steps=2)], max_new_tokens=1)
    # interleaved: each repeat times attnexplain, then inseq (its own process, model loaded before its
    # clock starts), so a change of machine load hits both sides alike
    for r in range(args.repeats):
        t = time.perf_counter()
        ex = attnexplain.explain_generation(lm, PROMPTS, ["raw_attention"], max_new_tokens=args.new_tokens,
                                            exclude_special_tokens=False)
        ours_att.append(time.perf_counter() - t)
        if not args.skip_ig:
            t = time.perf_counter()
            attnexplain.explain_generation(lm, PROMPTS, [ig], max_new_tokens=args.new_tokens, exclude_special_tokens=False)
            ours_ig.append(time.perf_counter() - t)
        last = r == args.repeats - 1  # inseq explains our continuations for the agreement check (not timed)
        peer = run_inseq(ex.generation.generated_texts if last else None)
        peer_att += peer["t_attention"]
        peer_ig += peer["t_ig"]
        print(f"repeat {r}: attnexplain attention {ours_att[-1]:.2f} s" + ("" if args.skip_ig else f", IG {ours_ig[-1]:.2f} s")
              + f"; inseq attention {peer_att[-1]:.2f} s" + ("" if args.skip_ig else f", IG {peer_ig[-1]:.2f} s")
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"inseq {peer['inseq']} (torch {peer['torch']}, transformers {peer['transformers']})", flush=True)
    # agreement of the raw-attention scores on examples with the same continuation
    diffs, compared, same = [], 0, 0
    for i, seq in enumerate(peer["sequences"]):
        ours_tokens = ex["raw_attention"].tokens[i]
        theirs = np.asarray(seq["target_attr"], dtype=np.float64)  # (positions, generated)
        n_gen = theirs.shape[1]
        their_tokens = [readable_token(lm.tokenizer, t) for t in seq["target"]]
        if their_tokens != ours_tokens or theirs.shape[0] != len(ours_tokens):
            print(f"example {i}: continuations differ, not compared ({''.join(ours_tokens)[-50:]!r} vs "
                  f"{''.join(their_tokens)[-50:]!r})")
            continue
        same += 1
        mat = ex["raw_attention"].scores[i]
        ex_diffs = []
        for t in range(min(n_gen, mat.shape[0])):
            vis = int(np.sum(~np.isnan(mat[t])))
            d = np.abs(mat[t, :vis] - theirs[:vis, t])
            ex_diffs.append(float(d.max()))
            compared += vis
        print(f"example {i}: same continuation, max |diff| {max(ex_diffs):.2e}")
        diffs += ex_diffs
    max_diff = max(diffs) if diffs else float("nan")
    s_att = statistics.median(peer_att) / statistics.median(ours_att)
    s_ig = statistics.median(peer_ig) / statistics.median(ours_ig) if ours_ig and peer_ig else float("nan")
    print(f"medians: attention ours {statistics.median(ours_att):.2f} s vs inseq {statistics.median(peer_att):.2f} s"
          + (f"; IG ours {statistics.median(ours_ig):.2f} s vs inseq {statistics.median(peer_ig):.2f} s" if ours_ig else
             "; IG not timed (--skip-ig)"))
    print(f"raw attention compared on {same}/{len(PROMPTS)} examples, {compared} (step, position) entries: max |diff| {max_diff:.2e}")
    print(f"targets: attention >= 1.5x {'met' if s_att >= 1.5 else 'MISSED'}, IG >= 1.0x {'met' if s_ig >= 1.0 else 'MISSED'}, "
          f"agreement < 1e-5 {'met' if max_diff < 1e-5 else 'MISSED'}")
    print_machine("float32", when="end")
    print(f"RESULT speedup_attention={s_att:.2f} speedup_ig={s_ig:.2f} max_abs_diff={max_diff:.2e}")


if __name__ == "__main__":
    main()

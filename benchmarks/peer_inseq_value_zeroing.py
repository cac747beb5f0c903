"""Value zeroing: attnexplain against inseq 0.7.1's ``value_zeroing`` on the same model and text.

inseq only loads generation models and does not install beside this project (its metadata pulls
CUDA wheels; see shared notes), so it runs in a separate virtual environment, e.g.::

    python -m venv /work/venvs/inseq && /work/venvs/inseq/bin/pip install --no-deps inseq==0.7.1 \\
        && /work/venvs/inseq/bin/pip install torch 'transformers>=4.53' captum jaxtyping 'typeguard<=2.13.3' \\
           treescope rich matplotlib protobuf sentencepiece

This script (run with the project's Python) builds a small random Llama (grouped-query attention,
3 layers) with a word-level
tokenizer in a temporary folder (nothing from the hub), computes attnexplain's per-layer
value-zeroing matrices (``attnexplain.methods.value_zeroing.value_zeroing_matrices``, inseq's
threshold 1e-5) and asks inseq, in a subprocess of the other venv, for its per-layer matrices
of the same text (eager attention, ``attribute_target=True``). Compared: every (layer, position,
token) entry both define. inseq compares the *last* layer after the model's final RMSNorm
(``hidden_states[-1]`` of HF), attnexplain at the block output, so the last layer is reported
separately.

Last line: ``RESULT max_abs_diff_layers_before_last=<x> max_abs_diff_last_layer=<y> entries=<n>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

WORDS = ("the a film movie is was not very good bad witty dull plot actors story boring great and but "
         "it with of to in").split()

INSEQ_SIDE = r"""
import json, sys
import numpy as np
import inseq, torch, transformers
folder, text, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
tok = transformers.PreTrainedTokenizerFast(tokenizer_file=folder + "/tokenizer.json", bos_token="<s>", eos_token="</s>",
                                          pad_token="<pad>", unk_token="<unk>")
m = inseq.load_model(model, "value_zeroing", tokenizer=tok)
out = m.attribute(input_texts=prompt, generated_texts=text, attribute_target=True, skip_special_tokens=False)
attr = out.sequence_attributions[0]
t = attr.target_attributions  # (attributed tokens, generated tokens, layers)
json.dump({"target": t.float().numpy().tolist(), "source_tokens": [x.token for x in attr.source],
           "target_tokens": [x.token for x in attr.target], "inseq": getattr(inseq, "__version__", "0.7.1"),
           "torch": torch.__version__, "transformers": transformers.__version__}, sys.stdout)
"""


def build_model(folder: Path, seed: int) -> None:
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>")
    tok.save_pretrained(folder)
    # Llama: inseq 0.7.1's GPT-2 entry names a variable ("value") that transformers 5.x renamed
    cfg = tf.LlamaConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the 0.02 init: attention that is not uniform
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(5)
    model.save_pretrained(folder)


def ours(folder: Path, text: str) -> tuple[np.ndarray, list[str]]:
    import transformers as tf

    from attnexplain.methods.value_zeroing import value_zeroing_matrices
    from attnexplain.models import LoadedModel

    model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = tf.AutoTokenizer.from_pretrained(folder)
    lm = LoadedModel.from_model(model, tok, name="tiny-llama", task="causal-lm")
    enc = tok([text], return_tensors="pt")
    idx = [torch.arange(enc["input_ids"].shape[1])]
    C = value_zeroing_matrices(lm.model, dict(enc), idx, threshold=1e-5)[0]  # (L, n, n): [l, i, j]
    return C.numpy(), tok.convert_ids_to_tokens(enc["input_ids"][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inseq-python", default="/work/venvs/inseq/bin/python", help="python of the venv with inseq 0.7.1")
    ap.add_argument("--text", default="the film is not very good but the actors are witty and the story is great")
    ap.add_argument("--prompt-words", type=int, default=4, help="words of --text given as inseq's prompt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}, threads: {torch.get_num_threads()}, "
          f"load average: {os.getloadavg()}, precision: float32")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_model(folder, args.seed)
        prompt = " ".join(args.text.split()[: args.prompt_words])
        C, toks = ours(folder, args.text)
        res = subprocess.run([args.inseq_python, "-c", INSEQ_SIDE, str(folder), args.text, prompt],
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if res.returncode != 0:
            sys.exit(f"inseq side failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
        peer = json.loads(res.stdout)
    T = np.asarray(peer["target"], dtype=np.float64)  # (n_attributed j, n_generated i, L)
    ptoks = peer["target_tokens"]
    print(f"inseq {peer['inseq']} (torch {peer['torch']}, transformers {peer['transformers']}); "
          f"attnexplain tokens {toks}; inseq target tokens {ptoks}")
    n = len(toks)
    if os.environ.get("PEER_DEBUG"):
        np.set_printoptions(precision=3, suppress=True, linewidth=200)
        print("inseq shape", T.shape, "\ninseq layer0 [:6,:6]\n", T[:6, :6, 0], "\nours layer0 [:6,:6]\n", C[0, :6, :6])
    if ptoks[-n:] != toks and ptoks != toks:
        sys.exit(f"token mismatch: ours {toks} vs inseq {ptoks}")
    off = len(ptoks) - n  # inseq may prepend a BOS the tokenizer did not add
    L = C.shape[0]
    gen = T.shape[1]
    # inseq's column g explains generated token n - gen + g from the position before it (the one
    # that predicts it): row i = n - gen - 1 + g of the full-sequence matrix
    rows = range(n - gen - 1, n - 1)
    diffs = np.full((L, gen, n), np.nan)
    for l in range(L):
        for gi, i in enumerate(rows):
            peer_row = T[off:off + i + 1, gi, l]
            ours_row = C[l, i, : i + 1]
            diffs[l, gi, : i + 1] = np.abs(peer_row - ours_row)
    before = np.nanmax(diffs[:-1]) if L > 1 else float("nan")
    last = np.nanmax(diffs[-1])
    for l in range(L):
        print(f"layer {l}: max |attnexplain - inseq| = {np.nanmax(diffs[l]):.3g} over {int(np.isfinite(diffs[l]).sum())} entries")
    print(f"RESULT max_abs_diff_layers_before_last={before:.3g} max_abs_diff_last_layer={last:.3g} "
          f"entries={int(np.isfinite(diffs).sum())}")


if __name__ == "__main__":
    main()

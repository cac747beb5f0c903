"""One batch of ``analyze --task generation``: generate, explain every generated token, ERASER
faithfulness per generated token, per-head readout entropy, stored attention arrays.

Per batch of prompts (the data set's texts, cut to ``max_length`` tokens):

1. :func:`attnexplain.explain_generation`: greedy generation of ``max_new_tokens`` tokens (left
   padding; one teacher-forced capture over prompt + continuation), and for every generated token
   ``t`` every method's scores over the prompt and the tokens generated before ``t``;
2. :func:`attnexplain.generation_faithfulness`: ERASER comprehensiveness / sufficiency of the
   probability of each generated token, removing prompt tokens by each method's ranking of that
   token's row (the continuation before ``t`` stays in place);
3. per (layer, head): the entropy (nats) of the rows that predicted the generated tokens, averaged
   over the steps (``heads`` metric ``entropy``; encoder-decoders: the decoder's cross-attention
   rows, over the source);
4. for the first ``store_attention`` examples: raw / effective / norm / rollout matrices of the
   teacher-forced pass over prompt + continuation (float16; see
   :func:`attnexplain.runs.batch.example_arrays`), with ``n_prompt`` and the step probabilities
   (decoder-only models; an encoder-decoder's source and continuation run through different
   stacks, so no arrays are stored for them).

Encoder-decoder models (BART, T5): the prompt is the source (the encoder's input), its tokens are
the ``is_prompt`` positions and the ones faithfulness removes; the continuation's tokens follow it
as for a decoder-only model.

Tables (docs/run-format.md, "Generation runs"): ``tokens`` holds one row per (example, step,
visible token, method) with ``step``, ``generated_token``, ``step_prob`` and ``is_prompt``;
``faithfulness`` one row per (example, step, method, metric, k); ``examples`` the generated text,
its tokens and step probabilities, and the AOPC per method averaged over the example's steps.
Every example's numbers equal :func:`attnexplain.explain_generation` /
:func:`attnexplain.generation_faithfulness` on that example alone (tested): greedy decoding with
left padding, batch-invariant methods (the random baseline is seeded by the example's tokens).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..models import LoadedModel

#: ``analyze --task generation`` default: tokens generated (and explained) per prompt
DEFAULT_MAX_NEW_TOKENS = 10


@dataclass
class GenerationSetup:
    """What every batch of a generation run shares (built once per process)."""

    lm: LoadedModel
    methods: list[Any]
    method_names: list[str]
    bins: tuple[float, ...]
    removal: str
    max_new_tokens: int
    max_length: int
    seed: int


def build_generation_setup(lm: LoadedModel, method_names: Sequence[str], *, seed: int, bins: Sequence[float],
                           removal: str, max_new_tokens: int, max_length: int) -> GenerationSetup:
    from ..methods import get_method

    built = [get_method(m, seed=int(seed)) if m == "random" else get_method(m) for m in method_names]
    return GenerationSetup(lm=lm, methods=built, method_names=list(method_names), bins=tuple(bins), removal=removal,
                           max_new_tokens=int(max_new_tokens), max_length=int(max_length), seed=int(seed))


def cut_prompt(tokenizer: Any, text: str, max_tokens: int) -> tuple[str, bool]:
    """``text`` cut after its first ``max_tokens`` tokens (special tokens included), at the end
    character of the last kept token (so the prompt stays text, e.g. the start of a BBC News
    article); returns (prompt, truncated). Tokenizers without offsets cut by decoding the kept ids."""
    enc = tokenizer(text, add_special_tokens=True)
    ids = enc["input_ids"]
    if ids and isinstance(ids[0], (list, tuple)):
        ids = ids[0]
    if len(ids) <= max_tokens:
        return text, False
    try:
        offsets = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
        return text[: max(e for s, e in offsets[:max_tokens])], True
    except (TypeError, KeyError, NotImplementedError, ValueError):
        pass
    # no offsets (slow tokenizers): the longest prefix that still fits, by bisection on characters

    def n_tokens(k: int) -> int:
        x = tokenizer(text[:k], add_special_tokens=True)["input_ids"]
        return len(x[0] if x and isinstance(x[0], (list, tuple)) else x)

    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if n_tokens(mid) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo], True


def _head_entropy(gen: Any) -> tuple[list[int], np.ndarray]:
    """(layers, (L, B, H)): entropy of the attention rows that predicted each generated token, mean
    over the steps (encoder-decoders: the decoder's cross-attention rows, over the source)."""
    B = gen.generated_ids.shape[0]
    steps = [gen.steps(i) for i in range(B)]
    where = {"stack": "decoder", "kind": "cross"} if gen.is_encoder_decoder else {}
    layers = gen.layers(**where)
    out = []
    for layer in layers:
        A = gen.attention(layer, **where).float()  # (B, H, n, keys)
        ent = np.zeros((B, A.shape[1]))
        for i in range(B):
            rows = A[i][:, [gen.readout_position(t) for t in steps[i]], :]  # (H, S, n)
            e = -(torch.where(rows > 0, rows * torch.log(rows.clamp_min(1e-30)), torch.zeros(()))).sum(-1)
            ent[i] = e.mean(-1).double().cpu().numpy()
        out.append(ent)
    return layers, np.stack(out)


def analyze_generation_batch(setup: GenerationSetup, ids: list[str], positions: list[int], texts: list[str],
                             store: set[int]):
    """Everything for one batch of prompts: (tables dict of columns, attention arrays by example id)."""
    from ..generation import explain_generation, generation_faithfulness
    from .batch import example_arrays

    lm = setup.lm
    B = len(texts)
    cut = [cut_prompt(lm.tokenizer, t, setup.max_length) for t in texts]
    prompts = [c[0] for c in cut]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = explain_generation(lm, prompts, setup.methods, max_new_tokens=setup.max_new_tokens)
    g = ex.generation
    names = [m for m in setup.method_names if m in ex.attributions]
    faith = generation_faithfulness(lm, ex, methods=names, random_baseline=False, seed=setup.seed,
                                    bins=setup.bins, mode=setup.removal)
    ft = faith.table
    first = ex.attributions[names[0]]
    n_prompt = first.n_prompt
    steps = [g.steps(i) for i in range(B)]

    # -- examples -------------------------------------------------------------------------------
    exm: dict[str, Any] = {
        "example_id": list(ids), "index": list(positions), "text": prompts, "label": [None] * B,
        "label_name": [None] * B, "pred": [int(g.generated_ids[i, 0]) for i in range(B)],
        "pred_label": list(g.generated_texts),
        "probs": [g.step_probs[i, steps[i]].float().cpu().numpy() for i in range(B)],
        "correct": [None] * B, "n_tokens": np.asarray(n_prompt, dtype=np.int32),
        "truncated": [c[1] for c in cut], "generated_text": list(g.generated_texts),
        "generated_tokens": [[g.generated_tokens[i][t] for t in steps[i]] for i in range(B)],
        "step_probs": [g.step_probs[i, steps[i]].float().cpu().numpy() for i in range(B)],
        "n_generated": np.asarray([len(s) for s in steps], dtype=np.int32),
    }
    aopc = faith.aopc
    for m in setup.method_names:
        comp, suff = np.full(B, np.nan, np.float32), np.full(B, np.nan, np.float32)
        part = aopc[aopc["method"] == m]
        for metric, arr in (("comprehensiveness", comp), ("sufficiency", suff)):
            means = part[part["metric"] == metric].groupby("example")["aopc"].mean()
            for i, v in means.items():
                arr[int(i)] = v
        exm[f"comp_aopc__{m}"], exm[f"suff_aopc__{m}"] = comp, suff

    # -- tokens: one row per (step, visible token, method) ----------------------------------------
    cols: dict[str, list] = {k: [] for k in ("example_id", "step", "generated_token", "step_prob", "is_prompt",
                                             "position", "token", "method", "score")}
    for i in range(B):
        toks = first.tokens[i]
        for t in steps[i]:
            n_vis = n_prompt[i] + t
            for m in setup.method_names:
                row = ex.attributions[m].scores[i][t, :n_vis] if m in ex.attributions else np.full(n_vis, np.nan)
                cols["example_id"] += [ids[i]] * n_vis
                cols["step"] += [t] * n_vis
                cols["generated_token"] += [g.generated_tokens[i][t]] * n_vis
                cols["step_prob"] += [float(g.step_probs[i, t])] * n_vis
                cols["is_prompt"] += [j < n_prompt[i] for j in range(n_vis)]
                cols["position"] += list(range(n_vis))
                cols["token"] += list(toks[:n_vis])
                cols["method"] += [m] * n_vis
                cols["score"] += np.asarray(row, dtype=np.float32).tolist()
    tok_tab = {k: np.asarray(v, dtype=np.float32) if k in ("score", "step_prob") else v for k, v in cols.items()}

    # -- faithfulness: one row per (step, method, metric, k) -----------------------------------------
    f_tab = {
        "example_id": [ids[int(i)] for i in ft["example"]], "step": ft["step"].astype(np.int32).to_numpy(),
        "method": ft["method"].tolist(), "metric": ft["metric"].tolist(),
        "k": ft["fraction"].astype(np.float32).to_numpy(), "value": ft["value"].astype(np.float32).to_numpy(),
    }

    # -- heads: readout-row entropy per (layer, example, head) ----------------------------------------
    ent_layers, ent = _head_entropy(g)  # (L, B, H)
    L, _, H = ent.shape
    li, bi, hi = np.meshgrid(np.arange(L), np.arange(B), np.arange(H), indexing="ij")
    h_tab = {"example_id": np.asarray(ids, dtype=object)[bi.ravel()],
             "layer": np.asarray(ent_layers, dtype=np.int32)[li.ravel()], "head": hi.ravel().astype(np.int32),
             "metric": ["entropy"] * ent.size, "value": ent.ravel().astype(np.float32)}

    # -- stored arrays ------------------------------------------------------------------------------
    attention: dict[str, dict[str, np.ndarray]] = {}
    stored_local = [i for i in range(B) if i in store] if not g.is_encoder_decoder else []
    for i, arrays in example_arrays(g, g.attention_mask, stored_local).items():
        attention[str(ids[i])] = {"tokens": np.asarray(first.tokens[i], dtype=str), **arrays,
                                  "n_prompt": np.asarray(n_prompt[i], dtype=np.int32),
                                  "step_probs": exm["step_probs"][i].astype(np.float32),
                                  "generated_tokens": np.asarray(exm["generated_tokens"][i], dtype=str)}
    return {"examples": exm, "tokens": tok_tab, "faithfulness": f_tab, "heads": h_tab}, attention


def run_generation_batch(setup: GenerationSetup, seed: int, inputs: dict[str, Any]):
    """:func:`analyze_generation_batch` under the batch's own torch seed (as :func:`attnexplain.runs.batch.run_batch`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) * 1_000_003 + int(inputs["positions"][0]))
        return analyze_generation_batch(setup, inputs["ids"], inputs["positions"], inputs["texts"], inputs["store"])

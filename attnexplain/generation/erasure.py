"""Faithfulness of per-generated-token explanations: ERASER on the explained token's probability.

For generated token ``y_t`` of example ``i`` with prompt ``x`` and earlier generated tokens
``y_<t``, and ``r_k`` the ``k`` prompt tokens a method ranks highest for that step (its row of
scores restricted to the prompt's content tokens; special tokens never ranked nor removed)::

    comprehensiveness(k) = p(y_t | x, y_<t) - p(y_t | x \\ r_k, y_<t)     higher = more faithful
    sufficiency(k)       = p(y_t | x, y_<t) - p(y_t | r_k, y_<t)          lower = more faithful
    AOPC                 = mean over the bins k in {1, 5, 10, 20, 50} % of the prompt's content tokens

The continuation generated so far stays in place: only prompt tokens are removed (deleted and the
sequence re-packed, or masked with the pad id), as in the classifier version
(:func:`attnexplain.ablations.faithfulness`), whose bin sizes and conventions this follows. The
random baseline ranks each step's prompt tokens by a seeded permutation
(``numpy.random.default_rng([seed, example, step])``). Every distinct perturbed input (methods x
metrics x bins x steps, identical ones once) runs in length-bucketed, left-padded batches
(``position_ids`` from the mask), reading the probability of ``y_t`` at the last position.

Encoder-decoder generations (BART, T5): the prompt is the source, the encoder's input; the tokens
removed are source tokens (ranked by each method's source scores for step ``t``), and
``p(y_t | x', y_<t)`` is read under teacher forcing at decoder position ``t`` (decoder input = start
token + ``y_<t``, unchanged). Batches of perturbed sources are right-padded (the encoder masks the
padding; positions start at 0 as in one example alone), decoder inputs right-padded too (causal:
position ``t`` never sees the padding after it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


import numpy as np
import torch

from ..models import LoadedModel
from ..ablations.eraser import FaithfulnessResult
from ..ablations.perturbed_inputs import _chunks, bin_sizes, special_token_ids
from ..metrics import ERASER_BINS
from ..metrics import aopc as _aopc
from .attribution import GenerationExplanation


__all__ = ["generation_faithfulness"]


def _last_token_probs(lm: LoadedModel, seqs: list[list[int]], targets: list[int], max_batch: int,
                      forward_cost_tokens: float) -> tuple[np.ndarray, int]:
    """p(target_j | seqs_j) at each sequence's last position; left-padded length buckets."""
    from .decoding import _pad_id

    pad = _pad_id(lm)
    device = lm.device
    order = sorted(range(len(seqs)), key=lambda j: len(seqs[j]))
    out = np.empty(len(seqs))
    forwards = 0
    for a, b in _chunks([len(seqs[j]) for j in order], max_batch, forward_cost_tokens):
        idx = order[a:b]
        width = max(len(seqs[j]) for j in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, j in enumerate(idx):
            ids[r, width - len(seqs[j]):] = torch.as_tensor(seqs[j])
            mask[r, width - len(seqs[j]):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)).logits[:, -1]
        p = torch.softmax(logits.float(), -1)
        tg = torch.as_tensor([targets[j] for j in idx], device=p.device)
        out[idx] = p.gather(1, tg[:, None])[:, 0].double().cpu().numpy()
        forwards += 1
    return out, forwards


def _seq2seq_step_probs(lm: LoadedModel, sources: list[list[int]], decoder_inputs: list[list[int]], targets: list[int],
                        max_batch: int, forward_cost_tokens: float) -> tuple[np.ndarray, int]:
    """p(target_j | source_j, decoder_inputs_j) at each decoder input's last position (teacher
    forcing); right-padded batches bucketed by source + decoder length."""
    from .decoding import _pad_id

    pad = _pad_id(lm)
    device = lm.device
    order = sorted(range(len(sources)), key=lambda j: len(sources[j]) + len(decoder_inputs[j]))
    out = np.empty(len(sources))
    forwards = 0
    for a, b in _chunks([len(sources[j]) + len(decoder_inputs[j]) for j in order], max_batch, forward_cost_tokens):
        idx = order[a:b]
        width = max(len(sources[j]) for j in idx)
        dec_width = max(len(decoder_inputs[j]) for j in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        dec = torch.full((len(idx), dec_width), pad, dtype=torch.long)
        for r, j in enumerate(idx):
            ids[r, : len(sources[j])] = torch.as_tensor(sources[j])
            mask[r, : len(sources[j])] = 1
            dec[r, : len(decoder_inputs[j])] = torch.as_tensor(decoder_inputs[j])
        with torch.inference_mode():
            logits = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                              decoder_input_ids=dec.to(device)).logits
        last = torch.as_tensor([len(decoder_inputs[j]) - 1 for j in idx], device=logits.device)
        p = torch.softmax(logits[torch.arange(len(idx), device=logits.device), last].float(), -1)
        tg = torch.as_tensor([targets[j] for j in idx], device=p.device)
        out[idx] = p.gather(1, tg[:, None])[:, 0].double().cpu().numpy()
        forwards += 1
    return out, forwards


def generation_faithfulness(
    lm: LoadedModel,
    explanation: GenerationExplanation,
    *,
    methods: Sequence[str] | None = None,
    random_baseline: bool = True,
    seed: int = 0,
    bins: Sequence[float] = ERASER_BINS,
    mode: str = "delete",
    rounding: str = "ceil",
    max_batch: int = 64,
    forward_cost_tokens: float = 64.0,
    select: Callable[[int, int], bool] | None = None,
) -> FaithfulnessResult:
    """ERASER comprehensiveness / sufficiency / AOPC of each method's per-token explanations.

    Args:
        lm: the model that generated ``explanation.generation``: decoder-only (prompt tokens are
            removed) or encoder-decoder (source tokens are removed; see the module docstring).
        explanation: from :func:`attnexplain.explain_generation` (non-contrastive).
        methods: which of its methods (default: all); ``random_baseline`` adds ``"random"``
            rankings unless a method of that name is there.
        bins / mode ("delete" | "mask") / rounding / max_batch / forward_cost_tokens: as
            :func:`attnexplain.ablations.faithfulness`.
        select: ``select(example, step) -> bool`` keeps only some generated tokens (default: every
            step every method explained; steps left unexplained, all-NaN rows, are always skipped).

    Returns:
        :class:`~attnexplain.ablations.FaithfulnessResult` whose ``table`` and ``aopc`` have a
        ``step`` column beside ``example`` (one explained generated token = one row group);
        ``summary()`` averages over every (example, step).

    Raises:
        ValueError: a contrastive explanation (the probability of one token is not what it
            explains), an unknown mode, or no method.
    """
    import pandas as pd

    from ..methods import rank_tokens

    if explanation.contrast_ids is not None:
        raise ValueError("faithfulness scores the probability of the explained token; contrastive explanations "
                         "attribute a log-probability difference: explain without contrast= first")
    if mode not in ("delete", "mask"):
        raise ValueError(f"mode must be 'delete' or 'mask', got {mode!r}")
    g = explanation.generation
    seq2seq = bool(g.is_encoder_decoder)
    names = list(methods) if methods is not None else explanation.methods
    if not names and not random_baseline:
        raise ValueError("give at least one method (or random_baseline=True)")
    specials = special_token_ids(lm.tokenizer)
    from .decoding import _pad_id

    repl = _pad_id(lm)
    bins = tuple(float(b) for b in bins)
    seqs: list[list[int]] = []
    decoder_inputs: list[list[int]] = []  # encoder-decoder: start token + y_<t per sequence
    targets: list[int] = []
    index: dict[tuple, int] = {}

    def slot(i: int, t: int, prompt: list[int], cont: list[int], removed: frozenset[int], target: int) -> int:
        key = (i, t, removed)
        if key not in index:
            if mode == "delete":
                kept = [tok for j, tok in enumerate(prompt) if j not in removed]
            else:
                kept = [repl if j in removed else tok for j, tok in enumerate(prompt)]
            if seq2seq:
                seqs.append(kept)
                decoder_inputs.append(cont)
            else:
                seqs.append(kept + cont)
            targets.append(target)
            index[key] = len(seqs) - 1
        return index[key]

    plan = []  # (example, step, method, metric, fraction, k, n_content, slot, full slot)
    all_names = names + (["random"] if random_baseline and "random" not in names else [])
    for i in range(g.generated_ids.shape[0]):
        real = g.input_ids[i][g.attention_mask[i].bool()].tolist()
        n_p = int(g.attention_mask[i, : g.prompt_length].sum())
        prompt = real[:n_p]  # encoder-decoder: the source (input_ids are the encoder's)
        content = [j for j, tok in enumerate(prompt) if tok not in specials]
        if not content:
            continue
        ks = bin_sizes(len(content), bins, rounding)
        for t in g.steps(i):
            if select is not None and not select(i, t):
                continue
            if names and all(np.isnan(explanation.attributions[m].scores[i][t, :n_p]).all()
                             for m in names if m in explanation.attributions):
                continue  # a step explain_generation(steps=...) left out
            cont = g.decoder_input_ids[i, : t + 1].tolist() if seq2seq else real[n_p: n_p + t]
            y = int(g.generated_ids[i, t])
            full = slot(i, t, prompt, cont, frozenset(), y)
            for name in all_names:
                if name in explanation.attributions:
                    row = explanation.attributions[name].step_scores(i, t)[:n_p]
                    order = rank_tokens(row[content])
                else:  # the random baseline
                    order = np.random.default_rng([seed, i, t]).permutation(len(content))
                ranked = [content[c] for c in order]
                for f, k in zip(bins, ks):
                    plan.append((i, t, name, "comprehensiveness", f, k, len(content),
                                 slot(i, t, prompt, cont, frozenset(ranked[:k]), y), full))
                    plan.append((i, t, name, "sufficiency", f, k, len(content),
                                 slot(i, t, prompt, cont, frozenset(ranked[k:]), y), full))
    if not plan:
        raise ValueError("nothing to score: no example has prompt content tokens and generated steps")
    if seq2seq:
        probs, forwards = _seq2seq_step_probs(lm, seqs, decoder_inputs, targets, max_batch, forward_cost_tokens)
    else:
        probs, forwards = _last_token_probs(lm, seqs, targets, max_batch, forward_cost_tokens)
    table = pd.DataFrame(plan, columns=["example", "step", "method", "metric", "fraction", "k", "n_tokens", "slot", "full"])
    table["target"] = [targets[s] for s in table["slot"]]
    table["p_full"] = probs[table["full"].to_numpy()]
    table["p_perturbed"] = probs[table["slot"].to_numpy()]
    table["value"] = table["p_full"] - table["p_perturbed"]
    table = table.drop(columns=["slot", "full"])
    aopc = (table.groupby(["example", "step", "method", "metric"], sort=False)["value"]
            .agg(lambda v: float(_aopc(v.to_numpy()))).rename("aopc").reset_index())
    firsts = table.drop_duplicates(["example", "step"])
    return FaithfulnessResult(table=table, aopc=aopc, mode=mode, rounding=rounding, bins=bins,
                              targets=firsts["target"].to_numpy(), p_full=firsts["p_full"].to_numpy(),
                              n_forward=forwards, n_sequences=len(seqs), precision="float32",
                              extra={"seed": seed, "task": "generation"})

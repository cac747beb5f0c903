"""A tiny encoder-decoder trained on a digit task (:mod:`attnexplain.data.seq2seq`) in about a minute on CPU.

:func:`prepare_seq2seq` builds a BART configuration (random init: 2 encoder + 2 decoder layers,
hidden 64, 4 heads of dimension 16, feed-forward 128, no dropout), trains it with teacher forcing
on the task's train split and caches it as ``tiny-seq2seq-<task>`` (e.g.
``tiny-seq2seq-reverse``) under ``cache_dir()/"models"``, where ``load_model_for_run`` finds it;
``load_model`` on the folder gives task ``"seq2seq"``. Its attention comes in three of CAB's
patterns: the encoder's noncausal self-attention, the decoder's causal self-attention and the
decoder's noncausal cross-attention over the source.

Tokenizer: word level (:func:`attnexplain.training.finetune.word_level_tokenizer`), one token per
digit; the encoder reads ``[CLS] digits [SEP]``; the decoder starts from ``[CLS]``
(``decoder_start_token_id``) and ends with ``[SEP]`` (``eos_token_id``).

Recipe: AdamW (weight decay 0.01, peak lr 3e-3), linear warm-up over the first 10 % of the steps
then linear decay to 0, gradient clipping at 1.0, length-bucketed batches of 64, seeded
(``seed``). Measured: the record (``attnexplain_training.json``) holds the validation token
accuracy (teacher-forced, every target token and the end token) and the greedy exact-match rate.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from .._registry import Registry
from .finetune import _bucketed_batches, _log, _save_atomically, _seed_all, _versions, cpu_threads, word_level_tokenizer

__all__ = ["SEQ2SEQ_RECIPES", "prepare_seq2seq", "seq2seq_config", "seq2seq_token_accuracy", "SEQ2SEQ_PREFIX"]

#: model names ``tiny-seq2seq-<task>``; the task is ``seq2seq-<task>``
SEQ2SEQ_PREFIX = "tiny-"

#: task -> default (epochs, peak lr)
SEQ2SEQ_RECIPES: Registry = Registry("sequence-to-sequence recipe", {
    "seq2seq-copy": (20, 3e-3),
    "seq2seq-reverse": (20, 3e-3),
    "seq2seq-sort": (20, 3e-3),
})


def seq2seq_config(tokenizer: Any, *, d_model: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 32):
    """The tiny BartConfig: ``layers`` encoder and decoder layers, ``heads`` heads, FFN 2 x d_model, no dropout."""
    from transformers import BartConfig

    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    return BartConfig(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=cls_id, eos_token_id=sep_id, decoder_start_token_id=cls_id, forced_eos_token_id=None,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, architectures=["BartForConditionalGeneration"],
    )


def _encode_pairs(tokenizer: Any, sources: list[str], targets: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    src = tokenizer(sources, add_special_tokens=True)["input_ids"]
    tgt = [ids + [tokenizer.sep_token_id] for ids in tokenizer(targets, add_special_tokens=False)["input_ids"]]
    return src, tgt


def _pad(rows: list[list[int]], value: int):
    import torch

    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def seq2seq_token_accuracy(model: Any, tokenizer: Any, sources: list[str], targets: list[str], *,
                           batch_size: int = 128) -> dict[str, float]:
    """Teacher-forced token accuracy (target digits and the end token) and greedy exact match.

    ``token_accuracy``: share of target tokens (each target's digits plus ``[SEP]``) that are the
    argmax of the model given the source and the gold prefix. ``exact_match``: share of examples
    whose greedy generation (``model.generate``, no sampling) equals the target exactly.
    """
    import torch

    src, tgt = _encode_pairs(tokenizer, sources, targets)
    correct = total = exact = 0
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(src), batch_size):
            ids = _pad(src[s : s + batch_size], pad)
            mask = (ids != pad).long()
            labels = _pad(tgt[s : s + batch_size], -100)
            logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
            real = labels != -100
            correct += int(((logits.argmax(-1) == labels) & real).sum())
            total += int(real.sum())
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=labels.shape[1] + 1, do_sample=False,
                                 num_beams=1, pad_token_id=pad, eos_token_id=tokenizer.sep_token_id)
            for row, want in zip(gen.tolist(), tgt[s : s + batch_size]):
                got = row[1:]  # after the decoder start token
                exact += int(got[: len(want)] == want)
    model.train(was_training)
    return {"token_accuracy": correct / max(1, total), "exact_match": exact / max(1, len(src))}


def prepare_seq2seq(task: str = "seq2seq-reverse", *, epochs: int | None = None, lr: float | None = None,
                    batch_size: int = 64, limit: int | None = None, seed: int = 0, d_model: int = 64, layers: int = 2, heads: int = 4,
                    out_dir: str | Path | None = None, progress: bool = False, threads: int | None = None) -> Path:
    """Train the tiny encoder-decoder on ``task`` and cache it as ``tiny-<task>``; returns its folder.

    Args:
        task: ``"seq2seq-copy"``, ``"seq2seq-reverse"`` (default) or ``"seq2seq-sort"``
            (:data:`attnexplain.data.seq2seq.SEQ2SEQ_TASKS`).
        epochs, lr: passes over the train split and peak AdamW learning rate (defaults per task in
            :data:`SEQ2SEQ_RECIPES`).
        limit: train on only the first ``limit`` training examples.
        d_model, layers, heads: the BART configuration (:func:`seq2seq_config`).
        out_dir: default ``cache_dir()/"models"/"tiny-<task>"``.
        threads: ``torch.set_num_threads`` (default :func:`~attnexplain.training.finetune.cpu_threads`).

    Returns:
        The model folder; ``attnexplain_training.json`` records the validation token accuracy and
        greedy exact match.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import BartForConditionalGeneration

    from ..data.seq2seq import SEQ2SEQ_TASKS, load_seq2seq
    from ..models import cache_dir

    SEQ2SEQ_TASKS[task]  # UnknownNameError listing the tasks
    default_epochs, default_lr = SEQ2SEQ_RECIPES[task]
    epochs = default_epochs if epochs is None else int(epochs)
    lr = default_lr if lr is None else float(lr)
    threads = cpu_threads() if threads is None else int(threads)
    torch.set_num_threads(threads)
    _seed_all(seed)
    t0 = time.perf_counter()
    train = load_seq2seq(task, split="train")
    if limit is not None:
        train = train.head(int(limit))
    val = load_seq2seq(task, split="validation")
    tok = word_level_tokenizer([str(d) for d in range(10)], max_length=32)
    config = seq2seq_config(tok, d_model=d_model, layers=layers, heads=heads)
    model = BartForConditionalGeneration(config)
    model.generation_config.forced_eos_token_id = None
    src, tgt = _encode_pairs(tok, train.sources, train.targets)
    lengths = [len(x) for x in src]
    steps_per_epoch = math.ceil(len(src) / batch_size)
    total = steps_per_epoch * epochs
    warm = max(1, round(0.1 * total))
    no_decay = ("bias", "layer_norm.weight", "layernorm_embedding.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm)))
    rng = random.Random(seed)
    pad = tok.pad_token_id
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc=f"tiny-{task}", disable=not progress, file=sys.stderr, mininterval=1.0)
    try:
        for _ in range(epochs):
            for idx in _bucketed_batches(lengths, batch_size, rng):
                ids = _pad([src[i] for i in idx], pad)
                labels = _pad([tgt[i] for i in idx], -100)
                out = model(input_ids=ids, attention_mask=(ids != pad).long(), labels=labels)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(out.loss.detach()))
                bar.update(1)
    finally:
        bar.close()
    model.eval()
    t_train = time.perf_counter() - t0
    metrics = seq2seq_token_accuracy(model, tok, val.sources, val.targets)
    seconds = time.perf_counter() - t0
    name = f"tiny-{task}"
    _log(f"{name}: validation token accuracy {metrics['token_accuracy']:.4f}, greedy exact match "
         f"{metrics['exact_match']:.4f} ({len(val)} examples) after {epochs} epochs, {seconds:.1f} s")
    tail = losses[-max(1, len(losses) // 10):]
    info = {
        "name": name, "dataset": task, "task": "seq2seq", "base_model": None, "tokenizer": "word",
        "split_sizes": {"train": len(train), "validation": len(val)},
        "validation_accuracy": metrics["token_accuracy"], "validation_token_accuracy": metrics["token_accuracy"],
        "validation_exact_match": metrics["exact_match"], "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "limit": limit, "seed": seed, "train_seconds": round(t_train, 1), "seconds": round(seconds, 1),
        "config": {"architecture": "BartForConditionalGeneration", "d_model": d_model, "layers": layers, "heads": heads},
        "steps": len(losses), "first_loss": losses[0], "final_loss": sum(tail) / len(tail), "threads": threads,
        "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(out_dir) if out_dir is not None else cache_dir() / "models" / name
    return _save_atomically(model, tok, info, out)

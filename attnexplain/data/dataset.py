"""The data set type of attnexplain (:class:`TextDataset`, :class:`Example`), its error
(:class:`DatasetError`) and the split rule of the built-in and synthetic data sets
(:func:`split_of`). A leaf module: every loader imports it, it imports no loader."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import AttnExplainError

#: the columns a user file's text and label are looked for in, in this order (see
#: :mod:`attnexplain.data.loaders`)
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "body", "comment", "tweet")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "category", "target", "topic", "polarity", "y")

#: the split names every built-in and synthetic data set has
SPLITS = ("train", "validation", "test")


class DatasetError(AttnExplainError, ValueError):
    """A data set cannot be found, read or interpreted (the message says why and what to do)."""


@dataclass
class Example:
    """One example of a :class:`TextDataset`.

    Attributes:
        id: stable example id.
        text: the text.
        label: class index, or None for unlabelled data.
        label_name: the class name (``label_names[label]``) when known.
        text_pair: the second text of a pair task, else None.
        rationale: gold rationale as indices into ``text.split()`` (whitespace-separated words),
            or None.
    """

    id: str
    text: str
    label: int | None = None
    label_name: str | None = None
    text_pair: str | None = None
    rationale: list[int] | None = None

    @property
    def words(self) -> list[str]:
        """``text.split()``: the units the rationale indices refer to."""
        return self.text.split()


@dataclass
class TextDataset:
    """A small in-memory text classification data set.

    Attributes:
        ids: stable example ids (unique within the data set).
        texts: the texts.
        labels: class indices, or None (unlabelled).
        label_names: class names, index -> name, or None when unknown.
        text_pairs: second texts for pair tasks (NLI-style), or None.
        rationales: gold rationales (synthetic tasks), or None. Each rationale is a list of
            **word indices into ``texts[i].split()``** (whitespace-separated words, 0-based) --
            not token indices: map model tokens to words with
            :func:`attnexplain.data.synthetic.word_index_of_tokens`.
        name: data set name (built-in name or file path).
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"``.
        columns: for user files, the columns used: ``{"text": ..., "label": ... or None,
            "found": [every column in the file]}``; None for built-in and synthetic data.
    """

    ids: list[str]
    texts: list[str]
    labels: list[int] | None = None
    label_names: list[str] | None = None
    text_pairs: list[str] | None = None
    rationales: list[list[int]] | None = None
    name: str = "dataset"
    split: str = "all"
    columns: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        for attr in ("ids", "labels", "text_pairs", "rationales"):
            value = getattr(self, attr)
            if value is not None and len(value) != n:
                raise DatasetError(f"TextDataset.{attr} has {len(value)} entries but there are {n} texts")

    # -- sequence protocol ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> Example:
        if isinstance(index, slice):
            raise TypeError("use TextDataset.select(range(...)) or head(n) to take a slice")
        label = self.labels[index] if self.labels is not None else None
        return Example(
            id=self.ids[index],
            text=self.texts[index],
            label=label,
            label_name=(self.label_names[label] if self.label_names is not None and label is not None
                        and 0 <= label < len(self.label_names) else None),
            text_pair=self.text_pairs[index] if self.text_pairs is not None else None,
            rationale=list(self.rationales[index]) if self.rationales is not None else None,
        )

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        classes = f", classes={self.label_names}" if self.label_names else ""
        return f"TextDataset(name={self.name!r}, split={self.split!r}, n={len(self)}{classes})"

    @property
    def num_labels(self) -> int | None:
        """Number of classes (from ``label_names``, else ``max(labels) + 1``), None if unlabelled."""
        if self.label_names is not None:
            return len(self.label_names)
        if self.labels:
            return max(self.labels) + 1
        return None

    # -- subsets -------------------------------------------------------------------------------
    def select(self, indices: Sequence[int] | range) -> "TextDataset":
        """A new data set with the examples at ``indices`` (in that order; repeats allowed)."""
        idx = [int(i) for i in indices]
        n = len(self)
        for i in idx:
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for a data set of {n} examples")

        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in idx]

        return TextDataset(
            ids=pick(self.ids), texts=pick(self.texts), labels=pick(self.labels),
            label_names=list(self.label_names) if self.label_names is not None else None,
            text_pairs=pick(self.text_pairs),
            rationales=None if self.rationales is None else [list(self.rationales[i]) for i in idx],
            name=self.name, split=self.split, columns=self.columns,
        )

    def describe_columns(self) -> str | None:
        """One line saying which columns of a user file were read as text and label (None for built-ins)."""
        if not self.columns:
            return None
        text = f"text column {self.columns['text']!r}"
        label = self.columns.get("label")
        if label is None:
            found = [c for c in self.columns.get("found", []) if c != self.columns["text"]]
            return (f"{self.name}: {text}; no label column (looked for {', '.join(LABEL_COLUMNS)}; other columns: "
                    f"{', '.join(found) or 'none'}): a classifier's accuracy is not measured (pass --label-column NAME "
                    "if a column holds the labels)")
        classes = f" ({len(self.label_names)} classes: {', '.join(self.label_names)})" if self.label_names else ""
        return f"{self.name}: {text}, label column {label!r}{classes}"

    def head(self, n: int) -> "TextDataset":
        """The first ``n`` examples (all of them if there are fewer)."""
        return self.select(range(min(max(int(n), 0), len(self))))

    def shard(self, index: int, num_shards: int, *, contiguous: bool = True) -> "TextDataset":
        """Shard ``index`` of ``num_shards`` (0-based); the shards partition the data set.

        ``contiguous=True`` (default) cuts the data set into consecutive blocks like
        ``numpy.array_split``: the first ``len % num_shards`` shards get one extra example, so
        shard sizes differ by at most one and concatenating shards 0..n-1 gives the data set back
        in order. ``contiguous=False`` takes every ``num_shards``-th example starting at
        ``index`` (``range(index, len, num_shards)``). Both are deterministic.
        """
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if not 0 <= index < num_shards:
            raise ValueError(f"shard index must be in [0, {num_shards}), got {index}")
        n = len(self)
        if not contiguous:
            return self.select(range(index, n, num_shards))
        base, extra = divmod(n, num_shards)
        start = index * base + min(index, extra)
        stop = start + base + (1 if index < extra else 0)
        return self.select(range(start, stop))

    def iter_batches(self, batch_size: int) -> Iterator["TextDataset"]:
        """Consecutive batches (each a :class:`TextDataset`; the last one may be smaller).

        Use ``batch.texts`` / ``batch.labels`` for the model, e.g.
        ``lm.tokenize(batch.texts)``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.select(range(start, min(start + batch_size, len(self))))

    # -- export --------------------------------------------------------------------------------
    def to_pandas(self):
        """A DataFrame with columns id, text[, text_pair][, label, label_name][, rationale], split."""
        import pandas as pd

        data: dict[str, Any] = {"id": self.ids, "text": self.texts}
        if self.text_pairs is not None:
            data["text_pair"] = self.text_pairs
        if self.labels is not None:
            data["label"] = self.labels
            if self.label_names is not None:
                data["label_name"] = [self.label_names[i] for i in self.labels]
        if self.rationales is not None:
            data["rationale"] = self.rationales
        data["split"] = [self.split] * len(self)
        return pd.DataFrame(data)

    def label_counts(self) -> dict[str, int]:
        """Examples per class, by class name when known (else by index as a string)."""
        if self.labels is None:
            return {}
        counts: dict[str, int] = {}
        for y in self.labels:
            key = self.label_names[y] if self.label_names is not None else str(y)
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


def split_of(example_id: str, *, salt: str = "attnexplain-split-v1",
             fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    """The fixed split of an example id: ``"train"``, ``"validation"`` or ``"test"``.

    ``u = int(sha256(salt + ":" + id).hexdigest()[:15], 16) / 16**15`` is a number in [0, 1)
    that depends only on the id, so the split is identical on every machine, Python version and
    run (Python's own ``hash`` is salted per process and is not used). ``u < 0.8`` -> train,
    ``u < 0.9`` -> validation, else test (80/10/10 by default).
    """
    import hashlib

    u = int(hashlib.sha256(f"{salt}:{example_id}".encode()).hexdigest()[:15], 16) / 16**15
    train, validation = fractions
    if u < train:
        return "train"
    if u < train + validation:
        return "validation"
    return "test"

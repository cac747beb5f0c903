"""Text classification data sets: :class:`TextDataset` and :func:`load_dataset`.

:func:`load_dataset` reads

* a **built-in** data set by name (``rotten-tomatoes``, ``bbc-news``, ``drug-reviews``; see
  :mod:`attnexplain.data.builtin`) or a **synthetic** task with gold rationales
  (``synthetic-negation``, ``synthetic-lookup``, ``synthetic-markers``; see
  :mod:`attnexplain.data.synthetic`); :func:`list_datasets` lists them;
* a **user file**: ``.csv``, ``.tsv``, ``.jsonl`` / ``.ndjson`` (one JSON object a line),
  ``.json`` (a list of objects, or JSON lines), ``.parquet``;
* a **Hugging Face ``datasets`` folder** written by ``save_to_disk`` (a ``Dataset``: a folder
  with ``state.json`` / ``dataset_info.json`` and ``data-*.arrow`` files, or a ``DatasetDict``: a
  ``dataset_dict.json`` and one such folder per split). The Arrow files are read with pyarrow
  (IPC *stream* format, IPC file format as a fall-back); the ``datasets`` library is never
  imported. Class names in ``dataset_info.json`` (``ClassLabel`` features) become
  ``label_names``. A plain folder of ``.parquet`` files is read too.

Rules for user data (all documented failures raise :class:`DatasetError`, a ``ValueError``):

* **Columns.** The text column defaults to the first of ``text``, ``sentence``, ``review``,
  ``content``, ``document`` that exists; the label column to ``label`` or ``labels`` if present
  (otherwise the data set is unlabelled, ``labels=None``). A column named ``id`` gives the example
  ids (else ``<file stem>-<row number in the file>``, so ids survive dropped rows); a column
  ``rationale`` (lists of word indices) gives rationales. A column name that does not exist is an
  error that lists the columns found.
* **Splits.** If the data has a ``split`` column, only rows whose split equals ``split`` are kept
  (``split="all"`` keeps everything; an absent split is an error listing the ones present). A
  ``DatasetDict`` folder picks the sub-folder ``split``. Without either, the whole file is used
  (``TextDataset.split`` is then ``"all"``).
* **Labels.** Integer labels (or integral floats, or booleans) are kept as ints. String labels are
  mapped to ints by their **sorted** unique names (recorded in ``label_names``), unless
  ``label_names`` is given, in which case label ``label_names[i]`` becomes ``i`` and an unknown
  label is an error. Non-integral numbers are an error (regression is not supported).
* **Empty rows.** Rows whose text is missing, empty or whitespace only, or whose label is missing,
  are dropped with a ``UserWarning`` that says how many; if every row is empty it is an error.
* **Encoding.** CSV/TSV/JSON files must be UTF-8 (a UTF-8 byte-order mark is accepted). Other
  bytes are an *error*, never a silent replacement: the message names the file, the line and byte
  offset of the first bad byte, and suggests re-encoding (``iconv -f latin1 -t utf-8 in > out``).
  We chose an error because replacing characters would silently change the texts whose attention
  is being explained.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DatasetError",
    "Example",
    "TextDataset",
    "load_dataset",
    "list_datasets",
    "split_of",
    "SPLITS",
]

#: the split names every built-in and synthetic data set has
SPLITS = ("train", "validation", "test")

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels")


class DatasetError(ValueError):
    """A data set cannot be found, read or interpreted (the message says why and what to do)."""


# --------------------------------------------------------------------------------------------
# the data set object
# --------------------------------------------------------------------------------------------


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
    """

    ids: list[str]
    texts: list[str]
    labels: list[int] | None = None
    label_names: list[str] | None = None
    text_pairs: list[str] | None = None
    rationales: list[list[int]] | None = None
    name: str = "dataset"
    split: str = "all"

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
            name=self.name, split=self.split,
        )

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


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------


def list_datasets() -> dict[str, str]:
    """Built-in and synthetic data set names -> one-line descriptions."""
    from .builtin import BUILTINS
    from .synthetic import SYNTHETIC_TASKS

    out = {name: spec.description for name, spec in BUILTINS.items()}
    out.update({name: spec.description for name, spec in SYNTHETIC_TASKS.items()})
    return out


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    split: str = "test",
    text_column: str | None = None,
    label_column: str | None = None,
    text_pair_column: str | None = None,
    label_names: Sequence[str] | None = None,
    limit: int | None = None,
) -> TextDataset:
    """Load a built-in data set, a synthetic task, or a user file / folder as a :class:`TextDataset`.

    Args:
        name_or_path: a name from :func:`list_datasets`, or a path to a ``.csv`` / ``.tsv`` /
            ``.jsonl`` / ``.json`` / ``.parquet`` file or a ``save_to_disk`` folder.
        split: ``"train"``, ``"validation"``, ``"test"`` (default) or ``"all"``. For user data see
            the module docs (a ``split`` column or ``DatasetDict`` sub-folder is honoured).
        text_column, label_column, text_pair_column: column names for user data (defaults in the
            module docs). Ignored for built-ins.
        label_names: class names for user data (index -> name); string labels are mapped through
            them instead of by sorted order.
        limit: keep only the first ``limit`` examples (after split selection).

    Raises:
        DatasetError: unknown name (the message lists the known ones), missing file, unknown
            format, wrong column name (lists the columns found), all rows empty, non-UTF-8 bytes,
            corrupt Parquet/Arrow.
    """
    from .builtin import BUILTINS, load_builtin
    from .synthetic import SYNTHETIC_TASKS, load_synthetic

    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    name = os.fspath(name_or_path)
    if split not in (*SPLITS, "all"):
        # user files may use other split names (e.g. "dev"); only built-ins are strict
        if name in BUILTINS or name in SYNTHETIC_TASKS:
            raise DatasetError(f"unknown split {split!r}; use one of {', '.join((*SPLITS, 'all'))}")
    if name in BUILTINS:
        ds = load_builtin(name, split=split)
    elif name in SYNTHETIC_TASKS:
        ds = load_synthetic(name, split=split)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            known = ", ".join(list_datasets())
            if path.suffix or os.sep in name or "/" in name:
                raise DatasetError(f"file not found: {path}. Built-in data sets: {known}")
            raise DatasetError(
                f"unknown data set {name!r}: not a built-in name and not an existing file. "
                f"Built-in data sets: {known}. Or give a path to a .csv/.tsv/.jsonl/.json/.parquet "
                f"file or a save_to_disk folder."
            )
        ds = _load_user(path, split=split, text_column=text_column, label_column=label_column,
                        text_pair_column=text_pair_column, label_names=label_names)
    if limit is not None:
        ds = ds.head(limit)
    return ds


# --------------------------------------------------------------------------------------------
# user files
# --------------------------------------------------------------------------------------------

_FORMATS = {
    ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow",
}


def _decode_utf8(path: Path) -> str:
    """The file as text; non-UTF-8 bytes raise DatasetError with line and byte offset."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 4]
        raise DatasetError(
            f"{path} is not valid UTF-8: byte {bad[:1]!r} at byte offset {exc.start} (line {line}) "
            f"cannot be decoded ({exc.reason}). Re-encode the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > fixed.{path.suffix.lstrip('.')}` "
            f"(use the file's real encoding, e.g. cp1252, in place of latin1)."
        ) from None


def _read_table(path: Path):
    """Read a user file or folder into a pandas DataFrame; returns (df, meta)."""
    import pandas as pd

    meta: dict[str, Any] = {}
    if path.is_dir():
        return _read_hf_folder(path, meta)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(
            f"unknown data format {path.suffix or '(no extension)'!r} for {path}; supported: "
            f"{', '.join(sorted(_FORMATS))} files and save_to_disk folders"
        )
    if fmt in ("csv", "tsv"):
        text = _decode_utf8(path)
        if not text.strip():
            raise DatasetError(f"{path} is empty")
        try:
            df = pd.read_csv(io.StringIO(text), sep="\t" if fmt == "tsv" else ",")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
            raise DatasetError(f"cannot parse {path} as {fmt.upper()}: {exc}") from None
        return df, meta
    if fmt in ("jsonl", "json"):
        text = _decode_utf8(path)
        stripped = text.lstrip()
        if not stripped:
            raise DatasetError(f"{path} is empty")
        if fmt == "json" and stripped.startswith("["):
            try:
                records = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"cannot parse {path} as JSON: {exc.msg} at line {exc.lineno}, "
                                   f"column {exc.colno}") from None
            if not all(isinstance(r, dict) for r in records):
                raise DatasetError(f"{path}: expected a JSON list of objects (one per example)")
        else:
            records = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"cannot parse {path} line {lineno} as JSON: {exc.msg} "
                                       f"(column {exc.colno}); each line must be one JSON object") from None
                if not isinstance(obj, dict):
                    raise DatasetError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
                records.append(obj)
        return pd.DataFrame.from_records(records), meta
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"cannot read {path} as Parquet (corrupt or not a Parquet file): {exc}") from None
        return table.to_pandas(), meta
    # a single .arrow file
    table = _read_arrow_file(path)
    return table.to_pandas(), meta


def _read_arrow_file(path: Path):
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError):
        pass
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read {path} as Arrow IPC (stream or file format; corrupt?): {exc}") from None


def _class_label_names(info: dict) -> dict[str, list[str]]:
    """``{column: names}`` for ClassLabel features in a dataset_info.json."""
    out: dict[str, list[str]] = {}
    feats = info.get("features") or {}
    if isinstance(feats, dict):
        for col, feat in feats.items():
            if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and feat.get("names"):
                out[col] = [str(n) for n in feat["names"]]
    return out


def _read_hf_dataset_folder(folder: Path, meta: dict):
    """One ``Dataset.save_to_disk`` folder -> pyarrow Table."""
    import pyarrow as pa

    files: list[Path] = []
    state = folder / "state.json"
    if state.exists():
        try:
            st = json.loads(state.read_text(encoding="utf-8"))
            files = [folder / f["filename"] for f in st.get("_data_files", [])]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"cannot read {state}: {exc}") from None
    if not files:
        files = sorted(folder.glob("*.arrow"))
    info = folder / "dataset_info.json"
    if info.exists():
        try:
            meta.setdefault("class_labels", _class_label_names(json.loads(info.read_text(encoding="utf-8"))))
        except json.JSONDecodeError:
            pass
    missing = [f for f in files if not f.exists()]
    if missing:
        raise DatasetError(f"{folder}: data file {missing[0].name} listed in state.json is missing")
    if files:
        tables = [_read_arrow_file(f) for f in files]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    parquet = sorted(folder.glob("*.parquet"))
    if parquet:
        import pyarrow.parquet as pq

        try:
            return pa.concat_tables([pq.read_table(p) for p in parquet])
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"cannot read the Parquet files in {folder} (corrupt?): {exc}") from None
    raise DatasetError(
        f"{folder} is a folder but holds no data: expected a save_to_disk folder (state.json and "
        f"data-*.arrow files, or dataset_dict.json with one folder per split) or .parquet files"
    )


def _read_hf_folder(path: Path, meta: dict):
    dd = path / "dataset_dict.json"
    if dd.exists():
        try:
            splits = json.loads(dd.read_text(encoding="utf-8")).get("splits") or []
        except json.JSONDecodeError as exc:
            raise DatasetError(f"cannot read {dd}: {exc}") from None
        splits = [s for s in splits if (path / s).is_dir()] or sorted(p.name for p in path.iterdir() if p.is_dir())
        meta["splits"] = splits
        meta["dict"] = True
        tables = {}
        for s in splits:
            tables[s] = _read_hf_dataset_folder(path / s, meta)
        return tables, meta
    return _read_hf_dataset_folder(path, meta).to_pandas(), meta


def _pick_column(df, given: str | None, defaults: Sequence[str], what: str, path: Path, required: bool) -> str | None:
    cols = [str(c) for c in df.columns]
    if given is not None:
        if given not in df.columns:
            raise DatasetError(f"{what} column {given!r} not found in {path}; columns found: {', '.join(cols) or '(none)'}")
        return given
    for c in defaults:
        if c in df.columns:
            return c
    if required:
        raise DatasetError(
            f"no {what} column in {path}: looked for {', '.join(repr(d) for d in defaults)}; columns found: "
            f"{', '.join(cols) or '(none)'}. Pass {what}_column=<name>."
        )
    return None


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN / NA
    except (TypeError, ValueError):
        return False


def _labels_to_ints(raw: list, label_names: Sequence[str] | None, column: str, path: Path,
                    class_labels: list[str] | None) -> tuple[list[int], list[str] | None]:
    if label_names is not None:
        label_names = [str(n) for n in label_names]
    if all(isinstance(v, str) for v in raw):
        if label_names is None:
            label_names = sorted(set(raw))
        index = {n: i for i, n in enumerate(label_names)}
        unknown = sorted({v for v in raw if v not in index})
        if unknown:
            raise DatasetError(f"{path}: labels {unknown[:5]} in column {column!r} are not in label_names {label_names}")
        return [index[v] for v in raw], list(label_names)
    ints: list[int] = []
    for i, v in enumerate(raw):
        if isinstance(v, str):
            raise DatasetError(f"{path}: column {column!r} mixes strings and numbers (row {i}: {v!r})")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: label {v!r} in column {column!r} (row {i}) is not a class") from None
        if not math.isfinite(f) or f != int(f):
            raise DatasetError(
                f"{path}: label {v!r} in column {column!r} (row {i}) is not an integer class; regression "
                f"targets are not supported"
            )
        ints.append(int(f))
    if any(y < 0 for y in ints):
        raise DatasetError(f"{path}: negative labels in column {column!r} (e.g. {min(ints)})")
    names = label_names if label_names is not None else class_labels
    if names is not None and ints and max(ints) >= len(names):
        raise DatasetError(f"{path}: label {max(ints)} in column {column!r} is out of range for label_names {names}")
    return ints, (list(names) if names is not None else None)


def _load_user(path: Path, *, split: str, text_column: str | None, label_column: str | None,
               text_pair_column: str | None, label_names: Sequence[str] | None) -> TextDataset:
    df, meta = _read_table(path)
    split_name = "all"
    if meta.get("dict"):
        tables = df
        import pyarrow as pa

        def with_ids(s: str, t):
            # ids "<split>-<row>" unless the data has an id column: unique across splits
            if "id" not in t.column_names:
                t = t.append_column("id", pa.array([f"{s}-{i}" for i in range(t.num_rows)]))
            if "split" not in t.column_names:
                t = t.append_column("split", pa.array([s] * t.num_rows))
            return t

        if split == "all":
            parts = [with_ids(s, t) for s, t in tables.items()]
            df = pa.concat_tables(parts, promote_options="default").to_pandas()
        elif split in tables:
            df = with_ids(split, tables[split]).to_pandas()
            split_name = split
        else:
            raise DatasetError(f"split {split!r} not found in {path}; splits found: {', '.join(tables)}")
    elif "split" in df.columns and split != "all":
        present = sorted({str(s) for s in df["split"].dropna().unique()})
        if split not in present:
            raise DatasetError(f"split {split!r} not found in the 'split' column of {path}; splits found: "
                               f"{', '.join(present)} (or pass split='all')")
        df = df[df["split"].astype(str) == split]
        split_name = split
    if len(df) == 0:
        raise DatasetError(f"{path} has no rows")

    tcol = _pick_column(df, text_column, TEXT_COLUMNS, "text", path, required=True)
    lcol = _pick_column(df, label_column, LABEL_COLUMNS, "label", path, required=False)
    pcol = _pick_column(df, text_pair_column, (), "text_pair", path, required=False) if text_pair_column else None

    rows = list(range(len(df)))
    row_numbers = list(df.index)  # row numbers in the file, kept when a split column filters rows
    texts_raw = df[tcol].tolist()
    labels_raw = df[lcol].tolist() if lcol else None
    pairs_raw = df[pcol].tolist() if pcol else None

    def bad_text(v: Any) -> bool:
        return _is_missing(v) or not isinstance(v, str) or not v.strip()

    for i, v in enumerate(texts_raw):
        if not _is_missing(v) and not isinstance(v, str):
            raise DatasetError(f"{path}: column {tcol!r} holds {type(v).__name__} values (row {i}: {v!r}), not text; "
                               f"pass text_column=<the text column>")
    keep = [i for i in rows if not bad_text(texts_raw[i])
            and (labels_raw is None or not _is_missing(labels_raw[i]))
            and (pairs_raw is None or not bad_text(pairs_raw[i]))]
    if not keep:
        raise DatasetError(f"{path}: all {len(rows)} rows have an empty text{' or label' if lcol else ''} "
                           f"(column {tcol!r}{', ' + repr(lcol) if lcol else ''})")
    if len(keep) < len(rows):
        warnings.warn(f"{path}: dropped {len(rows) - len(keep)} of {len(rows)} rows with an empty text"
                      f"{', text pair' if pcol else ''}{' or a missing label' if lcol else ''}", UserWarning, stacklevel=3)

    if "id" in df.columns:
        ids_all = [str(v) for v in df["id"].tolist()]
    else:
        ids_all = [f"{path.stem}-{r}" for r in row_numbers]
    ids = [ids_all[i] for i in keep]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: the 'id' column has duplicate values; ids must be unique")
    labels = names = None
    if labels_raw is not None:
        raw = [labels_raw[i] for i in keep]
        raw = [int(v) if isinstance(v, bool) else v for v in raw]
        class_labels = (meta.get("class_labels") or {}).get(lcol)
        labels, names = _labels_to_ints(raw, label_names, lcol, path, class_labels)
    elif label_names is not None:
        names = [str(n) for n in label_names]
    rationales = None
    if "rationale" in df.columns:
        rationales = []
        for i in keep:
            r = df["rationale"].iloc[i]
            if isinstance(r, str):
                r = json.loads(r)
            rationales.append([int(x) for x in (r if r is not None else [])])
    return TextDataset(
        ids=ids, texts=[texts_raw[i] for i in keep], labels=labels, label_names=names,
        text_pairs=[pairs_raw[i] for i in keep] if pairs_raw is not None else None,
        rationales=rationales, name=str(path), split=split_name,
    )


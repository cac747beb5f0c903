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
  ``content``, ``document``, ``body``, ``comment``, ``tweet`` that exists; the label column to the
  first of ``label``, ``labels``, ``sentiment``, ``class``, ``category``, ``target``, ``topic``,
  ``polarity``, ``y`` (otherwise the data set is unlabelled, ``labels=None``). The columns chosen
  are recorded in ``TextDataset.columns`` and said by :meth:`TextDataset.describe_columns` (which
  ``analyze`` prints), so a label column that was not found is never silent. A column named ``id`` gives the example
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

import os
from collections.abc import Sequence
from pathlib import Path

from .._registry import Registry
from .builtin import BUILTINS, load_builtin
from .dataset import SPLITS, DatasetError, TextDataset
from .synthetic import SYNTHETIC_TASKS, load_synthetic
from .user_files import _load_user


def list_datasets() -> dict[str, str]:
    """Built-in and synthetic data set names -> one-line descriptions."""
    return {name: description for name, (_, description) in _named_loaders().items()}


def _named_loaders() -> Registry:
    """The name table ``load_dataset`` dispatches through: name -> (loader(name, split=...), description)."""
    table = Registry("data set", {name: (load_builtin, spec.description) for name, spec in BUILTINS.items()})
    table.update({name: (load_synthetic, spec.description) for name, spec in SYNTHETIC_TASKS.items()})
    return table


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
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    name = os.fspath(name_or_path)
    named = _named_loaders()
    if split not in (*SPLITS, "all"):
        # user files may use other split names (e.g. "dev"); only built-ins are strict
        if name in named:
            raise DatasetError(f"unknown split {split!r}; use one of {', '.join((*SPLITS, 'all'))}")
    if name in named:
        ds = named[name][0](name, split=split)
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

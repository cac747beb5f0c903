"""User data: ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.json`` / ``.parquet`` files and ``save_to_disk``
folders read into a :class:`~attnexplain.data.dataset.TextDataset` (the rules are in
:mod:`attnexplain.data.loaders`)."""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any



from .dataset import DatasetError, TextDataset


from .dataset import LABEL_COLUMNS, TEXT_COLUMNS


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
            f"{', '.join(cols) or '(none)'}. Name it: --{what}-column NAME (Python: {what}_column=NAME)."
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
                               f"name the text column: --text-column NAME (Python: text_column=NAME)")
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
        columns={"text": tcol, "label": lcol, "found": [str(c) for c in df.columns]},
    )

"""Reading run folders (docs/run-format.md): :func:`open_run`, :class:`Run`, :func:`list_runs`, :func:`resolve_run`.

Readers (the dashboard, ``report``, ``compare``) only use :func:`open_run` / :func:`list_runs` /
:func:`resolve_run` and the :class:`Run` accessors; they never open files of a run folder themselves.

>>> run = open_run("runs/rotten-tomatoes-dense")
>>> run.status, run.is_complete, run.n_done, run.n_examples
>>> run.examples()                      # one row per example
>>> run.tokens("rt-12")                 # long table: position, token, method, score
>>> run.attention(run.stored_examples()[0])["effective"].shape   # (L, H, n, n) float16
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .schema import (
    ATTENTION,
    FORMAT_VERSION,
    MANIFEST,
    RunFormatError,
    RunPathError,
    SHARDS,
    TABLES,
    _META_KEY,
    _REQUIRED_MANIFEST,
    attention_filename,
    table_schema,
)


def _read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise RunFormatError(f"{path}: not a run folder (no {MANIFEST}); write one with `attnexplain analyze --dataset DATASET --out DIR`, or give a run folder")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFormatError(f"{mpath}: unreadable manifest ({exc}); the run folder is damaged, re-run analyze with --force") from None
    if not isinstance(manifest, dict):
        raise RunFormatError(f"{mpath}: the manifest is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise RunFormatError(
            f"{path}: run folder format version {version!r}, but this attnexplain reads version {FORMAT_VERSION}"
            f"{' (older format)' if isinstance(version, int) and version < FORMAT_VERSION else ''}; "
            f"re-create it with `attnexplain analyze ... --out {path} --force`"
        )
    missing = [k for k in _REQUIRED_MANIFEST if k not in manifest]
    if missing:
        raise RunFormatError(f"{mpath}: manifest lacks {', '.join(missing)}")
    return manifest


def _shard_start(name: str, table: str) -> int | None:
    m = re.fullmatch(rf"{table}-(\d+)\.parquet", name)
    return int(m.group(1)) if m else None


def _shard_path(path: Path, table: str, start: int) -> Path:
    return path / SHARDS / f"{table}-{start:05d}.parquet"


def _committed_starts(path: Path) -> list[int]:
    folder = path / SHARDS
    if not folder.is_dir():
        return []
    starts = [s for s in (_shard_start(p.name, "examples") for p in folder.iterdir()) if s is not None]
    return sorted(starts)


def _shard_meta(table) -> dict:
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {}


def _empty_frame(table: str, methods: Iterable[str], task: str | None = None):
    return table_schema(table, methods, task).empty_table().to_pandas()


class Run:
    """A run folder, read through the format of docs/run-format.md.

    Attributes:
        path: the folder.
        name: its name.
        manifest: the manifest dict.
        error: None, or the :class:`RunFormatError` that makes this run unreadable (only runs
            returned by :func:`list_runs` can carry one; :func:`open_run` raises it instead).
    """

    def __init__(self, path: str | os.PathLike, manifest: dict | None = None, *, error: RunFormatError | None = None):
        self.path = Path(path)
        self.name = self.path.name
        self.error = error
        self.manifest: dict = manifest if manifest is not None else {}

    # -- state --------------------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        """``"running"`` (in progress or interrupted), ``"complete"``, or ``"broken"``."""
        if self.error is not None:
            return "broken"
        return str(self.manifest.get("status", "running"))

    @property
    def is_complete(self) -> bool:
        return self.error is None and self.status == "complete" and all(
            (self.path / f"{t}.parquet").is_file() for t in TABLES)

    @property
    def methods(self) -> list[str]:
        return list(self.manifest.get("methods") or [])

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.get("labels")

    @property
    def n_examples(self) -> int | None:
        """Examples planned for the run (from the manifest)."""
        n = self.manifest.get("n_examples")
        return int(n) if n is not None else None

    @property
    def n_done(self) -> int:
        """Examples finished so far (all of them once complete)."""
        self._check()
        if self.is_complete:
            import pyarrow.parquet as pq

            return int(pq.read_metadata(self.path / "examples.parquet").num_rows)
        total = 0
        for start in _committed_starts(self.path):
            with contextlib.suppress(Exception):
                import pyarrow.parquet as pq

                total += int(pq.read_metadata(_shard_path(self.path, "examples", start)).num_rows)
        return total

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Run({str(self.path)!r}, broken: {self.error})"
        return (f"Run({str(self.path)!r}, model={self.manifest.get('model')!r}, dataset={self.manifest.get('dataset')!r}, "
                f"backend={self.manifest.get('backend')!r}, status={self.status!r})")

    # -- tables -------------------------------------------------------------------------------
    def _read(self, table: str, example_id: str | None = None, columns: list[str] | None = None, **eq: Any):
        """A table as a DataFrame (final file, or the committed shards of an unfinished run)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._check()
        filters = []
        if example_id is not None:
            filters.append(("example_id", "=", str(example_id)))
        filters += [(k, "=", v) for k, v in eq.items() if v is not None]
        kwargs: dict[str, Any] = {"filters": filters or None}
        if columns is not None:
            kwargs["columns"] = columns
        schema = table_schema(table, self.methods, self.manifest.get("task"))
        try:
            if self.is_complete:
                return pq.read_table(self.path / f"{table}.parquet", **kwargs).to_pandas()
            parts = []
            for start in _committed_starts(self.path):
                p = _shard_path(self.path, table, start)
                try:
                    parts.append(pq.read_table(p, **kwargs))
                except (OSError, pa.ArrowException):
                    continue  # being written or corrupt: the writer will redo it
            if not parts:
                empty = schema.empty_table()
                return (empty.select(columns) if columns else empty).to_pandas()
            return pa.concat_tables([t.replace_schema_metadata(None) for t in parts],
                                    promote_options="default").to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise RunFormatError(f"{self.path}: cannot read the {table} table: {exc}") from None

    def examples(self, columns: list[str] | None = None):
        """One row per example: id, index, text, label, prediction, probabilities, AOPC per method."""
        return self._read("examples", columns=columns)

    def tokens(self, example_id: str | None = None, method: str | None = None, *,
               exclude_special_tokens: bool | None = False):
        """Long table ``example_id, position, token, method, score`` (optionally one example / method).

        ``exclude_special_tokens``: drop the rows of special tokens ([CLS], [SEP]...; the strings
        recorded in the manifest's ``special_tokens``) and, for causal models, of each example's
        first token (the attention sink); ``None``: as the run was asked to (``analyze
        --include-special-tokens`` keeps them; default: left out). ``position`` stays the index
        among the example's real tokens. Runs without that manifest entry drop nothing.
        """
        t = self._read("tokens", example_id, method=method)
        if exclude_special_tokens is None:
            exclude_special_tokens = self.excludes_special_tokens
        entry = self.manifest.get("special_tokens")
        if not exclude_special_tokens or not entry or not len(t):
            return t
        drop = t["token"].isin(set(entry.get("tokens") or []))
        if entry.get("attention_sink"):
            drop |= t["position"] == t.groupby(["example_id", "method"])["position"].transform("min")
        return t[~drop].reset_index(drop=True)

    @property
    def excludes_special_tokens(self) -> bool:
        """Whether this run's token scores are shown without special tokens (its ``analyze`` setting)."""
        entry = self.manifest.get("special_tokens")
        return bool(entry.get("excluded", True)) if entry else False

    def faithfulness(self, example_id: str | None = None, method: str | None = None):
        """Long table ``example_id, method, metric, k, value`` (ERASER curves per example)."""
        return self._read("faithfulness", example_id, method=method)

    def heads(self, example_id: str | None = None, metric: str | None = None):
        """Long table ``example_id, layer, head, metric, value``."""
        return self._read("heads", example_id, metric=metric)

    # -- arrays -------------------------------------------------------------------------------
    def attention(self, example_id: str) -> dict[str, np.ndarray] | None:
        """The stored arrays of one example (``tokens``, ``raw``, ``effective``, ``norm``,
        ``rollout``, ``probs``...), or None when its arrays were not stored."""
        self._check()
        path = self.path / ATTENTION / attention_filename(example_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError...
            raise RunFormatError(f"{path}: unreadable attention arrays ({type(exc).__name__}: {exc})") from None

    def stored_examples(self) -> list[str]:
        """Ids of the examples whose attention arrays are stored, in dataset order."""
        self._check()
        folder = self.path / ATTENTION
        if not folder.is_dir():
            return []
        ids = []
        for p in folder.glob("*.npz"):
            if p.name.startswith("~"):
                try:
                    with np.load(p, allow_pickle=False) as npz:
                        ids.append(str(npz["example_id"]))
                except Exception:
                    continue
            else:
                ids.append(p.name[: -len(".npz")])
        if not ids:
            return []
        order = self.examples(columns=["example_id", "index"])
        pos = dict(zip(order["example_id"], order["index"]))
        done = [i for i in ids if i in pos]  # arrays of an uncommitted batch are not shown
        return sorted(done, key=lambda i: pos[i])

    # -- reports --------------------------------------------------------------------------------
    @property
    def report_dir(self) -> Path:
        return self.path / "report"


def open_run(path: str | os.PathLike) -> Run:
    """Open a run folder (complete, or in progress: then the finished shards are read).

    Raises:
        RunFormatError: not a run folder, an unreadable or older-format manifest, or a complete
            run whose final tables are missing (the message names the files).
    """
    path = Path(path)
    if not path.is_dir():
        raise RunFormatError(f"{path}: no such run folder" if not path.exists() else f"{path}: not a folder")
    manifest = _read_manifest(path)
    run = Run(path, manifest)
    if manifest.get("status") == "complete":
        missing = [f"{t}.parquet" for t in TABLES if not (path / f"{t}.parquet").is_file()]
        if missing:
            raise RunFormatError(f"{path}: the manifest says complete but {', '.join(missing)} "
                                 f"{'is' if len(missing) == 1 else 'are'} missing; re-run analyze with --force")
    return run


def _looks_like_run(path: Path) -> bool:
    return any((path / n).exists() for n in (MANIFEST, SHARDS, "examples.parquet"))


def list_runs(runs_dir: str | os.PathLike, *, include_broken: bool = True) -> list[Run]:
    """The run folders directly inside ``runs_dir``, by name.

    Folders that are not runs (no manifest, shards or tables) are skipped. Broken runs (missing
    files, unreadable or older-format manifests) are returned as :class:`Run` objects whose
    ``error`` holds the :class:`RunFormatError` (``status == "broken"``; their accessors raise
    it), unless ``include_broken=False``. Symlinks that lead outside ``runs_dir`` are skipped.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    root_real = root.resolve()
    out = []
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue
        try:
            real = child.resolve()
        except OSError:
            continue
        if not real.is_dir() or (real != root_real and root_real not in real.parents):
            continue
        if not _looks_like_run(child):
            continue
        try:
            out.append(open_run(child))
        except RunFormatError as exc:
            if include_broken:
                out.append(Run(child, error=exc))
    return out


def resolve_run(runs_dir: str | os.PathLike, name: str) -> Path:
    """``runs_dir / name``, refusing names that leave ``runs_dir``.

    Refused (:class:`RunPathError`): empty names, absolute paths, ``..`` components, NUL bytes,
    and names whose resolved path (symlinks followed) is not inside ``runs_dir``. The path need
    not exist. Returns the resolved path.
    """
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise RunPathError(f"invalid run name {name!r}")
    if os.path.isabs(name) or name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name):
        raise RunPathError(f"run name {name!r} must be relative to the runs folder, not an absolute path")
    parts = re.split(r"[\\/]+", name)
    if any(p == ".." for p in parts):
        raise RunPathError(f"run name {name!r} may not contain '..'")
    root = Path(runs_dir).resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise RunPathError(f"run name {name!r} leads outside the runs folder {root} (to {target})")
    if target == root:
        raise RunPathError(f"run name {name!r} is the runs folder itself")
    return target

"""Run folders (docs/run-format.md): reading (:func:`open_run`, :class:`Run`) and atomic writing (:class:`RunWriter`).

Readers (the dashboard, ``report``, ``compare``) only use :func:`open_run` / :func:`list_runs` /
:func:`resolve_run` and the :class:`Run` accessors; they never open files of a run folder themselves.

>>> run = open_run("runs/rotten-tomatoes-dense")
>>> run.status, run.is_complete, run.n_done, run.n_examples
>>> run.examples()                      # one row per example
>>> run.tokens("rt-12")                 # long table: position, token, method, score
>>> run.attention(run.stored_examples()[0])["effective"].shape   # (L, H, n, n) float16

Writing protocol (what makes a run resumable after ``kill -9``):

* ``manifest.json`` is written first (atomically), with ``status: "running"``.
* one batch = one shard per table, named after the dataset position of its first example
  (``examples-00032.parquet``). Every file is written to a hidden temp name in the same folder,
  fsynced and ``os.replace()``d, so a file is either absent or complete (``ATTNEXPLAIN_FSYNC=0``
  skips the fsync: still safe against killed processes, not against power loss).
* the attention arrays of the batch's stored examples, then the ``tokens``, ``faithfulness`` and
  ``heads`` shards are written first; the ``examples`` shard is written **last** and is the
  batch's commit record: its Parquet metadata holds the row count of every other table of the
  batch and the ids whose arrays were stored. A batch without an examples shard is unfinished.
* on resume every committed batch is read back in full; a file that does not read, a row count
  that does not match, or a missing companion file marks the batch corrupt: its files are
  deleted (with a message) and its examples are done again. Leftover temp files are removed.
* when all examples are done the shards are merged (streamed, one shard in memory at a time)
  into the final tables, each example exactly once, in dataset order; then the manifest says
  ``status: "complete"`` and the shards are removed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "TABLES",
    "COMPAT_KEYS",
    "Run",
    "RunWriter",
    "RunFormatError",
    "RunMismatchError",
    "RunLockedError",
    "RunPathError",
    "open_run",
    "list_runs",
    "resolve_run",
    "table_schema",
    "attention_filename",
    "manifest_difference",
    "merge_runs",
]

FORMAT_VERSION = 1
TABLES = ("examples", "tokens", "faithfulness", "heads")
MANIFEST = "manifest.json"
SHARDS = "shards"
ATTENTION = "attention"
_META_KEY = b"attnexplain"

#: manifest fields that must be equal to resume into (or merge) a run folder
COMPAT_KEYS = (
    "model", "task", "dataset", "split", "limit", "shard", "backend", "backend_options", "methods",
    "faithfulness", "head_ablation", "label_map", "max_length", "store_attention", "seed",
    "text_column", "label_column", "text_pair_column",
)
_REQUIRED_MANIFEST = ("format_version", "model", "dataset", "methods", "status")


class RunFormatError(ValueError):
    """A folder is not a readable run folder of this format version (the message says why)."""


class RunMismatchError(ValueError):
    """A run folder holds a different run than the one asked for (the message names the difference)."""


class RunLockedError(RuntimeError):
    """Another process is writing this run folder."""


class RunPathError(ValueError):
    """A run name that would leave the runs folder (``..``, an absolute path, a symlink out)."""


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# schemas
# --------------------------------------------------------------------------------------------


def table_schema(table: str, methods: Iterable[str] = ()):
    """The pyarrow schema of ``table`` (``examples`` depends on the methods of the run)."""
    import pyarrow as pa

    if table == "examples":
        fields = [
            ("example_id", pa.string()), ("index", pa.int64()), ("text", pa.string()), ("label", pa.int64()),
            ("label_name", pa.string()), ("pred", pa.int64()), ("pred_label", pa.string()),
            ("probs", pa.list_(pa.float32())), ("correct", pa.bool_()), ("n_tokens", pa.int32()),
            ("truncated", pa.bool_()),
        ]
        for m in methods:
            fields += [(f"comp_aopc__{m}", pa.float32()), (f"suff_aopc__{m}", pa.float32())]
        return pa.schema(fields)
    if table == "tokens":
        return pa.schema([("example_id", pa.string()), ("position", pa.int32()), ("token", pa.string()),
                          ("method", pa.string()), ("score", pa.float32())])
    if table == "faithfulness":
        return pa.schema([("example_id", pa.string()), ("method", pa.string()), ("metric", pa.string()),
                          ("k", pa.float32()), ("value", pa.float32())])
    if table == "heads":
        return pa.schema([("example_id", pa.string()), ("layer", pa.int32()), ("head", pa.int32()),
                          ("metric", pa.string()), ("value", pa.float32())])
    raise KeyError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")


def _to_table(data: Any, schema):
    """A pyarrow Table with exactly ``schema`` from a DataFrame, a dict of columns or a Table."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data.select(schema.names).cast(schema)
    if isinstance(data, Mapping):
        missing = [n for n in schema.names if n not in data]
        if missing:
            raise ValueError(f"missing columns {missing}")
        return pa.table({n: pa.array(_plain(data[n]), type=schema.field(n).type) for n in schema.names}, schema=schema)
    # pandas DataFrame
    return pa.Table.from_pandas(data[schema.names], schema=schema, preserve_index=False)


def _plain(col: Any) -> Any:
    if isinstance(col, np.ndarray) and col.dtype == np.float16:
        return col.astype(np.float32)
    return col


# --------------------------------------------------------------------------------------------
# file helpers
# --------------------------------------------------------------------------------------------


def _fsync_enabled() -> bool:
    """fsync protects against power loss / OS crashes (a killed process loses nothing either way);
    ``ATTNEXPLAIN_FSYNC=0`` turns it off (tests, throw-away runs)."""
    return os.environ.get("ATTNEXPLAIN_FSYNC", "1") != "0"


def _fsync_dir(path: Path) -> None:
    if not _fsync_enabled():
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def _atomic_write(final: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then fsync and ``os.replace(tmp, final)``: ``final`` is absent or complete."""
    tmp = _tmp_name(final)
    try:
        write(tmp)
        if _fsync_enabled():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_parquet(path: Path, table, metadata: dict | None = None) -> None:
    import pyarrow.parquet as pq

    if metadata is not None:
        meta = dict(table.schema.metadata or {})
        meta[_META_KEY] = json.dumps(metadata).encode()
        table = table.replace_schema_metadata(meta)
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")


def attention_filename(example_id: str) -> str:
    """File name of an example's arrays: the id itself when it is a safe file name, else a hash.

    Ids with path separators, leading dots, odd characters or more than 151 characters are stored
    as ``~<sha1 of the id>.npz`` (the id is also saved inside the file as ``example_id``).
    """
    example_id = str(example_id)
    if _SAFE_ID.match(example_id):
        return f"{example_id}.npz"
    return f"~{hashlib.sha1(example_id.encode()).hexdigest()}.npz"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# manifest comparison
# --------------------------------------------------------------------------------------------


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def manifest_difference(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] = COMPAT_KEYS) -> list[str]:
    """Human-readable differences between two manifests on ``keys`` (empty when compatible)."""
    out = []
    for k in keys:
        a, b = _norm(old.get(k)), _norm(new.get(k))
        if a != b:
            out.append(f"{k}: {a!r} (in the folder) vs {b!r} (asked for)")
    return out


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise RunFormatError(f"{path}: not a run folder (no {MANIFEST}); write one with `attnexplain analyze --out {path}`")
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


def _empty_frame(table: str, methods: Iterable[str]):
    return table_schema(table, methods).empty_table().to_pandas()


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
        schema = table_schema(table, self.methods)
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

    def tokens(self, example_id: str | None = None, method: str | None = None):
        """Long table ``example_id, position, token, method, score`` (optionally one example / method)."""
        return self._read("tokens", example_id, method=method)

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


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


class RunWriter:
    """Writes one run folder, batch by batch, so that it can be resumed after any interruption.

    >>> w = RunWriter("runs/x", manifest, force=False).open()   # checks / resumes / creates
    >>> todo = [i for i in positions if i not in w.done_positions]
    >>> w.write_batch(start, {"examples": ..., "tokens": ..., "faithfulness": ..., "heads": ...},
    ...               attention={"ex-1": {"raw": ..., ...}})
    >>> run = w.finalize()

    ``manifest`` needs at least ``model``, ``dataset`` and ``methods``; the writer adds
    ``format_version``, ``attnexplain_version``, ``created``, ``status`` and keeps a list of
    ``resumed`` times. An existing folder holding a different run (any of :data:`COMPAT_KEYS`
    differs) raises :class:`RunMismatchError` naming the differences, unless ``force`` (which
    deletes the folder's contents first).
    """

    def __init__(self, path: str | os.PathLike, manifest: Mapping[str, Any], *, force: bool = False,
                 log: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.manifest = dict(manifest)
        self.force = force
        self.log = log or _log_stderr
        self.done_ids: set[str] = set()
        self.done_positions: set[int] = set()
        self.resumed = False
        self.redone: list[int] = []
        self._lock_fh = None

    # -- opening --------------------------------------------------------------------------------
    def open(self) -> "RunWriter":
        from .. import __version__

        path = self.path
        if path.exists() and not path.is_dir():
            raise RunMismatchError(f"--out {path} is a file, not a folder")
        previous: dict | None = None
        if path.is_dir() and any(p.name != ".lock" for p in path.iterdir()):
            if (path / MANIFEST).is_file():
                try:
                    previous = _read_manifest(path)
                except RunFormatError as exc:
                    if not self.force:
                        raise RunMismatchError(f"{exc}. Use --force to replace it.") from None
                    self._acquire_lock()
                    self._clear()
                    previous = None
                if previous is not None:
                    diff = manifest_difference(previous, self.manifest)
                    if diff and not self.force:
                        raise RunMismatchError(
                            f"{path} holds a different run: " + "; ".join(diff) +
                            ". Choose another --out, or pass --force to delete it and start over."
                        )
                    if diff or self.force:
                        self._acquire_lock()
                        self._clear()
                        previous = None
            elif _looks_like_run(path) and self.force:
                self._acquire_lock()
                self._clear()
            else:
                raise RunMismatchError(
                    f"{path} is not empty and is not a run folder (no {MANIFEST}); choose another --out "
                    f"(attnexplain never deletes a folder it did not write)"
                )
        path.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        (path / SHARDS).mkdir(exist_ok=True)
        (path / ATTENTION).mkdir(exist_ok=True)
        manifest = dict(self.manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest.setdefault("attnexplain_version", __version__)
        if previous is not None:
            self.resumed = True
            manifest["created"] = previous.get("created", _now())
            manifest["resumed"] = list(previous.get("resumed") or []) + [_now()]
            if previous.get("status") == "complete" and all((path / f"{t}.parquet").is_file() for t in TABLES):
                # nothing to do; keep the finished run untouched
                self.manifest = previous
                self._load_done_from_final()
                return self
        else:
            manifest["created"] = _now()
        manifest["status"] = "running"
        self.manifest = manifest
        _write_json(path / MANIFEST, manifest)
        _fsync_dir(path)
        if self.resumed:
            self._scan_shards()
        return self

    def _acquire_lock(self) -> None:
        if self._lock_fh is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise RunLockedError(f"another process is writing {self.path}; wait for it or stop it first") from None
        self._lock_fh = fh

    def close(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> "RunWriter":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _clear(self) -> None:
        self.log(f"[analyze] --force: deleting the previous run in {self.path}")
        for child in self.path.iterdir():
            if child.name == ".lock":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    @property
    def is_complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    def _load_done_from_final(self) -> None:
        import pyarrow.parquet as pq

        t = pq.read_table(self.path / "examples.parquet", columns=["example_id", "index"])
        self.done_ids = set(t.column("example_id").to_pylist())
        self.done_positions = set(t.column("index").to_pylist())

    def _scan_shards(self) -> None:
        """Validate every committed batch; delete corrupt ones and temp files; fill done sets."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = self.path / SHARDS
        for p in list(folder.iterdir()) + list((self.path / ATTENTION).iterdir()):
            if p.name.startswith(".") and ".tmp-" in p.name:
                p.unlink(missing_ok=True)
        methods = self.manifest.get("methods") or []
        committed = set(_committed_starts(self.path))
        # files of batches that never committed: left over from the interruption, redone anyway
        for p in folder.iterdir():
            for table in TABLES[1:]:
                s = _shard_start(p.name, table)
                if s is not None and s not in committed:
                    p.unlink(missing_ok=True)
        for start in sorted(committed):
            problem = None
            ids: list[str] = []
            positions: list[int] = []
            stored: list[str] = []
            epath = _shard_path(self.path, "examples", start)
            try:
                et = pq.read_table(epath)
                meta = _shard_meta(et)
                if et.schema.remove_metadata() != table_schema("examples", methods):
                    problem = f"{epath.name} has an unexpected schema"
                elif "rows" not in meta:
                    problem = f"{epath.name} lacks its batch record"
                else:
                    ids = et.column("example_id").to_pylist()
                    positions = et.column("index").to_pylist()
                    stored = list(meta.get("attention") or [])
                    if meta["rows"].get("examples") != et.num_rows:
                        problem = f"{epath.name} has {et.num_rows} rows, its record says {meta['rows'].get('examples')}"
                    for table in TABLES[1:]:
                        if problem:
                            break
                        tp = _shard_path(self.path, table, start)
                        if not tp.is_file():
                            problem = f"{tp.name} is missing"
                            break
                        try:
                            n = pq.read_table(tp).num_rows
                        except (OSError, pa.ArrowException) as exc:
                            problem = f"{tp.name} cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
                            break
                        if n != meta["rows"].get(table):
                            problem = f"{tp.name} has {n} rows, expected {meta['rows'].get(table)}"
                    for eid in stored:
                        if problem:
                            break
                        ap = self.path / ATTENTION / attention_filename(eid)
                        if not ap.is_file():
                            problem = f"attention/{ap.name} is missing"
            except (OSError, pa.ArrowException) as exc:
                problem = f"{epath.name} cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
            if problem is None and (self.done_ids.intersection(ids)):
                problem = f"{epath.name} repeats examples of another shard"
            if problem is not None:
                self.log(f"[analyze] corrupt shard: {problem}; deleting batch {start} and redoing it")
                self._delete_batch(start, stored)
                self.redone.append(start)
                continue
            self.done_ids.update(ids)
            self.done_positions.update(int(p) for p in positions)

    def _delete_batch(self, start: int, stored: Iterable[str] = ()) -> None:
        for table in TABLES:
            _shard_path(self.path, table, start).unlink(missing_ok=True)
        for eid in stored:
            (self.path / ATTENTION / attention_filename(eid)).unlink(missing_ok=True)

    # -- writing ----------------------------------------------------------------------------------
    def write_batch(self, start: int, tables: Mapping[str, Any],
                    attention: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> None:
        """Write one finished batch (``start``: dataset position of its first example).

        ``tables`` maps each of :data:`TABLES` to a DataFrame / dict of columns / pyarrow Table
        in the table's schema. ``attention`` maps example ids to their arrays (saved with
        ``np.savez_compressed``). The examples shard is written last (the commit record).
        """
        if self.is_complete:
            raise RuntimeError(f"{self.path} is complete; nothing more can be written")
        methods = self.manifest.get("methods") or []
        built = {t: _to_table(tables[t], table_schema(t, methods)) for t in TABLES}
        ids = built["examples"].column("example_id").to_pylist()
        dup = self.done_ids.intersection(ids)
        if dup:
            raise ValueError(f"examples already written: {sorted(dup)[:5]}")
        stored = []
        for eid, arrays in (attention or {}).items():
            final = self.path / ATTENTION / attention_filename(eid)
            payload = {k: np.asarray(v) for k, v in arrays.items()}
            payload["example_id"] = np.asarray(str(eid))

            def _save(tmp: Path, payload=payload) -> None:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, **payload)

            _atomic_write(final, _save)
            stored.append(str(eid))
        for table in TABLES[1:]:
            _write_parquet(_shard_path(self.path, table, start), built[table])
        record = {"rows": {t: built[t].num_rows for t in TABLES}, "start": int(start), "attention": stored}
        _write_parquet(_shard_path(self.path, "examples", start), built["examples"], metadata=record)
        _fsync_dir(self.path / SHARDS)
        self.done_ids.update(ids)
        self.done_positions.update(int(i) for i in built["examples"].column("index").to_pylist())

    # -- finishing --------------------------------------------------------------------------------
    def finalize(self, *, extra: Mapping[str, Any] | None = None) -> Run:
        """Merge the shards into the final tables (streamed), mark the run complete, drop the shards."""
        if self.is_complete:
            return open_run(self.path)
        methods = self.manifest.get("methods") or []
        starts = _committed_starts(self.path)
        shard_files = {t: [_shard_path(self.path, t, s) for s in starts] for t in TABLES}
        merge_tables(shard_files, self.path, methods)
        manifest = dict(self.manifest)
        manifest.update(extra or {})
        manifest["status"] = "complete"
        manifest["n_done"] = len(self.done_ids)
        manifest["finished"] = _now()
        _write_json(self.path / MANIFEST, manifest)
        self.manifest = manifest
        shutil.rmtree(self.path / SHARDS, ignore_errors=True)
        _fsync_dir(self.path)
        return open_run(self.path)


def merge_tables(files: Mapping[str, list[Path]], out_dir: Path, methods: Iterable[str]) -> int:
    """Stream the per-table ``files`` (in order) into ``out_dir/<table>.parquet``; returns #examples.

    Raises ValueError when an example id appears twice.
    """
    import pyarrow.parquet as pq

    methods = list(methods)
    seen: set[str] = set()
    for table in TABLES:
        schema = table_schema(table, methods)
        final = Path(out_dir) / f"{table}.parquet"

        def _write(tmp: Path, table=table, schema=schema) -> None:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for f in files[table]:
                    t = pq.read_table(f).replace_schema_metadata(None).cast(schema)
                    if table == "examples":
                        ids = t.column("example_id").to_pylist()
                        dup = seen.intersection(ids)
                        if dup or len(set(ids)) != len(ids):
                            raise ValueError(f"example ids appear twice: {sorted(dup)[:5] or ids[:5]} ({f})")
                        seen.update(ids)
                    if t.num_rows:
                        writer.write_table(t)

        _atomic_write(final, _write)
    return len(seen)


# --------------------------------------------------------------------------------------------
# merging shard runs
# --------------------------------------------------------------------------------------------


def merge_runs(paths: Iterable[str | os.PathLike], out: str | os.PathLike, *, force: bool = False,
               log: Callable[[str], None] | None = None) -> Run:
    """Merge complete runs of disjoint parts of one data set (``analyze --shard i/n``) into ``out``.

    The runs must agree on every :data:`COMPAT_KEYS` field except ``shard`` (else
    :class:`RunMismatchError` naming the difference) and share no example (else ``ValueError``).
    Tables are streamed in dataset order; attention arrays are copied. ``out`` must not exist or
    be empty, or hold a run and ``force`` be given.
    """
    log = log or _log_stderr
    runs = [open_run(p) for p in paths]
    if not runs:
        raise ValueError("give at least one run to merge")
    for r in runs:
        if not r.is_complete:
            raise RunMismatchError(f"{r.path} is not complete ({r.status}, {r.n_done} of {r.n_examples} examples); "
                                   f"finish it first (run the same analyze command again)")
    keys = [k for k in COMPAT_KEYS if k != "shard"]
    for r in runs[1:]:
        diff = manifest_difference(runs[0].manifest, r.manifest, keys)
        if diff:
            raise RunMismatchError(f"{r.path} and {runs[0].path} are not parts of the same run: "
                                   + "; ".join(d.replace("(in the folder)", f"({runs[0].name})").replace("(asked for)", f"({r.name})")
                                               for d in diff))
    out = Path(out)
    out_real = out.resolve()
    if any(r.path.resolve() == out_real for r in runs):
        raise ValueError(f"--out {out} is one of the runs being merged")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if force and _looks_like_run(out):
            shutil.rmtree(out)
        else:
            raise RunMismatchError(f"--out {out} already exists and is not empty"
                                   + ("; pass --force to replace it" if _looks_like_run(out) else ""))
    out.mkdir(parents=True, exist_ok=True)

    import pyarrow.parquet as pq

    def first_index(r: Run) -> int:
        t = pq.read_table(r.path / "examples.parquet", columns=["index"]).column("index")
        return min(t.to_pylist()) if t.length() else 0

    runs.sort(key=first_index)
    methods = runs[0].methods
    n = merge_tables({t: [r.path / f"{t}.parquet" for r in runs] for t in TABLES}, out, methods)
    (out / ATTENTION).mkdir(exist_ok=True)
    for r in runs:
        src = r.path / ATTENTION
        if src.is_dir():
            for f in src.glob("*.npz"):
                dst = out / ATTENTION / f.name
                _atomic_write(dst, lambda tmp, f=f: shutil.copyfile(f, tmp))
    shards = [r.manifest.get("shard") for r in runs]
    manifest = dict(runs[0].manifest)
    manifest.update({
        "shard": None, "status": "complete", "n_examples": n, "n_done": n, "created": _now(), "finished": _now(),
        "merged_from": [{"path": str(r.path), "shard": r.manifest.get("shard"), "n_examples": r.n_done} for r in runs],
        "command": list(sys.argv),
    })
    manifest.pop("resumed", None)
    _write_json(out / MANIFEST, manifest)
    total = {s.split("/")[1] for s in shards if s}
    if len(total) == 1:
        want = int(next(iter(total)))
        if len(set(shards)) < want:
            log(f"[merge] note: merged {len(set(shards))} of {want} shards ({', '.join(s for s in shards if s)})")
    return open_run(out)

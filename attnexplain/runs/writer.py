"""Writing run folders atomically and resumably (:class:`RunWriter`), and streaming shards into final tables.

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
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .schema import (
    ATTENTION,
    FORMAT_VERSION,
    MANIFEST,
    RunFormatError,
    RunLockedError,
    RunMismatchError,
    SHARDS,
    TABLES,
    _to_table,
    attention_filename,
    manifest_difference,
    table_schema,
)
from .atomic_io import _atomic_write, _fsync_dir, _log_stderr, _now, _write_json, _write_parquet, fault_point, remove_stale_temps
from .reader import (
    Run,
    _committed_starts,
    _looks_like_run,
    _read_manifest,
    _shard_meta,
    _shard_path,
    _shard_start,
    open_run,
)


def _only_start_leftovers(path: Path) -> bool:
    """``path`` holds nothing, or only what a run killed before its first manifest write leaves
    (its lock, empty ``shards/`` and ``attention/`` folders, temp files): treated as empty."""
    import fnmatch

    from .atomic_io import TEMP_PATTERN

    for child in path.iterdir():
        if child.name == ".lock" or (fnmatch.fnmatch(child.name, TEMP_PATTERN) and child.is_file()):
            continue
        if child.name in (SHARDS, ATTENTION) and child.is_dir() and not child.is_symlink() and not any(child.iterdir()):
            continue
        return False
    return True


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
        self._made_folder = not path.exists()
        if path.exists() and not path.is_dir():
            raise RunMismatchError(f"--out {path} is a file, not a folder")
        previous: dict | None = None
        if path.is_dir() and not _only_start_leftovers(path):
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
        for p in remove_stale_temps(path):  # a killed writer's half-written temp files
            self.log(f"[analyze] removed {p.relative_to(path)} (left by an interrupted run)")
        shards_left = (path / SHARDS).is_dir()  # before this writer makes its own
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
                # nothing to do; keep the finished run, minus what a run killed after marking
                # itself complete left behind (its shards; any temp file)
                self.manifest = previous
                if (path / SHARDS).is_dir():
                    leftover = shards_left and any((path / SHARDS).iterdir())
                    shutil.rmtree(path / SHARDS, ignore_errors=True)
                    if leftover:  # not the empty folder this writer just made
                        self.log(f"[analyze] removed the leftover {SHARDS}/ of the finished run in {path}")
                _fsync_dir(path)
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
            if self.is_complete:  # a finished run folder keeps no empty .lock (removed while still held)
                with contextlib.suppress(OSError):
                    (self.path / ".lock").unlink()
            with contextlib.suppress(OSError):
                self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> "RunWriter":
        try:
            return self.open()
        except BaseException:  # e.g. the first manifest write found the disk full or read-only
            self._remove_if_empty()
            self.close()
            raise

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self._remove_if_empty()
        self.close()

    def _remove_if_empty(self) -> None:
        """A new run that failed before writing any result leaves nothing behind (not an empty
        run folder that a corrected rerun would need ``--force`` for)."""
        path = self.path
        if self.resumed or not path.is_dir() or self.manifest.get("status") != "running":
            return
        parts = [path / SHARDS, path / ATTENTION]
        if any(p.is_dir() and any(p.iterdir()) for p in parts):
            return
        if any(c.name not in {MANIFEST, SHARDS, ATTENTION, ".lock"} for c in path.iterdir()):
            return
        for p in parts:
            with contextlib.suppress(OSError):
                p.rmdir()
        with contextlib.suppress(OSError):
            (path / MANIFEST).unlink()
        with contextlib.suppress(OSError):
            (path / ".lock").unlink()
        if getattr(self, "_made_folder", False):
            with contextlib.suppress(OSError):
                path.rmdir()

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
                if et.schema.remove_metadata() != table_schema("examples", methods, self.manifest.get("task")):
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
        """See :meth:`_write_batch`; a full disk becomes a :class:`~attnexplain.errors.StorageError`
        saying what is kept and about how much more space the run needs."""
        try:
            self._write_batch(start, tables, attention)
        except OSError as exc:
            import errno

            if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
                raise
            from ..errors import StorageError, storage_error_message

            raise StorageError(exc.errno, f"{storage_error_message(exc)}. {self.space_needed_text()}",
                               exc.filename) from None

    def space_needed_text(self) -> str:
        """``"N examples are written; the other M need about X MB more ..."`` from the bytes per
        example written so far (shards and attention arrays, plus the final tables' copy)."""
        done = len(self.done_ids)
        total = int(self.manifest.get("n_examples") or 0)
        used = 0
        for folder in (self.path / SHARDS, self.path / ATTENTION):
            if folder.is_dir():
                used += sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        left = max(total - done, 0)
        if done and used:
            per = used / done
            # the final merge writes the tables once more before the shards are removed
            need = per * left + per * total
            return (f"{done} examples are written and kept; the remaining {left} need about {need / 1e6:.1f} MB "
                    f"more ({per / 1e3:.1f} kB per example so far, plus one copy of the tables for the final merge)")
        return f"{done} examples are written and kept; {left} remain"

    def _write_batch(self, start: int, tables: Mapping[str, Any],
                     attention: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> None:
        """Write one finished batch (``start``: dataset position of its first example).

        ``tables`` maps each of :data:`TABLES` to a DataFrame / dict of columns / pyarrow Table
        in the table's schema. ``attention`` maps example ids to their arrays (saved with
        ``np.savez_compressed``). The examples shard is written last (the commit record).
        """
        if self.is_complete:
            raise RuntimeError(f"{self.path} is complete; nothing more can be written")
        methods = self.manifest.get("methods") or []
        built = {t: _to_table(tables[t], table_schema(t, methods, self.manifest.get("task"))) for t in TABLES}
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
        merge_tables(shard_files, self.path, methods, self.manifest.get("task"))
        manifest = dict(self.manifest)
        manifest.update(extra or {})
        manifest["status"] = "complete"
        manifest["n_done"] = len(self.done_ids)
        manifest["finished"] = _now()
        _write_json(self.path / MANIFEST, manifest)
        self.manifest = manifest
        fault_point("finalize: remove shards")
        shutil.rmtree(self.path / SHARDS, ignore_errors=True)
        _fsync_dir(self.path)
        return open_run(self.path)


def merge_tables(files: Mapping[str, list[Path]], out_dir: Path, methods: Iterable[str], task: str | None = None) -> int:
    """Stream the per-table ``files`` (in order) into ``out_dir/<table>.parquet``; returns #examples.

    Raises ValueError when an example id appears twice.
    """
    import pyarrow.parquet as pq

    methods = list(methods)
    seen: set[str] = set()
    for table in TABLES:
        schema = table_schema(table, methods, task)
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

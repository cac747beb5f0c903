"""Atomic file writes for run folders: write to a hidden temp name in the same folder, fsync,
``os.replace()`` (``ATTNEXPLAIN_FSYNC=0`` skips the fsync: still safe against killed processes,
not against power loss)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


from .schema import _META_KEY


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


#: temp files of :func:`_atomic_write` (``.<name>.tmp-<pid>``): what a killed process leaves behind
TEMP_PATTERN = ".*.tmp-*"

_FAULT_COUNT = 0


def fault_point(what: str = "write") -> None:
    """Fault injection for crash tests: with ``ATTNEXPLAIN_FAULT_KILL_AT=N`` in the environment the
    process SIGKILLs itself at the N-th fault point (1-based; every atomic write is one, after its
    temp file is written and before it is renamed, and so is each step of a run's final phase).
    ``ATTNEXPLAIN_FAULT_LOG=PATH`` appends ``<n> <what>`` per point (to count them). Off by default."""
    global _FAULT_COUNT
    at, log = os.environ.get("ATTNEXPLAIN_FAULT_KILL_AT"), os.environ.get("ATTNEXPLAIN_FAULT_LOG")
    if not at and not log:
        return
    _FAULT_COUNT += 1
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{_FAULT_COUNT} {what}\n")
    if at and _FAULT_COUNT == int(at):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers from an earlier, failed attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files (``.*.tmp-<pid>``) that killed writers left in ``folder`` and its
    subfolders -- those whose process no longer runs; returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.rglob(TEMP_PATTERN):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        if p.is_file() or p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def _atomic_write(final: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then fsync and ``os.replace(tmp, final)``: ``final`` is absent or complete."""
    tmp = _tmp_name(final)
    try:
        write(tmp)
        if _fsync_enabled():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        fault_point(f"write {final.name}")
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (temp + fsync + rename)."""
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp + fsync + rename)."""
    _atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))

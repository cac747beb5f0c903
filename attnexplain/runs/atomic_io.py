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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

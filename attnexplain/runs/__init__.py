"""Run folders: batch analysis results on disk (docs/run-format.md), and the engines behind
``attnexplain analyze``, ``report``, ``compare`` and ``merge``.

Readers use :func:`open_run` / :func:`list_runs` / :func:`resolve_run` and :class:`Run`.
"""

from .merge import merge_runs
from .reader import Run, list_runs, open_run, resolve_run
from .schema import (
    COMPAT_KEYS,
    FORMAT_VERSION,
    TABLES,
    RunFormatError,
    RunLockedError,
    RunMismatchError,
    RunPathError,
    attention_filename,
    manifest_difference,
    table_schema,
)
from .writer import RunWriter

__all__ = [
    "COMPAT_KEYS", "FORMAT_VERSION", "TABLES", "Run", "RunFormatError", "RunLockedError", "RunMismatchError",
    "RunPathError", "RunWriter", "attention_filename", "list_runs", "manifest_difference", "merge_runs", "open_run",
    "resolve_run", "table_schema",
]

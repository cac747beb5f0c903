"""The errors attnexplain raises on purpose, under one base class.

Every exception class of the package derives from :class:`AttnExplainError` *and* keeps its
older built-in base (``class DatasetError(AttnExplainError, ValueError)``), so both
``except AttnExplainError`` and the older ``except ValueError`` / ``except KeyError`` catch it.
The command line catches :class:`AttnExplainError` once: it prints ``error: <message>`` on stderr
and exits with status 2, without a traceback (``ATTNEXPLAIN_DEBUG=1`` shows it).

A leaf module: it imports nothing from the package, so any module can import it.
"""

from __future__ import annotations

__all__ = ["AttnExplainError", "UnknownNameError", "UnsupportedPatternError", "ArgumentError", "ArgumentTypeError",
           "StorageError", "storage_error_message"]


class AttnExplainError(Exception):
    """Base of every error attnexplain raises on purpose; the message says what is wrong and how to fix it."""


class UnknownNameError(AttnExplainError, KeyError, ValueError):
    """A name that is not in one of attnexplain's name tables (a :class:`~attnexplain._registry.Registry`:
    backends, methods, interventions, data sets, ...); the message lists the known names. Also a
    ``KeyError`` and a ``ValueError``, the two types unknown names raised before (``str()`` gives the
    plain message, not KeyError's quoted repr)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsupportedPatternError(AttnExplainError, NotImplementedError):
    """An attention backend asked for an attention pattern its mechanism cannot compute (e.g.
    Nystrom landmarks in causal attention); the message names the pattern and backends that can.
    Also a ``NotImplementedError``, the type such refusals raised before."""


class ArgumentError(AttnExplainError, ValueError):
    """An argument of a public function (or the CLI option of the same name) outside its valid
    range or of the wrong kind; the message names the argument, its valid range and the value
    given. Also a ``ValueError``, what such arguments raised (or should have raised) before."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong kind (e.g. a string where a number is needed); also a ``TypeError``."""


class StorageError(AttnExplainError, OSError):
    """Writing failed for a reason the user can fix (no space left, read-only file system, no
    permission); the message names the path, the cause, what was kept and what to do."""

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


#: errno values that are the user's to fix (disk full, quota, read-only mount, permissions)
_STORAGE_ERRNOS = {"ENOSPC": "no space left on the device", "EDQUOT": "disk quota exceeded",
                   "EROFS": "the file system is read-only", "EACCES": "permission denied",
                   "EPERM": "operation not permitted"}


def storage_error_message(exc: BaseException) -> str | None:
    """A one-line message (problem and fix) for an ``OSError`` the user can fix, else None."""
    import errno as _errno
    import os as _os
    import shutil as _shutil

    if not isinstance(exc, OSError) or isinstance(exc, AttnExplainError):
        return None
    name = _errno.errorcode.get(exc.errno or -1, "")
    if name in ("ENOENT", "ENOTDIR") and exc.filename is not None:
        # a path that cannot exist (a missing input file, an --out inside /proc or under a file)
        return (f"no such file or directory: {exc.filename}; check the path (an output folder such as --out "
                "must lie in a folder where new folders can be made: choose another place)")
    if name not in _STORAGE_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else "(unknown path)"
    msg = f"{_STORAGE_ERRNOS[name]} writing {where}"
    if name in ("ENOSPC", "EDQUOT"):
        folder = _os.path.dirname(_os.path.abspath(str(where))) if exc.filename is not None else "."
        while folder and not _os.path.isdir(folder):
            folder = _os.path.dirname(folder)
        try:
            free = _shutil.disk_usage(folder or ".").free
            msg += f" ({free / 1e6:.1f} MB free there)"
        except OSError:
            pass
        msg += ("; free some space or write elsewhere (--out), then run the same command again: what was "
                "already written is kept")
    elif name == "EROFS":
        msg += "; choose a writable place with --out (or -o)"
    else:
        msg += "; choose a folder you can write to with --out (or -o), or fix its permissions"
    return msg

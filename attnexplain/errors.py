"""The errors attnexplain raises on purpose, under one base class.

Every exception class of the package derives from :class:`AttnExplainError` *and* keeps its
older built-in base (``class DatasetError(AttnExplainError, ValueError)``), so both
``except AttnExplainError`` and the older ``except ValueError`` / ``except KeyError`` catch it.
The command line catches :class:`AttnExplainError` once: it prints ``error: <message>`` on stderr
and exits with status 2, without a traceback (``ATTNEXPLAIN_DEBUG=1`` shows it).

A leaf module: it imports nothing from the package, so any module can import it.
"""

from __future__ import annotations

__all__ = ["AttnExplainError", "UnknownNameError", "UnsupportedPatternError"]


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

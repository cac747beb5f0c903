"""The one name-table type of attnexplain: attention backends, explanation methods, intervention
kinds, trained attention mechanisms, model aliases, built-in and synthetic data sets, data-set
loaders, fine-tuning recipes and architecture adapter rules are each a :class:`Registry`.

A :class:`Registry` is a ``dict`` name -> entry (a class, a builder function or a spec; so
``BACKENDS[name]``, ``name in KINDS`` and ``sorted(METHODS)`` keep working). Looking up an unknown
name with ``REGISTRY[name]`` raises :class:`~attnexplain.errors.UnknownNameError` (an
``AttnExplainError`` that is also a ``KeyError`` and a ``ValueError``, for the callers that caught
those) whose message lists the known names. Classes join with the :meth:`Registry.register`
decorator (keyed by their ``name`` attribute).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import UnknownNameError


class Registry(dict):
    """Entries found by name; ``kind`` names them in error messages (``"unknown {kind} 'x'; available: ..."``)."""

    def __init__(self, kind: str, entries: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        super().__init__(entries)
        self.kind = kind

    def __missing__(self, name: Any) -> Any:
        raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")

    def register(self, entry: Any = None, *, name: str | None = None) -> Any:
        """Add ``entry`` under ``name`` (default its ``name`` attribute); usable as a class decorator.

        Refuses empty names and a second, different entry under a taken name.
        """
        if entry is None:
            return lambda e: self.register(e, name=name)
        key = name if name is not None else getattr(entry, "name", None)
        if not key:
            raise ValueError(f"{getattr(entry, '__name__', entry)!r} needs a non-empty `name`")
        if key in self and self[key] is not entry:
            raise ValueError(f"an {self.kind} named {key!r} is already registered")
        self[key] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self)

    def build(self, name: str, **options: Any) -> Any:
        """An instance of the class registered as ``name`` (:class:`UnknownNameError` listing the known names)."""
        return self[name](**options)

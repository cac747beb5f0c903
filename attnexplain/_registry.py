"""The one registry mechanism behind attention backends and explanation methods.

A :class:`Registry` is a ``dict`` name -> class (so ``BACKENDS[name]`` and ``sorted(METHODS)``
keep working), filled by a class decorator and read by name.
"""

from __future__ import annotations

from typing import Any


class Registry(dict):
    """Classes found by their ``name`` attribute; ``kind`` names them in error messages."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, cls: type) -> type:
        """Class decorator: add ``cls`` under ``cls.name`` (refuses empty and clashing names)."""
        if not cls.name:
            raise ValueError(f"{cls.__name__} needs a non-empty `name`")
        if cls.name in self and self[cls.name] is not cls:
            raise ValueError(f"an {self.kind} named {cls.name!r} is already registered")
        self[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self)

    def build(self, name: str, **options: Any) -> Any:
        """An instance of the class registered as ``name`` (KeyError listing the known names)."""
        try:
            cls = self[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None
        return cls(**options)

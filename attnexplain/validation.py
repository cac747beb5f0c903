"""Argument checks at the public boundary (API and CLI alike): each raises
:class:`~attnexplain.errors.ArgumentError` naming the argument, its valid range and the value
given, before any work is done, instead of a silent coercion or an error deep inside torch.

A leaf module (imports only :mod:`attnexplain.errors`, numpy and torch lazily).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import ArgumentError

__all__ = [
    "check_int",
    "check_float",
    "check_texts",
    "check_indices",
    "check_targets",
    "check_float_dtype",
    "check_token_ids",
]


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    try:  # 0-d integer tensors / numpy scalars
        import numpy as np

        return isinstance(value, np.integer) or (hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0
                                                 and "int" in str(value.dtype))
    except ImportError:  # pragma: no cover
        return False


def _range_text(low: float | None, high: float | None, *, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"<= {high:g}"
    return "any value"


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> int | None:
    """``value`` as an int in ``[low, high]`` (None allowed when ``allow_none``); else ArgumentError."""
    if value is None and allow_none:
        return None
    rng = _range_text(low, high)
    if not _is_int(value):
        raise ArgumentError(f"{name} must be an integer {rng}, got {value!r} ({type(value).__name__})")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ArgumentError(f"{name} must be an integer {rng}, got {v}")
    return v


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a finite float in the range (``low_open``: ``> low``); else ArgumentError."""
    import math

    if value is None and allow_none:
        return None
    rng = _range_text(low, high, low_open=low_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name} must be a number {rng}, got {value!r} ({type(value).__name__})")
    v = float(value)
    bad = (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
           or (high is not None and v > high))
    if bad:
        raise ArgumentError(f"{name} must be a finite number {rng}, got {value!r}")
    return v


def check_texts(texts: Any, name: str = "texts") -> list[str]:
    """A text or a sequence of texts -> list of str. Bytes, numbers and other objects are refused
    (bytes: decode them first); an empty sequence too."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise ArgumentError(f"{name} must be str or a list of str, got bytes; decode it first, e.g. "
                            "data.decode('utf-8')")
    if not isinstance(texts, Iterable) or isinstance(texts, dict):
        raise ArgumentError(f"{name} must be str or a list of str, got {type(texts).__name__}")
    out = list(texts)
    if not out:
        raise ArgumentError(f"{name} is empty; give at least one text")
    for i, t in enumerate(out):
        if isinstance(t, (bytes, bytearray)):
            raise ArgumentError(f"{name}[{i}] is bytes, not str; decode it first, e.g. data.decode('utf-8')")
        if not isinstance(t, str):
            raise ArgumentError(f"{name}[{i}] is {type(t).__name__}, not str")
    return out


def check_indices(name: str, values: Any, n: int, *, what: str = "index") -> list[int] | None:
    """``values`` (None, an int or a sequence of ints) as a list of ints in ``0..n-1``."""
    if values is None:
        return None
    if _is_int(values):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ArgumentError(f"{name} must be a list of {what}es in 0..{n - 1}, got {values!r}")
    out = []
    for v in values:
        if not _is_int(v) or not 0 <= int(v) < n:
            raise ArgumentError(f"{name} must hold {what}es in 0..{n - 1} (this model has {n}), got {v!r}")
        out.append(int(v))
    if not out:
        raise ArgumentError(f"{name} is empty; give at least one {what} in 0..{n - 1}, or None for all")
    return out


def check_targets(target: Any, n_examples: int, n_classes: int | None = None, name: str = "target") -> list[int] | None:
    """Class indices, one per example: integers (0.5 is refused, not taken as class 0), as many as
    there are examples (no broadcasting), in ``0..n_classes-1`` when the number of classes is known."""
    if target is None:
        return None
    try:
        import torch

        if isinstance(target, torch.Tensor):
            if target.is_floating_point():
                raise ArgumentError(f"{name} must hold integer class indices, got a {target.dtype} tensor")
            target = target.reshape(-1).tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(target, "tolist") and not isinstance(target, (list, tuple)):
        target = target.tolist()
    if _is_int(target):
        target = [target]
    if isinstance(target, (str, bytes)) or not isinstance(target, Iterable):
        raise ArgumentError(f"{name} must be a list of class indices, one per example, got {target!r}")
    vals = list(target)
    if len(vals) != n_examples:
        raise ArgumentError(f"{name} has {len(vals)} entries but there are {n_examples} examples; "
                            "give one class index per example (or None for the predicted class)")
    rng = f"0..{n_classes - 1}" if n_classes else ">= 0"
    for i, v in enumerate(vals):
        if not _is_int(v):
            raise ArgumentError(f"{name}[{i}] must be an integer class index {rng}, got {v!r}")
        if int(v) < 0 or (n_classes is not None and int(v) >= n_classes):
            raise ArgumentError(f"{name}[{i}] must be a class index in {rng}, got {int(v)}")
    return [int(v) for v in vals]


def check_float_dtype(name: str, dtype: Any) -> None:
    """A floating torch dtype (attention weights in an integer dtype would all round to 0)."""
    import torch

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentError(f"{name} must be a floating torch dtype (torch.float32, torch.float16, torch.bfloat16), "
                            f"got {dtype!r}")


def check_token_ids(input_ids: Any, vocab_size: int | None, name: str = "input_ids") -> None:
    """Token ids in ``0..vocab_size-1`` (an id beyond the vocabulary fails deep inside the embedding)."""
    import torch

    if not isinstance(input_ids, torch.Tensor):
        return
    if input_ids.is_floating_point():
        raise ArgumentError(f"{name} must hold integer token ids, got a {input_ids.dtype} tensor")
    if input_ids.numel() == 0:
        raise ArgumentError(f"{name} is empty; give at least one token")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or (vocab_size is not None and hi >= vocab_size):
        top = f"{vocab_size - 1}" if vocab_size is not None else "the vocabulary size - 1"
        raise ArgumentError(f"{name} must hold token ids in 0..{top}, got ids from {lo} to {hi}")



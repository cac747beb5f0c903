"""The explanation-method interface and its registry (one verb, ``attribute``, over a class hierarchy).

Every method turns a batch into one importance score per real token of each example, for a
target class. Attention-derived methods read a :class:`~attnexplain.capturing.CaptureResult`
(captured once and shared by all of them); gradient and perturbation methods run the model.

Adding a method means adding one file in this package with a subclass decorated with
``@register_method``; ``attnexplain.methods`` imports every module in the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..models import LoadedModel
from .._registry import Registry


__all__ = [
    "Attribution",
    "ExplanationMethod",
    "register_method",
    "get_method",
    "available_methods",
    "METHODS",
    "rank_tokens",
]

#: the methods ``explain`` and ``compare_backends`` use when none are named (``analyze``'s longer
#: default list is :data:`attnexplain.runs.settings.DEFAULT_METHODS`)
DEFAULT_EXPLAIN_METHODS = ("raw_attention", "effective_attention")

METHODS = Registry("explanation method")  # name -> ExplanationMethod subclass


def rank_tokens(scores: np.ndarray) -> np.ndarray:
    """Token positions from most to least important.

    Ties are broken by position (earlier first): a stable sort of ``-scores``. NaN scores are
    refused (ValueError) rather than silently ranked.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per token), got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; cannot rank tokens")
    return np.argsort(-scores, kind="stable")


@dataclass
class Attribution:
    """Token importance for a batch, from one method.

    Attributes:
        method: registry name of the method.
        tokens: token strings per example (padding removed).
        scores: one float array per example, aligned with ``tokens`` (higher = more important).
        target: the class explained per example.
        extra: method-specific arrays (e.g. per-layer scores).
        positions: per example, the index among its real tokens of each entry of ``tokens`` /
            ``scores`` (all real tokens unless special tokens were left out; see
            :mod:`attnexplain.methods.special_tokens`); empty when not recorded.
    """

    method: str
    tokens: list[list[str]]
    scores: list[np.ndarray]
    target: list[int]
    extra: dict[str, Any] = field(default_factory=dict)
    positions: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores)

    def ranking(self, i: int) -> np.ndarray:
        """Positions of example ``i`` from most to least important (ties: earlier first)."""
        return rank_tokens(self.scores[i])

    def to_dataframe(self):
        import pandas as pd

        rows = []
        for i, (toks, sc) in enumerate(zip(self.tokens, self.scores)):
            for j, (t, s) in enumerate(zip(toks, sc)):
                rows.append((i, j, t, float(s)))
        return pd.DataFrame(rows, columns=["example", "position", "token", self.method])


class ExplanationMethod:
    """Base class of explanation methods.

    Subclasses set ``name`` (registry key), ``description`` and ``uses_capture`` (True when
    the method reads captured attention), and implement :meth:`attribute`. Options are
    constructor keyword arguments.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True: reads a CaptureResult (attention-derived); False: runs the model itself
    uses_capture: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"method {self.name!r} takes no options, got {sorted(options)}")

    def attribute(
        self,
        lm: LoadedModel,
        batch: dict[str, torch.Tensor],
        *,
        target: torch.Tensor,
        capture: Any | None = None,
    ) -> list[np.ndarray]:
        """Scores per real token for each example of ``batch`` (one array per example).

        Args:
            lm: the :class:`~attnexplain.models.LoadedModel`.
            batch: tokenized inputs (``input_ids``, ``attention_mask``...), right- or left-padded.
            target: (B,) class to explain per example.
            capture: the batch's CaptureResult (all layers and heads, values stored) when
                ``uses_capture``.
        """
        raise NotImplementedError

    def capture_needs(self, lm: LoadedModel) -> set:
        """What :meth:`attribute` reads from the capture it is given (so that a caller such as
        ``analyze`` captures only that): a set of ``"full"`` (every example's full matrices),
        ``"head_means"`` (the mean over heads per layer) and ``("rows", readout)`` (one readout
        row per example). Empty for methods that read no capture."""
        return {"full"} if self.uses_capture else set()

    def check_model(self, lm: LoadedModel) -> None:
        """Refuse, before any run, a model whose architecture this method does not cover: raises
        :class:`~attnexplain.capturing.UnsupportedArchitectureError` with the reason (e.g. the
        post-LN decompositions on pre-LN or RMSNorm models). Reads the model's modules only (no
        forward pass). The default accepts every model; ``analyze --methods all`` leaves out, with a
        warning, the methods that refuse the model (:func:`attnexplain.runs.settings.applicable_methods`)."""

    def options(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def register_method(cls: type[ExplanationMethod]) -> type[ExplanationMethod]:
    """Class decorator: add an explanation method to the registry under ``cls.name``."""
    return METHODS.register(cls)


def available_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str | ExplanationMethod, **options: Any) -> ExplanationMethod:
    """Build the method registered as ``name`` (KeyError listing the known ones otherwise)."""
    if isinstance(name, ExplanationMethod):
        return name
    return METHODS.build(name, **options)

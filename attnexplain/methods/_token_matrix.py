"""Shared base of the context-mixing methods: a token-to-token matrix per example, read at the
readout row(s).

Each method builds, per example and on its real tokens only, a matrix ``M`` (``n_i x n_i``)
whose row ``i`` scores every input token's contribution to position ``i`` (after the last
layer for rollout-style methods, a layer mean for per-layer ones), and reports ``M[r, :]`` for
the readout position ``r`` (``readout``: ``"auto"`` = ``"last"`` for causal models, else
``"cls"``; ``"cls"``, ``"last"``, ``"mean"`` over all rows, or an int position) -- the same
readout rule as the attention methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..models import LoadedModel
from .attention_methods import _check_readout, readout_rows, real_positions, resolve_readout
from .base import ExplanationMethod


__all__ = ["TokenMatrixMethod", "check_layers_option", "select_layer_positions"]


def check_layers_option(layers: Any) -> None:
    ok = layers in ("all", "last") or (isinstance(layers, (int, np.integer)) and not isinstance(layers, bool))
    if not ok and isinstance(layers, (list, tuple)) and layers:
        ok = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in layers)
    if not ok:
        raise ValueError(f"layers must be 'all', 'last', an int or a non-empty list of ints, got {layers!r}")


def select_layer_positions(layers: Any, L: int) -> list[int]:
    """Positions (0..L-1) picked by a ``layers`` option (negative ints count from the end)."""
    if layers == "all":
        return list(range(L))
    if layers == "last":
        return [L - 1]
    wanted = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    out = []
    for l in wanted:
        l = int(l)
        if not -L <= l < L:
            raise ValueError(f"layer {l} is out of range for a model with {L} layers")
        out.append(l % L)
    return out


@dataclass
class TokenMatrixMethod(ExplanationMethod):
    """Base: subclasses implement :meth:`token_matrices` (one ``(n_i, n_i)`` matrix per example)."""

    readout: str | int = "auto"

    uses_capture: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_readout(self.readout)

    def _resolve_readout(self, lm: LoadedModel) -> str | int:
        return resolve_readout(self.readout, lm, None)

    def token_matrices(self, lm: LoadedModel, batch: dict[str, torch.Tensor], target: torch.Tensor,
                       idxs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per example ``i``: ``(n_i, n_i)`` over its real tokens ``idxs[i]`` (positions in the batch)."""
        raise NotImplementedError

    def attribute(self, lm, batch, *, target, capture=None) -> list[np.ndarray]:
        if "input_ids" not in batch:
            raise ValueError(f"method {self.name!r} explains token inputs: the batch has no input_ids")
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        idxs = [real_positions(mask, i, ids.shape[1]) for i in range(ids.shape[0])]
        readout = self._resolve_readout(lm)
        target = torch.as_tensor(target).reshape(-1)
        mats = self.token_matrices(lm, batch, target, idxs)
        out = []
        for M in mats:
            rows = readout_rows(readout, M.shape[-1])
            out.append(M[rows].mean(0).detach().double().cpu().numpy())
        return out

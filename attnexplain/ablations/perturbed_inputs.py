"""The inputs and forwards behind ERASER faithfulness (:mod:`attnexplain.ablations.eraser`): ``k``
per bin, special and content tokens, rankings over content tokens, the perturbed inputs
(deleted or masked tokens), and their batched forward passes (length-sorted chunks,
first-token readout)."""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..models import LoadedModel
from ..metrics import ERASER_BINS

#: batch-invariant forwards (``batch_invariant=True``): an input of ``n`` tokens runs padded to
#: ``ceil(n / WIDTH_GRANULARITY) * WIDTH_GRANULARITY`` (at most the model's maximum length), beside
#: inputs of the same width only, in forwards of at least ``MIN_TOKENS_PER_FORWARD`` and at most
#: ``TOKENS_PER_FORWARD`` (padded) tokens. Kernel choice then no longer depends on the batch: the
#: matrix-product kernels measured switch blocking below about 400 rows x width, not above.
WIDTH_GRANULARITY = 4
MIN_TOKENS_PER_FORWARD = 512
TOKENS_PER_FORWARD = 4096


#: the bin roundings :func:`bin_sizes` offers
ROUNDINGS = ("ceil", "round", "ferret")


def bin_sizes(n: int, bins: Sequence[float] = ERASER_BINS, rounding: str = "ceil") -> list[int]:
    """Tokens per bin for a text of ``n`` content tokens: ``min(n, max(1, ceil(f * n)))``.

    ``rounding="round"`` uses ``floor(f * n + 0.5)`` (half up) instead of ``ceil``; both are
    clamped to [1, n]. ``rounding="ferret"`` reproduces ferret-xai: ``floor(f * n)``, and a 0 means
    the bin is skipped (not evaluated, not in the AOPC mean). ``n`` must be >= 1.
    """
    if n < 1:
        raise ValueError(f"a text needs at least one content token, got n = {n}")
    out = []
    for f in bins:
        if not (0.0 < float(f) <= 1.0):
            raise ValueError(f"bin fractions must be in (0, 1], got {f}")
        if rounding == "ceil":
            # tiny epsilon so that e.g. 0.1 * 30 = 3.0000000000000004 does not become 4
            k = math.ceil(f * n - 1e-9)
        elif rounding == "round":
            k = math.floor(f * n + 0.5)
        elif rounding == "ferret":  # ferret-xai: floor, and a bin of zero tokens is skipped
            out.append(min(n, math.floor(f * n + 1e-9)))
            continue
        else:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        out.append(min(n, max(1, k)))
    return out


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids never ranked or removed: the tokenizer's special tokens except ``[UNK]``.

    Uses ``tokenizer.all_special_ids`` (HF) plus the ``cls/sep/bos/eos/pad/mask`` id attributes
    (``cls_id`` / ``sep_id`` of :class:`attnexplain.testing.CharTokenizer`).
    """
    ids: set[int] = set()
    if tokenizer is None:
        return ids
    for i in getattr(tokenizer, "all_special_ids", None) or []:
        if isinstance(i, int):
            ids.add(i)
    for attr in ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
                 "mask_token_id", "cls_id", "sep_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            ids.add(v)
    unk = getattr(tokenizer, "unk_token_id", None)
    if isinstance(unk, int):
        ids.discard(unk)
    return ids


def content_positions(ids: Sequence[int], specials: set[int]) -> list[int]:
    """Indices (into ``ids``, the real tokens of one example) of the non-special tokens."""
    return [j for j, t in enumerate(ids) if t not in specials]


@dataclass
class _Example:
    ids: list[int]  # real tokens only (padding removed)
    type_ids: list[int] | None
    content: list[int]  # positions of content tokens in ids


def _examples_from_batch(lm: LoadedModel, batch: Mapping[str, torch.Tensor]) -> list[_Example]:
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    tt = batch.get("token_type_ids")
    specials = special_token_ids(lm.tokenizer)
    ids_l = ids.tolist()
    mask_l = mask.tolist() if mask is not None else [[1] * len(r) for r in ids_l]
    tt_l = tt.tolist() if tt is not None else None
    out = []
    for i, (row, m) in enumerate(zip(ids_l, mask_l)):
        keep = [j for j, v in enumerate(m) if v]
        real = [row[j] for j in keep]
        content = content_positions(real, specials)
        if not content:
            raise ValueError(f"example {i} has no content tokens (only special tokens: {real}); nothing to rank")
        out.append(_Example(real, [tt_l[i][j] for j in keep] if tt_l is not None else None, content))
    return out


def _content_ranking(ex: _Example, i: int, method: str, scores: Any = None, ranking: Any = None) -> np.ndarray:
    """Ranking of the content tokens (indices into ex.content), most important first."""
    from ..methods import rank_tokens

    n_real, n = len(ex.ids), len(ex.content)
    vals = np.asarray(scores if ranking is None else ranking)
    what = "scores" if ranking is None else "ranking entries"
    if vals.ndim != 1 or vals.size not in (n_real, n):
        raise ValueError(
            f"example {i}, method {method!r}: got {vals.size if vals.ndim == 1 else tuple(vals.shape)} {what}, "
            f"but the example has {n_real} real tokens ({n} without special tokens); give one per real token "
            f"(as explain_batch returns them) or one per non-special token"
        )
    per_real = vals.size == n_real and n_real != n
    if ranking is None:
        content_scores = vals[ex.content] if per_real else vals
        try:
            return rank_tokens(content_scores)
        except ValueError as exc:
            raise ValueError(f"example {i}, method {method!r}: {exc}") from None
    size = n_real if per_real else n
    r = vals.astype(np.int64)
    if sorted(r.tolist()) != list(range(size)):
        raise ValueError(f"example {i}, method {method!r}: a ranking must be a permutation of 0..{size - 1}")
    if not per_real:
        return r
    where = {p: c for c, p in enumerate(ex.content)}
    return np.asarray([where[p] for p in r.tolist() if p in where], dtype=np.int64)


def _build(ex: _Example, removed: frozenset[int], mode: str, replace_id: int | None) -> tuple[list[int], list[int] | None]:
    """The input with the content tokens at content-indices ``removed`` deleted or masked."""
    if not removed:
        return ex.ids, ex.type_ids
    gone = {ex.content[c] for c in removed}
    if mode == "delete":
        keep = [j for j in range(len(ex.ids)) if j not in gone]
        return [ex.ids[j] for j in keep], ([ex.type_ids[j] for j in keep] if ex.type_ids is not None else None)
    return [replace_id if j in gone else t for j, t in enumerate(ex.ids)], ex.type_ids


def _pad_id(tokenizer: Any) -> int:
    pid = getattr(tokenizer, "pad_token_id", None)
    return int(pid) if isinstance(pid, int) else 0


def _replace_id(tokenizer: Any) -> int:
    mid = getattr(tokenizer, "mask_token_id", None)
    return int(mid) if isinstance(mid, int) else _pad_id(tokenizer)


def _chunks(lengths: Sequence[int], max_batch: int, forward_cost_tokens: float) -> list[tuple[int, int]]:
    """Split sorted ``lengths`` into consecutive chunks [i, j) minimising the padded work.

    Cost of a chunk = ``forward_cost_tokens`` (the fixed cost of one forward pass, in tokens)
    + rows x width (its padded tokens); at most ``max_batch`` rows. Exact dynamic programme
    over the sorted lengths (O(N * max_batch), vectorised).
    """
    L = np.asarray(lengths, dtype=np.float64)
    N = L.size
    if not math.isfinite(forward_cost_tokens):
        return [(a, min(a + max_batch, N)) for a in range(0, N, max_batch)]
    best = np.zeros(N + 1)
    arg = np.zeros(N + 1, dtype=np.int64)
    for j in range(1, N + 1):
        lo = max(0, j - max_batch)
        i = np.arange(lo, j)
        cost = best[lo:j] + forward_cost_tokens + L[j - 1] * (j - i)
        k = int(np.argmin(cost))
        best[j], arg[j] = cost[k], lo + k
    out = []
    j = N
    while j > 0:
        out.append((int(arg[j]), j))
        j = int(arg[j])
    return out[::-1]


def _invariant_chunks(lengths: Sequence[int], max_batch: int, max_width: int | None = None,
                      granularity: int = WIDTH_GRANULARITY, min_tokens: int = MIN_TOKENS_PER_FORWARD,
                      max_tokens: int = TOKENS_PER_FORWARD) -> list[tuple[list[int], int, int]]:
    """Batch-invariant forwards: ``[(indices, width, rows)]`` with ``rows >= len(indices)``.

    Input ``j`` runs at width ``w_j = min(ceil(lengths[j] / granularity) * granularity, max_width)``
    (never below its length) -- a function of its own length -- beside inputs of the same width
    only; every forward has ``rows = max(len(indices), ceil(min_tokens / w))`` rows (at most
    ``max_batch``; the extra rows are filler) and at most ``max(ceil(min_tokens / w), max_tokens // w)``
    real ones (at most ``max_batch``).
    """
    if granularity < 1:
        raise ValueError(f"granularity must be >= 1, got {granularity}")
    groups: dict[int, list[int]] = {}
    for j, n in enumerate(lengths):
        w = -(-int(n) // granularity) * granularity
        if max_width is not None:
            w = min(w, max(int(max_width), int(n)))
        groups.setdefault(w, []).append(j)
    out = []
    for w in sorted(groups):
        idx = groups[w]
        rows_min = min(max_batch, max(1, -(-min_tokens // w)))
        per = min(max_batch, max(rows_min, max_tokens // w))
        for a in range(0, len(idx), per):
            part = idx[a : a + per]
            out.append((part, w, max(len(part), rows_min)))
    return out


def _forward_plan(lm: LoadedModel, lengths: list[int], max_batch: int, forward_cost_tokens: float,
                  batch_invariant: bool) -> list[tuple[list[int], int, int]]:
    """``[(indices, width, rows)]``: the forwards :func:`_forward_probs` runs."""
    if batch_invariant:
        max_width = getattr(lm, "max_length", None)
        return _invariant_chunks(lengths, max_batch, max_width if isinstance(max_width, int) and max_width > 0 else None)
    order = sorted(range(len(lengths)), key=lambda j: lengths[j])
    plan = []
    for a, b in _chunks([lengths[j] for j in order], max_batch, forward_cost_tokens):
        idx = order[a:b]
        plan.append((idx, max(lengths[j] for j in idx), len(idx)))
    return plan


#: models checked for ``first_token_readout``: model -> whether its cut forward matched the full one
_READOUT_CHECKED: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _readout_context(model: Any, run: Any) -> Any:
    """A factory of ``first_token_readout(model)`` contexts when supported and (checked once per
    model: ``run(context, float32=True)`` gives the first batch's probabilities) equal to the
    full forward; else a factory of null contexts."""
    from ..capturing import first_token_readout, first_token_readout_supported

    ok = _READOUT_CHECKED.get(model)
    if ok is None:
        if not first_token_readout_supported(model):
            ok = False
        else:  # in float32: the check is about the cut, not about bfloat16 rounding
            full = run(contextlib.nullcontext(), float32=True)
            cut = run(first_token_readout(model), float32=True)
            ok = bool(np.abs(full - cut).max() <= 1e-4)
            if not ok:
                warnings.warn(f"first_token_readout changed the probabilities of {type(model).__name__} by "
                              f"{np.abs(full - cut).max():.3g}; running its faithfulness forwards in full", stacklevel=3)
        try:
            _READOUT_CHECKED[model] = ok
        except TypeError:  # pragma: no cover - not weak-referenceable
            pass
    return (lambda: first_token_readout(model)) if ok else contextlib.nullcontext


def _forward_probs(lm: LoadedModel, seqs: list[tuple[list[int], list[int] | None]], max_batch: int,
                   forward_cost_tokens: float = 64.0, precision: str = "float32",
                   skip_unread: bool = True, batch_invariant: bool = True) -> tuple[np.ndarray, int]:
    """Class probabilities for each sequence (length-bucketed batches); returns (probs, forwards).
    ``precision="bfloat16"`` runs the model under ``torch.autocast`` to bfloat16; ``skip_unread``
    uses :func:`attnexplain.capturing.first_token_readout` where it applies; ``batch_invariant``
    chooses the forwards' shapes from each input alone (see :mod:`attnexplain.ablations.eraser`)."""
    tokenizer = lm.tokenizer
    pad = _pad_id(tokenizer)
    from ..capturing.positions import left_padding_supported

    left = getattr(tokenizer, "padding_side", "right") == "left" and left_padding_supported(lm.model)
    device = torch.device(lm.device if hasattr(lm, "device") else "cpu")
    out: np.ndarray | None = None
    forwards = 0
    make_ctx = None
    has_tt = any(s[1] is not None for s in seqs)
    for idx, width, rows in _forward_plan(lm, [len(s[0]) for s in seqs], max_batch, forward_cost_tokens, batch_invariant):
        ids = torch.full((rows, width), pad, dtype=torch.long)
        att = torch.zeros((rows, width), dtype=torch.long)
        tt = torch.zeros((rows, width), dtype=torch.long) if has_tt else None
        for r in range(rows):  # rows beyond len(idx): filler (copies of the first input), dropped below
            j = idx[r] if r < len(idx) else idx[0]
            s, t = seqs[j]
            sl = slice(width - len(s), width) if left else slice(0, len(s))
            ids[r, sl] = torch.as_tensor(s)
            att[r, sl] = 1
            if tt is not None and t is not None:
                tt[r, sl] = torch.as_tensor(t)
        kw = {"input_ids": ids.to(device), "attention_mask": att.to(device)}
        if tt is not None:
            kw["token_type_ids"] = tt.to(device)

        def run(ctx, kw=kw, float32=False):
            with torch.inference_mode(), ctx, torch.autocast(
                    device.type if device.type in ("cpu", "cuda") else "cpu", dtype=torch.bfloat16,
                    enabled=precision == "bfloat16" and not float32):
                res = lm.model(**kw)
            logits = res.logits if hasattr(res, "logits") else res[0]
            if logits.dim() != 2:
                raise ValueError(
                    f"faithfulness needs a classifier returning (batch, classes) logits, got shape {tuple(logits.shape)}"
                )
            return torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)

        if make_ctx is None:
            make_ctx = _readout_context(lm.model, run) if skip_unread else contextlib.nullcontext
        probs = run(make_ctx())[: len(idx)]
        if out is None:
            out = np.empty((len(seqs), probs.shape[1]), dtype=np.float64)
        out[idx] = probs
        forwards += 1
    assert out is not None
    return out, forwards


def _per_method(x: Any, default_name: str) -> dict[str, Sequence[Any]]:
    if x is None:
        return {}
    if isinstance(x, Mapping):
        return dict(x)
    return {default_name: x}

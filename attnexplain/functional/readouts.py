"""Read token importances out of attention-like matrices, and reduce over heads / layers.

For a classifier, the attention *row* of the position the prediction is read from tells how
much each key (input token) feeds it: [CLS] (position 0) for BERT-style encoders, the last real
token for decoder-only models, or the mean over all real query positions (mean pooling, as in
sentence-transformers). The same readout applies to raw, effective, norm-based attention,
rollout and flow (all ``(..., n, m)``).
"""

from __future__ import annotations

import torch

from ._validation import _broadcast, _check_finite, _check_key_mask, _check_tensor, _mask_cols

__all__ = ["token_importance", "aggregate"]

_READOUTS = ("cls", "last", "mean")
_AGGS = ("mean", "max", "sum", "norm")


def token_importance(
    A: torch.Tensor,
    *,
    readout: str | int = "cls",
    key_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Importance of every key for the prediction: a weighted sum of the rows of ``A``.

    Formula: ``score_j = sum_i w_i A_ij`` with ``w = e_0`` (``"cls"``), ``e_k`` (an int ``k``),
    ``e_last`` with ``last`` the last real query position (``"last"``), or
    ``w_i = q_i / sum(q)`` over the real query positions ``q`` (``"mean"``). The readouts follow
    common practice for attention-based token importance (e.g. Abnar & Zuidema, ACL 2020 read the
    [CLS] row of rollout/flow).

    Args:
        A: ``(..., n, m)`` attention-like matrix (raw, effective, norm-based, rollout, flow).
        readout: ``"cls"`` (row 0), ``"last"``, ``"mean"``, or a row index (negative allowed).
        key_mask: ``(..., m)`` bool, True = real key; masked columns of the result are 0. For
            self-attention (n == m) it also serves as the query mask of ``"last"``/``"mean"``.
        query_mask: ``(..., n)`` bool, True = real query (default: ``key_mask`` when n == m,
            else all rows real).

    Returns:
        ``(..., m)``.
    """
    _check_tensor(A, "A", 2, "(..., n, m)")
    n, m = A.shape[-2:]
    key_mask = _check_key_mask(key_mask, m)
    if query_mask is None and key_mask is not None and n == m and readout in ("last", "mean"):
        query_mask = key_mask
    query_mask = _check_key_mask(query_mask, n, "query_mask")
    shapes = {"A": A.shape[:-2]}
    if key_mask is not None:
        shapes["key_mask"] = key_mask.shape[:-1]
    if query_mask is not None:
        shapes["query_mask"] = query_mask.shape[:-1]
    _broadcast(shapes, "A (..., n, m), key_mask (..., m), query_mask (..., n)")
    A = _mask_cols(A, key_mask)
    _check_finite(A, "A")

    if isinstance(readout, bool) or not isinstance(readout, (int, str)):
        raise TypeError(f"readout must be one of {_READOUTS} or an int row index, got {readout!r}")
    if isinstance(readout, int):
        if not -n <= readout < n:
            raise ValueError(f"readout row {readout} out of range for n = {n} query rows")
        out = A[..., readout % n, :]
    elif readout == "cls":
        out = A[..., 0, :]
    elif readout == "last":
        if query_mask is None:
            out = A[..., n - 1, :]
        else:
            if not bool(query_mask.any(-1).all()):
                raise ValueError("readout='last': an example has no real query position (its mask is all False)")
            pos = torch.arange(n, device=query_mask.device)
            last = torch.where(query_mask, pos, -1).amax(-1)  # (...)
            w = (pos == last[..., None]).to(A.dtype)  # one-hot (..., n)
            out = (w[..., :, None] * A).sum(-2)
    elif readout == "mean":
        if query_mask is None:
            out = A.mean(-2)
        else:
            q = query_mask.to(A.dtype)
            cnt = q.sum(-1, keepdim=True)
            if bool((cnt == 0).any()):
                raise ValueError("readout='mean': an example has no real query position (its mask is all False)")
            out = ((q / cnt)[..., :, None] * A).sum(-2)
    else:
        raise ValueError(f"readout must be one of {_READOUTS} or an int row index, got {readout!r}")
    if key_mask is not None:
        out = torch.where(key_mask, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


def aggregate(scores: torch.Tensor, *, dims: int | tuple[int, ...], how: str = "mean") -> torch.Tensor:
    """Reduce scores over heads and/or layers (the chosen ``dims`` are removed).

    Choices (document which one a figure uses):

    * ``"mean"``: average contribution (the usual choice, e.g. rollout's head mean).
    * ``"max"``: the strongest head/layer (finds specialised heads; not additive).
    * ``"sum"``: total over heads; for per-head norm-based attention this upper-bounds the
      summed norm (triangle inequality: ``||sum_h x_h|| <= sum_h ||x_h||``).
    * ``"norm"``: L2 norm over ``dims`` (``sqrt(sum x^2)``), sign-free, for signed scores such as
      effective attention.

    Args:
        scores: any tensor, e.g. ``(L, B, H, m)``.
        dims: a dim or tuple of dims to reduce.
        how: ``"mean"``, ``"max"``, ``"sum"`` or ``"norm"``.
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if how not in _AGGS:
        raise ValueError(f"how must be one of {_AGGS}, got {how!r}")
    dims_t = (dims,) if isinstance(dims, int) else tuple(dims)
    if len(dims_t) == 0:
        raise ValueError("dims must name at least one dimension to reduce")
    nd = scores.ndim
    norm_dims = []
    for d in dims_t:
        if not -nd <= int(d) < nd:
            raise ValueError(f"dim {d} out of range for scores with {nd} dims (shape {tuple(scores.shape)})")
        norm_dims.append(int(d) % nd)
    if len(set(norm_dims)) != len(norm_dims):
        raise ValueError(f"dims {dims_t} repeat a dimension")
    if how == "mean":
        return scores.mean(dim=norm_dims)
    if how == "sum":
        return scores.sum(dim=norm_dims)
    if how == "max":
        return scores.amax(dim=norm_dims)
    return torch.linalg.vector_norm(scores, dim=norm_dims)

"""Attention flow (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

The layers form a directed acyclic graph: node ``(l, i)`` is position ``i`` after layer ``l``
(``l = 0``: the input tokens), and ``(l, i) -> (l - 1, j)`` has capacity ``A_aug(l)[i, j]``
(the residual-augmented attention of :func:`~attnexplain.functional.augmented_attention`).
The importance of input token ``j`` for output position ``i`` is the value of the maximum flow
from ``(L, i)`` to ``(0, j)``: one max-flow problem per (query, input token), as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import maximum_flow

from .rollout import augmented_attention

__all__ = ["attention_flow"]

_INT32_MAX = 2**31 - 1


def _resolve_queries(query, n: int) -> list[int]:
    if query is None:
        return list(range(n))
    if isinstance(query, int):
        query = [query]
    if isinstance(query, torch.Tensor):
        query = query.reshape(-1).tolist()
    if not isinstance(query, Sequence) or len(query) == 0:
        raise ValueError(f"query must be an int, a non-empty list of ints or None (all), got {query!r}")
    out = []
    for q in query:
        q = int(q)
        if not -n <= q < n:
            raise ValueError(f"query position {q} out of range for n = {n} tokens")
        out.append(q % n)
    return out


def _layered_graph(caps: np.ndarray) -> scipy.sparse.csr_array:
    """caps (L, n, n) int32 -> CSR adjacency over (L + 1) * n nodes, node (l, i) = l * n + i."""
    L, n, _ = caps.shape
    lay, i, j = np.nonzero(caps)
    src = (lay + 1) * n + i  # layer lay+1 (1-based output of layer lay) ...
    dst = lay * n + j  # ... flows into the positions of the layer below
    data = caps[lay, i, j].astype(np.int32)
    N = (L + 1) * n
    return scipy.sparse.csr_array((data, (src, dst)), shape=(N, N))


def attention_flow(
    attentions,
    *,
    query: int | Sequence[int] | torch.Tensor | None = 0,
    residual: float = 0.5,
    head_reduction: str = "mean",
    key_mask: torch.Tensor | None = None,
    scale: float = 1e6,
) -> torch.Tensor:
    """Attention flow (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

    Formula: capacities ``c((l, i) -> (l-1, j)) = A_aug(l)[i, j]`` with
    ``A_aug(l) = residual * I + (1 - residual) * mean_h A^h(l)`` (rows renormalised), and::

        flow[q, j] = maxflow( source = (L, q), sink = (0, j) )

    solved with ``scipy.sparse.csgraph.maximum_flow`` (Dinic) on integer capacities
    ``round(A_aug * scale)`` (int32), reported as ``flow / scale`` (absolute error <= about
    ``#edges in the min cut / (2 scale)``). One max-flow problem per (example, query, input token).

    Args:
        attentions: ``(L, ..., H, n, n)`` or a list of ``L`` tensors ``(..., H, n, n)``, layer 0 first.
        query: output position(s) ``i`` whose flow is computed: an int, a list, or None (all n).
        residual, head_reduction, key_mask: see :func:`~attnexplain.functional.augmented_attention`.
        scale: integer scaling of the capacities (``scale * max capacity`` must fit in int32).

    Returns:
        ``(..., len(queries), n)`` (float32, float64 for float64 input) on the input's device;
        ``[..., q, j]`` is the max flow from output position ``queries[q]`` to input token ``j``.
        Each value lies in [0, 1]; padded input tokens get 0 from real queries.

    Raises:
        ValueError: negative attention (capacities must be >= 0) or a scale overflowing int32.
    """
    for a in (attentions if isinstance(attentions, (list, tuple)) else [attentions]):
        if isinstance(a, torch.Tensor) and bool((a < 0).any()):
            raise ValueError(
                "attention_flow needs non-negative attention (edge capacities): attentions has a negative entry "
                f"({float(a.min()):.3g}); use attention_rollout for signed (e.g. Nystromformer) attention"
            )
    aug = augmented_attention(attentions, residual=residual, head_reduction=head_reduction, key_mask=key_mask)
    L, n = aug.shape[-3], aug.shape[-1]
    batch = aug.shape[:-3]
    if bool((aug < 0).any()):
        raise ValueError(
            "attention_flow needs non-negative attention (edge capacities); got a negative entry. "
            "Use attention_rollout for signed (e.g. Nystromformer) attention"
        )
    scale = float(scale)
    if not (scale > 0) or scale * (1 + 1e-6) * n > _INT32_MAX:
        raise ValueError(
            f"scale must be > 0 with scale * n <= 2^31 - 1 (int32 capacities for scipy), got scale={scale:g}, n={n}"
        )
    queries = _resolve_queries(query, n)
    caps_all = torch.round(aug.to(torch.float64) * scale).reshape(-1, L, n, n).cpu().numpy().astype(np.int32)
    out = np.zeros((caps_all.shape[0], len(queries), n), dtype=np.float64)
    for b in range(caps_all.shape[0]):
        G = _layered_graph(caps_all[b])
        for qi, q in enumerate(queries):
            source = L * n + q
            for j in range(n):
                out[b, qi, j] = maximum_flow(G, source, j).flow_value
    res = torch.from_numpy(out / scale).reshape(batch + (len(queries), n))
    return res.to(device=aug.device, dtype=aug.dtype)

"""Explaining the set decoder: which individuals does a query's group come from?

Capture goes through :func:`attnexplain.capture` (the decoder's attention modules are marked sites
that run the attention-backend registry), so the result is an ordinary
:class:`~attnexplain.CaptureResult`: ``decoder.<l>.cross`` (B, H, Q, N), ``decoder.<l>.self``
(B, H, Q, Q), ``encoder.<l>.self`` (B, H, N, N), with values and output projections for effective
attention.

**Scores of individual j for query q** (:data:`SCORE_METHODS`, :func:`method_scores`; every
map is averaged over heads; padding individuals score 0):

* ``cross_last``: raw cross-attention of the last decoder layer, ``mean_h A^h_{qj}``;
* ``cross_mean``: raw cross-attention averaged over the decoder layers;
* ``effective_last``: effective cross-attention of the last layer (Brunner et al. 2020),
  ``A U_r U_r^T`` with U_r the column space of the layer's value transforms
  (:meth:`~attnexplain.CaptureResult.effective_attention`); can be negative;
* ``rollout``: attention rollout across the decoder layers by the rules of Chefer et al. (ICCV
  2021, "Generic attention-model explainability ... encoder-decoder transformers") with the
  head-mean attention as ``Abar`` (no gradients): ``R^{xx}`` = rollout of the encoder
  self-attention, ``R^{qq} = I``, ``R^{qx} = 0``; per decoder layer ``R^{qq} += Abar_self R^{qq}``,
  ``R^{qx} += Abar_self R^{qx}`` (query self-attention), then
  ``R^{qx} += (Rbar^{qq})^T Abar_cross Rbar^{xx}`` (cross-attention)
  (:func:`attnexplain.functional.relevance.encoder_decoder_relevance`); :func:`query_rollout`;
* ``grad_rollout``: the same rules with Chefer et al.'s gradient-weighted maps
  ``Abar = E_h[(dy/dA (.) A)^+]``, y = the query's logit of its predicted activity ("no group"
  excluded), one backward pass per matched-query rank (the queries of different scenes are
  independent, so one pass serves the k-th matched query of every scene) (:func:`gradient_rollout`);
* ``random``: a seeded uniform random score (the baseline);
* ``member_probs``: the model's own membership probabilities (the output being explained, not an
  explanation: the ceiling the attention methods are read against).

**Membership recovery** (:func:`membership_auprc`): for every gold group and its Hungarian-matched
query (the training cost), the average precision (:func:`attnexplain.metrics.auprc`, the
``sklearn.metrics.average_precision_score`` formula) of the query's scores over the scene's
individuals against the gold members. A random ranking scores the share of members on average.

**Faithfulness** (:func:`membership_faithfulness`, ERASER after DeYoung et al. 2020): for a matched
query with predicted activity c (its most probable activity, "no group" excluded), m = the query's
probability of c. Remove the top-k % individuals of a method's ranking (k in {1, 5, 10, 20, 50}
%, ceil, at least one, at most all but one): comprehensiveness = m(full) - m(without them),
sufficiency = m(full) - m(only them). Removal masks the individuals out of every attention
(encoder and cross-attention) while the decoder starts from the initial queries of the full scene
(``SetDecoder.forward(initial_queries=...)``), so for input-conditioned queries the queries are
held fixed and only what the decoder reads changes. AOPC = mean over the bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..metrics import ERASER_BINS, auprc
from .model import SetDecoder
from .train import SceneBatch, collate, match_batch

__all__ = [
    "SCORE_METHODS",
    "capture_scenes",
    "cross_attention_maps",
    "query_rollout",
    "gradient_rollout",
    "method_scores",
    "membership_auprc",
    "membership_faithfulness",
    "attention_entropy",
]

SCORE_METHODS = ("cross_last", "cross_mean", "effective_last", "rollout", "grad_rollout", "random", "member_probs")


def _as_batch(scenes_or_batch: Any) -> SceneBatch:
    return scenes_or_batch if isinstance(scenes_or_batch, SceneBatch) else collate(list(scenes_or_batch))


def capture_scenes(model: SetDecoder, scenes_or_batch: Any, **capture_kwargs: Any):
    """:func:`attnexplain.capture` of ``model`` on scenes (a list of :class:`Scene` or a
    :class:`SceneBatch`); keyword arguments (``stacks``, ``kinds``, ``store_values``...) go to
    capture. Returns the :class:`~attnexplain.CaptureResult`."""
    from ..capturing.result import capture

    batch = _as_batch(scenes_or_batch)
    return capture(model, batch.inputs(), **capture_kwargs)


def cross_attention_maps(cap: Any, *, effective: bool = False) -> torch.Tensor:
    """(B, L, H, Q, N): the captured cross-attention of every decoder layer (``effective``: its
    effective attention)."""
    layers = cap.layers("decoder", "cross")
    if not layers:
        raise ValueError("no decoder cross-attention was captured (capture with kinds including 'cross')")
    maps = [cap.effective_attention(l, stack="decoder", kind="cross") if effective
            else cap.attention(l, stack="decoder", kind="cross") for l in layers]
    return torch.stack([m.float() for m in maps], dim=1)


def query_rollout(cap: Any) -> torch.Tensor:
    """(B, Q, N): rollout of the decoder's attention (module docstring, ``rollout``)."""
    from ..functional.relevance import encoder_decoder_relevance

    enc = [cap.attention(l, stack="encoder", kind="self").double().mean(1) for l in cap.layers("encoder", "self")]
    self_layers = set(cap.layers("decoder", "self"))
    dec = []
    for l in cap.layers("decoder", "cross"):
        sa = cap.attention(l, stack="decoder", kind="self").double().mean(1) if l in self_layers else None
        dec.append((sa, cap.attention(l, stack="decoder", kind="cross").double().mean(1)))
    _, _, r_qx = encoder_decoder_relevance(enc, dec)
    return r_qx.float()


def _relevance(maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s encoder-decoder rules on head-reduced maps keyed by site (``"decoder.0.cross"``)."""
    from ..functional.relevance import encoder_decoder_relevance

    def layers(stack: str, kind: str) -> list[int]:
        return sorted(int(k.split(".")[1]) for k in maps if k.startswith(f"{stack}.") and k.endswith(f".{kind}"))

    enc = [maps[f"encoder.{l}.self"] for l in layers("encoder", "self")]
    dec = [(maps.get(f"decoder.{l}.self"), maps[f"decoder.{l}.cross"]) for l in layers("decoder", "cross")]
    return encoder_decoder_relevance(enc, dec)[2]


def gradient_rollout(model: SetDecoder, batch: SceneBatch, queries: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B, N): Chefer et al.'s gradient-weighted relevance of each individual for query
    ``queries[b]`` of scene b, explaining its logit of class ``classes[b]`` (module docstring,
    ``grad_rollout``). Gradients are taken through attention interventions at the model's marked
    sites (every attention output recomputed as ``A V`` from the kept ``A``)."""
    from ..capturing.attention import session
    from ..functional.relevance import gradient_weighted_attention

    keys = [m._attnexplain_site.key for m in model.attention_modules()]
    kept: dict[str, torch.Tensor] = {}

    def keep(key: str):
        def intervention(A, call, site):
            if not A.requires_grad:
                A = A.detach().requires_grad_(True)
            kept[key] = A
            return A
        return intervention

    with torch.enable_grad(), session(model, None, {k: keep(k) for k in keys}):
        out = model(**batch.inputs())
        b = torch.arange(len(batch))
        score = out.activity_logits[b, queries, classes].sum()
    grads = torch.autograd.grad(score, [kept[k] for k in keys], allow_unused=True)
    maps = {}
    for k, g in zip(keys, grads):
        A = kept[k].detach().double()
        maps[k] = gradient_weighted_attention(A, torch.zeros_like(A) if g is None else g.double())
    r_qx = _relevance(maps)  # (B, Q, N)
    return r_qx[torch.arange(len(batch)), queries].float()


def method_scores(model: SetDecoder, scenes_or_batch: Any, methods: Sequence[str] = SCORE_METHODS, *,
                  seed: int = 0) -> tuple[dict[str, torch.Tensor], Any, Any]:
    """Scores (B, Q, N) of each method in ``methods`` (module docstring) from one capture.

    Returns ``(scores, output, capture)``: ``output`` the model's :class:`SetDecoderOutput`
    (computed in the same forward pass as the capture), ``capture`` the CaptureResult.
    ``grad_rollout`` is computed for the Hungarian-matched queries only (its other rows are 0),
    with one forward and backward pass per matched-query rank; the other methods come from the
    one capture.
    """
    unknown = [m for m in methods if m not in SCORE_METHODS]
    if unknown:
        raise ValueError(f"unknown score method(s) {unknown}; available: {list(SCORE_METHODS)}")
    batch = _as_batch(scenes_or_batch)
    holder: dict[str, Any] = {}

    def keep(module, args, kwargs, output):
        holder["out"] = output

    handle = model.register_forward_hook(keep, with_kwargs=True)
    try:
        cap = capture_scenes(model, batch, store_values="effective_last" in methods)
    finally:
        handle.remove()
    out = holder["out"]
    mask = batch.attention_mask[:, None, :].float()
    scores: dict[str, torch.Tensor] = {}
    if "cross_last" in methods or "cross_mean" in methods:
        raw = cross_attention_maps(cap).mean(2)  # (B, L, Q, N)
        if "cross_last" in methods:
            scores["cross_last"] = raw[:, -1]
        if "cross_mean" in methods:
            scores["cross_mean"] = raw.mean(1)
    if "effective_last" in methods:
        last = cap.layers("decoder", "cross")[-1]
        scores["effective_last"] = cap.effective_attention(last, stack="decoder", kind="cross").float().mean(1)
    if "rollout" in methods:
        scores["rollout"] = query_rollout(cap)
    if "grad_rollout" in methods:
        # the matched queries of every scene, rank by rank (other queries' rows stay 0)
        matches = match_batch(out, batch)
        classes = out.activity_logits[..., :-1].argmax(-1)  # (B, Q)
        g = torch.zeros(out.member_logits.shape)
        for rank in range(max(len(qi) for qi, _ in matches)):
            rows = [b for b, (qi, _) in enumerate(matches) if len(qi) > rank]
            q = torch.zeros(len(batch), dtype=torch.long)
            for b in rows:
                q[b] = int(matches[b][0][rank])
            rel = gradient_rollout(model, batch, q, classes[torch.arange(len(batch)), q])
            g[rows, q[rows]] = rel[rows]
        scores["grad_rollout"] = g
    if "random" in methods:
        g = torch.Generator().manual_seed(seed)
        scores["random"] = torch.rand(out.member_logits.shape, generator=g)
    if "member_probs" in methods:
        scores["member_probs"] = out.member_probs
    scores = {k: (v.float() * mask) for k, v in scores.items()}
    return {m: scores[m] for m in methods}, out, cap


def membership_auprc(scores: dict[str, torch.Tensor], out: Any, batch: SceneBatch) -> dict[str, list[float]]:
    """Per method, the AUPRC of every (gold group, matched query) pair of the batch (module
    docstring); the pairs come in scene order, groups in scene order."""
    matches = match_batch(out, batch)
    result: dict[str, list[float]] = {m: [] for m in scores}
    for b, (s, (qi, gi)) in enumerate(zip(batch.scenes, matches)):
        for q, g in zip(qi, gi):
            gold = np.zeros(s.n, dtype=bool)
            gold[s.groups[g]] = True
            for m, sc in scores.items():
                result[m].append(auprc(sc[b, q, : s.n].double().numpy(), gold))
    return result


def attention_entropy(cap: Any, out: Any, batch: SceneBatch, *, layer: int | None = None) -> dict[str, float]:
    """Mean normalised entropy ``H(row) / log(N_b)`` of the cross-attention rows of one decoder
    layer (default the last), over heads: ``matched`` over the Hungarian-matched queries, ``all``
    over every query. 1 = uniform over the scene's individuals, 0 = one individual. Scenes with one
    individual are skipped."""
    layers = cap.layers("decoder", "cross")
    A = cap.attention(layers[-1] if layer is None else layer, stack="decoder", kind="cross").double()  # (B, H, Q, N)
    ent = -(torch.where(A > 0, A * torch.log(A), torch.zeros_like(A))).sum(-1)  # (B, H, Q)
    matches = match_batch(out, batch)
    matched, every = [], []
    for b, (s, (qi, _)) in enumerate(zip(batch.scenes, matches)):
        if s.n < 2:
            continue
        e = ent[b] / math.log(s.n)  # (H, Q)
        every.append(e.mean().item())
        matched.append(e[:, torch.as_tensor(qi, dtype=torch.long)].mean().item())
    return {"matched": float(np.mean(matched)) if matched else math.nan,
            "all": float(np.mean(every)) if every else math.nan}


def _bin_sizes(n: int, bins: Sequence[float]) -> list[int]:
    return [min(max(1, math.ceil(f * n)), max(1, n - 1)) for f in bins]


@torch.no_grad()
def membership_faithfulness(model: SetDecoder, batch: SceneBatch, scores: dict[str, torch.Tensor], out: Any,
                            *, bins: Sequence[float] = ERASER_BINS) -> dict[str, dict[str, float]]:
    """ERASER comprehensiveness / sufficiency AOPC of each method's ranking of the individuals
    for the matched queries (module docstring). Returns ``{method: {"comprehensiveness": aopc,
    "sufficiency": aopc, "pairs": count}}``; scenes with one individual are skipped."""
    model.eval()
    matches = match_batch(out, batch)
    memory = out.memory
    z0 = model.initial_queries(memory, batch.attention_mask)
    act_probs = out.activity_probs
    res = {m: {"comprehensiveness": [], "sufficiency": []} for m in scores}
    # every (scene, query, method, bin, removal kind) becomes one row of a batched forward
    rows_mask, rows_src, rows_q, rows_c, rows_key = [], [], [], [], []
    for b, (s, (qi, _)) in enumerate(zip(batch.scenes, matches)):
        if s.n < 2:
            continue
        sizes = _bin_sizes(s.n, bins)
        for q in qi:
            c = int(act_probs[b, q, :-1].argmax())
            for m, sc in scores.items():
                order = torch.argsort(sc[b, q, : s.n].double(), descending=True, stable=True)
                for k_i, k in enumerate(sizes):
                    top = order[:k]
                    without = batch.attention_mask[b].clone()
                    without[top] = False
                    only = torch.zeros_like(without)
                    only[top] = True
                    for kind, msk in (("comprehensiveness", without), ("sufficiency", only)):
                        rows_mask.append(msk)
                        rows_src.append(b)
                        rows_q.append(q)
                        rows_c.append(c)
                        rows_key.append((m, kind, b, q, k_i))
    if not rows_mask:
        return {m: {"comprehensiveness": math.nan, "sufficiency": math.nan, "pairs": 0} for m in scores}
    src = torch.as_tensor(rows_src)
    q_t = torch.as_tensor(rows_q)
    c_t = torch.as_tensor(rows_c)
    masks = torch.stack(rows_mask)
    p_new = []
    step = 512
    for i in range(0, len(rows_mask), step):
        sl = slice(i, i + step)
        o = model(batch.features[src[sl]], masks[sl], initial_queries=z0[src[sl]])
        p_new.append(o.activity_probs[torch.arange(o.activity_logits.shape[0]), q_t[sl], c_t[sl]])
    p_new = torch.cat(p_new)
    p_full = act_probs[src, q_t, c_t]
    drop = (p_full - p_new).double()
    per: dict[tuple, list[float]] = {}
    for (m, kind, b, q, _), d in zip(rows_key, drop.tolist()):
        per.setdefault((m, kind, b, q), []).append(d)
    for (m, kind, b, q), vals in per.items():
        res[m][kind].append(float(np.mean(vals)))
    return {m: {"comprehensiveness": float(np.mean(v["comprehensiveness"])),
                "sufficiency": float(np.mean(v["sufficiency"])), "pairs": len(v["comprehensiveness"])}
            for m, v in res.items()}

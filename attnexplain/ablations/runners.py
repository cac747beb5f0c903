"""Running a model under attention interventions and measuring the output change: by site
(:func:`run_with_interventions`), per group of examples (:func:`run_conditions`), per kind
(:func:`intervention_effects`), and the top-k sweep with its minimal sufficient k
(:func:`topk_sweep`, :func:`minimal_k`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..models import LoadedModel
from ..backends import AttentionCall
from ..capturing.adapters import AttentionSite, find_attention_sites
from ..capturing.attention import session

from .interventions import Intervention, build_intervention, topk


def _torch_model(lm: LoadedModel) -> torch.nn.Module:
    from ..models import torch_module

    return torch_module(lm)


def _sites_by_key(lm: LoadedModel) -> dict[str, AttentionSite]:
    model = _torch_model(lm)
    cached = getattr(model, "_attnexplain_sites", None)
    sites = cached if cached is not None else find_attention_sites(model)
    return {s.key: s for s in sites.values()}


def site_keys(lm: LoadedModel, layers: Sequence[int | str] | int | str | None = None) -> list[str]:
    """Site keys for ``layers``: ints are layers of the primary stack's self-attention
    (``"main"``, else ``"encoder"``), strings are site keys; None = all self-attention layers of
    the primary stack."""
    sites = _sites_by_key(lm)
    stacks = {s.stack for s in sites.values()}
    primary = next((c for c in ("main", "encoder", "decoder") if c in stacks), next(iter(stacks)))
    own = sorted((s for s in sites.values() if s.stack == primary and s.kind == "self"), key=lambda s: s.layer)
    if layers is None:
        return [s.key for s in own]
    if isinstance(layers, (int, str)):
        layers = [layers]
    out = []
    for l in layers:
        if isinstance(l, str):
            if l not in sites:
                raise KeyError(f"unknown attention site {l!r}; this model has {sorted(sites)}")
            out.append(l)
        else:
            match = [s.key for s in own if s.layer == int(l)]
            if not match:
                raise ValueError(f"layer {l} out of range: {primary} self-attention layers are {[s.layer for s in own]}")
            out.append(match[0])
    return out


def _as_batch(lm: LoadedModel, inputs: Any) -> dict[str, torch.Tensor]:
    if isinstance(inputs, (str, list, tuple)):
        return lm.tokenize([inputs] if isinstance(inputs, str) else list(inputs))
    return dict(inputs)


def _logits(out: Any) -> torch.Tensor:
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits if logits.dim() == 2 else logits[:, -1]


def _resolve_keys(lm: LoadedModel, interventions: Mapping[Any, Intervention]) -> dict[str, Intervention]:
    out: dict[str, Intervention] = {}
    for key, fn in interventions.items():
        out[site_keys(lm, key)[0] if not isinstance(key, str) else key] = fn
    return out


def run_with_interventions(lm: LoadedModel, batch: Any, interventions: Mapping[str | int, Intervention] | None = None) -> torch.Tensor:
    """Logits ((B, C); last position for sequence outputs) of the model run with ``interventions``
    ({site key or layer int: fn(A, call, site) -> A'}). ``batch``: texts or tokenized inputs."""
    batch = _as_batch(lm, batch)
    model = _torch_model(lm)
    with torch.no_grad(), session(model, interventions=_resolve_keys(lm, interventions or {})):
        return _logits(model(**batch)).detach()


def _slice_call(call: AttentionCall, sl: slice) -> AttentionCall:
    def cut(x):
        return None if x is None else (x[sl] if x.shape[0] > 1 else x)

    return AttentionCall(
        query=call.query[sl], key=call.key[sl], value=call.value[sl], mask=cut(call.mask), scaling=call.scaling,
        causal=call.causal, key_padding_mask=None if call.key_padding_mask is None else call.key_padding_mask[sl],
        dropout=call.dropout, training=call.training, extras=call.extras,
    )


def _grouped(per_group: list[Intervention | None], B: int) -> Intervention:
    """One intervention for a batch made of len(per_group) consecutive groups of B rows."""

    def fn(A, call, site):
        parts = []
        for g, f in enumerate(per_group):
            sl = slice(g * B, (g + 1) * B)
            parts.append(A[sl] if f is None else f(A[sl], _slice_call(call, sl), site).to(A.dtype))
        return torch.cat(parts, dim=0)

    return fn


def run_conditions(
    lm: LoadedModel,
    batch: Any,
    conditions: Sequence[Mapping[str | int, Intervention]],
    *,
    max_batch: int = 256,
) -> torch.Tensor:
    """Logits (len(conditions), B, C) of the batch under each set of interventions.

    The batch is replicated, one copy per condition, and as many copies as fit in ``max_batch``
    rows go through one forward pass; each site's intervention applies each condition's own
    function to its rows (a condition without a function at a site leaves those rows as is).
    """
    batch = _as_batch(lm, batch)
    model = _torch_model(lm)
    B = next(iter(batch.values())).shape[0]
    conds = [_resolve_keys(lm, c) for c in conditions]
    per_fwd = max(1, max_batch // max(B, 1))
    outs = []
    for start in range(0, len(conds), per_fwd):
        group = conds[start : start + per_fwd]
        keys = sorted({k for c in group for k in c})
        inter = {k: _grouped([c.get(k) for c in group], B) for k in keys}
        rep = {k: v.repeat(len(group), *([1] * (v.dim() - 1))) for k, v in batch.items()}
        with torch.no_grad(), session(model, interventions=inter):
            logits = _logits(model(**rep)).detach()
        outs.append(logits.reshape(len(group), B, -1))
    return torch.cat(outs, dim=0)


def _output_change(base: torch.Tensor, new: torch.Tensor) -> dict[str, np.ndarray]:
    from ..metrics import tvd

    pb = torch.softmax(base.double(), -1)
    pn = torch.softmax(new.double(), -1)
    return {
        "tvd": tvd(pb, pn).cpu().numpy(),
        "max_abs_logit_change": (new.double() - base.double()).abs().amax(-1).cpu().numpy(),
        "pred": base.argmax(-1).cpu().numpy(),
        "pred_intervened": new.argmax(-1).cpu().numpy(),
    }


def _measured(fn: Intervention, acc: dict[str, torch.Tensor]) -> Intervention:
    """Wrap fn to accumulate, per example, the mean half-L1 distance between rows of A and A'
    (over heads that changed are not singled out: all heads, real query rows)."""

    def wrapped(A, call, site):
        new = fn(A, call, site)
        d = 0.5 * (new.double() - A.double()).abs().sum(-1)  # (B, H, n)
        km = call.key_padding_mask
        rows = torch.ones(d.shape[0], d.shape[2], dtype=torch.bool, device=d.device) if km is None or km.shape[-1] != d.shape[2] else km
        s = (d * rows[:, None, :]).sum((1, 2))
        c = rows.sum(-1) * d.shape[1]
        acc["sum"] = acc.get("sum", 0) + s.cpu()
        acc["count"] = acc.get("count", 0) + c.cpu()
        return new

    return wrapped


def intervention_effects(
    lm: LoadedModel,
    texts: str | Sequence[str],
    kinds: Sequence[str | tuple[str, Mapping[str, Any]]] = ("effective", "null_perturbation", "minus_effective", "uniform", "permute"),
    *,
    layers: Sequence[int | str] | None = None,
    heads: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 16,
):
    """How much each intervention changes the model's output, per example.

    Each kind (a name of :data:`KINDS` or ``(name, options)``, e.g. ``("topk", {"k": 4})``) is
    applied at all ``layers`` (None = every self-attention layer) to ``heads`` (None = all) at
    once. Returns a DataFrame with one row per (example, kind): ``tvd`` (total variation
    between the output distributions), ``max_abs_logit_change``, ``flip`` (prediction changed),
    ``pred`` / ``pred_intervened``, and ``attention_change`` (mean over intervened sites, heads
    and real query rows of 1/2 |a' - a|_1: how much A moved). Compared with the model run
    without interventions.
    """
    import pandas as pd

    texts = [texts] if isinstance(texts, str) else list(texts)
    keys = site_keys(lm, layers)
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[start : start + batch_size])
        base = run_with_interventions(lm, batch, {})
        for kind in kinds:
            label, fn = build_intervention(kind, heads=heads, seed=seed)
            acc: dict[str, torch.Tensor] = {}
            wrapped = _measured(fn, acc)
            new = run_with_interventions(lm, batch, {k: wrapped for k in keys})
            ch = _output_change(base, new)
            att = (acc["sum"] / acc["count"].clamp_min(1)).numpy() if acc else np.zeros(len(new))
            for i in range(len(new)):
                rows.append({
                    "example": start + i, "kind": label, "tvd": float(ch["tvd"][i]),
                    "max_abs_logit_change": float(ch["max_abs_logit_change"][i]),
                    "flip": bool(ch["pred"][i] != ch["pred_intervened"][i]),
                    "pred": int(ch["pred"][i]), "pred_intervened": int(ch["pred_intervened"][i]),
                    "attention_change": float(att[i]),
                })
    return pd.DataFrame(rows)


def topk_sweep(
    lm: LoadedModel,
    texts: str | Sequence[str],
    ks: Sequence[int] = (1, 2, 4, 8, 16, 32),
    *,
    by: Sequence[str] = ("raw", "effective"),
    values: str = "raw",
    layers: Sequence[int | str] | None = None,
    heads: Sequence[int] | None = None,
    batch_size: int = 16,
    max_batch: int = 256,
):
    """Keep-top-k and remove-top-k sweeps (all ``layers``/``heads`` at once).

    For each k, ranking ``by`` ("raw", "effective", "distribution") and action ("keep": only
    the top-k keys per row, renormalised; "remove": all but them), the output change versus
    the unmodified model. All (k, by, action) conditions of a batch run in replicated forward
    passes (:func:`run_conditions`). Returns a DataFrame: example, by, k, action, tvd,
    max_abs_logit_change, flip. See :func:`minimal_k`.
    """
    import pandas as pd

    texts = [texts] if isinstance(texts, str) else list(texts)
    keys = site_keys(lm, layers)
    specs = [(b, int(k), act) for b in by for k in ks for act in ("keep", "remove")]
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[start : start + batch_size])
        base = run_with_interventions(lm, batch, {})
        conds = [{key: topk(k, heads, by=b, values=values, remove=(act == "remove")) for key in keys} for b, k, act in specs]
        out = run_conditions(lm, batch, conds, max_batch=max_batch)
        for (b, k, act), new in zip(specs, out):
            ch = _output_change(base, new)
            for i in range(new.shape[0]):
                rows.append({
                    "example": start + i, "by": b, "k": k, "action": act, "tvd": float(ch["tvd"][i]),
                    "max_abs_logit_change": float(ch["max_abs_logit_change"][i]),
                    "flip": bool(ch["pred"][i] != ch["pred_intervened"][i]),
                })
    return pd.DataFrame(rows)


def minimal_k(sweep) -> Any:
    """Per (example, by): the smallest swept k whose keep-top-k keeps the prediction
    (``min_k_keep``, NaN if none), and whether removing those top-k keys flips it
    (``remove_flips``) with the TVD of that removal."""
    import pandas as pd

    rows = []
    for (ex, b), grp in sweep.groupby(["example", "by"], sort=False):
        keep = grp[(grp.action == "keep") & ~grp.flip].sort_values("k")
        if len(keep):
            k = int(keep.k.iloc[0])
            rem = grp[(grp.action == "remove") & (grp.k == k)]
            rows.append({"example": ex, "by": b, "min_k_keep": k, "remove_flips": bool(rem.flip.iloc[0]),
                         "remove_tvd": float(rem.tvd.iloc[0])})
        else:
            rows.append({"example": ex, "by": b, "min_k_keep": float("nan"), "remove_flips": None, "remove_tvd": float("nan")})
    return pd.DataFrame(rows)

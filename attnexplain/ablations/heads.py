"""Head ablation: zero- or mean-ablate one attention head at a time (:func:`head_ablation`, the
means from :func:`head_means`) and summarise the output change (:func:`ablation_table`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..models import LoadedModel
from ..capturing.adapters import AttentionSite
from ..capturing.attention import session

from .interventions import mean, zero
from .runners import _grouped, _logits, _output_change, _sites_by_key, _torch_model, run_with_interventions, site_keys


def head_means(lm: LoadedModel, texts: str | Sequence[str], *, layers: Sequence[int | str] | None = None,
               batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Mean head output per site: {site key: (H, d_v)}, ``mu_h = mean over all real query
    positions of all texts of a_i V_h`` (the head's output before the output projection)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    keys = site_keys(lm, layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}

    def make(key):
        def fn(A, call, site):
            o = torch.matmul(A.to(call.value.dtype), call.value).double()  # (B, H, n, d_v)
            km = call.key_padding_mask
            if km is not None and km.shape[-1] == o.shape[2]:
                o = o * km[:, None, :, None]
                c = float(km.sum())
            else:
                c = float(o.shape[0] * o.shape[2])
            sums[key] = sums.get(key, 0) + o.sum((0, 2)).cpu()
            counts[key] = counts.get(key, 0.0) + c
            return A

        return fn

    for start in range(0, len(texts), batch_size):
        run_with_interventions(lm, texts[start : start + batch_size], {k: make(k) for k in keys})
    return {k: (sums[k] / counts[k]).float() for k in keys}


def _output_patch(site: AttentionSite, H: int, groups: list[dict[int, torch.Tensor | None]], B: int):
    """Forward pre-hook on the output projection: replace head slices of each row group."""

    def hook(module, args):
        x = args[0]
        d_v = x.shape[-1] // H
        x = x.clone()
        for g, spec in enumerate(groups):
            for h, val in spec.items():
                sl = slice(h * d_v, (h + 1) * d_v)
                x[g * B : (g + 1) * B, ..., sl] = 0.0 if val is None else val.to(x.dtype)
        return (x, *args[1:])

    return site.out_proj.register_forward_pre_hook(hook)


def head_ablation(
    lm: LoadedModel,
    texts: str | Sequence[str],
    *,
    mode: str = "zero",
    layers: Sequence[int | str] | None = None,
    head_sets: Sequence[Mapping[str | int, Sequence[int]]] | None = None,
    method: str = "attention",
    means: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 16,
    max_batch: int = 256,
):
    """Ablate one head at a time (default) or chosen sets of heads over a data set.

    Args:
        mode: ``"zero"`` (A' = 0: the head contributes 0) or ``"mean"`` (the head's output is
            replaced by its mean over ``texts``, from :func:`head_means` unless ``means`` given).
        layers: layers whose heads are ablated one at a time (None = all).
        head_sets: instead of single heads, a list of sets ``{layer or site key: [heads]}``
            ablated together (one condition each).
        method: ``"attention"`` (through the attention function: zero -> A' = 0, mean -> the
            least-squares A' of :func:`mean`, residual reported) or ``"output"`` (a forward
            pre-hook on the output projection writes 0 / mu into the head's slice: exact).

    All conditions run in replicated batches (:func:`run_conditions` style). Returns a
    DataFrame, one row per condition: ``layer``, ``head`` (single-head mode) or ``set``,
    ``mean_tvd``, ``flip_rate``, ``mean_max_abs_logit_change``, ``n``, and for
    ``mode="mean", method="attention"`` ``mean_residual`` (mean relative residual of x V = mu).
    See :func:`ablation_table` for the (layers x heads) pivot.
    """
    import pandas as pd

    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    if method not in ("attention", "output"):
        raise ValueError(f"method must be 'attention' or 'output', got {method!r}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    sites = _sites_by_key(lm)
    H = lm.num_heads if hasattr(lm, "num_heads") else None
    if head_sets is None:
        keys = site_keys(lm, layers)
        conds = [({k: [h]}, sites[k].layer, h) for k in keys for h in range(H)]
    else:
        conds = []
        for j, hs in enumerate(head_sets):
            resolved = {site_keys(lm, k)[0]: list(v) for k, v in hs.items()}
            conds.append((resolved, None, j))
    if mode == "mean" and means is None:
        need = sorted({k for c, _, _ in conds for k in c})
        means = head_means(lm, texts, layers=need, batch_size=batch_size)

    stats = [{"tvd": [], "flip": [], "dlogit": [], "res": []} for _ in conds]
    for start in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[start : start + batch_size])
        B = batch["input_ids"].shape[0]
        base = run_with_interventions(lm, batch, {})
        per_fwd = max(1, max_batch // B)
        for g0 in range(0, len(conds), per_fwd):
            group = conds[g0 : g0 + per_fwd]
            rep = {k: v.repeat(len(group), *([1] * (v.dim() - 1))) for k, v in batch.items()}
            residuals: list[list[torch.Tensor]] = [[] for _ in group]
            model = _torch_model(lm)
            if method == "attention":
                keys = sorted({k for c, _, _ in group for k in c})
                inter = {}
                for key in keys:
                    fns = []
                    for gi, (c, _, _) in enumerate(group):
                        if key not in c:
                            fns.append(None)
                        elif mode == "zero":
                            fns.append(zero(c[key]))
                        else:
                            fns.append(mean(means[key], c[key], residuals=residuals[gi]))
                    inter[key] = _grouped(fns, B)
                with torch.no_grad(), session(model, interventions=inter):
                    logits = _logits(model(**rep)).detach()
            else:
                handles = []
                try:
                    keys = sorted({k for c, _, _ in group for k in c})
                    for key in keys:
                        specs = []
                        for c, _, _ in group:
                            hs = c.get(key, [])
                            specs.append({h: (None if mode == "zero" else means[key][h]) for h in hs})
                        if sites[key].out_proj is None:
                            raise ValueError(f"site {key} has no known output projection; use method='attention'")
                        handles.append(_output_patch(sites[key], H, specs, B))
                    with torch.no_grad():
                        logits = _logits(model(**rep)).detach()
                finally:
                    for h in handles:
                        h.remove()
            for gi, new in enumerate(logits.reshape(len(group), B, -1)):
                ch = _output_change(base, new)
                st = stats[g0 + gi]
                st["tvd"].extend(ch["tvd"].tolist())
                st["flip"].extend((ch["pred"] != ch["pred_intervened"]).tolist())
                st["dlogit"].extend(ch["max_abs_logit_change"].tolist())
                st["res"].extend(float(r.mean()) for r in residuals[gi])
    rows = []
    for (c, layer, h), st in zip(conds, stats):
        row: dict[str, Any] = {}
        if head_sets is None:
            row.update(layer=layer, head=h)
        else:
            row.update(set=h, heads={k: list(v) for k, v in c.items()})
        row.update(mean_tvd=float(np.mean(st["tvd"])), flip_rate=float(np.mean(st["flip"])),
                   mean_max_abs_logit_change=float(np.mean(st["dlogit"])), n=len(st["tvd"]))
        if mode == "mean" and method == "attention":
            row["mean_residual"] = float(np.mean(st["res"])) if st["res"] else float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(mode=mode, method=method)
    return df


def ablation_table(df, value: str = "mean_tvd"):
    """(layers x heads) pivot of a single-head :func:`head_ablation` result."""
    return df.pivot(index="layer", columns="head", values=value)

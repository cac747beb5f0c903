"""Dense vs efficient attention in the learned-query set decoder, one attention kind at a time.

The set decoder (:mod:`attnexplain.set_decoder`) holds CAB's noncausal patterns only: its queries
cross-attend to the individuals (``noncausal_cross``, Q x N), attend to each other
(``noncausal_self`` among the queries, Q x Q, when the design has query self-attention) and the
individuals are encoded by self-attention (``noncausal_self``, N x N). No attention in it is
causal. :func:`compare_set_decoder_backends` swaps one backend into every site of one kind
(:func:`attnexplain.capturing.backend_at_sites`; the others stay dense), runs the scenes and
compares with the all-dense run, per scene:

* ``activity_agreement``: share of queries whose argmax class (an activity or "no group") equals
  the dense one;
* ``member_agreement``: share of (query, real individual) membership decisions (probability >
  0.5) equal to the dense ones;
* ``groups_identical``: share of scenes whose predicted groups (``predict_groups``: queries not
  "no group", with their members) are exactly the dense ones;
* ``f1``: group-detection F1 against the gold groups (IoU >= 0.5, pooled over scenes, as
  ``set_decoder.evaluate``); the dense reference row gives the dense model's own;
* ``mean_tvd``: total variation distance between the dense and the backend's class distributions,
  mean over queries;
* ``jsd``: Jensen-Shannon divergence (nats) between dense and backend attention rows at the
  swapped sites (real rows and keys, mean over heads, rows, layers; empty where implied rows are
  negative: Nystrom);
* ``tau_cross_raw`` / ``tau_cross_effective``: Kendall tau-b, per query that predicts a group under
  dense attention (all queries when none does), between the individuals' scores from the
  cross-attention row (mean over heads and decoder layers; effective attention for the second)
  under dense and under the backend, averaged;
* ``memory``: ``backend.memory_fraction`` at the swapped sites (Q x N, Q x Q or N x N at each scene's
  real N).

A backend whose mechanism cannot compute a kind's pattern would be listed as refused (none of the
registered backends refuses a noncausal pattern).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backends.spec import BackendConfig, BackendSpecError, parse_backend
from ..errors import ArgumentError
from .pattern_comparison import PatternComparison, swapped_runs

__all__ = ["compare_set_decoder_backends", "SET_DECODER_KINDS", "SET_DECODER_DEFAULT_BACKENDS"]

#: kind -> (CAB pattern, what attends to what, site predicate)
SET_DECODER_KINDS = {
    "cross": ("noncausal_cross", "queries x individuals", lambda s: s.stack == "decoder" and s.kind == "cross"),
    "query_self": ("noncausal_self", "queries x queries", lambda s: s.stack == "decoder" and s.kind == "self"),
    "encoder": ("noncausal_self", "individuals x individuals", lambda s: s.stack == "encoder" and s.kind == "self"),
}

#: every mechanism once, at settings that approximate at 4-12 individuals and 6-24 queries
SET_DECODER_DEFAULT_BACKENDS = (
    "dense",
    "smyrf:n_hashes=2,q_cluster_size=4,k_cluster_size=4",
    "lsh:n_hashes=2,bucket_size=4",
    "performer:n_features=32",
    "linear",
    "nystrom:n_landmarks=4",
    "local:window=2",
)


def _run(model: Any, batch: Any) -> dict[str, Any]:
    """One forward with capture: outputs, predicted groups and the attention the measures read."""
    import torch

    from ..set_decoder import capture_scenes, predict_groups
    from ..set_decoder.explain import cross_attention_maps

    with torch.no_grad():
        out = model(**batch.inputs())
    cap = capture_scenes(model, batch)
    raw = cross_attention_maps(cap).mean(2).mean(1)  # (B, Q, N)
    eff = cross_attention_maps(cap, effective=True).mean(2).mean(1)
    rows = {key: cap.attention(cap.sites[key].layer, stack=cap.sites[key].stack, kind=cap.sites[key].kind).double()
            for key in cap.site_keys}
    return {"act": out.activity_probs.double(), "member": out.member_probs > 0.5, "groups": predict_groups(out, batch),
            "raw": raw.double(), "eff": eff.double(), "rows": rows}


def _scene_measures(ref: dict, alt: dict, b: int, scene: Any, swapped: list[str], sites: dict) -> dict[str, float]:
    from ..metrics import jsd, kendall_tau, tvd
    from ..set_decoder.train import group_detection_counts

    n = scene.n
    no_group = ref["act"].shape[-1] - 1
    a_ref, a_alt = ref["act"][b], alt["act"][b]
    pred_ref, pred_alt = a_ref.argmax(-1), a_alt.argmax(-1)
    grouped = (pred_ref != no_group).nonzero().flatten().tolist() or list(range(a_ref.shape[0]))
    taus = {}
    for name in ("raw", "eff"):
        vals = [kendall_tau(ref[name][b, q, :n].numpy(), alt[name][b, q, :n].numpy()) for q in grouped]
        vals = [v for v in vals if not np.isnan(v)]
        taus[name] = float(np.mean(vals)) if vals else float("nan")
    js = []
    for key in swapped:
        site = sites[key]
        Q = ref["rows"][key].shape[-2]
        r_idx = slice(0, n) if site.stack == "encoder" else slice(0, Q)
        k_idx = slice(0, Q) if (site.stack == "decoder" and site.kind == "self") else slice(0, n)
        js.append(float(jsd(ref["rows"][key][b, :, r_idx, k_idx], alt["rows"][key][b, :, r_idx, k_idx]).mean()))
    tp, n_pred, n_gold = group_detection_counts([m for _, m, _ in alt["groups"][b]], scene.groups)
    same_groups = sorted((q, tuple(m), a) for q, m, a in ref["groups"][b]) == \
        sorted((q, tuple(m), a) for q, m, a in alt["groups"][b])
    return {
        "activity_agreement": float((pred_ref == pred_alt).double().mean()),
        "member_agreement": float((ref["member"][b, :, :n] == alt["member"][b, :, :n]).double().mean()),
        "groups_identical": float(same_groups),
        "tvd": float(tvd(a_ref, a_alt).mean()),
        "jsd": float(np.mean(js)) if js else float("nan"),
        "tau_cross_raw": taus["raw"], "tau_cross_effective": taus["eff"],
        "tp": tp, "n_pred": n_pred, "n_gold": n_gold,
    }


def _f1(df: Any) -> float:
    from ..set_decoder.train import f1_from_counts

    return float(f1_from_counts(int(df["tp"].sum()), int(df["n_pred"].sum()), int(df["n_gold"].sum()))["f1"])


def compare_set_decoder_backends(
    model: Any,
    scenes: Sequence[Any],
    backends: Sequence[Any] = SET_DECODER_DEFAULT_BACKENDS,
    *,
    kinds: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> PatternComparison:
    """Swap each backend into each attention kind of a trained set decoder, one kind at a time, and
    compare outputs and explanations with dense attention (see the module docs).

    Args:
        model: a :class:`~attnexplain.set_decoder.SetDecoder` (e.g. from ``load_set_decoder``).
        scenes: :class:`~attnexplain.set_decoder.Scene` objects (e.g. ``load_scenes("test")``).
        backends: backend specifications (:func:`attnexplain.backends.spec.parse_backend`).
        kinds: ``"cross"`` (queries x individuals), ``"query_self"``, ``"encoder"``; default: those the
            model has.
        batch_size: scenes per forward pass.

    Returns:
        :class:`~attnexplain.runs.pattern_comparison.PatternComparison` (rows: backend x kind).

    Raises:
        BackendSpecError / ArgumentError: before anything runs.
    """
    import pandas as pd

    from ..set_decoder import SetDecoder, collate

    if not isinstance(model, SetDecoder):
        raise ArgumentError(f"compare_set_decoder_backends needs a SetDecoder, got {type(model).__name__}")
    scenes = list(scenes)
    if not scenes:
        raise ArgumentError("no scenes given")
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
    sites = {m._attnexplain_site.key: m._attnexplain_site for m in model.modules()
             if getattr(m, "_attnexplain_site", None) is not None}
    have = {k: sorted(key for key, s in sites.items() if pred(s)) for k, (_, _, pred) in SET_DECODER_KINDS.items()}
    have = {k: v for k, v in have.items() if v}
    kinds = list(have) if kinds is None else list(kinds)
    missing = [k for k in kinds if k not in have]
    if missing:
        raise ArgumentError(f"this set decoder has no {', '.join(missing)} attention; it has {', '.join(have)} "
                            f"(kinds: {', '.join(SET_DECODER_KINDS)})")
    if isinstance(backends, (str, BackendConfig)):
        backends = [backends]
    configs = [parse_backend(b) for b in backends]
    if not configs:
        raise BackendSpecError("no backends to compare")
    if len({c.display for c in configs}) != len(configs):
        configs = [BackendConfig(c.name, c.options, f"{c.display} #{i}") for i, c in enumerate(configs)]
    built = [c.build() for c in configs]
    Q = model.config.num_queries
    model.eval()
    batches = [scenes[s : s + batch_size] for s in range(0, len(scenes), batch_size)]
    it: Any = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="compare set decoder", unit="batch")
    rows, ref_rows = [], []
    refused: dict[tuple[str, str], str] = {}
    seconds: dict[tuple[str, str], float] = {}
    previous = {m: m.backend for m in model.attention_modules()}
    try:
        model.set_backend("dense")
        for part in it:
            batch = collate(part)
            ref = _run(model, batch)
            for b, scene in enumerate(part):
                m = _scene_measures(ref, ref, b, scene, [], sites)
                ref_rows.append({"scene": scene.id, "tp": m["tp"], "n_pred": m["n_pred"], "n_gold": m["n_gold"]})
            for cfg, backend, kind, alt in swapped_runs(model, configs, built, kinds, have,
                                                        lambda: _run(model, batch), refused, seconds,
                                                        lambda msg: msg.split(";")[0]):
                for b, scene in enumerate(part):
                    row = {"backend": cfg.display, "kind": kind, "pattern": SET_DECODER_KINDS[kind][0],
                           "scene": scene.id, "n_individuals": scene.n}
                    row.update(_scene_measures(ref, alt, b, scene, have[kind], sites))
                    n = scene.n
                    shape = {"cross": (Q, n), "query_self": (Q, Q), "encoder": (n, n)}[kind]
                    row["memory"] = float(backend.memory_fraction(*shape))
                    rows.append(row)
    finally:
        for m, be in previous.items():
            m.backend = be
    per = pd.DataFrame(rows)
    ref_df = pd.DataFrame(ref_rows)
    summary = [{"backend": "dense (reference)", "name": "dense", "options": "{}", "pattern": "all", "kind": "all",
                "sites": "all", "status": "reference", "n_examples": len(ref_df), "f1": _f1(ref_df), "memory": 1.0}]
    for cfg in configs:
        for kind in kinds:
            key = (cfg.display, kind)
            pattern, what, _ = SET_DECODER_KINDS[kind]
            r: dict[str, Any] = {"backend": cfg.display, "name": cfg.name,
                                 "options": json.dumps(dict(cfg.options), sort_keys=True),
                                 "pattern": f"{pattern} ({what})", "kind": kind, "sites": ", ".join(have[kind])}
            if key in refused:
                r.update(status=f"refused: {refused[key]}", n_examples=0)
            else:
                sub = per[(per["backend"] == cfg.display) & (per["kind"] == kind)]
                r.update(status="ok", n_examples=len(sub), f1=_f1(sub))
                for col in ("activity_agreement", "member_agreement", "groups_identical", "tvd", "jsd",
                            "tau_cross_raw", "tau_cross_effective", "memory"):
                    vals = sub[col].to_numpy(dtype=float)
                    r["mean_tvd" if col == "tvd" else col] = float(np.nanmean(vals)) if np.isfinite(vals).any() \
                        else float("nan")
                r["seconds"] = round(seconds.get(key, 0.0), 2)
            summary.append(r)
    cols = ["backend", "name", "options", "pattern", "kind", "sites", "status", "n_examples", "activity_agreement",
            "member_agreement", "groups_identical", "f1", "mean_tvd", "jsd", "tau_cross_raw", "tau_cross_effective",
            "memory", "seconds"]
    summary_df = pd.DataFrame(summary).reindex(columns=cols)
    meta = {"model": "set decoder", "config": model.config.to_dict(), "n_examples": len(scenes),
            "kinds": {k: have[k] for k in kinds},
            "backends": [{"label": c.display, "name": c.name, "options": dict(c.options)} for c in configs],
            "refused": {f"{b} / {k}": why for (b, k), why in refused.items()}}
    legend = ("Legend: each row swaps one backend into every site of one attention kind of the set decoder (the "
              "others stay dense). activity agreement = share of queries whose argmax class (activity or no group) "
              "equals dense; member agreement = share of (query, individual) membership decisions (p > 0.5) equal to "
              "dense; groups identical = share of scenes whose predicted groups are exactly the dense ones; F1 = "
              "group detection against the gold groups (IoU >= 0.5); output TVD = mean total variation distance of "
              "the class distributions; JSD = mean Jensen-Shannon divergence (nats) of the attention rows at the "
              "swapped sites (empty where implied rows are negative: Nystrom); tau = mean Kendall tau-b of the "
              "individuals' cross-attention scores (raw or effective, mean over heads and decoder layers) under "
              "dense and under the backend, over the queries that predict a group; memory = "
              "backend.memory_fraction at the swapped sites.")
    view = {"columns": ["backend", "pattern", "status", "activity_agreement", "member_agreement", "groups_identical",
                        "f1", "mean_tvd", "jsd", "tau_cross_raw", "tau_cross_effective", "memory"],
            "headers": {"activity_agreement": "activity agreement", "member_agreement": "member agreement",
                        "groups_identical": "groups identical", "f1": "group F1", "mean_tvd": "output TVD",
                        "jsd": "JSD (swapped sites)", "tau_cross_raw": "tau cross raw",
                        "tau_cross_effective": "tau cross effective", "memory": "memory (share of dense scores)"},
            "legend": legend}
    return PatternComparison(summary=summary_df, per_example=per, meta=meta, view=view)


# --------------------------------------------------------------------------------------------
# the command line (``attnexplain compare-backends --model set-decoder-... --dataset social-scenes``)
# --------------------------------------------------------------------------------------------

#: CAB pattern -> the set decoder's attention kinds in it
_KINDS_OF_PATTERN = {"noncausal_cross": ["cross"], "noncausal_self": ["query_self", "encoder"]}


def set_decoder_path(model: str) -> Any:
    """The folder of a trained set decoder named ``model`` (a folder holding ``set_decoder.json``, or
    a name under ``cache_dir()/"models"`` such as ``set-decoder-learned-sa-q24-e30-s0``), else None."""
    from pathlib import Path

    from ..models import cache_dir

    for path in (Path(str(model)).expanduser(), cache_dir() / "models" / str(model)):
        try:
            if (path / "set_decoder.json").is_file():
                return path
        except (OSError, ValueError):
            continue
    return None


def compare_set_decoder_cli(path: Any, model: str, dataset: str, split: str, limit: int | None,
                            backends: Sequence[Any] | None, out: Any, *, patterns: Sequence[str] | None = None,
                            batch_size: int = 64, progress: bool = True) -> PatternComparison:
    """``compare-backends`` for a trained set decoder on the social scenes; writes ``table.md``,
    ``per_example.parquet`` and ``manifest.json`` into ``out``."""
    from pathlib import Path

    from ..set_decoder import load_scenes, load_set_decoder
    from .pattern_comparison import _machine
    from .settings import package_versions

    if dataset != "social-scenes":
        raise ArgumentError(f"{model} is a set decoder trained on the social scenes; give --dataset social-scenes "
                            f"(got {dataset!r})")
    kinds = None
    if patterns is not None:
        causal = [p for p in patterns if p not in _KINDS_OF_PATTERN]
        if causal:
            raise ArgumentError(f"the set decoder has no {', '.join(causal)} attention (all of its attention is "
                                f"noncausal); use --pattern noncausal_cross or noncausal_self")
        kinds = list(dict.fromkeys(k for p in patterns for k in _KINDS_OF_PATTERN[p]))
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    sd, meta_model = load_set_decoder(path)
    if kinds is not None:
        present = {m._attnexplain_site.kind + ("" if m._attnexplain_site.stack == "decoder" else "-enc")
                   for m in sd.attention_modules()}
        kinds = [k for k in kinds if {"cross": "cross", "query_self": "self", "encoder": "self-enc"}[k] in present]
    scenes = load_scenes(split, limit=limit)
    cmp = compare_set_decoder_backends(sd, scenes, backends or SET_DECODER_DEFAULT_BACKENDS, kinds=kinds,
                                       batch_size=batch_size, progress=progress)
    runtime = time.perf_counter() - t_start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = sd.config
    metrics = meta_model.get("metrics") or {}
    notes = ["", f"Model `{model}` ({c.num_queries} {c.query_init} queries, "
             f"{'with' if c.query_self_attention else 'without'} query self-attention, {c.n_decoder_layers} decoder "
             f"layers, d_model {c.d_model}, {c.n_heads} heads; validation group F1 {metrics.get('eval_f1', float('nan')):.3f}), "
             f"social scenes split `{split}`, {len(scenes)} scenes; runtime {runtime:.0f} s. The set decoder has no causal "
             "attention: CAB's causal patterns do not occur in it."]
    (out / "table.md").write_text(cmp.to_markdown(title=f"Dense vs efficient attention per pattern: {model} on "
                                                        f"social-scenes/{split}", notes=notes))
    cmp.per_example.to_parquet(out / "per_example.parquet", index=False)
    manifest = {"command": "compare-backends", "model": model, "model_path": str(path), "dataset": dataset,
                "split": split, "limit": limit, "n_examples": len(scenes), "scene_ids": [s.id for s in scenes],
                "batch_size": batch_size, "meta": cmp.meta, "summary": json.loads(cmp.summary.to_json(orient="records")),
                "versions": package_versions(), "machine": _machine(), "started": started,
                "runtime_s": round(runtime, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return cmp

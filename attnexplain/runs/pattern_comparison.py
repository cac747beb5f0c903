"""Dense vs efficient attention, one attention pattern at a time (CAB's four patterns) in a trained model.

CAB (Zhang et al., ICML 2023) asks that efficient attention be judged in four patterns:
noncausal self, causal self, noncausal cross and causal cross attention. A model holds several of
them at once: a trained encoder-decoder (``tiny-seq2seq-reverse``, :mod:`attnexplain.training.seq2seq`)
has the encoder's noncausal self-attention, the decoder's causal self-attention and its
noncausal cross-attention over the source. :func:`compare_patterns_seq2seq` swaps one backend
into the sites of **one pattern** (every layer; :func:`attnexplain.capturing.backend_at_sites`),
keeps every other site dense, runs the model with teacher forcing on the gold targets
(:func:`attnexplain.generate` with ``target=``), and compares with the all-dense run:

* ``agreement`` (next-token agreement): share of target positions whose argmax token equals the
  dense argmax;
* ``token_accuracy``: share of target positions whose argmax token is the gold token (the
  dense reference row gives the dense model's own);
* ``mean_tvd``: total variation distance between the dense and the backend's next-token
  distributions, mean over target positions;
* ``jsd``: Jensen-Shannon divergence (nats, <= ln 2) between dense and backend attention rows at the
  swapped sites (real query rows and keys, mean over heads, rows and the swapped layers);
* explanation agreement, Kendall tau-b between the token scores under dense attention and under
  the backend, per target position, then averaged: ``tau_cross_raw`` (the source-token scores
  given by the cross-attention row of that position, mean over heads and decoder layers; special
  tokens left out), ``tau_cross_effective`` (the same with effective attention, Brunner et al.
  2020), ``tau_self_raw`` (scores of the earlier decoder positions from the decoder's causal
  self-attention row; the first position, which sees one key, gives no ranking);
* ``memory``: ``backend.memory_fraction`` at the swapped sites (n x m of that pattern at the example's
  real lengths; causal for causal self-attention), mean over examples;
* ``status``: ``ok``, or ``refused: <the backend's reason>`` where a mechanism cannot compute the
  pattern (Nystrom landmarks in causal self-attention raise
  :class:`~attnexplain.errors.UnsupportedPatternError`); a refused row has no figures.

A ``dense`` backend in the list is the sanity check: every agreement is exactly 1 and every
distance 0. Patterns a model does not have are not run (a standard encoder-decoder has no causal
cross-attention: its decoder sees the whole source; CAB's causal cross pattern is tested per
backend on tensors in ``tests/test_backend_patterns.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.spec import BackendConfig, BackendSpecError, parse_backend, resolve_memory
from ..errors import ArgumentError
from .markdown import format_markdown_table

__all__ = ["PatternComparison", "compare_patterns_seq2seq", "model_patterns", "pattern_of_site",
           "SEQ2SEQ_DEFAULT_BACKENDS"]

#: what ``compare-backends`` runs on an encoder-decoder when no ``--backend`` is given: each
#: registered mechanism once, at settings that approximate at ~10 tokens
SEQ2SEQ_DEFAULT_BACKENDS = (
    "dense",
    "smyrf:n_hashes=2,q_cluster_size=4,k_cluster_size=4",
    "lsh:n_hashes=2,bucket_size=4",
    "performer:n_features=32",
    "linear",
    "nystrom:n_landmarks=4",
    "local:window=2",
)

_PATTERN_ORDER = ("noncausal_self", "causal_self", "noncausal_cross", "causal_cross")


def pattern_of_site(site: Any) -> str:
    """CAB's pattern of an attention site: ``causal_`` when its module is causal (``is_causal``,
    as transformers sets it on decoder self-attention), ``noncausal_`` otherwise, then the site's
    kind (``self`` / ``cross``)."""
    causal = bool(getattr(getattr(site, "module", None), "is_causal", False))
    return f"{'causal' if causal else 'noncausal'}_{site.kind}"


def model_patterns(model: Any) -> dict[str, list[str]]:
    """The attention patterns a model holds: pattern -> its site keys (sorted), in CAB's order."""
    from ..capturing.adapters import find_attention_sites
    from ..models import torch_module

    module = torch_module(model)
    try:
        sites = list(find_attention_sites(module).values())
    except ValueError:  # no adapter rule matches: only marked sites
        sites = []
    for m in module.modules():
        marked = getattr(m, "_attnexplain_site", None)
        if marked is not None and all(marked.key != s.key for s in sites):
            sites.append(marked)
    out: dict[str, list[str]] = {}
    for s in sites:
        out.setdefault(pattern_of_site(s), []).append(s.key)
    return {p: sorted(out[p]) for p in _PATTERN_ORDER if p in out}


@dataclass
class PatternComparison:
    """Result of :func:`compare_patterns_seq2seq`.

    Attributes:
        summary: one row per (backend, pattern), after the dense reference row: ``backend``,
            ``name``, ``options`` (JSON), ``pattern``, ``sites``, ``status``, ``n_examples``,
            ``n_positions``, ``agreement``, ``token_accuracy``, ``mean_tvd``, ``jsd``,
            ``tau_cross_raw``, ``tau_cross_effective``, ``tau_self_raw``, ``memory``, ``seconds``.
        per_example: one row per (backend, pattern, example) that ran.
        meta: settings (model, task, lengths, backends, patterns).
    """

    summary: Any
    per_example: Any
    meta: dict[str, Any] = field(default_factory=dict)
    #: the table's columns, headers and legend when the summary is not the encoder-decoder's (the set
    #: decoder's, :mod:`attnexplain.runs.set_decoder_backends`); None: the encoder-decoder's
    view: dict[str, Any] | None = None

    def to_markdown(self, *, digits: int = 3, title: str | None = None, notes: Sequence[str] = ()) -> str:
        """The summary as a Markdown table plus a legend."""
        lines = [f"### {title}", ""] if title else []
        if self.view is not None:
            lines.append(format_markdown_table(self.summary[self.view["columns"]], headers=self.view["headers"],
                                               digits=digits))
            lines += ["", self.view["legend"], *[str(x) for x in notes]]
            return "\n".join(lines) + "\n"
        cols = ["backend", "pattern", "status", "agreement", "token_accuracy", "mean_tvd", "jsd",
                "tau_cross_raw", "tau_cross_effective", "tau_self_raw", "memory"]
        headers = {"agreement": "next-token agreement", "token_accuracy": "token accuracy", "mean_tvd": "output TVD",
                   "jsd": "JSD (swapped sites)", "tau_cross_raw": "tau cross raw",
                   "tau_cross_effective": "tau cross effective", "tau_self_raw": "tau self raw",
                   "memory": "memory (share of dense scores)"}
        lines.append(format_markdown_table(self.summary[cols], headers=headers, digits=digits))
        lines += ["", "Legend: each row swaps one backend into every site of one attention pattern (the other sites "
                  "stay dense) and runs the model with teacher forcing on the gold targets. next-token agreement = "
                  "share of target positions whose argmax token equals dense; token accuracy = share equal to the gold "
                  "token; output TVD = mean total variation distance between dense and backend next-token "
                  "distributions; JSD = mean Jensen-Shannon divergence (nats, max 0.693) between dense and backend "
                  "attention rows at the swapped sites; tau = mean Kendall tau-b between the token scores under dense "
                  "and under the backend, per target position (cross: source tokens from the cross-attention row, raw "
                  "or effective, mean over heads and decoder layers; self: earlier target positions from the decoder's "
                  "causal self-attention row); memory = backend.memory_fraction at the swapped sites (above 1 where a "
                  "kernel's feature maps outgrow the n x m scores of short inputs); refused = the mechanism cannot "
                  "compute the pattern (the backend's own message). JSD is left empty where implied rows have negative "
                  "entries (Nystrom): it is defined for distributions only. Effective attention equals raw attention "
                  "while a row has no more keys than the head dimension (Brunner et al. 2020), so the two cross taus "
                  "coincide on short sources."]
        lines += [str(x) for x in notes]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# one teacher-forced run and its measures
# --------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one teacher-forced run of a batch leaves for the comparison (per example, real rows only)."""

    probs: list[np.ndarray]  # (N_i, V) next-token distributions at the target positions
    pred: list[np.ndarray]  # (N_i,)
    cross_raw: list[np.ndarray]  # (N_i, S_i) source scores (special tokens left out)
    cross_eff: list[np.ndarray]
    self_raw: list[np.ndarray]  # (N_i, N_i) lower triangle: decoder self rows over positions 0..t
    rows: dict[str, list[np.ndarray]]  # site key -> per example (H, rows, keys) attention, real rows/keys


def _teacher_forced(lm: Any, sources: list[str], targets: list[str]) -> tuple[_Run, Any]:
    import torch

    from ..generation import generate
    from ..methods.special_tokens import special_token_mask

    gen = generate(lm, sources, target=targets)
    B, N = gen.generated_ids.shape
    n_tgt = gen.generated_mask.sum(-1).tolist()
    src_mask = gen.attention_mask
    n_src = src_mask.sum(-1).tolist()
    specials = special_token_mask(lm, gen.input_ids, src_mask, attention_sink=False)
    probs = torch.softmax(gen.logits.float(), dim=-1)
    dec_layers = gen.layers("decoder", "cross")
    cross = torch.stack([gen.attention(l, stack="decoder", kind="cross") for l in dec_layers]).mean(0).mean(1)  # (B, n, m)
    cross_eff = torch.stack([gen.effective_attention(l, stack="decoder", kind="cross")
                             for l in dec_layers]).mean(0).mean(1)
    selfa = torch.stack([gen.attention(l, stack="decoder", kind="self")
                         for l in gen.layers("decoder", "self")]).mean(0).mean(1)  # (B, n, n)
    out = _Run([], [], [], [], [], {})
    for i in range(B):
        t = int(n_tgt[i])
        real_src = src_mask[i].bool().nonzero().flatten()
        keep = real_src[torch.as_tensor(~specials[i])] if (~specials[i]).any() else real_src
        out.probs.append(probs[i, :t].double().cpu().numpy())
        out.pred.append(probs[i, :t].argmax(-1).cpu().numpy())
        out.cross_raw.append(cross[i, :t][:, keep].double().cpu().numpy())
        out.cross_eff.append(cross_eff[i, :t][:, keep].double().cpu().numpy())
        out.self_raw.append(selfa[i, :t, :t].double().cpu().numpy())
    for key in gen.site_keys:
        site = gen.sites[key]
        A = gen.attention(site.layer, stack=site.stack, kind=site.kind)
        per = []
        for i in range(B):
            t, s = int(n_tgt[i]), src_mask[i].bool()
            if site.stack == "decoder":
                rows = torch.arange(t, device=A.device)
                keys = s.nonzero().flatten() if site.kind == "cross" else torch.arange(t, device=A.device)
            else:
                rows = keys = s.nonzero().flatten()
            per.append(A[i].index_select(-2, rows.to(A.device)).index_select(-1, keys.to(A.device)).double().cpu().numpy())
        out.rows[key] = per
    return out, (n_src, n_tgt)


def _row_taus(a: np.ndarray, b: np.ndarray, *, causal: bool = False) -> float:
    from ..metrics import kendall_tau

    taus = []
    for t in range(a.shape[0]):
        x, y = (a[t, : t + 1], b[t, : t + 1]) if causal else (a[t], b[t])
        taus.append(kendall_tau(x, y))
    taus = [x for x in taus if not np.isnan(x)]
    return float(np.mean(taus)) if taus else float("nan")


def _measures(ref: _Run, alt: _Run, i: int, gold: np.ndarray, swapped: list[str]) -> dict[str, float]:
    from ..metrics import jsd, tvd

    js = [float(jsd(ref.rows[k][i], alt.rows[k][i]).mean()) for k in swapped]
    return {
        "agree": float((alt.pred[i] == ref.pred[i]).mean()),
        "token_accuracy": float((alt.pred[i] == gold).mean()),
        "tvd": float(tvd(ref.probs[i], alt.probs[i]).mean()),
        "jsd": float(np.mean(js)) if js else float("nan"),
        "tau_cross_raw": _row_taus(ref.cross_raw[i], alt.cross_raw[i]),
        "tau_cross_effective": _row_taus(ref.cross_eff[i], alt.cross_eff[i]),
        "tau_self_raw": _row_taus(ref.self_raw[i], alt.self_raw[i], causal=True),
    }


def _memory(backend: Any, pattern: str, n_src: int, n_dec: int) -> float:
    if pattern == "noncausal_self":
        return float(backend.memory_fraction(n_src, n_src))
    if pattern == "causal_self":
        return float(backend.memory_fraction(n_dec, n_dec, causal=True))
    return float(backend.memory_fraction(n_dec, n_src))


# --------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------


def swapped_runs(model: Any, configs: Sequence[BackendConfig], built: Sequence[Any], patterns: Sequence[str],
                 sites: dict[str, list[str]], run: Callable[[], Any], refused: dict[tuple[str, str], str],
                 seconds: dict[tuple[str, str], float], short_reason: Callable[[str], str]):
    """For one batch: each backend swapped into the sites of each pattern in turn (the rest unchanged),
    ``run()`` under it; yields ``(config, backend, pattern, output)``.

    A (backend, pattern) pair the backend refuses (:class:`~attnexplain.errors.UnsupportedPatternError`)
    is recorded once in ``refused`` (``short_reason`` of the message) and skipped in later batches;
    ``seconds`` accumulates each pair's run time. Shared by :func:`compare_patterns_seq2seq` and the set
    decoder's comparison (:mod:`attnexplain.runs.set_decoder_backends`)."""
    from ..capturing.attention import backend_at_sites
    from ..errors import UnsupportedPatternError

    for cfg, backend in zip(configs, built):
        for pattern in patterns:
            key = (cfg.display, pattern)
            if key in refused:
                continue
            t0 = time.perf_counter()
            try:
                with backend_at_sites(model, backend, sites[pattern]):
                    out = run()
            except UnsupportedPatternError as exc:
                refused[key] = short_reason(str(exc))
                continue
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t0
            yield cfg, backend, pattern, out


def compare_patterns_seq2seq(
    lm: Any,
    sources: Sequence[str],
    targets: Sequence[str],
    backends: Sequence[Any] = SEQ2SEQ_DEFAULT_BACKENDS,
    *,
    patterns: Sequence[str] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> PatternComparison:
    """Swap each backend into each attention pattern of an encoder-decoder, one pattern at a time,
    and compare outputs and explanations with dense attention (see the module docs).

    Args:
        lm: a :class:`~attnexplain.models.LoadedModel` with task ``"seq2seq"`` (e.g.
            ``load_model_for_run("tiny-seq2seq-reverse")``).
        sources / targets: the encoder inputs and the gold continuations (teacher forcing).
        backends: backend specifications (:func:`attnexplain.backends.spec.parse_backend`); SMYRF's
            ``memory=<share>`` is resolved at the median source length.
        patterns: CAB pattern names to swap (default: every pattern the model has,
            :func:`model_patterns`).
        batch_size: examples per forward pass.

    Returns:
        :class:`PatternComparison`.

    Raises:
        BackendSpecError: a backend that cannot be built; ArgumentError: a model that is not an
            encoder-decoder, a pattern the model does not have, sources and targets of different
            lengths (all before anything runs).
    """
    import pandas as pd

    from ..capturing.attention import running_backend

    if getattr(lm, "task", None) != "seq2seq":
        raise ArgumentError(f"compare_patterns_seq2seq needs an encoder-decoder (task 'seq2seq'), got "
                            f"{getattr(lm, 'name', 'model')!r} with task {getattr(lm, 'task', None)!r}")
    sources, targets = list(sources), list(targets)
    if not sources or len(sources) != len(targets):
        raise ArgumentError(f"need as many targets as sources (> 0); got {len(sources)} sources, {len(targets)} targets")
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
    have = model_patterns(lm)
    if patterns is None:
        patterns = list(have)
    patterns = list(patterns)
    missing = [p for p in patterns if p not in have]
    if missing:
        raise ArgumentError(f"{lm.name} has no {', '.join(missing)} attention; its patterns: {', '.join(have)}")
    if isinstance(backends, (str, BackendConfig)):
        backends = [backends]
    configs = [parse_backend(b) for b in backends]
    if not configs:
        raise BackendSpecError("no backends to compare")
    src_lens = [len(x) for x in lm.tokenizer(sources, add_special_tokens=True)["input_ids"]]
    n_ref = int(np.median(src_lens))
    configs = [resolve_memory(c, n_ref) for c in configs]
    if len({c.display for c in configs}) != len(configs):
        configs = [BackendConfig(c.name, c.options, f"{c.display} #{i}") for i, c in enumerate(configs)]
    built = [c.build() for c in configs]
    from ..generation.decoding import continuation_ids

    gold_ids = [np.asarray(continuation_ids(lm, s, t)) for s, t in zip(sources, targets)]  # as generate() forces them

    order = sorted(range(len(sources)), key=lambda i: src_lens[i])
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    it: Any = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="compare patterns", unit="batch")
    rows: list[dict[str, Any]] = []
    refused: dict[tuple[str, str], str] = {}
    seconds: dict[tuple[str, str], float] = {}
    ref_rows: list[dict[str, Any]] = []
    with running_backend(lm, "dense"):
        for idx in it:
            src = [sources[i] for i in idx]
            tgt = [targets[i] for i in idx]
            ref, (n_src, n_tgt) = _teacher_forced(lm, src, tgt)
            for j, ex in enumerate(idx):
                ref_rows.append({"example": ex, "token_accuracy": float((ref.pred[j] == gold_ids[ex]).mean()),
                                 "n_positions": int(n_tgt[j])})
            for cfg, backend, pattern, (alt, _) in swapped_runs(
                    lm, configs, built, patterns, have, lambda: _teacher_forced(lm, src, tgt), refused, seconds,
                    lambda msg: msg.split(";")[0].split(". ")[0]):
                for j, ex in enumerate(idx):
                    row = {"backend": cfg.display, "pattern": pattern, "example": ex,
                           "n_source": int(n_src[j]), "n_positions": int(n_tgt[j])}
                    row.update(_measures(ref, alt, j, gold_ids[ex], have[pattern]))
                    row["memory"] = _memory(backend, pattern, int(n_src[j]), int(n_tgt[j]) + 1)
                    rows.append(row)
    per = pd.DataFrame(rows, columns=["backend", "pattern", "example", "n_source", "n_positions", "agree",
                                      "token_accuracy", "tvd", "jsd", "tau_cross_raw", "tau_cross_effective",
                                      "tau_self_raw", "memory"])
    ref_df = pd.DataFrame(ref_rows)
    summary = [{"backend": "dense (reference)", "name": "dense", "options": "{}", "pattern": "all", "sites": "all",
                "status": "reference", "n_examples": len(ref_df), "n_positions": int(ref_df["n_positions"].sum()),
                "token_accuracy": _pooled(ref_df, "token_accuracy"), "memory": 1.0}]
    for cfg in configs:
        for pattern in patterns:
            key = (cfg.display, pattern)
            r: dict[str, Any] = {"backend": cfg.display, "name": cfg.name,
                                 "options": json.dumps(dict(cfg.options), sort_keys=True), "pattern": pattern,
                                 "sites": ", ".join(have[pattern])}
            if key in refused:
                r.update(status=f"refused: {refused[key]}", n_examples=0, n_positions=0)
            else:
                sub = per[(per["backend"] == cfg.display) & (per["pattern"] == pattern)]
                r.update(status="ok", n_examples=len(sub), n_positions=int(sub["n_positions"].sum()))
                for col in ("agree", "token_accuracy", "tvd"):
                    r[{"agree": "agreement", "tvd": "mean_tvd"}.get(col, col)] = _pooled(sub, col)
                for col in ("jsd", "tau_cross_raw", "tau_cross_effective", "tau_self_raw", "memory"):
                    vals = sub[col].to_numpy(dtype=float)
                    r[col] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
                r["seconds"] = round(seconds.get(key, 0.0), 2)
            summary.append(r)
    cols = ["backend", "name", "options", "pattern", "sites", "status", "n_examples", "n_positions", "agreement",
            "token_accuracy", "mean_tvd", "jsd", "tau_cross_raw", "tau_cross_effective", "tau_self_raw", "memory",
            "seconds"]
    summary_df = pd.DataFrame(summary).reindex(columns=cols)
    meta = {"model": getattr(lm, "name", "model"), "n_examples": len(sources), "median_source_tokens": n_ref,
            "min_source_tokens": int(min(src_lens)), "max_source_tokens": int(max(src_lens)),
            "patterns": {p: have[p] for p in patterns}, "patterns_in_model": list(have),
            "backends": [{"label": c.display, "name": c.name, "options": dict(c.options)} for c in configs],
            "refused": {f"{b} / {p}": why for (b, p), why in refused.items()}}
    return PatternComparison(summary=summary_df, per_example=per, meta=meta)


def _pooled(df: Any, col: str) -> float:
    """Mean over target positions (examples weighted by their number of positions)."""
    w = df["n_positions"].to_numpy(dtype=float)
    v = df[col].to_numpy(dtype=float)
    return float((v * w).sum() / w.sum()) if w.sum() else float("nan")


# --------------------------------------------------------------------------------------------
# the command line (``attnexplain compare-backends`` with an encoder-decoder model)
# --------------------------------------------------------------------------------------------


def compare_patterns_cli(lm: Any, model: str, dataset: str, split: str, limit: int | None, backends: Sequence[Any] | None,
                         out: Any, *, patterns: Sequence[str] | None = None, batch_size: int = 32,
                         progress: bool = True) -> PatternComparison:
    """``compare-backends`` for an encoder-decoder: ``dataset`` is a digit task
    (:data:`attnexplain.data.seq2seq.SEQ2SEQ_TASKS`); writes ``table.md``, ``per_example.parquet``
    and ``manifest.json`` into ``out``."""
    from pathlib import Path

    from ..data.seq2seq import SEQ2SEQ_TASKS, load_seq2seq
    from .settings import package_versions

    if dataset not in SEQ2SEQ_TASKS:
        trained_on = _training_record(lm).get("dataset")
        hint = f"--dataset {trained_on} (the task it was trained on)" if trained_on in SEQ2SEQ_TASKS else \
            f"--dataset with one of {', '.join(SEQ2SEQ_TASKS)}"
        raise ArgumentError(f"{model} is an encoder-decoder (sequence-to-sequence) model; {dataset!r} is not a "
                            f"sequence-to-sequence task. Give {hint}")
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    ds = load_seq2seq(dataset, split=split)
    if limit is not None:
        ds = ds.head(int(limit))
    if not len(ds):
        raise ArgumentError(f"no examples in {dataset}/{split} (limit={limit})")
    cmp = compare_patterns_seq2seq(lm, ds.sources, ds.targets, backends or SEQ2SEQ_DEFAULT_BACKENDS,
                                   patterns=patterns, batch_size=batch_size, progress=progress)
    if len(cmp.per_example):
        cmp.per_example.insert(3, "id", [ds.ids[e] for e in cmp.per_example["example"]])
    runtime = time.perf_counter() - t_start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    absent = [p for p in _PATTERN_ORDER if p not in cmp.meta["patterns_in_model"]]
    notes = ["", f"Model `{model}`, data `{dataset}` split `{split}`, {len(ds)} examples, "
             f"{cmp.meta['min_source_tokens']}-{cmp.meta['max_source_tokens']} source tokens (median "
             f"{cmp.meta['median_source_tokens']}); runtime {runtime:.0f} s."]
    if absent:
        notes.append(f"Not in this model: {', '.join(absent)} (a standard encoder-decoder's cross-attention sees the "
                     "whole source).")
    (out / "table.md").write_text(cmp.to_markdown(title=f"Dense vs efficient attention per pattern: {model} on "
                                                        f"{dataset}/{split}", notes=notes))
    cmp.per_example.to_parquet(out / "per_example.parquet", index=False)
    manifest = {"command": "compare-backends", "model": model, "dataset": dataset, "split": split, "limit": limit,
                "n_examples": len(ds), "example_ids": list(ds.ids), "batch_size": batch_size, "meta": cmp.meta,
                "summary": json.loads(cmp.summary.to_json(orient="records")), "versions": package_versions(),
                "machine": _machine(), "started": started, "runtime_s": round(runtime, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return cmp


def _training_record(lm: Any) -> dict[str, Any]:
    """``attnexplain_training.json`` of the model's folder ({} when there is none)."""
    from pathlib import Path

    path = (getattr(lm, "extra", None) or {}).get("path")
    try:
        return json.loads((Path(path) / "attnexplain_training.json").read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        return {}


def _machine() -> dict[str, Any]:
    """CPU model (``/proc/cpuinfo``, else ``platform.processor()``), usable CPUs and the 1-minute load average."""
    import os
    import platform

    model = platform.processor()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 1
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        load = None
    return {"processor": model, "cpus": cpus, "load_average_1min": load}

"""Dense vs efficient attention on the same model and inputs: how much do predictions and
explanations move? (``attnexplain compare-backends``)

>>> from attnexplain.runs.backend_comparison import compare_backends, smyrf_config_for_share
>>> lm = attnexplain.load_model("minilm-bbc-news")
>>> cmp = compare_backends(lm, texts, ["smyrf:n_hashes=2,q_cluster_size=64,k_cluster_size=64",
...                                    smyrf_config_for_share(256, 0.25)], labels=labels, max_length=512)
>>> print(cmp.to_markdown())
>>> cmp.summary, cmp.per_example          # pandas DataFrames

What is compared, per example (dense attention is the reference, computed once per batch; every
efficient backend then runs on the same tokenized batch, and the model is switched back at the
end, also after an error):

* ``agree``: the predicted class equals the dense prediction.
* ``tvd``: total variation distance between the output distributions,
  ``1/2 sum_c |p_dense(c) - p_backend(c)|`` (last real position for per-position outputs).
* ``jsd_layer_l``: Jensen-Shannon divergence (natural log, ``<= ln 2``) between the dense row and
  the backend's implied row ``A_i.`` of layer ``l``, averaged over heads and over the example's
  real query rows (real keys only). Note the rows of layer ``l > 0`` differ for two reasons: the
  approximation itself, and inputs that already moved in the layers below (this is what a user of
  the efficient model sees). ``jsd_mean`` is the mean over layers.
* ``tau_<method>``: Kendall tau-b between the token scores of ``<method>`` (default the readout
  row of raw and of effective attention, as registered in :mod:`attnexplain.methods`) under dense
  attention and under the backend (1 = same ranking; ties, e.g. the zero weights of keys outside
  a SMYRF cluster, are handled by tau-b; NaN when a score vector is constant).
* ``memory``: ``backend.memory_fraction(n, n)``: the share of the n x n dense scores the backend
  computes at the example's real length ``n`` (1.0 for dense; SMYRF: ``n_hashes * C * q_block *
  k_block / n^2``).
* ``correct_dense`` / ``correct``: against gold labels when given (model label indices).

The summary has one row per backend configuration (means over examples; ``accuracy`` when labels
are given), preceded by the dense reference row (its accuracy, memory 1; distances left empty).

Backends are given in the one backend-spec syntax of :mod:`attnexplain.backends.spec`
(``"name"``, ``"name:key=value,key=value"``, ``(name, {options})``, a :class:`BackendConfig` or an
``AttentionBackend``). SMYRF's pseudo-option ``memory=<share>`` (``"smyrf:memory=0.25"``) is
resolved at the median real length of the inputs. An unknown backend, an unknown option or a
malformed string raises :class:`BackendSpecError` (a ``ValueError``) before anything runs.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models import LoadedModel
from ..backends.spec import (
    BackendConfig,
    BackendSpecError,
    parse_backend,
    resolve_memory,
    smyrf_cluster_size,
    smyrf_config_for_share,
)
from ..errors import ArgumentError
from ..methods.base import DEFAULT_EXPLAIN_METHODS
from .markdown import format_markdown_table


__all__ = [
    "BackendComparison",
    "BackendConfig",
    "BackendSpecError",
    "parse_backend",
    "smyrf_cluster_size",
    "smyrf_config_for_share",
    "compare_backends",
    "compare_backends_cli",
    "format_markdown_table",
]

DEFAULT_METHODS = DEFAULT_EXPLAIN_METHODS


# --------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------


@dataclass
class BackendComparison:
    """Result of :func:`compare_backends`.

    Attributes:
        summary: one row per backend configuration (the dense reference first): ``backend``
            (label), ``name``, ``options`` (JSON), ``n_examples``, ``accuracy`` (with labels),
            ``agreement``, ``mean_tvd``, ``jsd_layer_0..L-1``, ``jsd_mean``, ``tau_<method>``,
            ``memory``, ``seconds`` (wall time of that backend's capture + explanations).
        per_example: one row per (backend, example): ``backend``, ``example`` (index into the
            given texts), ``n_tokens``, ``label``, ``pred_dense``, ``pred``, ``agree``, ``tvd``,
            ``jsd_layer_l``, ``jsd_mean``, ``tau_<method>``, ``memory``, ``correct_dense``, ``correct``.
        meta: settings (model, lengths, methods, backends with options).
    """

    summary: Any
    per_example: Any
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return sum(1 for c in self.summary.columns if str(c).startswith("jsd_layer_"))

    def to_markdown(self, *, digits: int = 3, title: str | None = None, notes: Sequence[str] = ()) -> str:
        """The summary as a Markdown table (plus a short legend)."""
        s = self.summary
        methods = [c for c in s.columns if str(c).startswith("tau_")]
        cols = ["backend", "n_examples"]
        if "accuracy" in s.columns:
            cols.append("accuracy")
        cols += ["agreement", "mean_tvd", *[f"jsd_layer_{l}" for l in range(self.num_layers)], "jsd_mean",
                 *methods, "memory"]
        headers = {"n_examples": "n", "agreement": "pred. agreement", "mean_tvd": "output TVD",
                   "memory": "memory (share of dense scores)", "jsd_mean": "JSD mean"}
        for l in range(self.num_layers):
            headers[f"jsd_layer_{l}"] = f"JSD L{l}"
        for m in methods:
            headers[m] = f"tau {m[4:]}"
        lines = []
        if title:
            lines += [f"### {title}", ""]
        lines.append(format_markdown_table(s[cols], headers=headers, digits=digits))
        lines += ["", "Legend: pred. agreement = share of examples whose predicted class equals dense; output TVD = "
                  "mean total variation distance between dense and backend class probabilities; JSD Ll = mean "
                  "Jensen-Shannon divergence (nats, max ln 2 = 0.693) between dense and backend attention rows of "
                  "layer l (real query rows and keys, mean over heads); tau = mean Kendall tau-b between the token "
                  "rankings (readout row) under dense and under the backend; memory = backend.memory_fraction(n, n) "
                  "at each example's real length, averaged."]
        lines += [f"{x}" for x in notes]
        return "\n".join(lines) + "\n"


def _probs_of(cap: Any, batch: Mapping[str, Any]):
    import torch

    logits = cap.logits
    if logits is None:
        raise ValueError("the model returned no logits; compare_backends needs a model with an output distribution")
    if logits.dim() == 3:  # per-position outputs: the last real position
        mask = batch.get("attention_mask")
        last = (mask.long().cumsum(-1).argmax(-1) if mask is not None
                else torch.full((logits.shape[0],), logits.shape[1] - 1))
        logits = logits[torch.arange(logits.shape[0]), last]
    return torch.softmax(logits.float(), dim=-1)


def _layer_jsd(cap_ref: Any, cap_alt: Any, mask: Any) -> np.ndarray:
    """(B, L): mean JSD over heads and real query rows between the two captures, per layer."""
    import torch

    from ..metrics import jsd

    layers = cap_ref.layers()
    if cap_alt.layers() != layers:
        raise ValueError(f"the two captures hold different layers: {layers} vs {cap_alt.layers()}")
    out = None
    for li, l in enumerate(layers):
        a = cap_ref.attention(l)
        b = cap_alt.attention(l)
        B, n = a.shape[0], a.shape[-1]
        if out is None:
            out = np.zeros((B, len(layers)))
        for i in range(B):
            idx = (mask[i].bool().nonzero().flatten() if mask is not None else torch.arange(n)).to(a.device)
            ai = a[i].index_select(-2, idx).index_select(-1, idx).double()
            bi = b[i].index_select(-2, idx).index_select(-1, idx).double()
            out[i, li] = float(jsd(ai, bi).mean())
    return out


def _effective_scores(lm: LoadedModel, cap: Any, batch: Mapping[str, Any]) -> list[np.ndarray]:
    """The registry's ``effective_attention`` scores (default options: readout "auto", mean over
    heads and all layers), computed with :func:`attnexplain.functional.effective_attention_from_values`
    (QR of the n x d_h values instead of the SVD of the n x d value transforms; same basis, same
    rank tolerance ``max(n, d) * eps32``): ~50x faster at hundreds of tokens. Checked against the
    registry method in tests/test_compare.py."""
    import torch

    from ..methods.attention_methods import readout_rows, resolve_readout
    from ..functional import effective_attention_from_values

    readout = resolve_readout("auto", lm, cap)
    layers = cap.layers()
    mask = cap.attention_mask if cap.attention_mask is not None else batch.get("attention_mask")
    sums: list[Any] = []
    for li, l in enumerate(layers):
        A = cap.attention(l)
        V = cap.values(l)
        W = cap.out_proj_blocks(l)
        B, n = A.shape[0], A.shape[-1]
        if li == 0:
            sums = [None] * B
        for i in range(B):
            idx = (mask[i].bool().nonzero().flatten() if mask is not None else torch.arange(n)).to(A.device)
            rows = readout_rows(readout, idx.numel())
            Ai = A[i].index_select(-1, idx)[:, [int(idx[r]) for r in rows], :].float()
            Vi = V[i].index_select(-2, idx.to(V.device)).float()
            s = effective_attention_from_values(Ai, Vi, W.float()).mean(1).mean(0)
            sums[i] = s if sums[i] is None else sums[i] + s
    return [(s / len(layers)).detach().double().cpu().numpy() for s in sums]


#: methods computed here by an equivalent, faster route (default options only)
_FAST_METHODS = {"effective_attention": _effective_scores}


def _scores(lm: LoadedModel, batch: Mapping[str, Any], methods: Sequence[str], cap: Any) -> dict[str, list[np.ndarray]]:
    from ..methods import explain_batch

    slow = [m for m in methods if m not in _FAST_METHODS]
    out: dict[str, list[np.ndarray]] = {}
    if slow:
        out.update(explain_batch(lm, batch, slow, capture_result=cap)[0])
    for m in methods:
        if m in _FAST_METHODS:
            out[m] = _FAST_METHODS[m](lm, cap, batch)
    return out


def _n_real(batch: Mapping[str, Any]) -> list[int]:
    mask = batch.get("attention_mask")
    if mask is None:
        return [int(batch["input_ids"].shape[1])] * int(batch["input_ids"].shape[0])
    return [int(x) for x in mask.sum(-1).tolist()]


def compare_backends(
    lm: LoadedModel,
    texts: Sequence[str],
    backends: Sequence[Any],
    *,
    labels: Sequence[int] | None = None,
    batch_size: int = 4,
    max_length: int | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    progress: bool = True,
    sort_by_length: bool = True,
) -> BackendComparison:
    """Compare efficient attention backends with dense attention on ``texts`` (see the module docs).

    Args:
        lm: a :class:`~attnexplain.models.LoadedModel` (a classifier, or any model with logits).
        texts: the inputs.
        backends: backend specifications (strings ``"smyrf:n_hashes=2,q_cluster_size=64,
            k_cluster_size=64"``, ``(name, options)``, :class:`BackendConfig`...). ``"dense"`` is
            allowed (a sanity check: distances 0, agreement 1).
        labels: gold class indices in the model's label space, for accuracy.
        batch_size: texts per forward pass (each pass captures every layer and head:
            ``L x H x n^2`` floats per example and backend; MiniLM at 512 tokens: 75 MB).
        max_length: truncate inputs to this many tokens (default: the model's maximum).
        methods: explanation methods whose token rankings are compared (Kendall tau).
        progress: a tqdm bar over batches on stderr.
        sort_by_length: batch texts of similar length together (less padding); results keep
            the order of ``texts``.

    Returns:
        :class:`BackendComparison`.

    Raises:
        BackendSpecError: a backend that cannot be built (before anything runs).
    """
    import pandas as pd

    from ..capturing import capture
    from ..capturing.attention import running_backend
    from ..methods import get_method
    from ..metrics import kendall_tau, tvd

    texts = list(texts)
    if not texts:
        raise ValueError("no texts given")
    if isinstance(backends, (str, BackendConfig)) or (isinstance(backends, tuple) and len(backends) == 2
                                                       and isinstance(backends[1], Mapping)):
        backends = [backends]
    configs = [parse_backend(b) for b in backends]
    if not configs:
        raise BackendSpecError("no backends to compare")
    if labels is not None:
        labels = [int(y) for y in labels]
        if len(labels) != len(texts):
            raise ValueError(f"{len(labels)} labels for {len(texts)} texts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for m in methods:
        if not isinstance(m, str):
            raise TypeError(f"methods are registry names (str), got {m!r}")
        get_method(m)  # unknown names fail here, before anything runs
    methods = list(methods)

    # lengths (for sorting and for memory= budgets)
    limit = min(max_length or lm.max_length, lm.max_length)
    full = lm.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
    lengths = [len(x) for x in full]
    n_ref = int(np.median(lengths))
    configs = [resolve_memory(c, n_ref) for c in configs]
    built = [c.build() for c in configs]
    labels_seen = [c.display for c in configs]
    if len(set(labels_seen)) != len(labels_seen):  # make row names unique
        configs = [BackendConfig(c.name, c.options, f"{c.display} #{i}") for i, c in enumerate(configs)]

    order = sorted(range(len(texts)), key=lambda i: lengths[i]) if sort_by_length else list(range(len(texts)))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    it: Any = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="compare_backends", unit="batch")

    rows: list[dict[str, Any]] = []
    seconds = {"dense": 0.0, **{c.display: 0.0 for c in configs}}
    num_layers = None
    with running_backend(lm, "dense"):  # the model's own backend is restored at the end, also after an error
        for idx in it:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                batch = lm.tokenize([texts[i] for i in idx], max_length=limit, on_long="truncate")
            n_real = _n_real(batch)
            mask = batch.get("attention_mask")
            t0 = time.perf_counter()
            cap_ref = capture(lm, batch)  # dense: each backend below is left again after its block
            p_ref = _probs_of(cap_ref, batch)
            pred_ref = p_ref.argmax(-1).tolist()
            sc_ref = _scores(lm, batch, methods, cap_ref)
            seconds["dense"] += time.perf_counter() - t0
            num_layers = len(cap_ref.layers())
            for i, ex in enumerate(idx):
                rows.append({"backend": "dense (reference)", "example": ex, "n_tokens": n_real[i],
                             "label": labels[ex] if labels is not None else None, "pred_dense": pred_ref[i],
                             "pred": pred_ref[i], "memory": 1.0, "_ref": True})
            for cfg, backend in zip(configs, built):
                t0 = time.perf_counter()
                with running_backend(lm, cfg.name, **dict(cfg.options)):
                    cap = capture(lm, batch)
                    p = _probs_of(cap, batch)
                    pred = p.argmax(-1).tolist()
                    sc = _scores(lm, batch, methods, cap)
                js = _layer_jsd(cap_ref, cap, mask)
                seconds[cfg.display] += time.perf_counter() - t0
                dist = tvd(p_ref.double(), p.double()).tolist()
                for i, ex in enumerate(idx):
                    row = {"backend": cfg.display, "example": ex, "n_tokens": n_real[i],
                           "label": labels[ex] if labels is not None else None, "pred_dense": pred_ref[i],
                           "pred": pred[i], "agree": float(pred[i] == pred_ref[i]), "tvd": float(dist[i])}
                    for l in range(js.shape[1]):
                        row[f"jsd_layer_{l}"] = float(js[i, l])
                    row["jsd_mean"] = float(js[i].mean())
                    for m in methods:
                        row[f"tau_{m}"] = kendall_tau(sc_ref[m][i], sc[m][i])
                    row["memory"] = float(backend.memory_fraction(n_real[i], n_real[i]))
                    row["_ref"] = False
                    rows.append(row)
                del cap
            del cap_ref

    per = pd.DataFrame(rows)
    if labels is not None:
        per["correct_dense"] = (per["pred_dense"] == per["label"]).astype(float)
        per["correct"] = (per["pred"] == per["label"]).astype(float)
    jsd_cols = [f"jsd_layer_{l}" for l in range(num_layers or 0)]
    tau_cols = [f"tau_{m}" for m in methods]
    summary_rows = []
    for label_ in ["dense (reference)"] + [c.display for c in configs]:
        sub = per[per["backend"] == label_]
        cfg = None if label_ == "dense (reference)" else next(c for c in configs if c.display == label_)
        r: dict[str, Any] = {"backend": label_, "name": "dense" if cfg is None else cfg.name,
                             "options": json.dumps({} if cfg is None else dict(cfg.options), sort_keys=True),
                             "n_examples": int(len(sub))}
        if labels is not None:
            r["accuracy"] = float(sub["correct"].mean())
        for col in ["agree", "tvd", *jsd_cols, "jsd_mean", *tau_cols]:
            r[{"agree": "agreement", "tvd": "mean_tvd"}.get(col, col)] = (
                float("nan") if cfg is None or col not in sub else float(np.nanmean(sub[col].to_numpy(dtype=float))))
        r["memory"] = float(sub["memory"].mean())
        r["seconds"] = round(seconds["dense" if cfg is None else label_], 2)
        summary_rows.append(r)
    summary = pd.DataFrame(summary_rows)
    per = per.drop(columns=["_ref"]).sort_values(["backend", "example"], key=lambda s: s.map(
        {"dense (reference)": -1, **{c.display: i for i, c in enumerate(configs)}}) if s.name == "backend" else s)
    per = per.reset_index(drop=True)
    meta = {
        "model": getattr(lm, "name", "model"), "num_layers": num_layers, "max_length": limit,
        "n_texts": len(texts), "median_tokens": n_ref, "min_tokens": int(min(lengths)), "max_tokens": int(max(lengths)),
        "methods": methods, "batch_size": batch_size,
        "backends": [{"label": c.display, "name": c.name, "options": dict(c.options)} for c in configs],
        "labels_given": labels is not None,
    }
    return BackendComparison(summary=summary, per_example=per, meta=meta)


# --------------------------------------------------------------------------------------------
# the CLI entry point
# --------------------------------------------------------------------------------------------


def compare_backends_cli(
    model: str,
    dataset: str,
    split: str = "test",
    limit: int | None = 100,
    backends: Sequence[Any] | str | None = None,
    out: str | Path = "compare_backends",
    *,
    max_length: int | None = None,
    min_tokens: int | None = None,
    batch_size: int | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    progress: bool = True,
    label_map: Mapping[str, str] | None = None,
    patterns: Sequence[str] | None = None,
) -> Any:
    """``attnexplain compare-backends``: load ``model`` and ``dataset``, run :func:`compare_backends`
    and write ``table.md``, ``per_example.parquet`` and ``manifest.json`` into ``out``.

    Args:
        model: a model name for ``load_model`` (or ``tiny-<task>`` prepared by ``prepare``).
        dataset / split: a data set name or file for ``load_dataset``.
        limit: compare at most this many examples (after the ``min_tokens`` filter).
        backends: specifications (see :func:`parse_backend`), or one string with ``;`` between them.
        max_length: truncate inputs to this many tokens (default: the model's maximum).
        min_tokens: keep only examples with at least this many tokens after truncation
            (e.g. 256 for the long-input report).
        label_map: dataset label name -> model label name, when the names differ (as ``analyze``).
        patterns: encoder-decoder models only: CAB's attention patterns to swap the backends into
            one at a time (default: every pattern the model has).

    An encoder-decoder model (task ``"seq2seq"``, e.g. ``tiny-seq2seq-reverse``) is compared pattern
    by pattern on a digit task by :func:`attnexplain.runs.pattern_comparison.compare_patterns_cli`
    (default backends :data:`~attnexplain.runs.pattern_comparison.SEQ2SEQ_DEFAULT_BACKENDS`) and a
    :class:`~attnexplain.runs.pattern_comparison.PatternComparison` is returned; a classifier gives a
    :class:`BackendComparison` (default backends: SMYRF at 50 % and 25 % memory).
    """
    import platform

    from ..data import load_dataset
    from .analyze import load_model_for_run  # looked up there, so tests can replace it
    from .settings import package_versions, resolve_label_map

    if isinstance(backends, str):
        backends = [b for b in backends.split(";") if b.strip()]
    configs = [parse_backend(b) for b in backends] if backends else None  # fail fast, before loading anything
    if patterns is not None:
        from .pattern_comparison import _PATTERN_ORDER

        bad = [p for p in patterns if p not in _PATTERN_ORDER]
        if bad:
            raise ArgumentError(f"unknown attention pattern(s) {', '.join(bad)}; use {', '.join(_PATTERN_ORDER)}")
    from .set_decoder_backends import compare_set_decoder_cli, set_decoder_path

    sd_path = set_decoder_path(model)
    if sd_path is not None:  # a trained learned-query set decoder (not a transformers model)
        return compare_set_decoder_cli(sd_path, model, dataset, split, limit, configs, out, patterns=patterns,
                                       batch_size=batch_size or 64, progress=progress)
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    lm = load_model_for_run(model)
    if lm.task == "seq2seq":
        from .pattern_comparison import compare_patterns_cli

        unused = [opt for opt, val in (("--max-length", max_length), ("--min-tokens", min_tokens),
                                       ("--label-map", label_map)) if val]
        if unused:
            raise ArgumentError(f"{', '.join(unused)} applies to classifiers; {model} is an encoder-decoder compared "
                                "on a digit task (leave the option out)")

        return compare_patterns_cli(lm, model, dataset, split, limit, configs, out, patterns=patterns,
                                    batch_size=batch_size or 32, progress=progress)
    if patterns is not None and list(patterns) != ["noncausal_self"]:
        raise ArgumentError(f"{model} is not an encoder-decoder: its attention is noncausal self-attention only; "
                            "--pattern applies to encoder-decoder models (e.g. tiny-seq2seq-reverse)")
    if configs is None:
        configs = [parse_backend(b) for b in ("smyrf:memory=0.5", "smyrf:memory=0.25")]
    batch_size = batch_size or 4
    ds = load_dataset(dataset, split=split)
    texts, labels = list(ds.texts), ds.labels
    limit_tokens = min(max_length or lm.max_length, lm.max_length)
    keep = list(range(len(texts)))
    if min_tokens:
        lens = [len(x) for x in lm.tokenizer(texts, truncation=True, max_length=limit_tokens)["input_ids"]]
        keep = [i for i in keep if lens[i] >= min_tokens]
    if limit is not None:
        keep = keep[: int(limit)]
    if not keep:
        raise ValueError(f"no examples of {dataset}/{split} left (min_tokens={min_tokens}, limit={limit})")
    mapped = None
    if labels is not None and lm.labels is not None:
        mapping = resolve_label_map(ds.label_names, lm.labels, label_map, dataset_name=dataset, model_name=model,
                                    max_label=max(labels) if labels else None)
        mapped = [mapping[labels[i]] for i in keep] if mapping is not None else None
    cmp = compare_backends(lm, [texts[i] for i in keep], configs, labels=mapped, batch_size=batch_size,
                           max_length=max_length, methods=methods, progress=progress)
    cmp.per_example.insert(1, "id", [ds.ids[keep[e]] for e in cmp.per_example["example"]])
    runtime = time.perf_counter() - t_start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"Dense vs efficient attention: {model} on {dataset}/{split}"
    notes = [f"", f"Model `{model}`, data `{dataset}` split `{split}`, {len(keep)} examples, "
             f"{cmp.meta['min_tokens']}-{cmp.meta['max_tokens']} tokens (median {cmp.meta['median_tokens']}), "
             f"max_length {cmp.meta['max_length']}; runtime {runtime:.0f} s."]
    (out / "table.md").write_text(cmp.to_markdown(title=title, notes=notes))
    cmp.per_example.to_parquet(out / "per_example.parquet", index=False)
    manifest = {
        "command": "compare-backends", "model": model, "dataset": dataset, "split": split, "limit": limit,
        "min_tokens": min_tokens, "n_examples": len(keep), "example_ids": [ds.ids[i] for i in keep],
        "batch_size": batch_size, "methods": list(cmp.meta["methods"]), "meta": cmp.meta,
        "summary": json.loads(cmp.summary.to_json(orient="records")),
        "versions": package_versions(), "machine": {"processor": platform.processor(), "cpus": _cpus()},
        "started": started, "runtime_s": round(runtime, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return cmp


def _cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1

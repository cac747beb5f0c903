"""The engine behind ``attnexplain analyze``: explain a whole data set into a run folder.

>>> from attnexplain.runs.analyze import analyze
>>> run = analyze("runs/rt", model="minilm-rotten-tomatoes", dataset="rotten-tomatoes", limit=500)

Per batch (``batch_size`` examples; see docs/run-format.md for the tables):

1. tokenize (truncating to ``max_length``; ``truncated`` records it), **one capture** (all layers
   and heads, value vectors) whose logits give the prediction and probabilities;
2. every method's token scores through :func:`attnexplain.methods.explain_batch`, sharing that
   capture (attention methods) or running the model (gradient methods, the random baseline);
3. ERASER faithfulness (comprehensiveness and sufficiency at each ``k`` in ``bins``, AOPC = mean
   over the bins) for every method at once: all perturbed inputs of the batch (examples x methods
   x bins x 2, identical ones only once) run in a few large forward passes sorted by length, in
   bfloat16 autocast where the hardware runs it natively (``faithfulness_precision="auto"``) and,
   for BERT-family classifiers, without the last layer's unread positions;
4. per-head statistics (readout-row entropy; raw vs effective attention JSD and L1, vectorised
   over the batch) and, with ``head_ablation``, the output change when each head is zeroed (one
   forward pass per layer over the batch repeated once per head);
5. for the first ``store_attention`` examples, raw / effective / norm-based / rollout matrices
   as float16 arrays.

The batch's tables are written as shards (atomically; :class:`~attnexplain.runs.writer.RunWriter`),
so memory stays bounded by one batch whatever the data set size, and an interrupted run resumes
where it stopped. Randomness: the random baseline is seeded per example from its token ids and
``seed``; everything else is deterministic, so a resumed run equals an uninterrupted one.

Faithfulness (DeYoung et al., ACL 2020, ERASER) is computed by
:func:`attnexplain.ablations.eraser.faithfulness` (see its conventions): special tokens are
never ranked or removed, ``k = min(n, max(1, ceil(f * n)))`` content tokens per bin ``f``, removal
``"delete"`` (drop the tokens) or ``"mask"`` (replace by [MASK], else pad), ``c`` = the predicted
class; AOPC = mean over the bins. Ties in a ranking: earlier token first.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..ablations.eraser import PRECISIONS, resolve_precision
from .reader import Run
from .writer import RunWriter

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_BINS",
    "AnalyzeError",
    "analyze",
    "analyze_batch",
    "resolve_methods",
    "resolve_label_map",
    "parse_shard",
    "load_model_for_run",
    "package_versions",
]

#: the methods ``analyze`` runs by default (integrated gradients is left out: it is ~20x slower;
#: ``methods=["all"]`` runs every registered method)
DEFAULT_METHODS = ("raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "random")
#: ERASER's bins (fractions of the content tokens)
DEFAULT_BINS = (0.01, 0.05, 0.1, 0.2, 0.5)
#: methods left out of ``"all"`` because they are far too slow for data sets
SLOW_METHODS = ("flow", "attention_distribution")


class AnalyzeError(ValueError):
    """A user error in an analyze request (bad option, labels that do not match the model...)."""


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------------------------


def resolve_methods(methods: Sequence[str] | str | None) -> list[str]:
    """Method names to run: None -> :data:`DEFAULT_METHODS` (those registered), ``"all"`` -> all
    registered methods (slow ones included only when named), else checked against the registry."""
    from ..methods import available_methods

    known = available_methods()
    if methods is None or (isinstance(methods, str) and methods == "default"):
        chosen = [m for m in DEFAULT_METHODS if m in known]
        missing = [m for m in DEFAULT_METHODS if m not in known]
        if missing:
            _log_stderr(f"[analyze] default method(s) not available in this installation, skipped: {', '.join(missing)}")
        if not chosen:
            raise AnalyzeError(f"none of the default methods is registered; available: {', '.join(known)}")
        return chosen
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    flat: list[str] = []
    for m in methods:
        flat += [x.strip() for x in str(m).split(",") if x.strip()]
    if "all" in flat:
        return [m for m in known if m not in SLOW_METHODS] + [m for m in flat if m in SLOW_METHODS]
    if "default" in flat:
        flat = [m for m in DEFAULT_METHODS if m in known] + [m for m in flat if m != "default"]
    unknown = [m for m in flat if m not in known]
    if unknown:
        raise AnalyzeError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(known)} (or 'all')")
    if not flat:
        raise AnalyzeError("no methods given")
    return list(dict.fromkeys(flat))


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (0-based ``i``) -> ``(i, n)``."""
    if shard is None or shard == "":
        return None
    if isinstance(shard, tuple):
        i, n = shard
    else:
        try:
            a, b = str(shard).split("/")
            i, n = int(a), int(b)
        except ValueError:
            raise AnalyzeError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise AnalyzeError(f"--shard {i}/{n}: need n >= 1 and 0 <= i < n (shards are numbered from 0)")
    return int(i), int(n)


def resolve_label_map(dataset_labels: list[str] | None, model_labels: list[str] | None,
                      label_map: Mapping[str, str] | None = None, *, dataset_name: str = "dataset",
                      model_name: str = "model", max_label: int | None = None) -> list[int] | None:
    """Map dataset class indices to model class indices (``mapping[ds_index] = model_index``).

    * an explicit ``label_map`` (dataset label name -> model label name or index) wins;
    * same names (case-insensitive; the dataset's may be a subset) map by name;
    * a model with generic names (``LABEL_0``...) or integer dataset labels map by index, when
      the model has enough classes;
    * otherwise :class:`AnalyzeError` naming both label sets and the ``--label-map`` escape hatch.

    Returns None for unlabelled data.
    """
    if model_labels is None:
        raise AnalyzeError(f"{model_name} is not a classifier (no class labels); analyze needs a sequence classifier")
    n_model = len(model_labels)
    low_model = [m.lower() for m in model_labels]
    if label_map:
        if dataset_labels is None:
            raise AnalyzeError("--label-map given but the dataset's labels have no names (integer labels)")
        out = []
        for name in dataset_labels:
            target = label_map.get(name, label_map.get(name.lower()))
            if target is None:
                raise AnalyzeError(f"--label-map does not say where dataset label {name!r} goes; "
                                   f"dataset labels: {dataset_labels}, model labels: {model_labels}")
            t = str(target)
            if t.lower() in low_model:
                out.append(low_model.index(t.lower()))
            elif t.isdigit() and int(t) < n_model:
                out.append(int(t))
            else:
                raise AnalyzeError(f"--label-map maps {name!r} to {target!r}, which is not a model label "
                                   f"({model_labels}) or index < {n_model}")
        return out
    if dataset_labels is None:
        if max_label is not None and max_label >= n_model:
            raise AnalyzeError(f"the dataset has integer label {max_label} but {model_name} has only {n_model} "
                               f"classes ({model_labels})")
        return None if max_label is None else list(range(max_label + 1))
    low_ds = [d.lower() for d in dataset_labels]
    if all(d in low_model for d in low_ds):
        return [low_model.index(d) for d in low_ds]
    generic = all(m.upper() == f"LABEL_{i}" for i, m in enumerate(model_labels))
    if generic and len(dataset_labels) <= n_model:
        return list(range(len(dataset_labels)))
    example = ",".join(f"{d}={model_labels[min(i, n_model - 1)]}" for i, d in enumerate(dataset_labels))
    raise AnalyzeError(
        f"the labels of {dataset_name} ({', '.join(dataset_labels)}) do not match the labels of {model_name} "
        f"({', '.join(model_labels)}). Pass --label-map to say which is which, e.g. --label-map {example}"
    )


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("attnexplain", "torch", "transformers", "numpy", "pandas", "pyarrow", "scipy", "captum"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def load_model_for_run(name: str, *, backend: str = "dense", backend_options: Mapping[str, Any] | None = None):
    """``load_model`` plus ``tiny-<task>`` names prepared by ``attnexplain prepare``; switches the backend."""
    from ..models import ModelNotFoundError, cache_dir, load_model

    try:
        lm = load_model(name)
    except ModelNotFoundError:
        path = cache_dir() / "models" / name
        if name.startswith("tiny-") and (path / "config.json").is_file():
            lm = load_model(str(path))
            lm.name = name
        elif name.startswith("tiny-"):
            raise ModelNotFoundError(f"model {name!r} has not been prepared yet (looked in {path}); run "
                                     f"`attnexplain prepare --model {name}`") from None
        else:
            raise
    if backend != "dense" or backend_options:
        lm.use_backend(backend, **dict(backend_options or {}))
    return lm


# --------------------------------------------------------------------------------------------
# per-batch computation
# --------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    lm: Any
    methods: list[Any]  # built ExplanationMethod objects
    method_names: list[str]
    bins: tuple[float, ...]
    removal: str
    head_ablation: bool
    max_length: int
    readout: str
    label_mapping: list[int] | None
    label_names: list[str] | None
    model_labels: list[str]
    token_budget: int = 8192
    precision: str = "float32"


def _readout(lm: Any, cap: Any) -> str:
    try:
        from ..methods.attention_methods import resolve_readout

        r = resolve_readout("auto", lm, cap)
        return r if r in ("cls", "last") else "cls"
    except ImportError:  # pragma: no cover
        return "last" if getattr(lm, "task", None) == "causal-lm" else "cls"


def _faithfulness(setup: _Setup, enc: dict[str, torch.Tensor], scores: dict[str, list[np.ndarray]],
                  pred: torch.Tensor) -> dict[str, np.ndarray]:
    """ERASER comprehensiveness / sufficiency of every method and bin of a batch, in one batched
    call of :func:`attnexplain.ablations.eraser.faithfulness` (identical perturbed inputs run
    once, length-sorted chunks of at most ``token_budget`` tokens).

    Returns ``values[method] -> (B, 2, K)`` (0: comprehensiveness, 1: sufficiency).
    """
    from ..ablations.eraser import faithfulness

    B, K = int(pred.shape[0]), len(setup.bins)
    width = int(enc["input_ids"].shape[1])
    res = faithfulness(setup.lm, enc, scores, target=pred.cpu(), bins=setup.bins, mode=setup.removal,
                       max_batch=max(1, setup.token_budget // max(width, 1)), precision=setup.precision)
    t = res.table
    m_idx = t["method"].map({m: i for i, m in enumerate(setup.method_names)}).to_numpy()
    w_idx = (t["metric"].to_numpy() == "sufficiency").astype(np.int64)
    k_idx = np.searchsorted(np.asarray(setup.bins), t["fraction"].to_numpy())
    vals = np.full((len(setup.method_names), B, 2, K), np.nan)
    vals[m_idx, t["example"].to_numpy(), w_idx, k_idx] = t["value"].to_numpy()
    return {m: vals[i] for i, m in enumerate(setup.method_names)}


def _jsd_rows(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log) between rows (last dim) of P and Q."""
    M = 0.5 * (P + Q)

    def kl(a, b):
        return torch.where(a > 0, a * (torch.log(a.clamp_min(1e-30)) - torch.log(b.clamp_min(1e-30))), torch.zeros((), dtype=a.dtype)).sum(-1)

    return (0.5 * kl(P, M) + 0.5 * kl(Q, M)).clamp_min(0)


def _head_stats(setup: _Setup, cap: Any, mask: torch.Tensor, readout_pos: torch.Tensor, stored: list[int]):
    """Per (layer, example, head): entropy, eff_raw_jsd, eff_raw_l1; plus effective matrices of ``stored``."""
    layers = cap.layers()
    km = mask.bool()
    B = km.shape[0]
    ent, jsd, l1 = [], [], []
    eff_store: dict[int, list[torch.Tensor]] = {i: [] for i in stored}
    qmask = km[:, None, :].float()  # (B, 1, n) over query rows
    nq = km.sum(-1).clamp_min(1).float()[:, None]  # (B, 1)
    for layer in layers:
        A = cap.attention(layer).float()  # (B, H, n, n)
        A = A * km[:, None, None, :]
        rows = A[torch.arange(B), :, readout_pos, :]  # (B, H, n)
        ent.append(-(torch.where(rows > 0, rows * torch.log(rows.clamp_min(1e-30)), torch.zeros(()))).sum(-1))
        try:  # the basis is cached on the capture: the effective_attention method shares it
            E = cap.effective_attention(layer).float()
        except (ValueError, RuntimeError):
            E = None
        if E is None:
            jsd.append(torch.full(rows.shape[:2], float("nan")))
            l1.append(torch.full(rows.shape[:2], float("nan")))
            continue
        absE = E.abs()
        Q = absE / absE.sum(-1, keepdim=True).clamp_min(1e-30)
        d = _jsd_rows(A, Q)  # (B, H, n)
        jsd.append((d * qmask).sum(-1) / nq)
        l1.append(((A - E).abs().sum(-1) * qmask).sum(-1) / nq)
        for i in stored:
            eff_store[i].append(E[i])
    stats = {"entropy": torch.stack(ent), "eff_raw_jsd": torch.stack(jsd), "eff_raw_l1": torch.stack(l1)}  # (L, B, H)
    eff = {i: torch.stack(v) for i, v in eff_store.items() if v}
    return stats, eff


def _head_ablation(setup: _Setup, cap: Any, batch: dict[str, torch.Tensor], base_probs: torch.Tensor) -> torch.Tensor:
    """TVD of the output distribution when each head is zero-ablated: (L, B, H)."""
    from ..capturing import session

    lm = setup.lm
    layers = cap.layers()
    stack = cap.primary_stack
    H = cap.attention(layers[0]).shape[1]
    B = base_probs.shape[0]
    rep = {k: v.repeat(H, *([1] * (v.dim() - 1))) for k, v in batch.items()}
    head_of_row = torch.arange(H).repeat_interleave(B)  # row r = h * B + b
    out = []
    for layer in layers:
        def zero_head(probs, call, site, _h=head_of_row):
            probs = probs.clone()
            probs[torch.arange(probs.shape[0]), _h.to(probs.device)] = 0
            return probs

        with torch.no_grad(), session(lm.model, None, interventions={f"{stack}.{layer}.self": zero_head}):
            logits = lm.model(**rep).logits
        logits = logits if logits.dim() == 2 else logits[:, -1]
        p = torch.softmax(logits.float(), -1).reshape(H, B, -1)
        out.append(0.5 * (p - base_probs[None]).abs().sum(-1).T)  # (B, H)
    return torch.stack(out)


def analyze_batch(setup: _Setup, ids: list[str], positions: list[int], texts: list[str],
                  labels: list[int | None] | None, label_names: list[str | None] | None,
                  text_pairs: list[str] | None, store: set[int]):
    """Everything for one batch: (tables dict of columns, attention arrays by example id)."""
    from ..capturing import capture
    from ..methods import explain_batch

    lm = setup.lm
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*longer than .* tokens.*")
        enc = lm.tokenize(texts, max_length=setup.max_length, text_pairs=text_pairs)
    kw = {"text_pair": list(text_pairs)} if text_pairs is not None else {}
    full_len = [len(x) for x in lm.tokenizer(texts, add_special_tokens=True, truncation=False, **kw)["input_ids"]]
    mask = enc.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(enc["input_ids"])
        enc["attention_mask"] = mask
    cap = capture(lm, enc)
    probs = cap.probs  # (B, C)
    pred = probs.argmax(-1)
    scores, _, _ = explain_batch(lm, enc, setup.methods, target=pred, capture_result=cap)
    B = len(texts)
    km = mask.bool().cpu()
    real_idx = [km[i].nonzero().flatten() for i in range(B)]
    tokens = lm.tokens(enc["input_ids"], mask)
    pred_np = pred.cpu().numpy()
    probs_np = probs.cpu().numpy()
    faith = _faithfulness(setup, enc, scores, pred)

    # -- examples ------------------------------------------------------------------------------
    n_tok = np.array([len(t) for t in tokens], dtype=np.int32)
    ex: dict[str, Any] = {
        "example_id": list(ids), "index": list(positions), "text": list(texts),
        "label": list(labels) if labels is not None else [None] * B,
        "label_name": list(label_names) if label_names is not None else [None] * B,
        "pred": pred_np.astype(np.int64).tolist(),
        "pred_label": [setup.model_labels[p] if p < len(setup.model_labels) else str(p) for p in pred_np],
        "probs": [row.astype(np.float32) for row in probs_np],
        "correct": [None if (labels is None or labels[i] is None) else bool(labels[i] == pred_np[i]) for i in range(B)],
        "n_tokens": n_tok, "truncated": [bool(f > n) for f, n in zip(full_len, n_tok)],
    }
    for m in setup.method_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ex[f"comp_aopc__{m}"] = np.nanmean(faith[m][:, 0, :], axis=1).astype(np.float32)
            ex[f"suff_aopc__{m}"] = np.nanmean(faith[m][:, 1, :], axis=1).astype(np.float32)

    # -- tokens (long) ---------------------------------------------------------------------------
    M = len(setup.method_names)
    eid_tok = np.repeat(np.asarray(ids, dtype=object), n_tok)
    pos_tok = np.concatenate([np.arange(n, dtype=np.int32) for n in n_tok]) if B else np.empty(0, np.int32)
    tok_str = np.asarray([t for toks in tokens for t in toks], dtype=object)
    tok_tab = {
        "example_id": np.tile(eid_tok, M), "position": np.tile(pos_tok, M), "token": np.tile(tok_str, M),
        "method": np.repeat(np.asarray(setup.method_names, dtype=object), len(pos_tok)),
        "score": np.concatenate([np.concatenate([np.asarray(s, dtype=np.float32) for s in scores[m]])
                                 for m in setup.method_names]) if B else np.empty(0, np.float32),
    }

    # -- faithfulness (long) -----------------------------------------------------------------------
    K = len(setup.bins)
    vals = np.stack([faith[m] for m in setup.method_names])  # (M, B, 2, K)
    mi, bi, wi, ki = np.meshgrid(np.arange(M), np.arange(B), np.arange(2), np.arange(K), indexing="ij")
    f_tab = {
        "example_id": np.asarray(ids, dtype=object)[bi.ravel()],
        "method": np.asarray(setup.method_names, dtype=object)[mi.ravel()],
        "metric": np.asarray(["comprehensiveness", "sufficiency"], dtype=object)[wi.ravel()],
        "k": np.asarray(setup.bins, dtype=np.float32)[ki.ravel()],
        "value": vals.ravel().astype(np.float32),
    }

    # -- heads (long) ------------------------------------------------------------------------------
    readout_pos = torch.tensor([int(r[0]) if setup.readout == "cls" else int(r[-1]) for r in real_idx])
    stored_local = [i for i in range(B) if i in store]
    stats, eff = _head_stats(setup, cap, mask.cpu(), readout_pos, stored_local)
    if setup.head_ablation:
        stats["ablation_tvd"] = _head_ablation(setup, cap, enc, probs)
    metric_names = list(stats)
    st = torch.stack([stats[k] for k in metric_names]).float().cpu().numpy()  # (S, L, B, H)
    layer_ids = np.asarray(cap.layers(), dtype=np.int32)
    S, L, _, H = st.shape
    si, li, bi2, hi = np.meshgrid(np.arange(S), np.arange(L), np.arange(B), np.arange(H), indexing="ij")
    h_tab = {
        "example_id": np.asarray(ids, dtype=object)[bi2.ravel()], "layer": layer_ids[li.ravel()],
        "head": hi.ravel().astype(np.int32), "metric": np.asarray(metric_names, dtype=object)[si.ravel()],
        "value": st.ravel().astype(np.float32),
    }

    # -- stored arrays -------------------------------------------------------------------------------
    attention: dict[str, dict[str, np.ndarray]] = {}
    if stored_local:
        from ..functional import attention_rollout, norm_based_attention

        sub = torch.as_tensor(stored_local)
        raw = cap.stacked().float()[:, sub]  # (L, S, H, n, n)
        subm = km[sub]
        roll = attention_rollout(raw, key_mask=subm)  # (S, L, n, n)
        norms = []
        for li_, layer in enumerate(cap.layers()):
            try:
                T = cap.value_transforms(layer).float()[sub]
                norms.append(norm_based_attention(raw[li_], T, key_mask=subm).summed)
            except (ValueError, RuntimeError):
                norms = []
                break
        norm = torch.stack(norms, 1) if norms else None  # (S, L, n, n)
        for a, i in enumerate(stored_local):
            idx = real_idx[i]

            def cut(x):
                return x.index_select(-2, idx).index_select(-1, idx).to(torch.float16).cpu().numpy()

            arrays = {"tokens": np.asarray(tokens[i], dtype=str), "raw": cut(raw[:, a]),
                      "rollout": cut(roll[a]), "probs": probs_np[i].astype(np.float32)}
            if i in eff:
                arrays["effective"] = cut(eff[i])
            if norm is not None:
                arrays["norm"] = cut(norm[a])
            attention[str(ids[i])] = arrays
    return {"examples": ex, "tokens": tok_tab, "faithfulness": f_tab, "heads": h_tab}, attention


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------


def _contiguous_batches(positions: list[int], batch_size: int) -> list[list[int]]:
    """Cut sorted positions into runs of consecutive values, then each run into batches."""
    out: list[list[int]] = []
    run: list[int] = []
    for p in positions:
        if run and p != run[-1] + 1:
            out += [run[i : i + batch_size] for i in range(0, len(run), batch_size)]
            run = []
        run.append(p)
    if run:
        out += [run[i : i + batch_size] for i in range(0, len(run), batch_size)]
    return out


def analyze(
    out: str | os.PathLike,
    *,
    model: Any = None,
    dataset: Any,
    split: str = "test",
    limit: int | None = None,
    methods: Sequence[str] | str | None = None,
    batch_size: int = 32,
    store_attention: int = 50,
    removal: str = "delete",
    head_ablation: bool = False,
    shard: str | tuple[int, int] | None = None,
    backend: str = "dense",
    backend_options: Mapping[str, Any] | None = None,
    force: bool = False,
    label_map: Mapping[str, str] | None = None,
    max_length: int | None = None,
    seed: int = 0,
    text_column: str | None = None,
    label_column: str | None = None,
    text_pair_column: str | None = None,
    bins: Sequence[float] = DEFAULT_BINS,
    faithfulness_precision: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
    command: list[str] | None = None,
    threads: int | None = None,
) -> Run:
    """Explain every example of ``dataset`` with ``model`` into the run folder ``out``; returns the :class:`Run`.

    Args:
        out: the run folder (created; an existing one with the same request is resumed; one
            holding a different run is refused unless ``force``).
        model: a model name/path (see :func:`attnexplain.models.load_model`; also ``tiny-<task>``)
            or a :class:`~attnexplain.models.LoadedModel`. Default: the default model.
        dataset: a data set name/path (:func:`attnexplain.data.load_dataset`) or a ``TextDataset``.
        split, limit, text_column, label_column, text_pair_column: passed to ``load_dataset``.
        methods: method names (default :data:`DEFAULT_METHODS`; ``"all"``: every registered one).
        batch_size: examples per forward pass and per shard.
        store_attention: keep the attention arrays of the first N examples (of this run / shard).
        removal: ``"delete"`` or ``"mask"`` (faithfulness perturbation).
        head_ablation: also measure each head's zero-ablation effect (L forward passes per batch).
        shard: ``"i/n"``: only the i-th of n contiguous parts of the data set (merge them later).
        backend, backend_options: the attention backend the model runs (``lm.use_backend``).
        force: delete a different run in ``out`` and start over.
        label_map: dataset label name -> model label name (when the names differ).
        max_length: truncate inputs to this many tokens (default: the model's maximum).
        seed: seeds torch and the random baseline.
        bins: faithfulness fractions (ERASER's by default).
        faithfulness_precision: what the perturbed forward passes of the faithfulness metrics
            run in: ``"auto"`` (default: bfloat16 autocast where the hardware runs it natively,
            e.g. CPUs with AVX512-BF16/AMX and recent GPUs, else float32), ``"float32"`` or
            ``"bfloat16"``. The capture, predictions and explanations are always float32. The
            resolved choice is in the manifest (``faithfulness.precision``); see
            :mod:`attnexplain.ablations.eraser` for the measured effect (AOPC within ~1e-3).
        threads: torch CPU threads (default: torch's choice; ``$ATTNEXPLAIN_THREADS``). On a
            machine shared with other jobs, 1 thread is often much faster than oversubscribing.
        on_batch: called as ``on_batch(batch_number, start, size)`` after each batch is written
            (tests use it to simulate a crash).

    Raises:
        AnalyzeError, DatasetError, ModelNotFoundError, RunMismatchError: user errors, with messages.
    """
    from .. import __version__
    from ..data import TextDataset, load_dataset
    from ..methods import get_method
    from ..models import DEFAULT_MODEL, LoadedModel

    log = log or _log_stderr
    threads = threads or (int(os.environ["ATTNEXPLAIN_THREADS"]) if os.environ.get("ATTNEXPLAIN_THREADS") else None)
    if threads is not None:
        if threads < 1:
            raise AnalyzeError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    if batch_size < 1:
        raise AnalyzeError(f"--batch-size must be >= 1, got {batch_size}")
    if store_attention < 0:
        raise AnalyzeError(f"--store-attention must be >= 0, got {store_attention}")
    if removal not in ("delete", "mask"):
        raise AnalyzeError(f"--removal must be 'delete' or 'mask', got {removal!r}")
    if faithfulness_precision not in PRECISIONS:
        raise AnalyzeError(f"--faithfulness-precision must be one of {', '.join(PRECISIONS)}, got {faithfulness_precision!r}")
    if limit is not None and limit < 1:
        raise AnalyzeError(f"--limit must be >= 1, got {limit}")
    bins = tuple(sorted({float(b) for b in bins}))
    if not bins or any(not 0 < b <= 1 for b in bins):
        raise AnalyzeError(f"faithfulness bins must be fractions in (0, 1], got {bins}")
    shard_t = parse_shard(shard)
    method_names = resolve_methods(methods)
    backend_options = dict(backend_options or {})

    # -- data ---------------------------------------------------------------------------------
    if isinstance(dataset, TextDataset):
        ds = dataset if limit is None else dataset.head(limit)
        ds_name = ds.name
    else:
        ds = load_dataset(dataset, split=split, text_column=text_column, label_column=label_column,
                          text_pair_column=text_pair_column, limit=limit)
        ds_name = str(dataset)
    if len(ds) == 0:
        raise AnalyzeError(f"{ds_name} ({split}) has no examples")
    n_total = len(ds)
    if shard_t is not None:
        i, n = shard_t
        base, extra = divmod(n_total, n)
        start = i * base + min(i, extra)
        positions = list(range(start, start + base + (1 if i < extra else 0)))
    else:
        positions = list(range(n_total))

    # -- model --------------------------------------------------------------------------------
    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, LoadedModel):
        lm = model
        if backend != "dense" or backend_options:
            lm.use_backend(backend, **backend_options)
        model_name = lm.name
    else:
        try:
            lm = load_model_for_run(str(model), backend=backend, backend_options=backend_options)
        except (KeyError, TypeError) as exc:  # unknown backend / bad backend option
            raise AnalyzeError(str(exc.args[0] if exc.args else exc)) from None
        model_name = str(model)
    if lm.task != "classification":
        raise AnalyzeError(f"{model_name} is a {lm.task} model; analyze explains sequence classifiers")
    precision = resolve_precision(faithfulness_precision, lm.device)
    max_len = min(int(max_length), lm.max_length) if max_length else lm.max_length
    ds_labels = ds.label_names
    mapping = resolve_label_map(ds_labels, lm.labels, label_map, dataset_name=ds_name, model_name=model_name,
                                max_label=max(ds.labels) if ds.labels else None)

    manifest = {
        "format_version": 1, "attnexplain_version": __version__, "command": list(command or sys.argv),
        "model": model_name, "model_source": getattr(lm, "source", "") or "object", "task": lm.task,
        "labels": list(lm.labels or []), "dataset": ds_name, "split": ds.split if not isinstance(dataset, TextDataset) else split,
        "dataset_labels": list(ds_labels) if ds_labels else None, "limit": limit,
        "shard": f"{shard_t[0]}/{shard_t[1]}" if shard_t else None,
        "backend": backend, "backend_options": backend_options, "methods": method_names,
        "faithfulness": {"bins": list(bins), "removal": removal, "precision": precision}, "head_ablation": bool(head_ablation),
        "label_map": dict(label_map) if label_map else None, "seed": int(seed), "max_length": int(max_len),
        "store_attention": int(store_attention), "batch_size": int(batch_size),
        "text_column": text_column, "label_column": label_column, "text_pair_column": text_pair_column,
        "versions": package_versions(), "n_examples": len(positions), "dataset_size": n_total,
    }
    writer = RunWriter(out, manifest, force=force, log=log)
    with writer:
        if writer.is_complete:
            log(f"[analyze] {out} is already complete ({len(writer.done_ids)} examples); nothing to do")
            return writer.finalize()
        todo = [p for p in positions if p not in writer.done_positions]
        if writer.resumed:
            log(f"[analyze] resuming {out}: {len(positions) - len(todo)} of {len(positions)} examples done"
                + (f"; redoing {len(writer.redone)} corrupt batch(es)" if writer.redone else ""))
        store_set = set(positions[:store_attention])

        built = []
        for m in method_names:
            built.append(get_method(m, seed=int(seed)) if m == "random" else get_method(m))
        setup = _Setup(
            lm=lm, methods=built, method_names=method_names, bins=bins, removal=removal,
            head_ablation=bool(head_ablation), max_length=max_len, readout="cls",
            label_mapping=mapping, label_names=ds_labels, model_labels=list(lm.labels or []),
            precision=precision,
        )
        setup.readout = _readout(lm, None)
        torch.manual_seed(seed)
        batches = _contiguous_batches(todo, batch_size)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(positions), initial=len(positions) - len(todo), unit="ex", desc="analyze",
                       file=sys.stderr, dynamic_ncols=True)
        t0 = time.perf_counter()
        n_trunc = 0
        try:
            for number, batch in enumerate(batches):
                texts = [ds.texts[p] for p in batch]
                ids = [ds.ids[p] for p in batch]
                if ds.labels is not None:
                    raw_labels = [ds.labels[p] for p in batch]
                    labels = [mapping[y] if mapping is not None else y for y in raw_labels]
                    lnames = [ds_labels[y] if ds_labels is not None and y < len(ds_labels) else None for y in raw_labels]
                else:
                    labels, lnames = None, None
                pairs = [ds.text_pairs[p] for p in batch] if ds.text_pairs is not None else None
                store_idx = {j for j, p in enumerate(batch) if p in store_set}
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seed) * 1_000_003 + batch[0])
                    tables, arrays = analyze_batch(setup, ids, batch, texts, labels, lnames, pairs, store_idx)
                n_trunc += int(np.sum(tables["examples"]["truncated"]))
                writer.write_batch(batch[0], tables, arrays)
                if bar is not None:
                    bar.update(len(batch))
                if on_batch is not None:
                    on_batch(number, batch[0], len(batch))
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        if n_trunc:
            log(f"[analyze] {n_trunc} text(s) were longer than {max_len} tokens and were truncated (column 'truncated')")
        run = writer.finalize(extra={"seconds_last_session": round(seconds, 2)})
    if todo:
        log(f"[analyze] wrote {out}: {len(positions)} examples ({len(todo)} this session, "
            f"{len(todo) / max(seconds, 1e-9):.1f} examples/s)")
    return run

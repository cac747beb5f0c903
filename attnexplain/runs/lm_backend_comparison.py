"""Dense vs efficient attention inside a causal language model (``attnexplain compare-backends
--task lm``): CAB's causal self-attention pattern on a real decoder (SmolLM2: Llama with
grouped-query attention and rotary positions).

>>> from attnexplain.runs.lm_backend_comparison import compare_backends_lm
>>> lm = attnexplain.load_model("smollm2")
>>> cmp = compare_backends_lm(lm, bbc_texts, ["smyrf:memory=0.5", "local:memory=0.25", "linear"],
...                           lengths=(512, 1024, 2048), n_tokens=4096)
>>> print(cmp.to_markdown())

Every backend that supports causal attention (dense, local, linear, performer, smyrf, lsh; not
nystrom, whose landmarks mix past and future) is swapped into the model with
:func:`~attnexplain.capturing.attention.running_backend` (no model file is forked; the model's own
backend is restored afterwards, also after an error). Budgets are given as ``memory=<share>``
(:func:`~attnexplain.backends.spec.resolve_memory`) and resolved **at each length**: the share of
the dense ``L x L`` scores the backend computes, causal structure counted as the backend counts it.

Text: the texts are joined (``"\\n\\n"`` between them, no special tokens) into one token stream, and
for each length ``L`` its first ``n_tokens`` tokens are cut into ``n_tokens // L`` consecutive
windows (the same text at every length, only the context differs). Per backend and length:

* ``ppl``: perplexity ``exp(mean_t -log p(x_t | x_<t))`` over every predicted position of every
  window (positions 1 .. L-1; the first token of a window has no context), and ``ppl_ratio`` =
  ``ppl / ppl_dense``;
* ``agreement``: share of those positions where the backend's most probable next token equals the
  dense one (next-token agreement);
* ``memory``: ``backend.memory_fraction(L, L, causal=True)`` (1.0 for dense).

Explanations (``tau_<method>``): a fixed set of prompts, the first ``n_explain`` windows of the
shortest length, each explained for the token dense attention predicts after it (the same target
under every backend) with each method (default raw attention of the readout row and gradient x
input); Kendall tau-b between the dense and the backend's token scores, mean over prompts.
Budgets for these use the same resolution at the prompts' length.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends.spec import BackendConfig, BackendSpecError, parse_backend, resolve_memory
from ..errors import ArgumentError
from ..models import LoadedModel
from .markdown import format_markdown_table

__all__ = ["LMBackendComparison", "compare_backends_lm", "compare_backends_lm_cli", "text_windows",
           "window_predictions", "DEFAULT_LM_BACKENDS", "DEFAULT_LM_METHODS", "DEFAULT_LENGTHS",
           "names_causal_lm"]

#: every causal backend at two budgets (local: a full causal band is already ~50 % of the n x n
#: scores, so 25 % and 12.5 %); linear attention has no size option
DEFAULT_LM_BACKENDS = ("smyrf:memory=0.5", "smyrf:memory=0.25", "lsh:memory=0.5", "lsh:memory=0.25",
                       "local:memory=0.25", "local:memory=0.125", "performer:memory=0.25", "linear")
DEFAULT_LM_METHODS = ("raw_attention", "gradient_x_input")
DEFAULT_LENGTHS = (512, 1024, 2048)
_DENSE = "dense (reference)"


def names_causal_lm(model: str) -> bool:
    """Whether a model name / folder given to the CLI is a causal LM (``smollm2``, or a folder whose
    ``config.json`` names a ``...ForCausalLM`` architecture), without loading it."""
    if model == "smollm2":
        return True
    cfg = Path(model) / "config.json"
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in archs)


def text_windows(lm: LoadedModel, texts: Sequence[str], length: int, n_tokens: int,
                 *, separator: str = "\n\n") -> tuple[torch.Tensor, int]:
    """``(windows (W, length) long, texts used)``: the texts joined by ``separator`` into one token
    stream (no special tokens), its first ``W * length`` tokens cut into ``W = n_tokens // length``
    consecutive windows.

    Raises:
        ArgumentError: ``length < 2``, ``n_tokens < length``, or texts too short for one window.
    """
    length, n_tokens = int(length), int(n_tokens)
    if length < 2:
        raise ArgumentError(f"a window needs at least 2 tokens (one to predict), got length {length}")
    if n_tokens < length:
        raise ArgumentError(f"n_tokens ({n_tokens}) is shorter than one window of {length} tokens; "
                            f"raise --n-tokens to at least {length}")
    tok = lm.tokenizer

    def ids_of(text: str) -> list[int]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if ids and isinstance(ids[0], (list, tuple)):  # tokenizers that always batch
            ids = ids[0]
        return [int(i) for i in ids]

    sep = ids_of(separator) if separator else []
    need = (n_tokens // length) * length
    stream: list[int] = []
    used = 0
    for text in texts:
        if len(stream) >= need:
            break
        if stream:
            stream += sep
        stream += ids_of(text)
        used += 1
    n_win = min(len(stream), need) // length
    if n_win < 1:
        raise ArgumentError(f"the {used} texts hold {len(stream)} tokens, fewer than one window of {length}; "
                            f"give more text (raise --limit) or a shorter length")
    return torch.tensor(stream[: n_win * length], dtype=torch.long).view(n_win, length), used


def window_predictions(lm: LoadedModel, windows: torch.Tensor, *, batch_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Run the model (whatever backend it runs) on ``windows`` (W, L).

    Returns ``(nll (W, L-1) float64: -log p(x_t | x_<t) for t = 1..L-1, argmax (W, L-1) int64: the
    most probable next token at positions 0..L-2)``.
    """
    nll, top = [], []
    device = lm.device
    with torch.no_grad():
        for s in range(0, windows.shape[0], batch_size):
            ids = windows[s: s + batch_size].to(device)
            logits = lm.model(input_ids=ids).logits[:, :-1].float()
            nll.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                       .double().cpu().numpy())
            top.append(logits.argmax(-1).cpu().numpy())
            del logits
    return np.concatenate(nll), np.concatenate(top)


@dataclass
class LMBackendComparison:
    """Result of :func:`compare_backends_lm`.

    Attributes:
        perplexity: one row per (backend, length), the dense reference first: ``backend`` (the
            spec as given), ``name``, ``options`` (JSON, resolved at that length), ``length``,
            ``n_windows``, ``n_predicted``, ``memory``, ``ppl``, ``ppl_dense``, ``ppl_ratio``,
            ``agreement``, ``seconds``.
        explanations: one row per (backend, method): ``backend``, ``method``, ``tau`` (mean Kendall
            tau-b over prompts), ``n_prompts``, ``options`` (resolved at the prompts' length).
        meta: settings (model, lengths, n_tokens, texts used, methods, ...).
    """

    perplexity: Any
    explanations: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self):
        """The wide table: one row per backend; ``ppl@L``, ``agree@L``, ``memory@L`` per length,
        ``tau <method>`` per method."""
        import pandas as pd

        p = self.perplexity
        rows = []
        for b in dict.fromkeys(p["backend"]):
            sub = p[p["backend"] == b].set_index("length")
            r: dict[str, Any] = {"backend": b}
            for L in sub.index:
                r[f"memory@{L}"] = float(sub.loc[L, "memory"])
            for L in sub.index:
                ratio = sub.loc[L, "ppl_ratio"]
                r[f"ppl@{L}"] = (f"{sub.loc[L, 'ppl']:.2f}" if b == _DENSE
                                 else f"{sub.loc[L, 'ppl']:.2f} ({ratio:.2f}x)")
            for L in sub.index:
                r[f"agree@{L}"] = float("nan") if b == _DENSE else float(sub.loc[L, "agreement"])
            e = self.explanations
            if e is not None and len(e):
                for m in dict.fromkeys(e["method"]):
                    hit = e[(e["backend"] == b) & (e["method"] == m)]
                    r[f"tau {m}"] = float(hit["tau"].iloc[0]) if len(hit) else float("nan")
            rows.append(r)
        return pd.DataFrame(rows)

    def to_markdown(self, *, digits: int = 3, title: str | None = None, notes: Sequence[str] = ()) -> str:
        """The wide table as Markdown, with a legend."""
        lines = [f"### {title}", ""] if title else []
        lines.append(format_markdown_table(self.table(), digits=digits))
        m = self.meta
        lines += ["", f"Legend: each length L scores the same {m.get('n_tokens')} tokens of text cut into "
                  f"windows of L tokens; ppl@L = perplexity over every predicted position (ratio to dense in "
                  f"brackets); agree@L = share of positions whose most probable next token equals dense; memory@L "
                  f"= backend.memory_fraction(L, L, causal=True), the share of the dense L x L scores computed at "
                  f"the budget resolved for L; tau = mean Kendall tau-b between the dense and the backend's token "
                  f"scores for the dense next token of {m.get('n_explain')} fixed prompts of {m.get('explain_length')} "
                  f"tokens."]
        lines += [str(x) for x in notes]
        return "\n".join(lines) + "\n"


def _label_configs(configs: list[BackendConfig]) -> list[BackendConfig]:
    seen: dict[str, int] = {}
    out = []
    for c in configs:
        d = c.display
        seen[d] = seen.get(d, 0) + 1
        out.append(c if seen[d] == 1 else BackendConfig(c.name, c.options, f"{d} #{seen[d]}"))
    return out


def compare_backends_lm(
    lm: LoadedModel,
    texts: Sequence[str],
    backends: Sequence[Any] = DEFAULT_LM_BACKENDS,
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    n_tokens: int | None = None,
    n_explain: int = 4,
    explain_length: int | None = None,
    methods: Sequence[str] = DEFAULT_LM_METHODS,
    batch_size: int = 1,
    progress: bool = True,
) -> LMBackendComparison:
    """Perplexity, next-token agreement and explanation agreement of efficient attention backends
    against dense attention inside a causal LM (see the module docs).

    Args:
        lm: a decoder-only :class:`~attnexplain.models.LoadedModel` (task ``"causal-lm"``).
        texts: the text (joined into one token stream).
        backends: backend specs (``"smyrf:memory=0.5"``, ``"local:window=128"``, ``"linear"``...);
            ``memory=`` is resolved at each length.
        lengths: window lengths (each at most the model's context).
        n_tokens: tokens of text scored per length (default: the longest length).
        n_explain: prompts for the explanation agreement (0: none).
        explain_length: their length in tokens (default: the shortest length).
        methods: explanation methods compared by Kendall tau.
        batch_size: windows per forward pass.
        progress: a tqdm bar on stderr.

    Raises:
        InputError: a model that is not a causal LM.
        ArgumentError: a length beyond the model's context, bad ``n_tokens``/``n_explain``, too little text.
        BackendSpecError: a backend that cannot be built (before anything runs).
        UnsupportedPatternError: a backend that cannot run causal attention (nystrom).
    """
    import pandas as pd

    from ..capturing.attention import running_backend
    from ..errors import UnsupportedPatternError
    from ..methods import explain_batch, get_method
    from ..metrics import kendall_tau
    from ..models import InputError

    if getattr(lm, "task", None) != "causal-lm":
        raise InputError(f"compare-backends --task lm needs a causal language model (task 'causal-lm'), but "
                         f"{getattr(lm, 'name', 'the model')} is a {getattr(lm, 'task', '?')} model; "
                         f"use --task classification for classifiers")
    lengths = sorted({int(x) for x in lengths})
    if not lengths:
        raise ArgumentError("no lengths given; e.g. --lengths 512,1024,2048")
    too_long = [L for L in lengths if L > lm.max_length]
    if too_long:
        raise ArgumentError(f"length(s) {too_long} exceed {lm.name}'s context of {lm.max_length} tokens; "
                            f"use lengths <= {lm.max_length}")
    n_tokens = int(n_tokens) if n_tokens is not None else lengths[-1]
    if n_tokens < lengths[-1]:
        raise ArgumentError(f"n_tokens ({n_tokens}) is shorter than one window of the longest length "
                            f"{lengths[-1]}; raise it to at least {lengths[-1]}")
    if isinstance(n_explain, bool) or not isinstance(n_explain, int) or n_explain < 0:
        raise ArgumentError(f"n_explain must be an int >= 0, got {n_explain!r}")
    explain_length = int(explain_length or lengths[0])
    methods = list(methods)
    for m in methods:
        get_method(m)  # unknown names fail here
    if isinstance(backends, (str, BackendConfig)):
        backends = [backends]
    configs = _label_configs([parse_backend(b) for b in backends])
    if not configs:
        raise BackendSpecError("no backends to compare")
    for c in configs:
        if c.name == "nystrom":
            raise UnsupportedPatternError(
                "nystrom attention cannot run a causal LM (its landmarks average past and future tokens); "
                "compare 'local', 'performer', 'linear', 'smyrf' or 'lsh'")
    resolved = {L: [resolve_memory(c, L, causal=True) for c in configs] for L in set(lengths) | {explain_length}}
    for L, cs in resolved.items():  # every option is valid before anything runs
        for c in cs:
            c.build()

    windows = {}
    used = 0
    for L in lengths:
        windows[L], u = text_windows(lm, texts, L, n_tokens)
        used = max(used, u)
    prompts = None
    if n_explain:
        prompts, u = text_windows(lm, texts, explain_length, n_explain * explain_length)
        prompts = prompts[:n_explain]
        used = max(used, u)

    steps = len(lengths) * (len(configs) + 1) + (len(configs) + 1 if n_explain else 0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="compare_backends_lm", unit="run")
    rows: list[dict[str, Any]] = []
    per_window: list[dict[str, Any]] = []
    expl_rows: list[dict[str, Any]] = []
    with running_backend(lm, "dense"):
        for L in lengths:
            t0 = time.perf_counter()
            nll_d, top_d = window_predictions(lm, windows[L], batch_size=batch_size)
            sec = time.perf_counter() - t0
            ppl_d = float(np.exp(nll_d.mean()))
            rows.append({"backend": _DENSE, "name": "dense", "options": "{}", "length": L,
                         "n_windows": int(windows[L].shape[0]), "n_predicted": int(nll_d.size), "memory": 1.0,
                         "ppl": ppl_d, "ppl_dense": ppl_d, "ppl_ratio": 1.0, "agreement": 1.0, "seconds": round(sec, 2)})
            if bar is not None:
                bar.update(1)
            for label_cfg, cfg in zip(configs, resolved[L]):
                backend = cfg.build()
                t0 = time.perf_counter()
                with running_backend(lm, cfg.name, **dict(cfg.options)):
                    nll, top = window_predictions(lm, windows[L], batch_size=batch_size)
                sec = time.perf_counter() - t0
                ppl = float(np.exp(nll.mean()))
                rows.append({"backend": label_cfg.display, "name": cfg.name,
                             "options": json.dumps(dict(cfg.options), sort_keys=True), "length": L,
                             "n_windows": int(windows[L].shape[0]), "n_predicted": int(nll.size),
                             "memory": float(backend.memory_fraction(L, L, causal=True)), "ppl": ppl,
                             "ppl_dense": ppl_d, "ppl_ratio": ppl / ppl_d, "agreement": float((top == top_d).mean()),
                             "seconds": round(sec, 2)})
                for w in range(nll.shape[0]):
                    per_window.append({"backend": label_cfg.display, "length": L, "window": w,
                                       "nll_mean": float(nll[w].mean()), "nll_mean_dense": float(nll_d[w].mean()),
                                       "agreement": float((top[w] == top_d[w]).mean())})
                if bar is not None:
                    bar.update(1)

        if n_explain:
            ref_scores: list[dict[str, np.ndarray]] = []
            targets = []
            for p in range(prompts.shape[0]):
                batch = {"input_ids": prompts[p: p + 1].to(lm.device),
                         "attention_mask": torch.ones(1, explain_length, dtype=torch.long, device=lm.device)}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sc, tgt, _ = explain_batch(lm, batch, methods)
                ref_scores.append({m: np.asarray(sc[m][0], dtype=np.float64) for m in methods})
                targets.append(tgt)
            if bar is not None:
                bar.update(1)
            for label_cfg, cfg in zip(configs, resolved[explain_length]):
                taus: dict[str, list[float]] = {m: [] for m in methods}
                with running_backend(lm, cfg.name, **dict(cfg.options)):
                    for p in range(prompts.shape[0]):
                        batch = {"input_ids": prompts[p: p + 1].to(lm.device),
                                 "attention_mask": torch.ones(1, explain_length, dtype=torch.long, device=lm.device)}
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            sc, _, _ = explain_batch(lm, batch, methods, target=targets[p])
                        for m in methods:
                            taus[m].append(kendall_tau(ref_scores[p][m], np.asarray(sc[m][0], dtype=np.float64)))
                for m in methods:
                    expl_rows.append({"backend": label_cfg.display, "method": m, "tau": float(np.nanmean(taus[m])),
                                      "n_prompts": int(prompts.shape[0]),
                                      "options": json.dumps(dict(cfg.options), sort_keys=True)})
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    order = {_DENSE: -1, **{c.display: i for i, c in enumerate(configs)}}
    ppl_df = pd.DataFrame(rows)
    ppl_df = ppl_df.sort_values(["backend", "length"], key=lambda s: s.map(order) if s.name == "backend" else s,
                                kind="stable").reset_index(drop=True)
    meta = {"model": getattr(lm, "name", "model"), "lengths": lengths, "n_tokens": n_tokens,
            "texts_used": used, "n_explain": int(prompts.shape[0]) if n_explain else 0,
            "explain_length": explain_length, "methods": methods, "batch_size": batch_size,
            "backends": [{"label": c.display, "name": c.name, "options": dict(c.options),
                          "resolved": {str(L): dict(resolved[L][i].options) for L in sorted(resolved)}}
                         for i, c in enumerate(configs)],
            "per_window": per_window}
    return LMBackendComparison(perplexity=ppl_df, explanations=pd.DataFrame(expl_rows), meta=meta)


def compare_backends_lm_cli(
    model: str,
    dataset: str = "bbc-news",
    split: str = "test",
    limit: int | None = None,
    backends: Sequence[Any] | str | None = None,
    out: str | Path = "compare_backends_lm",
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    n_tokens: int | None = None,
    n_explain: int = 4,
    methods: Sequence[str] = DEFAULT_LM_METHODS,
    batch_size: int = 1,
    progress: bool = True,
) -> LMBackendComparison:
    """``attnexplain compare-backends --task lm``: load ``model`` and the texts of ``dataset``
    (``limit``: at most this many texts), run :func:`compare_backends_lm` and write ``table.md``,
    ``perplexity.csv``, ``explanations.csv`` and ``manifest.json`` (with per-window figures) into ``out``."""
    import platform

    from ..data import load_dataset
    from .analyze import load_model_for_run  # looked up there, so tests can replace it
    from .backend_comparison import _cpus
    from .settings import package_versions

    if isinstance(backends, str):
        backends = [b for b in backends.split(";") if b.strip()]
    configs = [parse_backend(b) for b in (backends or DEFAULT_LM_BACKENDS)]  # fail fast
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    lm = load_model_for_run(model)
    ds = load_dataset(dataset, split=split, limit=limit)
    cmp = compare_backends_lm(lm, list(ds.texts), configs, lengths=lengths, n_tokens=n_tokens, n_explain=n_explain,
                              methods=methods, batch_size=batch_size, progress=progress)
    runtime = time.perf_counter() - t_start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    import torch as _torch

    m = cmp.meta
    notes = ["", f"Model `{model}`, text `{dataset}` split `{split}`: the first {m['texts_used']} texts joined, "
             f"{m['n_tokens']} tokens per length; {_torch.get_num_threads()} threads, "
             f"{platform.processor() or platform.machine()}; runtime {runtime:.0f} s."]
    (out / "table.md").write_text(cmp.to_markdown(title=f"Dense vs efficient attention in {model} (causal LM)",
                                                  notes=notes))
    cmp.perplexity.to_csv(out / "perplexity.csv", index=False)
    cmp.explanations.to_csv(out / "explanations.csv", index=False)
    manifest = {"command": "compare-backends", "task": "lm", "model": model, "dataset": dataset, "split": split,
                "limit": limit, "meta": cmp.meta, "perplexity": json.loads(cmp.perplexity.to_json(orient="records")),
                "explanations": json.loads(cmp.explanations.to_json(orient="records")),
                "versions": package_versions(), "machine": {"processor": platform.processor(), "cpus": _cpus(),
                                                            "threads": _torch.get_num_threads()},
                "started": started, "runtime_s": round(runtime, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return cmp

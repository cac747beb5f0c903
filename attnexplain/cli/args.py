"""One argument dataclass per CLI command (inseq-style): the typer commands in
:mod:`attnexplain.cli.main` only fill these and call the public API, so every command can also be
run from Python with the same defaults, e.g. ``AnalyzeArgs(dataset="rotten-tomatoes", out="runs/x").run()``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArgumentError
from ..validation import check_float as _check_float, check_int as _check_int

if TYPE_CHECKING:  # only for annotations: attnexplain.models imports torch
    from ..models import LoadedModel


def parse_key_values(items: list[str] | str | None, **kwargs: Any) -> dict[str, Any]:
    """:func:`attnexplain.backends.spec.parse_key_values`, imported when called: the backends package
    imports torch, which ``attnexplain --help`` must not wait for."""
    from ..backends.spec import parse_key_values as parse

    return parse(items, **kwargs)


#: same as attnexplain.models.DEFAULT_MODEL (a test checks it); not imported from there, because that
#: module imports torch and ``attnexplain --help`` must not
DEFAULT_MODEL = "minilm-rotten-tomatoes"


__all__ = [
    "PrepareArgs",
    "ExplainArgs",
    "AnalyzeArgs",
    "ReportArgs",
    "CompareArgs",
    "MergeArgs",
    "DashboardArgs",
    "parse_key_values",
    "parse_list",
]


def parse_list(values: list[str] | str | None) -> list[str] | None:
    """``["a,b", "c"]`` / ``"a,b"`` -> ``["a", "b", "c"]``; None or empty -> None."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    out = [v.strip() for item in values for v in str(item).split(",") if v.strip()]
    return out or None


def training_defaults(model: str) -> dict[str, Any]:
    """The options ``attnexplain prepare --model MODEL`` trains with when none is given: epochs, limit, seed."""
    if model.startswith("tiny-"):
        from ..training import SEQ2SEQ_RECIPES, TINY_TASKS

        task = model[len("tiny-"):]
        if task in SEQ2SEQ_RECIPES:  # tiny-seq2seq-<task>: the tiny encoder-decoder
            return {"epochs": SEQ2SEQ_RECIPES[task][0], "limit": None, "seed": 0}
        if task not in TINY_TASKS:
            raise ValueError(f"unknown synthetic task {task!r}; known: {', '.join([*TINY_TASKS, *SEQ2SEQ_RECIPES])}")
        return {"epochs": TINY_TASKS[task][0], "limit": None, "seed": 0}
    from ..training import CLASSIFIERS

    if model not in CLASSIFIERS:
        raise ValueError(f"cannot prepare {model!r}: choose {', '.join(CLASSIFIERS)} or tiny-<synthetic task>")
    recipe = CLASSIFIERS[model]
    return {"epochs": recipe.epochs, "limit": recipe.limit, "seed": 0}


def read_training_record(path: Path) -> dict[str, Any] | None:
    """``attnexplain_training.json`` of a prepared model folder (None if absent or unreadable)."""
    try:
        return json.loads((Path(path) / "attnexplain_training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class PrepareArgs:
    """``attnexplain prepare``: make a classifier to explain (fine-tune MiniLM, or a tiny synthetic-task model).

    The training options are recorded with the model (``attnexplain_training.json``). A model
    prepared with options other than the recipe's defaults (``--epochs``, ``--limit``, ``--seed``)
    is cached under its own name, e.g. ``minilm-rotten-tomatoes-epochs1-limit100``, never under
    the real one; a model cached under the real name whose record shows other options (made by an
    older version) is made again.
    """

    model: str = DEFAULT_MODEL
    epochs: int | None = None
    limit: int | None = None
    seed: int = 0
    force: bool = False


    def __post_init__(self) -> None:
        _check_int("--epochs", self.epochs, low=1, allow_none=True)
        _check_int("--limit", self.limit, low=1, allow_none=True)
        _check_int("--seed", self.seed, low=0)

    def options(self) -> dict[str, Any]:
        """The options this request trains with (defaults filled in)."""
        chosen = dict(training_defaults(self.model))
        if self.epochs is not None:
            chosen["epochs"] = int(self.epochs)
        if self.limit is not None:
            chosen["limit"] = int(self.limit)
        chosen["seed"] = int(self.seed)
        return chosen

    def cached_name(self) -> str:
        """The name the model is cached under: the model's own name for the default options, else
        the name plus the options that differ (``-epochs1-limit100-seed3``)."""
        defaults = training_defaults(self.model)
        chosen = self.options()
        suffix = "".join(f"-{k}{chosen[k]}" for k in ("epochs", "limit", "seed") if chosen[k] != defaults[k])
        return self.model + suffix

    def cached_record(self) -> tuple[Path, dict[str, Any] | None] | None:
        """(folder, training record) of an already prepared model matching this request, or None."""
        from ..models import cache_dir

        target = cache_dir() / "models" / self.cached_name()
        if not (target / "config.json").is_file():
            return None
        record = read_training_record(target)
        if record is not None:
            chosen = self.options()
            if any(k in record and record[k] != chosen[k] for k in chosen):
                return None  # cached under this name with other options (an older version did that): make it again
        return target, record

    def run(self) -> Path:
        from ..models import cache_dir

        options = self.options()
        name = self.cached_name()
        if not self.force and self.cached_record() is not None:
            return cache_dir() / "models" / name
        out = cache_dir() / "models" / name
        if self.model.startswith("tiny-seq2seq-"):
            from ..training import prepare_seq2seq

            return prepare_seq2seq(self.model[len("tiny-"):], epochs=options["epochs"], limit=options["limit"],
                                   seed=options["seed"], out_dir=out)
        if self.model.startswith("tiny-"):
            from ..training import prepare_tiny

            return prepare_tiny(self.model[len("tiny-"):], epochs=options["epochs"], limit=options["limit"],
                                seed=options["seed"], out_dir=out)
        from ..training import prepare_classifier

        return prepare_classifier(self.model, epochs=options["epochs"], limit=options["limit"], seed=options["seed"],
                                  out_dir=out)

    def summary(self, path: Path) -> str:
        """One line for the user: where the model is, its validation accuracy and how it was trained."""
        record = read_training_record(path)
        name = self.cached_name()
        if record is None:
            return f"{name}: ready at {path} (no training record: validation accuracy unknown; --force remakes it)"
        acc = record.get("validation_accuracy")
        n_val = (record.get("split_sizes") or {}).get("validation")
        n_train = (record.get("split_sizes") or {}).get("train")
        parts = [f"validation accuracy {acc:.3f}" + (f" on {n_val} examples" if n_val else "")
                 if isinstance(acc, (int, float)) else "validation accuracy unknown"]
        parts.append(f"{record.get('epochs')} epoch(s) on {n_train if n_train is not None else '?'} training examples"
                     + (f" (--limit {record['limit']})" if record.get("limit") else "")
                     + f", seed {record.get('seed')}")
        line = f"{name}: ready at {path} ({'; '.join(parts)})"
        if name != self.model:
            line += (f"\n  non-default training options: cached as {name!r}, not {self.model!r}; "
                     f"use --model {name} to explain with it")
        return line


@dataclass
class ExplainArgs:
    """``attnexplain explain "text"``: explain one input and summarise."""

    text: str
    model: str = DEFAULT_MODEL
    methods: list[str] | None = None
    top: int = 5
    backend: str = "dense"
    backend_options: dict[str, Any] = field(default_factory=dict)
    target: int | None = None
    max_new_tokens: int | None = None
    continuation: str | None = None
    contrast: str | None = None
    text_pair: str | None = None
    include_special_tokens: bool = False


    def __post_init__(self) -> None:
        _check_int("--top", self.top, low=1)
        _check_int("--target", self.target, low=0, allow_none=True)

    def _run_generation(self, lm: LoadedModel) -> str:
        """Language models: generate (or force ``continuation``), explain every generated token."""
        from ..generation import explain_generation, generation_methods
        from ..runs.settings import AnalyzeError

        if self.target is not None:
            raise AnalyzeError("--target picks a class of a classifier; for a language model give the continuation "
                               "to explain with --continuation TEXT")
        n = 5 if self.max_new_tokens is None else self.max_new_tokens
        header = [f"model: {lm.name} ({lm.backend}, {lm.task})"]
        ex = explain_generation(lm, [self.text], generation_methods(self.methods), max_new_tokens=n,
                                target=self.continuation, contrast=self.contrast,
                                exclude_special_tokens=not self.include_special_tokens)
        note = ("" if self.include_special_tokens else
                "(special tokens and the first token, the attention sink, left out; --include-special-tokens shows them)")
        return "\n".join(header + [ex.format(0, top=self.top), note]).rstrip()

    def run(self) -> str:
        """Explain the text; returns a printable summary."""
        import numpy as np
        import torch

        from ..methods import explain_batch, get_method
        from ..runs.analyze import load_model_for_run
        from ..runs.settings import AnalyzeError, applicable_methods, resolve_methods

        try:
            lm = load_model_for_run(self.model, backend=self.backend, backend_options=self.backend_options)
        except (KeyError, TypeError) as exc:
            raise AnalyzeError(str(exc.args[0] if exc.args else exc)) from None
        if lm.task in ("causal-lm", "seq2seq"):
            return self._run_generation(lm)
        for opt, val in (("--max-new-tokens", self.max_new_tokens), ("--continuation", self.continuation),
                         ("--contrast", self.contrast)):
            if val is not None:
                raise AnalyzeError(f"{opt} is for language models (generation); {lm.name} is a {lm.task} model: "
                                   "explain a class with --target INDEX instead")
        if lm.task == "encoder":
            from ..methods.explanation import _refuse_headless
            from ..models import InputError

            try:
                _refuse_headless(lm)
            except InputError as exc:
                raise AnalyzeError(str(exc)) from None
        names, _ = applicable_methods(lm, resolve_methods(self.methods), self.methods)
        enc = lm.tokenize([self.text], text_pairs=None if self.text_pair is None else [self.text_pair])
        with torch.no_grad():
            logits = lm.model(**enc).logits
        probs = torch.softmax(logits.float()[0] if logits.dim() == 2 else logits.float()[0, -1], -1)
        pred = int(probs.argmax())
        labels = lm.labels or [str(i) for i in range(len(probs))]
        if self.target is not None and not 0 <= self.target < len(probs):
            raise AnalyzeError(f"--target must be a class index in 0..{len(probs) - 1}, got {self.target}")
        target = pred if self.target is None else int(self.target)
        built = [get_method(m) for m in names]
        scores, _, _ = explain_batch(lm, enc, built, target=torch.tensor([target]))
        tokens = lm.tokens(enc["input_ids"], enc.get("attention_mask"))[0]
        if self.include_special_tokens:
            shown = np.arange(len(tokens))
        else:  # special tokens (and a causal model's first token) are left out of the ranked lists
            from ..methods.special_tokens import special_token_mask

            special = special_token_mask(lm, enc["input_ids"], enc.get("attention_mask"))[0]
            shown = np.flatnonzero(~special) if (~special).any() else np.arange(len(tokens))
        lines = [f"model: {lm.name} ({lm.backend})", f"text: {self.text}"]
        if self.text_pair is not None:
            lines.append(f"text pair: {self.text_pair}")
        lines += [f"tokens: {len(tokens)}",
                 f"prediction: {labels[pred]}  (" + ", ".join(f"{labels[i]} {float(p):.3f}" for i, p in enumerate(probs)) + ")"]
        if target != pred:
            lines.append(f"explaining class: {labels[target]}")
        lines.append("")
        width = max(len(n) for n in names)
        lines.append(f"{'method':<{width}}  top {self.top} tokens (score; signed scores ranked as signed: the most "
                     "support for the explained class first)"
                     + ("" if self.include_special_tokens else "; special tokens left out (--include-special-tokens shows them)"))
        for n in names:
            sc = np.asarray(scores[n][0], dtype=np.float64)
            order = shown[np.argsort(-sc[shown], kind="stable")[: self.top]]
            lines.append(f"{n:<{width}}  " + "  ".join(f"{tokens[j]} ({sc[j]:.3g})" for j in order))
        lines.append("")
        d_h = lm.head_dim
        n = len(tokens)
        note = (f"Effective vs raw attention: a head's value matrix has rank <= d_h = {d_h}; with {n} tokens "
                + (f"(<= {d_h}) effective attention equals raw attention: nothing is hidden in the null space."
                   if n <= d_h else
                   f"(> {d_h}) up to {n - d_h} directions of each attention row do not change the output; effective "
                   "attention removes them, so it can rank tokens differently."))
        if "raw_attention" in scores and "effective_attention" in scores:
            from ..metrics import kendall_tau

            ra = np.asarray(scores["raw_attention"][0], dtype=np.float64)
            ef = np.asarray(scores["effective_attention"][0], dtype=np.float64)
            tau = kendall_tau(ra, ef)
            note += (f" Here: mean |raw - effective| score difference {np.abs(ra - ef).mean():.3g}, "
                     f"Kendall tau between their token rankings {tau:.2f}.")
        lines.append(note)
        return "\n".join(lines)


@dataclass
class AnalyzeArgs:
    """``attnexplain analyze``: explain a whole data set into a run folder (see :func:`attnexplain.runs.analyze.analyze`)."""

    dataset: str
    out: Path
    model: str = DEFAULT_MODEL
    split: str = "test"
    limit: int | None = None
    methods: list[str] | None = None
    batch_size: int = 32
    store_attention: int = 50
    removal: str = "delete"
    head_ablation: bool = False
    faithfulness_precision: str = "auto"
    shard: str | None = None
    backend: str = "dense"
    backend_options: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    label_map: dict[str, str] | None = None
    max_length: int | None = None
    seed: int = 0
    text_column: str | None = None
    label_column: str | None = None
    text_pair_column: str | None = None
    include_special_tokens: bool = False
    threads: int | None = None
    progress: bool = True
    engine: str = "local"
    address: str | None = None
    num_workers: int | None = None
    worker_threads: int | None = None
    task: str | None = None
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        _check_int("--limit", self.limit, low=1, allow_none=True)
        _check_int("--max-new-tokens", self.max_new_tokens, low=1, allow_none=True)
        _check_int("--batch-size", self.batch_size, low=1)
        _check_int("--store-attention", self.store_attention, low=0)
        _check_int("--max-length", self.max_length, low=1, allow_none=True)
        _check_int("--seed", self.seed, low=0)
        _check_int("--threads", self.threads, low=1, allow_none=True)

    def run(self, **extra: Any):
        from ..runs.analyze import analyze

        kwargs = asdict(self)
        out = kwargs.pop("out")
        kwargs.update(extra)
        return analyze(out, **kwargs)


@dataclass
class ReportArgs:
    """``attnexplain report RUN``: summary.md and figures of a run."""

    run: Path
    out: Path | None = None
    figures: bool = True
    n_resamples: int = 2000
    include_special_tokens: bool | None = None


    def __post_init__(self) -> None:
        _check_int("--n-resamples", self.n_resamples, low=1)

    def run_report(self):
        from ..runs.report import report

        return report(self.run, out=self.out, figures=self.figures, n_resamples=self.n_resamples,
                      include_special_tokens=self.include_special_tokens)


@dataclass
class CompareArgs:
    """``attnexplain compare A B``: two runs side by side."""

    run_a: Path
    run_b: Path
    out: Path | None = None
    n_resamples: int = 2000


    def __post_init__(self) -> None:
        _check_int("--n-resamples", self.n_resamples, low=1)

    def run(self):
        from ..runs.report import compare

        return compare(self.run_a, self.run_b, out=self.out, n_resamples=self.n_resamples)


@dataclass
class CompareBackendsArgs:
    """``attnexplain compare-backends``: the same texts through dense and efficient attention backends
    (``task="lm"``: inside a causal LM, perplexity / next-token / explanation agreement per length)."""

    out: Path
    model: str = "minilm-bbc-news"  # the default data set's own classifier (long texts: where SMYRF matters)
    dataset: str = "bbc-news"
    split: str = "test"
    limit: int | None = 100
    #: None: the task's defaults (classifier: SMYRF at 50 % and 25 % memory; encoder-decoder: every mechanism
    #: once; causal LM (task lm): every causal backend at two budgets)
    backends: list[str] | None = None
    max_length: int | None = None
    min_tokens: int | None = None
    #: None: 4 texts per pass (lm: 1 window)
    batch_size: int | None = None
    label_map: dict[str, str] | None = None
    #: encoder-decoder models: CAB patterns to swap into (None: every pattern the model has)
    patterns: list[str] | None = None
    #: "auto" (lm for a causal LM: smollm2 or a folder whose config names a ...ForCausalLM), "classification", "lm"
    task: str = "auto"
    lengths: list[int] | None = None
    n_tokens: int | None = None
    explain_prompts: int = 4

    def __post_init__(self) -> None:
        _check_int("--limit", self.limit, low=1, allow_none=True)
        _check_int("--max-length", self.max_length, low=1, allow_none=True)
        _check_int("--min-tokens", self.min_tokens, low=1, allow_none=True)
        _check_int("--batch-size", self.batch_size, low=1, allow_none=True)
        _check_int("--n-tokens", self.n_tokens, low=2, allow_none=True)
        _check_int("--explain-prompts", self.explain_prompts, low=0)
        if self.task not in ("auto", "classification", "lm"):
            raise ArgumentError(f"--task must be auto, classification or lm, got {self.task!r}")
        for n in self.lengths or []:
            _check_int("--lengths", n, low=2)

    def resolved_task(self) -> str:
        if self.task != "auto":
            return self.task
        from ..runs.lm_backend_comparison import names_causal_lm

        return "lm" if names_causal_lm(self.model) else "classification"

    def run(self):
        if self.resolved_task() == "lm":
            from ..runs.lm_backend_comparison import DEFAULT_LENGTHS, compare_backends_lm_cli

            return compare_backends_lm_cli(
                self.model, self.dataset, split=self.split, limit=self.limit, backends=self.backends, out=self.out,
                lengths=self.lengths or DEFAULT_LENGTHS, n_tokens=self.n_tokens, n_explain=self.explain_prompts,
                batch_size=self.batch_size or 1,
            )
        from ..runs.backend_comparison import compare_backends_cli

        return compare_backends_cli(
            self.model, self.dataset, split=self.split, limit=self.limit,
            backends=list(self.backends) if self.backends else None,
            out=self.out, max_length=self.max_length, min_tokens=self.min_tokens, batch_size=self.batch_size,
            label_map=self.label_map, patterns=self.patterns,
        )


@dataclass
class TrainEfficientArgs:
    """``attnexplain train-efficient``: small classifiers trained with efficient attention mechanisms."""

    dataset: str = "rotten-tomatoes"
    mechanisms: list[str] | None = None
    epochs: float = 1.0
    max_len: int = 64
    budget_seconds: float | None = None
    seed: int = 0


    def __post_init__(self) -> None:
        _check_float("--epochs", self.epochs, low=0.0, low_open=True)
        _check_int("--max-len", self.max_len, low=2)
        _check_float("--budget-seconds", self.budget_seconds, low=0.0, low_open=True, allow_none=True)
        _check_int("--seed", self.seed, low=0)

    def run(self):
        from ..efficient_models.train import compare_mechanisms

        return compare_mechanisms(self.dataset, self.mechanisms, epochs=self.epochs, max_len=self.max_len,
                                  budget_seconds=self.budget_seconds, seed=self.seed, progress=True)


@dataclass
class MergeArgs:
    """``attnexplain merge A B ... --out ALL``: merge shard runs."""

    runs: list[Path]
    out: Path
    force: bool = False

    def run(self):
        from ..runs.merge import merge_runs

        return merge_runs(self.runs, self.out, force=self.force)


@dataclass
class DashboardArgs:
    """``attnexplain dashboard [RUNS_DIR]``: start the Streamlit dashboard over a runs folder."""

    runs_dir: Path = Path("runs")
    host: str = "127.0.0.1"
    port: int = 8501
    app: Path | None = None


    def __post_init__(self) -> None:
        _check_int("--port", self.port, low=1, high=65535)
        if Path(self.runs_dir).exists() and not Path(self.runs_dir).is_dir():
            raise ArgumentError(f"RUNS_DIR {self.runs_dir} is a file; give the folder that holds the run folders")
        if not str(self.host).strip():
            raise ArgumentError("--host must be an address such as 127.0.0.1, got an empty string")

    def app_path(self) -> Path:
        if self.app is not None:
            return Path(self.app)
        from ..dashboard.app import script_path

        return script_path()

    def command(self) -> list[str]:
        import sys

        return [
            sys.executable, "-m", "streamlit", "run", str(self.app_path()),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal",  # no Deploy button: this is a local tool
            "--server.address", self.host, "--server.port", str(self.port),
            "--", "--runs-dir", str(self.runs_dir),
        ]

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
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch


from ..ablations.eraser import PRECISIONS, resolve_precision
from ..models import load_model_for_run
from .atomic_io import _log_stderr
from .batch import _Setup, batch_inputs, build_setup, run_batch
from .reader import Run
from .settings import (
    DEFAULT_BINS,
    ENGINES,
    AnalyzeError,
    applicable_methods,
    package_versions,
    parse_shard,
    resolve_label_map,
    resolve_methods,
)
from .writer import RunWriter


#: at most this many padded tokens (examples x longest input) per analyze batch: 32 inputs of 128
#: tokens, or 8 of 512. What one batch holds (captured attention of every layer and head, the
#: perturbed inputs of the faithfulness metrics) grows with it, so it bounds analyze's memory
MAX_BATCH_TOKENS = 4096


def _contiguous_batches(positions: list[int], batch_size: int, lengths: Mapping[int, int] | None = None,
                        max_batch_tokens: int | None = None) -> list[list[int]]:
    """Cut sorted positions into runs of consecutive values, then each run into batches of at most
    ``batch_size`` examples and (given ``lengths``) at most ``max_batch_tokens`` padded tokens
    (``len(batch) * longest``; a single longer example is a batch of its own)."""
    out: list[list[int]] = []

    def cut(run: list[int]) -> None:
        batch: list[int] = []
        longest = 0
        for p in run:
            n = lengths[p] if lengths is not None else 0
            if batch and (len(batch) >= batch_size or (max_batch_tokens and (len(batch) + 1) * max(longest, n)
                                                       > max_batch_tokens)):
                out.append(batch)
                batch, longest = [], 0
            batch.append(p)
            longest = max(longest, n)
        if batch:
            out.append(batch)

    run: list[int] = []
    for p in positions:
        if run and p != run[-1] + 1:
            cut(run)
            run = []
        run.append(p)
    if run:
        cut(run)
    return out


def _run_batches_locally(writer: RunWriter, ds: Any, batches: list[list[int]], setup: Any, *, seed: int,
                         store_set: set[int], bar: Any, on_batch: Callable[[int, int, int], None] | None) -> int:
    """The local engine: the batches one after the other in this process; returns #truncated texts."""
    from .generation_batch import GenerationSetup, run_generation_batch

    n_trunc = 0
    for number, batch in enumerate(batches):
        if isinstance(setup, GenerationSetup):
            tables, arrays = run_generation_batch(setup, seed, batch_inputs(ds, batch, None, store_set))
        else:
            tables, arrays = run_batch(setup, seed, batch_inputs(ds, batch, setup.label_mapping, store_set))
        n_trunc += int(np.sum(tables["examples"]["truncated"]))
        writer.write_batch(batch[0], tables, arrays)
        if bar is not None:
            bar.update(len(batch))
        if on_batch is not None:
            on_batch(number, batch[0], len(batch))
    return n_trunc


def _head_dim(lm: Any) -> int | None:
    """d_head of the model (for the dashboard's "effective attention is raw attention" note), None if unknown."""
    try:
        return int(lm.head_dim)
    except (AttributeError, TypeError, ValueError):
        return None


def _special_tokens_entry(lm: Any, include: bool) -> dict[str, Any]:
    """The manifest's ``special_tokens``: which token strings are special (as the tokens table
    writes them), whether a causal model's first token (the attention sink) counts too, and
    whether readers leave them out by default (:meth:`attnexplain.runs.Run.tokens`)."""
    import torch

    from ..ablations.perturbed_inputs import special_token_ids
    from ..methods.attention_methods import is_causal_model

    ids = sorted(i for i in special_token_ids(lm.tokenizer) if isinstance(i, int) and i >= 0)
    strings = lm.tokens(torch.tensor([ids]))[0] if ids and lm.tokenizer is not None else []
    return {"tokens": sorted(set(map(str, strings))), "attention_sink": bool(is_causal_model(lm)),
            "excluded": not include}


def _refuse_rows_without_content(lm: Any, ds: Any, positions: Sequence[int], max_len: int, chunk: int = 512) -> None:
    """Before any work: every example must keep at least one content (non-special) token after
    tokenization and truncation to ``max_len`` -- else nothing can be ranked or removed. Refused
    with the ids and the reason (empty / invisible-only text, only special-token strings such as a
    literal ``[CLS] [SEP]`` or ``[MASK]``, or everything cut by ``--max-length``)."""
    from ..ablations.perturbed_inputs import special_token_ids
    from ..models import is_blank_text

    tok = getattr(lm, "tokenizer", None)
    if tok is None:
        return
    specials = special_token_ids(tok)
    blank, special_only = [], []
    for a in range(0, len(positions), chunk):
        part = list(positions[a : a + chunk])
        texts = [ds.texts[p] for p in part]
        for p, t in zip(part, texts):
            if not isinstance(t, str) or is_blank_text(t):
                blank.append(ds.ids[p])
        kw = {"text_pair": [ds.text_pairs[p] for p in part]} if ds.text_pairs is not None else {}
        ok = [isinstance(t, str) and not is_blank_text(t) for t in texts]
        if not any(ok):
            continue
        ids = tok([t if good else "x" for t, good in zip(texts, ok)], add_special_tokens=True, truncation=True,
                  max_length=max_len, **kw)["input_ids"]
        for p, row, good in zip(part, ids, ok):
            if good and not any(int(t) not in specials for t in row):
                special_only.append(ds.ids[p])
    if not blank and not special_only:
        return
    parts = []
    if blank:
        parts.append(f"{len(blank)} empty or whitespace-only (invisible characters count as whitespace): "
                     + ", ".join(map(str, blank[:5])) + (" ..." if len(blank) > 5 else ""))
    if special_only:
        parts.append(f"{len(special_only)} with no token left but special tokens (texts such as a literal "
                     f"'[CLS] [SEP]' or '[MASK]', or everything cut by max length {max_len}): "
                     + ", ".join(map(str, special_only[:5])) + (" ..." if len(special_only) > 5 else ""))
    raise AnalyzeError("some examples have no content token to explain, refused before any work: "
                       + "; ".join(parts) + ". Remove them from the data" + (" or raise --max-length" if special_only else ""))


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
    include_special_tokens: bool = False,
    bins: Sequence[float] = DEFAULT_BINS,
    faithfulness_precision: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[int, int, int], None] | None = None,
    command: list[str] | None = None,
    threads: int | None = None,
    engine: str = "local",
    address: str | None = None,
    num_workers: int | None = None,
    worker_threads: int | None = None,
    task: str | None = None,
    max_new_tokens: int | None = None,
) -> Run:
    """Explain every example of ``dataset`` with ``model`` into the run folder ``out``; returns the :class:`Run`.

    Args:
        out: the run folder (created; an existing one with the same request is resumed; one
            holding a different run is refused unless ``force``).
        model: a model name/path (see :func:`attnexplain.models.load_model`; also ``tiny-<task>``)
            or a :class:`~attnexplain.models.LoadedModel`. Default: the default model.
        dataset: a data set name/path (:func:`attnexplain.data.load_dataset`) or a ``TextDataset``.
        split, limit, text_column, label_column, text_pair_column: passed to ``load_dataset``
            (``text_pair_column``: the second text of sentence-pair classifiers).
        include_special_tokens: the run's token tables are read (report, dashboard) with special
            tokens and a causal model's first token left out unless True (recorded in the manifest
            as ``special_tokens``; the tokens table itself always holds every real token, and
            faithfulness never removes special tokens).
        methods: method names (default :data:`DEFAULT_METHODS`; ``"all"``: every registered one that
            applies to the model -- the others are left out with a warning line and listed in the
            manifest's ``methods_left_out``; a method named explicitly that does not apply raises
            :class:`AnalyzeError`).
        batch_size: at most this many examples per forward pass and per shard; batches of long
            inputs are cut smaller, to at most :data:`MAX_BATCH_TOKENS` (4096) padded tokens
            (8 examples of 512 tokens), which bounds the memory (see the README for figures).
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
            (tests use it to simulate a crash); with the Ray engine, in the order workers finish them.
        engine: ``"local"`` (default: this process, batch after batch) or ``"ray"``: the batches
            spread over an actor pool on a Ray cluster (:mod:`attnexplain.runs.ray_engine`; needs
            ``pip install 'attnexplain[ray]'``). Same shards, same run folder, same tables.
        address: Ray only: ``None`` starts a private Ray instance on this machine (stopped at the
            end); ``"auto"`` joins the cluster ``ray start`` runs on this machine; ``"HOST:PORT"``
            joins the cluster whose head runs there (this machine must be a node of it: ``ray start
            --address=HOST:PORT``); ``"ray://HOST:PORT"`` connects through Ray Client.
        num_workers: Ray only: actors (each loads the model once). Default: the CPUs of this
            machine (no ``address``) or of the cluster, divided by ``worker_threads``.
        worker_threads: Ray only: torch threads (and Ray CPUs reserved) per worker. Default 1.
        task: ``"classification"`` (sequence classifiers) or ``"generation"`` (causal language
            models and encoder-decoders: every text is a prompt (an encoder-decoder's source);
            ``max_new_tokens`` tokens are generated greedily and each generated token is explained
            over the prompt and the tokens before it, with ERASER faithfulness per generated token;
            see :mod:`attnexplain.runs.generation_batch`). Default: the model's own (a causal LM or
            an encoder-decoder -> generation). ``max_length`` then cuts prompts
            to that many tokens (default: the context minus ``max_new_tokens``); labels are not used.
        max_new_tokens: generation only: tokens to generate per prompt (default 10).

    Raises:
        AnalyzeError, DatasetError, ModelNotFoundError, RunMismatchError: user errors, with messages.
    """
    from .. import __version__
    from ..data import TextDataset, load_dataset
    from ..methods import get_method
    from ..models import DEFAULT_MODEL, LoadedModel

    log = log or _log_stderr
    if threads is None and os.environ.get("ATTNEXPLAIN_THREADS"):
        try:
            threads = int(os.environ["ATTNEXPLAIN_THREADS"])
        except ValueError:
            raise AnalyzeError(f"$ATTNEXPLAIN_THREADS must be an integer >= 1, got {os.environ['ATTNEXPLAIN_THREADS']!r}") from None
    if max_length is not None and max_length < 1:
        raise AnalyzeError(f"--max-length must be >= 1 (tokens, including special tokens), got {max_length}")
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
    if engine not in ENGINES:
        raise AnalyzeError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    ray_session = None
    if engine == "ray":
        from .ray_engine import RaySession

        ray_session = RaySession(address=address, num_workers=num_workers, worker_threads=worker_threads, log=log)
    elif address is not None or num_workers is not None or worker_threads is not None:
        raise AnalyzeError("--address, --num-workers and --worker-threads are options of --engine ray")
    backend_options = dict(backend_options or {})
    try:
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
        if ray_session is not None:
            # Ray starts in the background now (the workers start loading a model given by name at once)
            # while this process loads its own copy of the model and opens the run folder
            ray_session.start(model=None if isinstance(model, LoadedModel) else str(model or DEFAULT_MODEL),
                              backend=backend, backend_options=backend_options)
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
        from .schema import GENERATION_TASK

        if task is None:
            task = GENERATION_TASK if lm.task in ("causal-lm", "seq2seq") else "classification"
        if task not in ("classification", GENERATION_TASK):
            raise AnalyzeError(f"--task must be classification or generation, got {task!r}")
        generation = task == GENERATION_TASK
        if generation:
            if lm.task not in ("causal-lm", "seq2seq"):
                raise AnalyzeError(f"--task generation explains what a causal language model (or an encoder-decoder) "
                                   f"generates, but {model_name} is a {lm.task} model; use a causal LM (e.g. --model "
                                   "smollm2) or leave out --task")
            if head_ablation:
                raise AnalyzeError("--head-ablation is an option of classifier runs; leave it out with --task generation")
            if engine != "local":
                raise AnalyzeError("--task generation runs with --engine local (split a large data set with --shard i/n "
                                   "in several processes and merge them)")
            if max_new_tokens is None:
                from .generation_batch import DEFAULT_MAX_NEW_TOKENS

                max_new_tokens = DEFAULT_MAX_NEW_TOKENS
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens < lm.max_length:
                raise AnalyzeError(f"--max-new-tokens must be an integer in 1..{lm.max_length - 1} (the model's context "
                                   f"is {lm.max_length} tokens), got {max_new_tokens!r}")
        elif lm.task != "classification":
            raise AnalyzeError(f"{model_name} is a {lm.task} model; analyze explains sequence classifiers"
                               + (" (for a language model: --task generation)" if lm.task in ("causal-lm", "seq2seq") else ""))
        elif max_new_tokens is not None:
            raise AnalyzeError("--max-new-tokens is an option of --task generation")
        # classifier runs: methods that do not apply to the model are left out of 'all' (named ones refused)
        method_names, methods_left_out = (applicable_methods(lm, method_names, methods, log=log) if not generation
                                          else (method_names, {}))
        precision = resolve_precision(faithfulness_precision, lm.device) if not generation else "float32"
        model_max = lm.max_length - (int(max_new_tokens) if generation else 0)
        max_len = min(int(max_length), model_max) if max_length is not None else model_max
        ds_labels = ds.label_names if not generation else None
        mapping = None if generation else resolve_label_map(
            ds_labels, lm.labels, label_map, dataset_name=ds_name, model_name=model_name,
            max_label=max(ds.labels) if ds.labels else None)

        _refuse_rows_without_content(lm, ds, positions, max_len)

        # the model object itself travels to the Ray workers when it was given as an object (tests,
        # notebooks); a name is loaded by each worker (it must be loadable on every node)
        ray_model = lm if isinstance(model, LoadedModel) else model_name
        manifest = {
            "format_version": 1, "attnexplain_version": __version__, "command": list(command or sys.argv),
            "model": model_name, "model_source": getattr(lm, "source", "") or "object",
            "task": GENERATION_TASK if generation else lm.task,
            "labels": [] if generation else list(lm.labels or []), "dataset": ds_name, "split": ds.split if not isinstance(dataset, TextDataset) else split,
            "dataset_labels": list(ds_labels) if ds_labels else None, "limit": limit,
            "shard": f"{shard_t[0]}/{shard_t[1]}" if shard_t else None,
            "backend": backend, "backend_options": backend_options, "methods": method_names,
            "methods_left_out": methods_left_out,
            "faithfulness": {"bins": list(bins), "removal": removal, "precision": precision}, "head_ablation": bool(head_ablation),
            "label_map": dict(label_map) if label_map else None, "seed": int(seed), "max_length": int(max_len),
            "store_attention": int(store_attention), "batch_size": int(batch_size),
            "text_column": text_column, "label_column": label_column, "text_pair_column": text_pair_column,
            "special_tokens": _special_tokens_entry(lm, include_special_tokens),
            "versions": package_versions(), "n_examples": len(positions), "dataset_size": n_total,
            "head_dim": _head_dim(lm),
            "engine": ray_session.info if ray_session is not None else {"name": "local", "threads": torch.get_num_threads()},
        }
        if generation:
            manifest["model_task"] = lm.task
            manifest["generation"] = {"max_new_tokens": int(max_new_tokens), "decoding": "greedy",
                                      "prompt_max_tokens": int(max_len)}
        writer = RunWriter(out, manifest, force=force, log=log)
        # the Ray session connects first (an unreachable cluster fails before the run folder is touched;
        # it fills manifest["engine"]) and is closed last
        with ray_session or contextlib.nullcontext(), writer:
            if writer.is_complete:
                log(f"[analyze] {out} is already complete ({len(writer.done_ids)} examples); nothing to do")
                return writer.finalize()
            if ds.describe_columns():
                log(f"[analyze] {ds.describe_columns()}")
            todo = [p for p in positions if p not in writer.done_positions]
            if writer.resumed:
                log(f"[analyze] resuming {out}: {len(positions) - len(todo)} of {len(positions)} examples done"
                    + (f"; redoing {len(writer.redone)} corrupt batch(es)" if writer.redone else ""))
            store_set = set(positions[:store_attention])

            if generation:
                from .generation_batch import build_generation_setup

                setup = build_generation_setup(lm, method_names, seed=seed, bins=bins, removal=removal,
                                               max_new_tokens=int(max_new_tokens), max_length=max_len)
            else:
                setup = build_setup(lm, method_names, seed=seed, bins=bins, removal=removal, head_ablation=head_ablation,
                                    max_length=max_len, label_mapping=mapping, label_names=ds_labels, precision=precision)
            torch.manual_seed(seed)
            lengths = None
            if todo and lm.tokenizer is not None:
                from ..models import untruncated_ids

                kw = {"text_pair": [ds.text_pairs[p] for p in todo]} if ds.text_pairs is not None else {}
                ids_all = untruncated_ids(lm.tokenizer, [ds.texts[p] for p in todo], **kw)
                lengths = {p: min(len(x), max_len) + (int(max_new_tokens) if generation else 0) for p, x in zip(todo, ids_all)}
            batches = _contiguous_batches(todo, batch_size, lengths, MAX_BATCH_TOKENS)
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(positions), initial=len(positions) - len(todo), unit="ex", desc=f"analyze ({engine})",
                           file=sys.stderr, dynamic_ncols=True)
            t0 = time.perf_counter()
            try:
                if engine == "ray":
                    from .ray_engine import run_batches_on_ray

                    worker_setup = dict(method_names=method_names, seed=int(seed), bins=bins, removal=removal,
                                        head_ablation=bool(head_ablation), max_length=max_len, label_mapping=mapping,
                                        label_names=ds_labels, precision=precision)
                    n_trunc = run_batches_on_ray(writer, ds, batches, ray_session, model=ray_model,
                                                 worker_setup=worker_setup, store_set=store_set, bar=bar, log=log,
                                                 on_batch=on_batch)
                else:
                    n_trunc = _run_batches_locally(writer, ds, batches, setup, seed=int(seed), store_set=store_set,
                                                   bar=bar, on_batch=on_batch)
            finally:
                if bar is not None:
                    bar.close()
            seconds = time.perf_counter() - t0
            if n_trunc:
                log(f"[analyze] {n_trunc} text(s) were longer than {max_len} tokens and were truncated (column 'truncated')"
                    + (" to make the prompts" if generation else ""))
            run = writer.finalize(extra={"seconds_last_session": round(seconds, 2)})
        if todo:
            rate = len(todo) / max(seconds, 1e-9)
            log(f"[analyze] wrote {out}: {len(positions)} examples ({len(todo)} this session, "
                + (f"{rate:.1f} examples/s)" if rate >= 1 else f"{seconds / len(todo):.1f} s per example)"))
            if (run.report_dir / "summary.md").exists():  # a report of the unfinished run would now be stale
                from .report import report

                report(run)
                log(f"[analyze] refreshed {run.report_dir / 'summary.md'} (written on the unfinished run)")
        return run
    except BaseException:
        if ray_session is not None:  # stopped on any error (a started Ray instance, workers)
            ray_session.close()
        raise

"""The ``attnexplain`` command line (typer). Every command fills an argument dataclass from
:mod:`attnexplain.cli.args` and calls the public API; nothing is computed here.

User errors (missing files, wrong columns, labels that do not match the model, an ``--out`` folder
holding a different run, ...: every :class:`~attnexplain.errors.AttnExplainError`) print
``error: <message>`` on stderr and exit with status 2, without a traceback (set ``ATTNEXPLAIN_DEBUG=1`` to see one). Interrupting ``analyze`` (Ctrl-C) exits with
status 130; running the same command again resumes.
"""

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import AttnExplainError, storage_error_message
from .args import (
    DEFAULT_MODEL,
    AnalyzeArgs,
    CompareArgs,
    CompareBackendsArgs,
    DashboardArgs,
    ExplainArgs,
    MergeArgs,
    PrepareArgs,
    ReportArgs,
    TrainEfficientArgs,
    parse_key_values,
    parse_list,
)


app = typer.Typer(
    name="attnexplain",
    help="Does this attention explain the prediction? Explain transformer classifiers and each token a language "
         "model or encoder-decoder generates, with raw, effective and norm-based attention, rollout, context mixing "
         "and gradients; measure faithfulness; compare efficient attention backends; analyse whole data sets into "
         "run folders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class UserError(AttnExplainError):
    """An error the user can fix, found by the command line itself; printed without a traceback."""


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def command(fn):
    """Run a command body, turning user errors into ``error: ...`` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted; run the same command again to resume", err=True)
            raise typer.Exit(130)
        except Exception as exc:  # noqa: BLE001 - sorted below
            if os.environ.get("ATTNEXPLAIN_DEBUG"):
                raise
            if isinstance(exc, AttnExplainError):  # every user error of the package, one place
                msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                _fail(msg)
            storage = storage_error_message(exc)  # disk full, read-only mount, no permission
            if storage is not None:
                _fail(storage)
            raise

    return wrapper


def _kv(items: Optional[List[str]], what: str, typed: bool = True) -> dict:
    try:
        return parse_key_values(items, what=what, typed=typed)
    except ValueError as exc:
        raise UserError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------


@app.command()
@command
def prepare(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                              help="minilm-rotten-tomatoes | minilm-bbc-news (fine-tune the packaged MiniLM) or "
                                   "tiny-<synthetic task> (e.g. tiny-synthetic-negation: a tiny BERT in seconds; "
                                   "tiny-seq2seq-reverse / -copy / -sort: a tiny BART encoder-decoder in about a minute)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default: the recipe's). Non-default options "
                                                    "cache the model under its own name, e.g. "
                                                    "minilm-rotten-tomatoes-epochs2."),
    limit: Optional[int] = typer.Option(None, help="Train on only N training examples (quick runs; cached under "
                                                   "its own name, e.g. minilm-rotten-tomatoes-limit100)."),
    seed: int = typer.Option(0, help="Random seed."),
    force: bool = typer.Option(False, "--force", help="Train again even if the model is already prepared."),
) -> None:
    """Prepare a model to explain: fine-tune a classifier or train a tiny one (cached under
    ~/.cache/attnexplain/models with its training options; skipped if present; prints its validation accuracy)."""
    args = PrepareArgs(model=model, epochs=epochs, limit=limit, seed=seed, force=force)
    if not (model.startswith("tiny-") or model in ("minilm-rotten-tomatoes", "minilm-bbc-news")):
        raise UserError(f"cannot prepare {model!r}: choose minilm-rotten-tomatoes, minilm-bbc-news or tiny-<synthetic task>")
    try:
        path = args.run()
    except ValueError as exc:  # unknown task / recipe
        raise UserError(str(exc)) from None
    typer.echo(args.summary(path))


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------


@app.command()
@command
def explain(
    text: str = typer.Argument(..., help="The text to explain."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name or folder (see `attnexplain prepare`)."),
    methods: Optional[List[str]] = typer.Option(None, "--methods",
                                                help="Methods (repeat or comma-separate; default: the analyze defaults; "
                                                     "`attnexplain methods` lists them)."),
    top: int = typer.Option(5, help="Tokens shown per method."),
    backend: str = typer.Option("dense", help="Attention backend (`attnexplain backends`)."),
    backend_option: Optional[List[str]] = typer.Option(None, "--backend-option", help="Backend option key=value (repeatable)."),
    target: Optional[int] = typer.Option(None, help="Class to explain (classifiers; default: the predicted one)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                 help="Language models: tokens to generate and explain one by one (default 5)."),
    continuation: Optional[str] = typer.Option(None, "--continuation",
                                               help="Language models: explain this continuation instead of a generated one "
                                                    "(e.g. ' Paris')."),
    contrast: Optional[str] = typer.Option(None, "--contrast",
                                           help="Language models: contrastive explanation, why the continuation rather than "
                                                "this one (gradient and perturbation methods; e.g. --continuation ' Paris' "
                                                "--contrast ' Lyon')."),
    text_pair: Optional[str] = typer.Option(None, "--text-pair",
                                            help="Second segment for sentence-pair classifiers (NLI, paraphrase): the "
                                                 "two texts are tokenized together, [CLS] text [SEP] pair [SEP]."),
    include_special_tokens: bool = typer.Option(False, "--include-special-tokens",
                                                help="Rank special tokens ([CLS], [SEP]; a language model's first token, "
                                                     "the attention sink) too; by default they are left out."),
) -> None:
    """Explain one text. Classifiers: prediction, probabilities, top tokens per method, raw vs effective attention.
    Language models (e.g. --model smollm2): the generated text and, per generated token, its probability,
    the top alternatives and the top source tokens per method."""
    args = ExplainArgs(text=text, model=model, methods=parse_list(methods), top=top, backend=backend,
                       backend_options=_kv(backend_option, "--backend-option"), target=target,
                       max_new_tokens=max_new_tokens, continuation=continuation, contrast=contrast,
                       text_pair=text_pair, include_special_tokens=include_special_tokens)
    typer.echo(args.run())


# --------------------------------------------------------------------------------------------
# analyze / merge
# --------------------------------------------------------------------------------------------


@app.command()
@command
def analyze(
    dataset: str = typer.Option(..., "--dataset", "-d",
                                help="Built-in name (`attnexplain datasets`) or a .csv/.tsv/.jsonl/.json/.parquet file."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (e.g. runs/NAME); resumed if it holds the same run."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name or folder."),
    split: str = typer.Option("test", help="train | validation | test | all."),
    limit: Optional[int] = typer.Option(None, help="Only the first N examples of the split (built-in splits come in a fixed shuffled order, so this is a seeded random sample of them)."),
    methods: Optional[List[str]] = typer.Option(
        None, "--methods",
        help="Explanation methods (repeat or comma-separate). Default: raw_attention, effective_attention, norm, "
             "rollout, gradient_x_input, random (no integrated_gradients: slow). 'all' = every registered method "
             "that applies to the model, except flow and attention_distribution (name them to include them); "
             "methods that do not apply (e.g. alti, globenc, norm_residual_ln on pre-LN GPT-2 or Llama) are left "
             "out with a warning; naming one of them is an error."),
    batch_size: int = typer.Option(32, "--batch-size", help="At most N examples per batch (and per shard file); long inputs go in smaller "
                                                               "batches of at most 4096 tokens (8 x 512), which bounds memory."),
    backend: str = typer.Option("dense", help="Attention backend: dense, smyrf, ... (`attnexplain backends`)."),
    backend_option: Optional[List[str]] = typer.Option(None, "--backend-option",
                                                       help="Backend option key=value (repeatable), e.g. n_hashes=2."),
    store_attention: int = typer.Option(50, "--store-attention", help="Keep attention arrays of the first N examples."),
    removal: str = typer.Option("delete", help="Faithfulness perturbation: delete | mask."),
    faithfulness_precision: str = typer.Option(
        "auto", "--faithfulness-precision",
        help="auto | float32 | bfloat16: what the faithfulness forward passes run in. auto = bfloat16 autocast where "
             "the hardware runs it natively (AVX512-BF16/AMX CPUs, recent GPUs; ~2.3x faster, AOPC within ~1e-3), "
             "else float32. Capture and explanations are always float32."),
    head_ablation: bool = typer.Option(False, "--head-ablation", help="Also zero-ablate every head (L extra forwards per batch)."),
    shard: Optional[str] = typer.Option(None, help="i/n: only the i-th (0-based) of n contiguous parts; merge them later."),
    label_map: Optional[List[str]] = typer.Option(None, "--label-map",
                                                  help="dataset_label=model_label (repeatable or comma-separated), "
                                                       "when the data set's label names differ from the model's."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate inputs to N tokens (default: model maximum)."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Text column of a user file."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Label column of a user file."),
    text_pair_column: Optional[str] = typer.Option(None, "--text-pair-column",
                                                   help="Second-text column of a user file for sentence-pair classifiers "
                                                        "(NLI, paraphrase): each row is tokenized as [CLS] text [SEP] pair [SEP]."),
    seed: int = typer.Option(0, help="Random seed (random baseline)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (1 is often fastest on a busy machine)."),
    engine: str = typer.Option("local", help="local (this process) | ray (an actor pool on a Ray cluster; needs "
                                              "pip install 'attnexplain[ray]'). Same shards, same run folder."),
    address: Optional[str] = typer.Option(None, help="Ray only. Default: start Ray on this machine. auto | HOST:PORT: "
                                                     "join the cluster of `ray start --head` (this machine a node); "
                                                     "ray://HOST:10001: Ray Client. The run folder must be a path "
                                                     "every node sees."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Ray only: workers, each loads the model "
                                                                        "once (default: CPUs / --worker-threads)."),
    worker_threads: Optional[int] = typer.Option(None, "--worker-threads",
                                                 help="Ray only: torch threads (= Ray CPUs) per worker (default 1)."),
    force: bool = typer.Option(False, "--force", help="Delete a different run in --out and start over."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    include_special_tokens: bool = typer.Option(False, "--include-special-tokens",
                                                help="Show special tokens ([CLS], [SEP]; a language model's first token) "
                                                     "in the run's token tables (report, dashboard); by default they are "
                                                     "left out (the tokens table always stores them)."),
    task: Optional[str] = typer.Option(None, "--task",
                                       help="classification | generation. generation (a causal LM, e.g. --model smollm2, or an encoder-decoder): "
                                            "each text is a prompt (cut to --max-length tokens), --max-new-tokens are "
                                            "generated greedily and every generated token is explained over the prompt "
                                            "and the tokens before it, with faithfulness per generated token. "
                                            "Default: the model's task."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                 help="--task generation: tokens to generate and explain per prompt (default 10)."),
) -> None:
    """Explain a whole data set into a run folder (resumable; bounded memory; see docs/run-format.md)."""
    args = AnalyzeArgs(
        dataset=dataset, out=out, model=model, split=split, limit=limit, methods=parse_list(methods),
        batch_size=batch_size, store_attention=store_attention, removal=removal, head_ablation=head_ablation,
        faithfulness_precision=faithfulness_precision, shard=shard, backend=backend,
        backend_options=_kv(backend_option, "--backend-option"), force=force,
        label_map=_kv(label_map, "--label-map", typed=False) or None, max_length=max_length, seed=seed,
        text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
        include_special_tokens=include_special_tokens, threads=threads, progress=not no_progress,
        engine=engine, address=address, num_workers=num_workers, worker_threads=worker_threads,
        task=task, max_new_tokens=max_new_tokens,
    )
    run = args.run(command=["attnexplain", *sys.argv[1:]])
    if args.shard:
        typer.echo(f"{run.path}: {run.status}, {run.n_done} examples (shard {args.shard}). Next: when every shard "
                   f"is complete, attnexplain merge <shard runs> --out <merged run>, then attnexplain report on it")
    else:
        summary = run.report_dir / "summary.md"
        fresh = summary.is_file() and summary.stat().st_mtime >= (run.path / "manifest.json").stat().st_mtime
        typer.echo(f"{run.path}: {run.status}, {run.n_done} examples. "
                   + (f"Report: {summary}" if fresh else f"Next: attnexplain report {run.path}"))


@app.command()
@command
def merge(
    runs: List[Path] = typer.Argument(..., help="Complete shard runs (analyze --shard i/n) of the same request."),
    out: Path = typer.Option(..., "--out", "-o", help="The merged run folder."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run in --out."),
) -> None:
    """Merge shard runs into one run folder (checks they are compatible and share no example)."""
    try:
        run = MergeArgs(runs=list(runs), out=out, force=force).run()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    typer.echo(f"{run.path}: merged {len(runs)} runs, {run.n_done} examples")


# --------------------------------------------------------------------------------------------
# report / compare
# --------------------------------------------------------------------------------------------


@app.command()
@command
def report(
    run: Path = typer.Argument(..., help="Run folder (from analyze)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default RUN/report)."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Only summary.md."),
    n_resamples: int = typer.Option(2000, "--n-resamples", help="Bootstrap resamples for the confidence intervals."),
    include_special_tokens: Optional[bool] = typer.Option(
        None, "--include-special-tokens/--exclude-special-tokens",
        help="Token tables with or without special tokens (default: as the run was analysed; analyze leaves them out)."),
) -> None:
    """Summarise a run: accuracy, AOPC per method with CIs, method agreement, heads; writes summary.md + figures."""
    res = ReportArgs(run=run, out=out, figures=not no_figures, n_resamples=n_resamples,
                     include_special_tokens=include_special_tokens).run_report()
    typer.echo(res.text)
    typer.echo(f"\nwrote {', '.join(str(f) for f in res.files)}", err=True)


@app.command()
@command
def compare(
    run_a: Path = typer.Argument(..., help="First run (e.g. dense)."),
    run_b: Path = typer.Argument(..., help="Second run (e.g. smyrf)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default RUN_A/compare-<RUN_B name>)."),
    n_resamples: int = typer.Option(2000, "--n-resamples", help="Bootstrap resamples."),
) -> None:
    """Compare two runs side by side: accuracy, prediction agreement, AOPC, token-rank agreement per method."""
    res = CompareArgs(run_a=run_a, run_b=run_b, out=out, n_resamples=n_resamples).run()
    typer.echo(res.text)
    typer.echo(f"\nwrote {', '.join(str(f) for f in res.files)}", err=True)


@app.command("compare-backends")
@command
def compare_backends(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for table.md, per_example.parquet, manifest.json."),
    model: str = typer.Option("minilm-bbc-news", "--model", "-m",
                              help="Model name or folder (default: the bbc-news classifier, `attnexplain prepare "
                                   "--model minilm-bbc-news`)."),
    dataset: str = typer.Option("bbc-news", "--dataset", "-d",
                                help="Data set name or file; for an encoder-decoder model a digit task: seq2seq-reverse, "
                                     "seq2seq-copy or seq2seq-sort."),
    split: str = typer.Option("test", help="Split of a built-in data set."),
    limit: Optional[int] = typer.Option(100, help="At most this many examples."),
    backend: Optional[List[str]] = typer.Option(
        None, "--backend", "-b",
        help="Backend spec, repeatable: 'smyrf:memory=0.5', 'smyrf:n_hashes=2,q_cluster_size=64,k_cluster_size=64', "
             "'performer:n_features=128', 'local:window=64'... (default: SMYRF at 50 % and 25 % memory; for an "
             "encoder-decoder every mechanism once, dense included as the sanity check).",
    ),
    pattern: Optional[List[str]] = typer.Option(
        None, "--pattern",
        help="Encoder-decoder models (e.g. tiny-seq2seq-reverse, `attnexplain prepare --model tiny-seq2seq-reverse`): "
             "the attention pattern to swap each backend into, one at a time, the rest staying dense (repeatable or "
             "comma-separated): noncausal_self (encoder), causal_self (decoder self), noncausal_cross (decoder "
             "cross). Default: every pattern the model has."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate inputs to this many tokens."),
    min_tokens: Optional[int] = typer.Option(None, "--min-tokens", help="Keep only examples at least this long."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size",
                                            help="Texts (lm: windows) per forward pass (default 4; lm 1)."),
    label_map: Optional[List[str]] = typer.Option(None, "--label-map",
                                                  help="dataset_label=model_label (repeatable or comma-separated), "
                                                       "when the data set's label names differ from the model's."),
    task: str = typer.Option("auto", "--task",
                             help="classification (classifiers and encoder-decoders) | lm | auto (lm for a causal LM such as "
                                  "smollm2): lm compares "
                                  "perplexity, next-token agreement and explanation agreement inside the LM, with "
                                  "every causal backend at two budgets by default."),
    lengths: Optional[str] = typer.Option(None, "--lengths",
                                          help="lm: window lengths in tokens, comma-separated (default 512,1024,2048)."),
    n_tokens: Optional[int] = typer.Option(None, "--n-tokens",
                                           help="lm: tokens of text scored per length (default: the longest length); "
                                                "--limit caps the texts joined to get them."),
    explain_prompts: int = typer.Option(4, "--explain-prompts",
                                        help="lm: fixed prompts (windows of the shortest length) for the Kendall tau "
                                             "of raw-attention and gradient x input scores (0: none)."),
) -> None:
    """Dense vs efficient attention on the same model and texts: prediction agreement, output TVD,
    per-layer JSD of attention rows, Kendall tau of raw/effective token rankings, memory share.
    An encoder-decoder model is compared per attention pattern (CAB's patterns: encoder self, decoder
    causal self, cross), with next-token agreement and token accuracy under teacher forcing; a backend
    that cannot compute a pattern is listed as refused, with its reason. A causal LM (--task lm, the
    default for smollm2) is compared inside the LM (CAB's causal self pattern): perplexity and
    next-token agreement per backend, budget and length, Kendall tau of token scores on fixed prompts."""
    length_list = None
    if lengths is not None:
        try:
            length_list = [int(x) for x in lengths.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--lengths takes comma-separated integers such as 512,1024,2048, got {lengths!r}") from None
    args = CompareBackendsArgs(out=out, model=model, dataset=dataset, split=split, limit=limit,
                               max_length=max_length, min_tokens=min_tokens, batch_size=batch_size,
                               label_map=_kv(label_map, "--label-map", typed=False) or None,
                               patterns=parse_list(pattern), task=task,
                               lengths=length_list, n_tokens=n_tokens, explain_prompts=explain_prompts)
    if backend:
        args.backends = list(backend)
    res = args.run()
    typer.echo(res.to_markdown())
    files = ("perplexity.csv, explanations.csv" if args.resolved_task() == "lm" else "per_example.parquet")
    typer.echo(f"\nwrote {out}/table.md, {files}, manifest.json", err=True)


@app.command("train-efficient")
@command
def train_efficient(
    dataset: str = typer.Option("rotten-tomatoes", "--dataset", "-d", help="Built-in or synthetic data set."),
    mechanism: Optional[List[str]] = typer.Option(
        None, "--mechanism", help="standard, optimised, efficient, super, elementwise (repeatable; default all)."),
    epochs: float = typer.Option(1.0, help="Epochs over the train split."),
    max_len: int = typer.Option(64, "--max-len", help="Context length (super attention's fixed length)."),
    budget_seconds: Optional[float] = typer.Option(None, "--budget-seconds", help="Stop each training after this long."),
    seed: int = typer.Option(0),
) -> None:
    """Train small classifiers with optimised / efficient / super / element-wise attention (and a standard
    control) on the same data and budget; caches them and prints accuracy and parameter counts side by side."""
    df = TrainEfficientArgs(dataset=dataset, mechanisms=list(mechanism) if mechanism else None, epochs=epochs,
                            max_len=max_len, budget_seconds=budget_seconds, seed=seed).run()
    typer.echo(df.to_string(index=False))


# --------------------------------------------------------------------------------------------
# dashboard
# --------------------------------------------------------------------------------------------


@app.command()
@command
def dashboard(
    runs_dir: Path = typer.Argument(Path("runs"), help="Folder holding run folders."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8501, help="Port."),
    print_command: bool = typer.Option(False, "--print-command", help="Only print the streamlit command."),
) -> None:
    """Start the Streamlit dashboard over RUNS_DIR (headless; open the printed URL)."""
    args = DashboardArgs(runs_dir=runs_dir, host=host, port=port)
    cmd = args.command()
    if print_command:
        typer.echo(" ".join(cmd))
        return
    if not args.app_path().is_file():
        raise UserError(f"the dashboard app is missing ({args.app_path()}); reinstall attnexplain")
    env = dict(os.environ, ATTNEXPLAIN_RUNS_DIR=str(Path(runs_dir).resolve()))
    typer.echo(f"dashboard: http://{host}:{port}  (runs from {runs_dir}; Ctrl-C stops it)", err=True)
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)


# --------------------------------------------------------------------------------------------
# listings
# --------------------------------------------------------------------------------------------


def _listing(items: dict) -> str:
    width = max((len(k) for k in items), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in items.items())


@app.command()
@command
def datasets() -> None:
    """List data sets by the models they are for: text data sets (classifiers and causal LMs), digit tasks
    (encoder-decoders), social scenes (the set decoder); or give a file path to --dataset."""
    from ..data import list_datasets
    from ..data.seq2seq import SEQ2SEQ_TASKS

    typer.echo("Text data sets (--dataset of analyze and compare-backends; or a path: .csv, .tsv, .jsonl, .json, .parquet, a save_to_disk folder):")
    typer.echo(_listing(list_datasets()))
    typer.echo("\nDigit tasks for encoder-decoder models (attnexplain prepare --model tiny-seq2seq-reverse; "
               "compare-backends --model tiny-seq2seq-reverse --dataset seq2seq-reverse):")
    typer.echo(_listing({name: task.description for name, task in SEQ2SEQ_TASKS.items()}))
    typer.echo("\nScenes for the learned-query set decoder (compare-backends --model set-decoder-... "
               "--dataset social-scenes; trained by attnexplain.set_decoder.train_set_decoder):")
    typer.echo(_listing({"social-scenes": "synthetic scenes of 4-12 individuals (position, heading, action) in groups "
                                          "of 1-5, one activity per group; gold membership known"}))


@app.command()
@command
def methods() -> None:
    """List explanation methods (* = run by analyze by default)."""
    from ..methods import METHODS
    from ..runs.settings import DEFAULT_METHODS

    typer.echo(_listing({("* " if n in DEFAULT_METHODS else "  ") + n: METHODS[n].description for n in sorted(METHODS)}))


@app.command()
@command
def backends() -> None:
    """List attention backends (use with --backend and --backend-option key=value)."""
    from ..backends import BACKENDS

    rows = {}
    for name in sorted(BACKENDS):
        cls = BACKENDS[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        try:
            opts = cls().options()
        except Exception:  # noqa: BLE001
            opts = {}
        desc = (doc[0] if doc else "").replace("``", "")  # reStructuredText literals read as plain text here
        if opts:
            desc += "  options: " + ", ".join(f"{k}={v}" for k, v in opts.items())
        rows[name] = desc
    typer.echo(_listing(rows))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

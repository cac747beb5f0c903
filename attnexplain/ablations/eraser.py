"""Token-level faithfulness of explanations: ERASER comprehensiveness, sufficiency and AOPC.

DeYoung et al., "ERASER: A Benchmark to Evaluate Rationalized NLP Models", ACL 2020. With
``m(x)_c`` the model's probability of class ``c`` (default: the class it predicts on the full
input) and ``r_k`` the ``k`` highest-ranked tokens of an explanation::

    comprehensiveness(k) = m(x)_c - m(x \\ r_k)_c      necessity: higher = more faithful
    sufficiency(k)       = m(x)_c - m(r_k)_c          lower = more faithful
    AOPC                 = mean over the bins k in {1, 5, 10, 20, 50} %  (no k = 0 term)

Conventions (recorded in :class:`FaithfulnessResult`):

* **Tokens** are the tokenizer's tokens (sub-words), not words. Only the *real, non-special*
  tokens of an example are ranked and removed; special tokens ([CLS], [SEP], <s>, </s>, [PAD],
  [MASK], BOS/EOS; ``[UNK]`` counts as content) always stay where they are. ``n`` below is the
  number of those content tokens.
* **k per bin**: ``k = min(n, max(1, ceil(f * n)))`` for the fraction ``f`` (``rounding="ceil"``,
  default; ``"round"`` uses round-half-up ``floor(f * n + 0.5)``). At least one token, at most
  the whole text. Short texts therefore repeat a k across bins (a 3-token text has k = 1, 1, 1,
  1, 2); each bin still counts once in the AOPC, as in ERASER. ``rounding="ferret"`` follows
  ferret-xai instead: ``k = floor(f * n)`` and bins with k = 0 are skipped (a 7-token text is
  scored at the 20 % and 50 % bins only, k = 1 and 3); an example whose every bin rounds to 0
  has no rows. (ferret also deletes at the string level and re-tokenizes, and by default never
  removes tokens scored <= 0; those two rules are not emulated: see the README.)
* **Removal** (``mode``):
  - ``"delete"`` (default): the tokens are dropped and the sequence is re-packed (positions
    shift left; ``token_type_ids`` of the kept tokens are kept). Removing every content token
    leaves only the special tokens: a BERT model then sees ``[CLS] [SEP]``.
  - ``"mask"``: each removed token is replaced by the tokenizer's ``[MASK]`` id, or by its pad id
    when it has no mask token; ``attention_mask`` stays 1 at those positions (the model sees a
    mask/pad embedding at the same position, sequence length unchanged).
* **Rankings**: from scores with :func:`attnexplain.methods.rank_tokens` (descending; ties:
  earlier position first). Scores or rankings may be given per real token (including special
  tokens, as :func:`attnexplain.methods.explain_batch` returns them: special positions are
  dropped before ranking) or per content token; any other length is a ``ValueError`` naming
  the example and both accepted lengths.
* **Precision** (``precision``): ``"float32"`` (default) runs the perturbed inputs as the model
  is; ``"bfloat16"`` runs them under ``torch.autocast`` (matrix products in bfloat16 with float32
  accumulation; layer norms and softmax stay float32), ~2.3x faster on CPUs with native bfloat16
  (AVX512-BF16 / AMX) and on recent GPUs. ``p_full`` is computed in the same precision, so both
  sides of every difference share the rounding: on the rotten-tomatoes classifier per-example
  AOPC moved by 7e-4 on average (max 9e-3) and the mean AOPC of each method by <= 1e-4 (per-example
  spread 0.18). ``"auto"`` picks bfloat16 where the hardware runs it natively, else float32
  (:func:`resolve_precision`). The precision used is in ``FaithfulnessResult.precision``.
* **First-token classifiers** (BERT, RoBERTa, ELECTRA, XLM-R, DistilBERT sequence classifiers,
  whose head reads position 0 only): the perturbed inputs run inside
  :func:`attnexplain.capturing.first_token_readout`, which skips the last layer's work on the other
  positions (``skip_unread=True``, default). The first time a model is used this way the first
  batch is also run in full and the probabilities compared (within 1e-4); a model that
  disagrees is run in full from then on, with a warning.
* **Batched, and batch-invariant**: every distinct perturbed input (2 metrics x bins x methods
  per example, plus the full input; identical ones are evaluated once) goes through the model in
  batched forward passes. Matrix-product kernels pick their blocking (hence their summation order)
  from the shape of the whole batch, so the same input padded to another width, or run beside a
  different number of rows, can come out different in the last bits -- in bfloat16 that moved
  per-example AOPC by up to 2e-3 between analyze batch sizes 1 and 16. With
  ``batch_invariant=True`` (default) the shape an input runs in depends on that input alone: it is
  padded to its own width bucket (its length rounded up to a multiple of ``WIDTH_GRANULARITY``),
  runs only beside inputs of the same bucket, and every forward holds at least
  ``MIN_TOKENS_PER_FORWARD`` tokens (short chunks are filled with copies of a row, whose results
  are dropped); chunks hold at most ``TOKENS_PER_FORWARD`` tokens and ``max_batch`` rows. On the
  CPU these were measured on (AMX/AVX512-BF16, 1 and 2 threads) per-example results are then
  bitwise the same whatever else is in the batch, in bfloat16 and float32 alike (see the README,
  "Reliability"). ``batch_invariant=False`` sorts the inputs by length and cuts them where
  padding would cost more than another forward (``forward_cost_tokens``): a little less padding,
  results equal up to float round-off of padded batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..metrics import ERASER_BINS, bootstrap_ci
from ..models import LoadedModel

from .perturbed_inputs import (
    _build,
    _content_ranking,
    _examples_from_batch,
    _forward_probs,
    _per_method,
    _replace_id,
    bin_sizes,
    content_positions,
    special_token_ids,
)


__all__ = [
    "REMOVAL_MODES",
    "PRECISIONS",
    "resolve_precision",
    "native_bfloat16",
    "FaithfulnessResult",
    "faithfulness",
    "faithfulness_for_methods",
    "random_rankings",
    "bin_sizes",
    "special_token_ids",
    "content_positions",
]

REMOVAL_MODES = ("delete", "mask")
METRICS = ("comprehensiveness", "sufficiency")
PRECISIONS = ("float32", "bfloat16", "auto")


def native_bfloat16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` runs bfloat16 matrix products natively (CUDA with bf16 support; a CPU
    with AVX512-BF16 or AMX), i.e. whether autocast to bfloat16 is faster there rather than emulated."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    from ..backends.base import cpu_has_native_bfloat16

    return cpu_has_native_bfloat16()


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"auto"`` -> ``"bfloat16"`` where :func:`native_bfloat16` says so, else ``"float32"``;
    ``"float32"`` / ``"bfloat16"`` are returned as they are. Anything else: ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------


@dataclass
class FaithfulnessResult:
    """ERASER scores of one or more explanation methods on a set of examples.

    Attributes:
        table: long table, one row per (example, method, metric, bin): columns ``example``,
            ``method``, ``metric`` ("comprehensiveness" / "sufficiency"), ``fraction`` (the bin),
            ``k`` (tokens removed or kept), ``n_tokens`` (content tokens of the example),
            ``target``, ``p_full`` (m(x)_c), ``p_perturbed`` (m(x \\ r_k)_c or m(r_k)_c), ``value``.
        aopc: one row per (example, method, metric): ``aopc`` = mean of ``value`` over the bins.
        mode / rounding / bins: the conventions used (see the module docstring).
        precision: ``"float32"`` or ``"bfloat16"``, what the perturbed forwards ran in.
        n_forward: forward passes run; n_sequences: distinct inputs evaluated.
    """

    table: Any
    aopc: Any
    mode: str
    rounding: str
    bins: tuple[float, ...]
    targets: np.ndarray
    p_full: np.ndarray
    n_forward: int = 0
    n_sequences: int = 0
    precision: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.aopc["method"]))

    def summary(self, *, ci: bool = True, confidence_level: float = 0.95, n_resamples: int = 2000, seed: int = 0):
        """Mean AOPC per (method, metric) over the examples, with a bootstrap CI (BCa, seeded)."""
        import pandas as pd

        rows = []
        for (method, metric), grp in self.aopc.groupby(["method", "metric"], sort=False):
            vals = grp["aopc"].to_numpy()
            row = {"method": method, "metric": metric, "aopc": float(np.mean(vals)), "n": len(vals)}
            if ci:
                row["ci_low"], row["ci_high"] = bootstrap_ci(
                    vals, confidence_level=confidence_level, n_resamples=n_resamples, seed=seed
                )
            rows.append(row)
        return pd.DataFrame(rows)

    def pivot(self):
        """AOPC means as a (method x metric) table."""
        return self.aopc.pivot_table(index="method", columns="metric", values="aopc", aggfunc="mean", sort=False)


# --------------------------------------------------------------------------------------------
# the verbs
# --------------------------------------------------------------------------------------------


def faithfulness(
    lm: LoadedModel,
    inputs: str | Sequence[str] | Mapping[str, torch.Tensor],
    scores: Mapping[str, Sequence[Any]] | Sequence[Any] | None = None,
    *,
    rankings: Mapping[str, Sequence[Any]] | Sequence[Any] | None = None,
    target: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    bins: Sequence[float] = ERASER_BINS,
    mode: str = "delete",
    rounding: str = "ceil",
    max_batch: int = 256,
    dedupe: bool = True,
    method_name: str = "method",
    forward_cost_tokens: float = 64.0,
    precision: str = "float32",
    skip_unread: bool = True,
    batch_invariant: bool = True,
) -> FaithfulnessResult:
    """ERASER comprehensiveness, sufficiency and AOPC of explanations, batched.

    Args:
        lm: a :class:`~attnexplain.models.LoadedModel` classifier (``lm.model(**batch).logits``
            is (B, C); ``lm.tokenizer`` tells the special and mask/pad ids).
        inputs: texts (tokenized with ``lm.tokenize``) or a tokenized batch (``input_ids``,
            ``attention_mask``, optional ``token_type_ids``; any padding side).
        scores: per example an array of token scores (higher = more important), as
            ``{method: [array per example]}`` or a single list (named ``method_name``).
        rankings: like ``scores`` but token positions, most important first (a permutation).
            Scores and rankings may be mixed: the methods of both are evaluated.
        target: class per example (default: the class predicted on the full input).
        bins: fractions of the content tokens (ERASER: 1, 5, 10, 20, 50 %).
        mode: ``"delete"`` or ``"mask"`` (see the module docstring).
        rounding: ``"ceil"`` (default), ``"round"`` or ``"ferret"`` (ferret-xai's floor, zero bins
            skipped), see :func:`bin_sizes`.
        max_batch: at most this many rows per forward pass (memory bound).
        batch_invariant: choose each forward's shape from its inputs' own lengths, so that an
            example's numbers do not depend on the other examples passed with it (default; see
            the module docstring). False: the cheapest padding (``forward_cost_tokens``).
        forward_cost_tokens: with ``batch_invariant=False``, the fixed cost of one forward pass,
            in tokens of compute. Inputs are sorted by length and cut into batches minimising
            ``forward_cost_tokens`` per batch + padded tokens (so short and long inputs are not
            padded together); ``float("inf")`` gives the fewest forwards (``ceil(N / max_batch)``).
        dedupe: evaluate identical perturbed inputs once (e.g. bins sharing a k, or methods
            agreeing on the top tokens). Results are the same either way.
        precision: ``"float32"`` (default), ``"bfloat16"`` (autocast; ~2.3x faster where
            native, values within ~1e-3) or ``"auto"`` (bfloat16 where native, see the module
            docstring and :func:`resolve_precision`).
        skip_unread: for first-token classifiers, skip the last layer's work on positions the
            head never reads (same probabilities; see the module docstring).

    Returns:
        :class:`FaithfulnessResult` (long ``table``, per-example ``aopc``, ``summary()``).

    Raises:
        ValueError: unknown ``mode`` or ``precision``, scores/rankings of the wrong length or count (the message
            names the example, the method and the lengths), NaN scores, an example without
            content tokens, or no methods given.
    """
    import pandas as pd

    if mode not in REMOVAL_MODES:
        raise ValueError(f"mode must be one of {REMOVAL_MODES}, got {mode!r}")
    from ..validation import check_int

    check_int("max_batch", max_batch, low=1)
    precision = resolve_precision(precision, lm.device if hasattr(lm, "device") else "cpu")
    bins = tuple(float(b) for b in bins)
    if not bins:
        raise ValueError("give at least one bin")
    if isinstance(inputs, (str, list, tuple)):
        batch = lm.tokenize([inputs] if isinstance(inputs, str) else list(inputs))
    else:
        batch = dict(inputs)
    examples = _examples_from_batch(lm, batch)
    N = len(examples)
    if target is not None:  # before any forward: integers, one per input, in range when the labels are known
        from ..validation import check_targets

        labels = getattr(lm, "labels", None)
        target = check_targets(target, N, len(labels) if labels else None)
    by_scores = _per_method(scores, method_name)
    by_rank = _per_method(rankings, method_name)
    overlap = set(by_scores) & set(by_rank)
    if overlap:
        raise ValueError(f"method(s) {sorted(overlap)} given both as scores and as rankings")
    methods = list(by_scores) + list(by_rank)
    if not methods:
        raise ValueError("give scores or rankings for at least one method")
    for name, per_ex in {**by_scores, **by_rank}.items():
        if len(per_ex) != N:
            raise ValueError(f"method {name!r}: got explanations for {len(per_ex)} examples, but there are {N} inputs")

    replace_id = _replace_id(lm.tokenizer)
    # -- plan: every distinct perturbed input, per example ------------------------------------
    seqs: list[tuple[list[int], list[int] | None]] = []
    index: dict[tuple[int, frozenset[int]], int] = {}

    def slot(i: int, removed: frozenset[int]) -> int:
        key = (i, removed)
        if dedupe and key in index:
            return index[key]
        seqs.append(_build(examples[i], removed, mode, replace_id))
        index[key] = len(seqs) - 1
        return len(seqs) - 1

    full_slot = [slot(i, frozenset()) for i in range(N)]
    plan: list[tuple[int, str, str, float, int, int]] = []  # (example, method, metric, fraction, k, slot)
    ks_per_example = [bin_sizes(len(ex.content), bins, rounding) for ex in examples]
    for name in methods:
        for i, ex in enumerate(examples):
            if name in by_scores:
                r = _content_ranking(ex, i, name, scores=by_scores[name][i])
            else:
                r = _content_ranking(ex, i, name, ranking=by_rank[name][i])
            for f, k in zip(bins, ks_per_example[i]):
                if k == 0:  # rounding="ferret": a bin of zero tokens is skipped
                    continue
                plan.append((i, name, "comprehensiveness", f, k, slot(i, frozenset(r[:k].tolist()))))
                plan.append((i, name, "sufficiency", f, k, slot(i, frozenset(r[k:].tolist()))))

    # -- run ----------------------------------------------------------------------------------
    probs, forwards = _forward_probs(lm, seqs, max_batch, forward_cost_tokens, precision, skip_unread,
                                     batch_invariant)
    p_full_all = probs[full_slot]  # (N, C)
    if target is None:
        tgt = p_full_all.argmax(-1)
    else:
        tgt = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target, dtype=np.int64).reshape(-1)
        if tgt.size != N:
            raise ValueError(f"target has {tgt.size} entries but there are {N} inputs")
        C = p_full_all.shape[1]
        if tgt.size and (tgt.min() < 0 or tgt.max() >= C):
            raise ValueError(f"target classes must be in 0..{C - 1}, got {tgt.tolist()}")
    p_full = p_full_all[np.arange(N), tgt]

    ex_i = np.fromiter((p[0] for p in plan), dtype=np.int64, count=len(plan))
    slots = np.fromiter((p[5] for p in plan), dtype=np.int64, count=len(plan))
    p_pert = probs[slots, tgt[ex_i]]
    table = pd.DataFrame({
        "example": ex_i,
        "method": [p[1] for p in plan],
        "metric": [p[2] for p in plan],
        "fraction": [p[3] for p in plan],
        "k": [p[4] for p in plan],
        "n_tokens": [len(examples[p[0]].content) for p in plan],
        "target": tgt[ex_i],
        "p_full": p_full[ex_i],
        "p_perturbed": p_pert,
        "value": p_full[ex_i] - p_pert,
    })
    aopc = (  # metrics.aopc is the mean over the bins: one vectorised groupby mean instead of a lambda per group
        table.groupby(["example", "method", "metric"], sort=False)["value"]
        .mean()
        .rename("aopc")
        .reset_index()
    )
    return FaithfulnessResult(
        table=table, aopc=aopc, mode=mode, rounding=rounding, bins=bins, targets=tgt, p_full=p_full,
        n_forward=forwards, n_sequences=len(seqs), precision=precision,
    )


def random_rankings(lengths: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Seeded random rankings (permutations of 0..n-1) of content tokens, one per example.

    Example ``i`` uses ``numpy.random.default_rng([seed, i])``, so a ranking does not depend
    on the other examples.
    """
    return [np.random.default_rng([seed, i]).permutation(n) for i, n in enumerate(lengths)]


def faithfulness_for_methods(
    lm: LoadedModel,
    texts: str | Sequence[str],
    methods: Sequence[Any] = ("raw_attention", "effective_attention"),
    *,
    target: Sequence[int] | None = None,
    random_baseline: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    bins: Sequence[float] = ERASER_BINS,
    mode: str = "delete",
    rounding: str = "ceil",
    max_batch: int = 256,
    forward_cost_tokens: float = 64.0,
    precision: str = "float32",
    progress: bool = False,
    batch_invariant: bool = True,
) -> FaithfulnessResult:
    """Explain ``texts`` with each method (via ``explain_batch``) and score them all at once.

    Scores are computed in batches of ``batch_size`` texts (capture is shared by the attention
    methods); then every method's perturbations, plus a seeded random ranking named
    ``"random"`` (``random_baseline=True``, unless a method of that name is already given),
    go through the model in one batched :func:`faithfulness` pass. ``target`` defaults to the
    predicted class. Other arguments as :func:`faithfulness`.
    """
    from ..methods import explain

    texts = [texts] if isinstance(texts, str) else list(texts)
    # every real token's score (faithfulness leaves the special tokens out itself)
    attributions = explain(lm, texts, list(methods), target=target, batch_size=batch_size, progress=progress,
                           exclude_special_tokens=False)
    scores: dict[str, list[np.ndarray]] = {
        name: [np.asarray(s, dtype=np.float64) for s in a.scores] for name, a in attributions.items()
    }
    # no method given (random baseline only): faithfulness() explains the predicted class
    targets = next(iter(attributions.values())).target if attributions else target
    batch = lm.tokenize(texts)
    rankings = None
    if random_baseline and "random" not in scores:
        lengths = [len(e.content) for e in _examples_from_batch(lm, batch)]
        rankings = {"random": random_rankings(lengths, seed)}
    res = faithfulness(lm, batch, scores, rankings=rankings, target=targets, bins=bins, mode=mode,
                       rounding=rounding, max_batch=max_batch, forward_cost_tokens=forward_cost_tokens,
                       precision=precision, batch_invariant=batch_invariant)
    res.extra["seed"] = seed
    return res

"""Per-generated-token explanations: for every generated token, scores over the prompt and the
tokens generated before it, by every registered explanation method.

For generated token ``t`` the explained model call is the one that predicted it: the prompt and
the tokens generated before ``t`` as input, the readout row (the position predicting the token,
``GenerationResult.readout_position(t)``) as the row attention methods read, and ``y_t`` as the
target. Each method runs unchanged on that call:

* attention-derived methods read :meth:`GenerationResult.step_view` (the one teacher-forced
  capture cut to what step ``t`` sees; their ``"last"`` readout is the readout row), so the
  generation's own capture serves every step and every method;
* gradient methods (integrated gradients, gradient x input) and occlusion run the model on
  :meth:`GenerationResult.step_batch` with ``target = y_t`` (the logit of the generated token at
  the readout row; occlusion: its probability). Integrated gradients computes every step from one
  interpolation path over the whole sequence
  (:meth:`~attnexplain.methods.gradients.IntegratedGradients.attribute_positions`: a causal model's
  readout row ignores later inputs, so this equals the per-step runs; one forward pass instead of
  one per step);
* contrastive explanations (``contrast=``: "why Paris rather than Lyon", Yin & Neubig 2022,
  as in inseq's contrastive attribution) attribute ``log p(y_t) - log p(c_t)``, the difference of
  the log-probabilities of the explained and the contrast token at the same step (the target's
  prefix). Gradient methods are linear in the attributed function and the softmax normaliser
  cancels in a log-probability difference, so their contrastive scores are
  ``attribution(logit y_t) - attribution(logit c_t)`` exactly; occlusion scores the drop of
  ``log p(y_t) - log p(c_t)`` when a token is occluded. Attention-derived methods do not depend on
  the target and are skipped (with a warning); ``random`` stays as the baseline.

Scores per example form a (N_i, n_i) matrix: one row per generated token, one column per token of
prompt + continuation (``n_i = prompt tokens + N_i``), NaN where a column is not visible to the
row (the token itself and later ones): the prompt block is the source attribution, the rest the
target-side attribution (inseq's ``source_attributions`` / ``target_attributions``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..models import LoadedModel
from ..models import InputError
from .decoding import _as_list, continuation_ids, generate
from .result import GenerationResult


__all__ = ["GenerationAttribution", "GenerationExplanation", "explain_generation", "DEFAULT_GENERATION_METHODS",
           "generation_methods"]

#: what ``explain_generation`` runs when no method is named (integrated gradients and occlusion
#: are left out: they cost one model pass per integration step / per token, for every generated token)
DEFAULT_GENERATION_METHODS = ("raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "random")
#: registered methods that "all" leaves out (expensive; name them to run them)
_NOT_IN_ALL = ("flow", "attention_distribution")


def generation_methods(methods: Sequence[Any] | str | None) -> list[Any]:
    """Method names: None -> the defaults, "all" -> every registered method except flow and
    attention_distribution (name them to include them)."""
    from ..methods import available_methods

    if methods is None:
        return list(DEFAULT_GENERATION_METHODS)
    if isinstance(methods, str):
        methods = [methods]
    out: list[Any] = []
    for m in methods:
        if m == "all":
            out += [n for n in available_methods() if n not in _NOT_IN_ALL and n not in out]
        elif m not in out:
            out.append(m)
    return out


@dataclass
class GenerationAttribution:
    """One method's scores for every generated token (see the module docstring for the layout).

    Attributes:
        method: registry name.
        tokens: per example, readable tokens of prompt + continuation.
        n_prompt: per example, how many of ``tokens`` are prompt tokens.
        scores: per example a (N_i, n_i) float64 matrix, NaN where not visible.
        contrast: per example the contrast tokens per step (None if not contrastive).
        excluded: per example (n_i,) bool, tokens left out of rankings and tables (special tokens
            and the attention sink, :func:`attnexplain.methods.special_tokens.special_token_mask`);
            None when every token is shown. ``scores`` keep every token's value.
    """

    method: str
    tokens: list[list[str]]
    n_prompt: list[int]
    scores: list[np.ndarray]
    contrast: list[list[str]] | None = None
    excluded: list[np.ndarray] | None = None

    def shown(self, i: int) -> np.ndarray:
        """(n_i,) bool: the tokens shown in rankings and tables (all but special tokens and a causal
        model's attention sink when the explanation left them out; see ``exclude_special_tokens``)."""
        if self.excluded is None:
            return np.ones(len(self.tokens[i]), dtype=bool)
        return ~self.excluded[i]

    def source(self, i: int) -> np.ndarray:
        """(N_i, prompt tokens): scores of the prompt tokens for each generated token."""
        return self.scores[i][:, : self.n_prompt[i]]

    def target_side(self, i: int) -> np.ndarray:
        """(N_i, N_i): scores of the earlier generated tokens (strictly lower triangle; NaN elsewhere)."""
        return self.scores[i][:, self.n_prompt[i]:]

    def step_scores(self, i: int, step: int) -> np.ndarray:
        """Scores of the tokens visible to generated token ``step`` (prompt + earlier generated)."""
        return self.scores[i][step, : self.n_prompt[i] + step]


@dataclass
class GenerationExplanation:
    """A generation and every method's per-token scores (``attributions[method]``)."""

    generation: GenerationResult
    attributions: dict[str, GenerationAttribution]
    contrast_ids: torch.Tensor | None = None
    skipped: list[str] = field(default_factory=list)
    #: methods ``"all"`` included that refused this architecture: name -> reason
    not_applicable: dict[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.attributions)

    def __getitem__(self, method: str) -> GenerationAttribution:
        return self.attributions[method]

    def top_sources(self, example: int, step: int, method: str, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` highest-scored visible tokens for generated token ``step``: (token, score)."""
        from ..methods import rank_tokens

        att = self.attributions[method]
        s = att.step_scores(example, step)
        toks = att.tokens[example]
        keep = np.flatnonzero(att.shown(example)[: s.size])
        if keep.size == 0:
            keep = np.arange(s.size)
        return [(toks[keep[j]], float(s[keep[j]])) for j in rank_tokens(s[keep])[:k]]

    def to_dataframe(self):
        """Long table: example, step, generated_token, prob, position, token, is_prompt, one column per method."""
        import pandas as pd

        g = self.generation
        rows = []
        first = next(iter(self.attributions.values()))
        for i in range(len(first.scores)):
            n_p = first.n_prompt[i]
            shown = first.shown(i)
            for t in g.steps(i):
                for j in range(n_p + t):
                    if not shown[j]:
                        continue
                    row = {"example": i, "step": t, "generated_token": g.generated_tokens[i][t],
                           "prob": float(g.step_probs[i, t]), "position": j, "token": first.tokens[i][j],
                           "is_prompt": j < n_p}
                    for name, a in self.attributions.items():
                        row[name] = float(a.scores[i][t, j])
                    rows.append(row)
        return pd.DataFrame(rows)

    def format(self, example: int = 0, *, top: int = 3) -> str:
        """Readable text: the continuation, and per generated token its probability and top tokens per method."""
        g = self.generation
        lines = [f"prompt:    {g.prompts[example]!r}",
                 f"{'forced' if g.forced else 'generated'}: {g.generated_texts[example]!r}"]
        contrast = next(iter(self.attributions.values())).contrast if self.attributions else None
        for t in g.steps(example):
            head = f"step {t}: {g.generated_tokens[example][t]!r} p={float(g.step_probs[example, t]):.3f}"
            if contrast is not None and t < len(contrast[example]):
                head += f" (vs {contrast[example][t]!r})"
            else:
                alts = ", ".join(f"{tok!r} {p:.3f}" for tok, p in zip(g.top_tokens[example][t][:3], g.top_probs[example, t][:3].tolist()))
                head += f"   top: {alts}"
            lines.append(head)
            for name in self.attributions:
                if np.isnan(self.attributions[name].scores[example][t]).all():
                    continue
                tops = ", ".join(f"{tok!r} {s:+.3g}" for tok, s in self.top_sources(example, t, name, top))
                lines.append(f"    {name:<22} {tops}")
        if self.skipped:
            lines.append(f"(not contrastive, skipped: {', '.join(self.skipped)})")
        return "\n".join(lines)


def _views_need_values(methods: Sequence[Any]) -> bool:
    """Whether a capture-reading method among ``methods`` may read value vectors (every one but the
    registered attention methods that declare they do not: raw attention, rollout, flow)."""
    from ..methods.attention_methods import AttentionMethod

    return any(m.uses_capture and not (isinstance(m, AttentionMethod) and not m._needs_values) for m in methods)


def _reads_readout_rows_only(method: Any, lm: LoadedModel) -> bool:
    """Whether ``method`` scores each example from its ``"last"`` readout row alone, without value
    vectors (raw attention): it can score every step at once from
    :meth:`GenerationResult.readout_rows_view`."""
    from ..methods.attention_methods import AttentionMethod, resolve_readout

    if not isinstance(method, AttentionMethod) or method._needs_values:
        return False
    readout = resolve_readout(method.readout, lm)
    return readout == "last" and method._batched(readout) and "full" not in method.capture_needs(lm)


def _contrast_ids(lm: LoadedModel, gen: GenerationResult, contrast: str | Sequence[str]) -> torch.Tensor:
    """(B, N) contrast token per step (-1 where none): the contrast continuation's tokens."""
    items = _as_list(contrast, len(gen.prompts), "contrast")
    out = torch.full_like(gen.generated_ids, -1)
    for i, (p, c) in enumerate(zip(gen.prompts, items)):
        ids = continuation_ids(lm, p, c, what="contrast")
        n = min(len(ids), len(gen.steps(i)))
        out[i, :n] = torch.tensor(ids[:n], device=out.device)
    return out


def _occlusion_contrast(method: Any, lm: LoadedModel, batch: dict[str, torch.Tensor], target: torch.Tensor,
                        foil: torch.Tensor) -> list[np.ndarray]:
    """Occlusion of ``log p(target) - log p(foil)`` at the last position (same removal rules as the
    registered occlusion method: replacement id, special tokens left alone)."""
    from ..methods.gradients import special_token_ids

    ids, am = batch["input_ids"], batch["attention_mask"].bool()
    special = special_token_ids(lm)
    repl = method.replacement_id(lm)
    out = []
    for i in range(ids.shape[0]):
        real = am[i].nonzero().flatten()
        row = ids[i, real]
        n = row.numel()
        occl = [j for j in range(n) if method.occlude_special or int(row[j]) not in special]
        rows = row[None].repeat(len(occl) + 1, 1)
        for r, j in enumerate(occl, start=1):
            rows[r, j] = repl
        diffs = []
        with torch.no_grad():
            for s in range(0, rows.shape[0], int(method.batch_size)):
                chunk = rows[s: s + int(method.batch_size)]
                lp = torch.log_softmax(lm.model(input_ids=chunk).logits[:, -1].float(), -1)
                diffs.append(lp[:, int(target[i])] - lp[:, int(foil[i])])
        d = torch.cat(diffs).double().cpu()
        sc = np.zeros(n)
        if occl:
            sc[occl] = (d[0] - d[1:]).numpy()
        out.append(sc)
    return out


def _explain_encoder_decoder(lm: LoadedModel, gen: GenerationResult, methods: Any, *, contrast: Any,
                             steps: Sequence[int] | None, exclude_special_tokens: bool) -> GenerationExplanation:
    """:func:`explain_generation` for encoder-decoder models (:mod:`attnexplain.generation.encoder_decoder`)."""
    from ..capturing import UnsupportedArchitectureError
    from ..methods import get_method
    from .encoder_decoder import ENCODER_DECODER_METHODS, encoder_decoder_scores

    from_all = methods == "all" or (not isinstance(methods, str) and methods is not None and "all" in list(methods))
    built = [get_method(m) for m in generation_methods(methods)]
    not_applicable = {m.name: "no per-token form for encoder-decoder generations" for m in built
                      if m.name not in ENCODER_DECODER_METHODS}
    if not_applicable and not from_all:
        raise UnsupportedArchitectureError(
            f"method(s) {', '.join(not_applicable)} have no per-token form for encoder-decoder generations; "
            f"use {', '.join(ENCODER_DECODER_METHODS)}")
    built = [m for m in built if m.name not in not_applicable]
    foil = _contrast_ids(lm, gen, contrast) if contrast is not None else None
    skipped: list[str] = []
    if foil is not None:
        skipped = [m.name for m in built if m.uses_capture]
        if skipped:
            warnings.warn(f"attention-derived methods do not depend on the target; no contrastive scores for "
                          f"{', '.join(skipped)}", stacklevel=3)
        built = [m for m in built if not m.uses_capture and m.name != "random"] + [m for m in built if m.name == "random"]
        if not any(m.name != "random" for m in built):
            raise InputError("contrastive explanations need a gradient or perturbation method "
                             "(integrated_gradients, gradient_x_input, occlusion)")
    B = gen.generated_ids.shape[0]
    n_src = [int(gen.attention_mask[i].sum()) for i in range(B)]
    n_steps = [len(gen.steps(i)) for i in range(B)]
    wanted = None if steps is None else {int(s) for s in steps}
    mats: dict[str, list[np.ndarray]] = {m.name: [] for m in built}
    for i in range(B):
        f = None
        if foil is not None:
            f = foil[i, : n_steps[i]]
            ok = f >= 0
            f = f.clamp(min=0)
        for m in built:
            sc = encoder_decoder_scores(m, lm, gen, i, foil=f if m.name != "random" else None)
            if foil is not None and m.name != "random":
                sc[~ok.cpu().numpy()] = np.nan
            if wanted is not None:
                sc[[t for t in range(n_steps[i]) if t not in wanted]] = np.nan
            mats[m.name].append(sc)
    src_tokens = [list(gen.tokens[i]) for i in range(B)]
    tokens = [src_tokens[i] + list(gen.generated_tokens[i][: n_steps[i]]) for i in range(B)]
    excluded = None
    if exclude_special_tokens:
        from ..methods.special_tokens import special_token_mask

        src_mask = special_token_mask(lm, gen.input_ids, gen.attention_mask, attention_sink=False)
        excluded = [np.concatenate([np.asarray(src_mask[i], dtype=bool), np.zeros(n_steps[i], dtype=bool)]) for i in range(B)]
    contrast_tokens = None
    if foil is not None:
        from ..token_text import readable_tokens

        contrast_tokens = [readable_tokens(lm.tokenizer, [c for c in foil[i].tolist() if c >= 0]) for i in range(B)]
    atts = {m.name: GenerationAttribution(m.name, tokens, n_src, mats[m.name], contrast_tokens, excluded) for m in built}
    if not_applicable:
        warnings.warn("methods that do not apply to encoder-decoder generations were left out: "
                      + ", ".join(not_applicable), stacklevel=3)
    return GenerationExplanation(generation=gen, attributions=atts, contrast_ids=foil, skipped=skipped,
                                 not_applicable=not_applicable)


def explain_generation(
    lm: LoadedModel,
    prompts: str | Sequence[str] | GenerationResult,
    methods: Sequence[Any] | str | None = None,
    *,
    max_new_tokens: int = 10,
    target: str | Sequence[str] | None = None,
    contrast: str | Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    exclude_special_tokens: bool = True,
    **generate_kwargs: Any,
) -> GenerationExplanation:
    """Explain every generated token of ``prompts`` with each method.

    Args:
        lm: a :class:`~attnexplain.models.LoadedModel` with a language-model head: decoder-only
            (task ``"causal-lm"``) or encoder-decoder (``"seq2seq"``: source = the encoder input,
            methods raw / effective / norm attention (cross- and decoder self-attention), rollout,
            gradient x input, integrated gradients, occlusion and random; see
            :mod:`attnexplain.generation.encoder_decoder`).
        prompts: texts (generated here with :func:`attnexplain.generate`), or a
            :class:`GenerationResult` to explain (its capture is reused).
        methods: method names or instances (default :data:`DEFAULT_GENERATION_METHODS`;
            ``"all"``: every registered method that applies to the model, but flow and
            attention_distribution; those that refuse the architecture, e.g. post-LN-only
            decompositions on a pre-LN decoder, are left out with a warning and listed in
            ``not_applicable``; a method named explicitly raises instead).
        max_new_tokens / target / generate_kwargs: as :func:`attnexplain.generate` (``target``
            forces the continuation to explain).
        contrast: a contrast continuation (one text or one per prompt): step ``t`` attributes
            ``log p(y_t) - log p(c_t)`` with ``c_t`` the contrast's ``t``-th token, for the steps
            the contrast has tokens for (see the module docstring).
        steps: explain only these steps (default: all).
        exclude_special_tokens: leave special tokens and the attention sink (a causal model's first
            token) out of rankings and tables (the project's one option for this,
            :mod:`attnexplain.methods.special_tokens`); their scores stay in ``scores``.

    Returns:
        :class:`GenerationExplanation` (``.format()`` for text, ``.to_dataframe()`` for a table).

    Raises:
        InputError: a model that cannot generate, bad prompts / targets (see :func:`attnexplain.generate`), a contrast that tokenizes to nothing.
    """
    from ..methods import get_method

    gen = prompts if isinstance(prompts, GenerationResult) else None
    if contrast is not None and getattr(lm, "task", None) not in ("causal-lm", "seq2seq"):
        raise InputError(f"a contrast target compares two continuations of a language model, but {lm.name} is a "
                         f"{lm.task} model; for a classifier explain another class with explain(..., target=[class])")
    if gen is None:
        from .decoding import check_generator

        check_generator(lm)
        # the step feeding the last generated token runs only if the result's whole matrices are read
        gen = generate(lm, prompts, max_new_tokens, target=target, **{"defer_last_step": True, **generate_kwargs})
    from ..capturing import UnsupportedArchitectureError

    if gen.is_encoder_decoder:
        return _explain_encoder_decoder(lm, gen, methods, contrast=contrast, steps=steps,
                                        exclude_special_tokens=exclude_special_tokens)

    from_all = methods == "all" or (not isinstance(methods, str) and methods is not None and "all" in list(methods))
    built = [get_method(m) for m in generation_methods(methods)]
    not_applicable: dict[str, str] = {}
    foil = _contrast_ids(lm, gen, contrast) if contrast is not None else None
    skipped = []
    if foil is not None:
        skipped = [m.name for m in built if m.uses_capture]
        if skipped:
            warnings.warn(f"attention-derived methods do not depend on the target; no contrastive scores for "
                          f"{', '.join(skipped)}", stacklevel=2)
        built = [m for m in built if not m.uses_capture]
        if not built:
            raise InputError("contrastive explanations need a gradient or perturbation method "
                             "(integrated_gradients, gradient_x_input, occlusion)")
    B, N = gen.generated_ids.shape
    n_prompt = [int(gen.attention_mask[i, : gen.prompt_length].sum()) for i in range(B)]
    n_steps = [len(gen.steps(i)) for i in range(B)]
    mats = {m.name: [np.full((n_steps[i], n_prompt[i] + n_steps[i]), np.nan) for i in range(B)] for m in built}
    wanted = range(N) if steps is None else [int(s) for s in steps]
    # integrated gradients of every step from one interpolation path over the whole sequence (equal
    # to the per-step prefix runs for a causal model; one forward instead of one per step)
    whole_path: dict[str, dict[int, list[np.ndarray]]] = {}
    if foil is None and list(wanted):
        from ..methods.gradients import IntegratedGradients

        todo = sorted(set(wanted))
        for m in built:
            if isinstance(m, IntegratedGradients):
                out = m.attribute_positions(lm, gen.step_batch(todo[-1]), positions=[gen.readout_position(t) for t in todo],
                                            targets=gen.generated_ids[:, todo])
                whole_path[m.name] = dict(zip(todo, out))
    # methods that read one readout row per example and no values (raw attention): every step at once
    all_rows: dict[str, dict[int, list[np.ndarray]]] = {}
    row_methods = [m for m in built if foil is None and _reads_readout_rows_only(m, lm)]
    if row_methods and list(wanted):
        todo = sorted(set(wanted))
        rows_view = gen.readout_rows_view(todo)
        for m in row_methods:
            out = m.attribute(lm, {"attention_mask": rows_view.attention_mask}, target=None, capture=rows_view)
            all_rows[m.name] = {t: [out[i * len(todo) + s] for i in range(B)] for s, t in enumerate(todo)}
    for t in wanted:
        valid = gen.generated_mask[:, t].clone()
        if foil is not None:
            valid &= foil[:, t] >= 0
        if not bool(valid.any()):
            continue
        per_step = [m for m in built if m.name not in all_rows]
        view = (gen.step_view(t, values=_views_need_values(per_step)) if any(m.uses_capture for m in per_step)
                else None)
        batch = gen.step_batch(t)
        tgt = gen.generated_ids[:, t]
        for m in built:
            if m.name in not_applicable:
                continue
            if m.name in whole_path:
                scores = whole_path[m.name][t]
            elif m.name in all_rows:
                scores = all_rows[m.name][t]
            elif foil is None:
                try:
                    scores = m.attribute(lm, batch, target=tgt, capture=view)
                except UnsupportedArchitectureError as exc:
                    if not from_all:
                        raise
                    not_applicable[m.name] = str(exc).split(";")[0]
                    continue
            elif m.name == "occlusion":
                scores = _occlusion_contrast(m, lm, batch, tgt, foil[:, t].clamp(min=0))
            else:
                s_y = m.attribute(lm, batch, target=tgt, capture=None)
                s_c = m.attribute(lm, batch, target=foil[:, t].clamp(min=0), capture=None)
                scores = [a - b for a, b in zip(s_y, s_c)]
            for i in range(B):
                if valid[i]:
                    mats[m.name][i][t, : n_prompt[i] + t] = np.asarray(scores[i], dtype=np.float64)
    tokens = [list(gen.tokens[i][: n_prompt[i] + n_steps[i]]) for i in range(B)]
    excluded = None
    if exclude_special_tokens:
        from ..methods.special_tokens import special_token_mask

        excluded = [m[: n_prompt[i] + n_steps[i]] for i, m in
                    enumerate(special_token_mask(lm, gen.input_ids, gen.attention_mask, attention_sink=True))]
    contrast_tokens = None
    if foil is not None:
        from ..token_text import readable_tokens

        contrast_tokens = [readable_tokens(lm.tokenizer, [c for c in foil[i].tolist() if c >= 0]) for i in range(B)]
    atts = {m.name: GenerationAttribution(m.name, tokens, n_prompt, mats[m.name], contrast_tokens, excluded)
            for m in built if m.name not in not_applicable}
    if not_applicable:
        warnings.warn("methods that do not apply to this model were left out: "
                      + "; ".join(f"{k} ({v})" for k, v in not_applicable.items()), stacklevel=2)
    return GenerationExplanation(generation=gen, attributions=atts, contrast_ids=foil, skipped=skipped,
                                 not_applicable=not_applicable)

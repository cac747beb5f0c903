"""Head-level interventions on attention matrices (the runners that measure their effect are in
:mod:`.runners` and :mod:`.heads`).

An intervention is a pure function ``fn(A, call, site) -> A'`` on the attention probabilities
``A`` (B, H, n, m) of one attention site, used with :func:`attnexplain.capturing.session`
(``interventions={"main.3.self": fn}``): the registered attention function builds ``A``, calls
``fn`` and computes the head outputs as ``A' @ V``. No model code is forked, so the same
interventions work for every architecture capture supports. Each builder below takes
``heads=`` (None = all heads) and leaves the other heads' rows untouched.

With ``T = V_h W_O^h`` (m x d) the head's value transforms, ``U_r`` an orthonormal basis of its
column space and ``K_i`` the real (non-padding) keys of a row:

===================  =============================================================  ===========
builder              A' (per head, per query row a)                                  output
===================  =============================================================  ===========
identity             a                                                                same
effective            a_eff = a U_r U_r^T  (Brunner et al. 2020)                       same
distribution         a' >= 0, sum 1, a'T = aT, nearest to a_eff (or sparsest)         same
null_perturbation    a + t p, p in LN([T, 1]) random (hit-and-run, keeps a' >= 0)      same
minus_effective      a - a_eff  (the null part; a'T = 0: the head adds nothing)        changed
uniform              1/|K_i| on K_i  (Wiegreffe & Pinter 2019)                         changed
permute              a's weights permuted among K_i, seeded (Jain & Wallace 2019)       changed
topk                 a restricted to the top-k keys by raw / effective / distribution,  changed
                     renormalised; ``remove=True`` drops them instead
zero                 0  (zero-ablation: the head contributes 0, only W_O's bias stays)  changed
mean                 x with x V = mean head output (mean-ablation, least squares)       changed
===================  =============================================================  ===========

"same": the logits equal the model's up to float error (tested).
``minus_effective`` equals zero-ablation of the head exactly in exact arithmetic
(``(a - a_eff) T = 0``): the null part alone carries no output.

Runners (:mod:`.runners`, :mod:`.heads`): :func:`run_with_interventions` (one batch -> logits), :func:`run_conditions` (many
intervention sets in replicated batches: one forward for many conditions),
:func:`intervention_effects` (output change per example and kind: TVD of the output
distributions, max |logit change|, prediction flips, how much A changed), :func:`topk_sweep`
and :func:`minimal_k`, :func:`head_means` and :func:`head_ablation` (a layers x heads table).

Mean-ablation: replacing head h's output o_h(i) = a_i V by its mean mu_h over a data set (all
real query positions of all examples, :func:`~attnexplain.ablations.heads.head_means`) cannot always be written as ``A' V``:
``A'`` rows live in R^m, and ``x V = mu`` has an exact solution only when mu lies in the row
space of V (always when the m real keys' values span R^{d_v}, i.e. typically m >= d_v; MiniLM
d_v = 32, so not for shorter inputs). The attention-level version (``method="attention"``,
default) uses the least-squares (minimum-norm) solution ``x = pinv(V^T) mu`` and records the
relative residual ``|x V - mu| / |mu|`` (``mean_residual`` column); ``method="output"`` patches
the head's slice of the output projection's input with a forward pre-hook instead (exact, but
not through the attention function).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .._registry import Registry
from ..backends import AttentionCall
from ..backends.spec import parse_key_values
from ..capturing.adapters import AttentionSite
from ..functional import attention_distribution, effective_attention_from_values, value_transforms

from .perturbations import null_space_perturbation, permute_rows, topk_mask


Intervention = Callable[[torch.Tensor, AttentionCall, AttentionSite], torch.Tensor]


def _heads_mask(heads: Sequence[int] | None, H: int, device: torch.device) -> torch.Tensor | None:
    if heads is None:
        return None
    heads = list(heads)
    bad = [h for h in heads if not (0 <= int(h) < H)]
    if bad:
        raise ValueError(f"head index(es) {bad} out of range for {H} heads")
    m = torch.zeros(H, dtype=torch.bool, device=device)
    m[heads] = True
    return m


def _merge(A: torch.Tensor, new: torch.Tensor, heads: Sequence[int] | None) -> torch.Tensor:
    """new at the chosen heads, A elsewhere; in A's dtype."""
    new = new.to(A.dtype)
    hm = _heads_mask(heads, A.shape[1], A.device)
    if hm is None:
        return new
    return torch.where(hm[None, :, None, None], new, A)


def _allowed(call: AttentionCall, A: torch.Tensor) -> torch.Tensor:
    """(B, H, n, m) bool: keys each query may attend (padding and causal structure)."""
    allowed = call.full_mask_bool()
    if call.key_padding_mask is not None:
        allowed = allowed & call.key_padding_mask[:, None, None, :]
    return allowed.expand(A.shape)


def _key_mask(call: AttentionCall) -> torch.Tensor | None:
    return call.key_padding_mask


def _out_proj(site: AttentionSite, H: int) -> torch.Tensor:
    w = site.output_projection_blocks(H)
    if w is None:
        raise ValueError(
            f"site {site.key} has no known output projection, which this intervention needs (T = V W_O); "
            "mark the site with its out_proj"
        )
    return w.detach()


def _generator(seed: int, site: AttentionSite) -> torch.Generator:
    """A CPU generator seeded by (seed, site key): the same stream for every call at a site."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(site.key.encode())) % (2**63))


def _T(call: AttentionCall, site: AttentionSite) -> torch.Tensor:
    return value_transforms(call.value.detach(), _out_proj(site, call.value.shape[1]))


def _effective(A: torch.Tensor, call: AttentionCall, site: AttentionSite, preserve_row_sums: bool = False) -> torch.Tensor:
    W = _out_proj(site, A.shape[1])
    return effective_attention_from_values(A, call.value.detach(), W, key_mask=_key_mask(call), preserve_row_sums=preserve_row_sums)


def _distribution(A: torch.Tensor, call: AttentionCall, site: AttentionSite, mode: str,
                  heads: Sequence[int] | None) -> torch.Tensor:
    idx = list(range(A.shape[1])) if heads is None else list(heads)
    T = _T(call, site)[:, idx]
    km = _key_mask(call)
    res = attention_distribution(A[:, idx], T, mode=mode, key_mask=None if km is None else km[:, None, :])
    out = A.clone()
    out[:, idx] = res.probs.to(A.dtype)
    return out


def _renorm(x: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """x / row sum where ``changed`` (B, H, n), rows summing to 0 stay 0."""
    s = x.sum(-1, keepdim=True)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    y = torch.where(s > 0, x / safe, torch.zeros_like(x))
    return torch.where(changed[..., None], y, x)


def identity() -> Intervention:
    """A' = A (runs the attention-matrix path; a control for float error)."""

    def fn(A, call, site):
        return A

    fn.kind = "identity"  # type: ignore[attr-defined]
    return fn


def effective_part(heads: Sequence[int] | None = None, *, preserve_row_sums: bool = False) -> Intervention:
    """A' = A_eff = A U_r U_r^T (Brunner et al., ICLR 2020): the output is unchanged.

    ``preserve_row_sums``: project on the column space of [T, 1] (keeps the row sums too).
    """

    def fn(A, call, site):
        return _merge(A, _effective(A, call, site, preserve_row_sums), heads)

    fn.kind = "effective"  # type: ignore[attr-defined]
    return fn


def distribution_variant(heads: Sequence[int] | None = None, *, mode: str = "nearest") -> Intervention:
    """A' = the distribution variant of A (``functional.attention_distribution``, after Naim &
    Asher 2024; project's own formulation): a' >= 0, sum 1, a'T = aT. Output unchanged.

    Costs a small QP/LP per row (ms each): restrict with ``heads`` and the runner's ``layers``.
    """

    def fn(A, call, site):
        return _distribution(A, call, site, mode, heads)

    fn.kind = "distribution"  # type: ignore[attr-defined]
    return fn


def null_perturbation(
    heads: Sequence[int] | None = None, *, seed: int = 0, nonnegative: bool = True, scale: float = 1.0, steps: int = 10
) -> Intervention:
    """A' = A + random null-space perturbations (see :func:`null_space_perturbation`).

    Rows stay stochastic (and non-negative with ``nonnegative=True``); the output is unchanged.
    Seeded per (seed, site). Padding keys are excluded; for causal attention the perturbation
    is drawn over all real keys, so a row may gain weight on future keys (the output is still
    unchanged, since a'T = aT over all keys).
    """

    def fn(A, call, site):
        km = _key_mask(call)
        new = null_space_perturbation(
            A, _T(call, site), key_mask=None if km is None else km[:, None, :], generator=_generator(seed, site),
            nonnegative=nonnegative, scale=scale, steps=steps,
        )
        return _merge(A, new, heads)

    fn.kind = "null_perturbation"  # type: ignore[attr-defined]
    return fn


def minus_effective(heads: Sequence[int] | None = None) -> Intervention:
    """A' = A - A_eff, the null part only (necessity of the effective part).

    Since (A - A_eff) T = 0 this equals zero-ablating the head (up to float error).
    """

    def fn(A, call, site):
        return _merge(A, A.to(torch.float64) - _effective(A, call, site).to(torch.float64), heads)

    fn.kind = "minus_effective"  # type: ignore[attr-defined]
    return fn


def uniform(heads: Sequence[int] | None = None) -> Intervention:
    """A' = uniform over each row's allowed (real, and for causal: past) keys."""

    def fn(A, call, site):
        allowed = _allowed(call, A).to(A.dtype)
        cnt = allowed.sum(-1, keepdim=True)
        return _merge(A, allowed / cnt.clamp_min(1), heads)

    fn.kind = "uniform"  # type: ignore[attr-defined]
    return fn


def permute(heads: Sequence[int] | None = None, *, seed: int = 0) -> Intervention:
    """A' = each row's weights randomly permuted among its allowed keys (Jain & Wallace 2019).

    Seeded per (seed, site): reproducible.
    """

    def fn(A, call, site):
        return _merge(A, permute_rows(A, _allowed(call, A), _generator(seed, site)), heads)

    fn.kind = "permute"  # type: ignore[attr-defined]
    return fn


TOPK_BY = ("raw", "effective", "distribution")


def topk(
    k: int,
    heads: Sequence[int] | None = None,
    *,
    by: str = "raw",
    values: str = "raw",
    remove: bool = False,
    distribution_mode: str = "nearest",
) -> Intervention:
    """Keep (or, ``remove=True``, drop) the top-``k`` keys of each row, renormalised.

    ``S_i`` = the ``k`` largest keys of row i by the weights ``by``: ``"raw"`` (A), ``"effective"``
    (A_eff, signed: largest value first) or ``"distribution"`` (the distribution variant,
    slow). Ties: earlier key first. Then::

        keep:   A'_ij = W_ij 1[j in S_i] / sum_{j in S_i} W_ij
        remove: A'_ij = A_ij 1[j not in S_i] / sum_{j not in S_i} A_ij

    with ``W = A`` for ``values="raw"`` (default) or ``W = max(weights by, 0)`` for
    ``values="same"``. A row keeping every allowed key is returned unchanged (so
    ``k >= m`` gives A exactly); a row left with zero mass becomes 0 (the head adds nothing).
    """
    if by not in TOPK_BY:
        raise ValueError(f"by must be one of {TOPK_BY}, got {by!r}")
    if values not in ("raw", "same"):
        raise ValueError(f"values must be 'raw' or 'same', got {values!r}")

    def fn(A, call, site):
        allowed = _allowed(call, A)
        if by == "raw":
            W = A
        elif by == "effective":
            W = _effective(A, call, site)
        else:
            W = _distribution(A, call, site, distribution_mode, heads)
        sel = topk_mask(W, allowed, k)
        if remove:
            base = A
            keep = allowed & ~sel
        else:
            base = A if values == "raw" else W.clamp_min(0).to(A.dtype)
            keep = sel
        changed = (keep != allowed).any(-1)
        if values == "same" and not remove and by != "raw":
            changed = torch.ones_like(changed)
        new = _renorm(torch.where(keep, base.to(torch.float64), torch.zeros((), dtype=torch.float64, device=A.device)), changed)
        return _merge(A, torch.where(changed[..., None], new, A.to(torch.float64)), heads)

    fn.kind = "topk"  # type: ignore[attr-defined]
    return fn


def zero(heads: Sequence[int] | None = None) -> Intervention:
    """Zero-ablation: A' = 0 for the chosen heads, so each contributes 0 to the output
    projection's input (the output projection's bias, shared by all heads, stays)."""

    def fn(A, call, site):
        return _merge(A, torch.zeros_like(A), heads)

    fn.kind = "zero"  # type: ignore[attr-defined]
    return fn


def _mean_rows(call: AttentionCall, mu: torch.Tensor, heads_idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-norm x (B, len(heads), m) with x V_h = mu_h, and the relative residual (B, len(heads))."""
    V = call.value.detach()[:, heads_idx].to(torch.float64)  # (B, h, m, d_v)
    km = _key_mask(call)
    if km is not None:
        V = torch.where(km[:, None, :, None], V, torch.zeros_like(V))
    target = mu[heads_idx].to(device=V.device, dtype=torch.float64)  # (h, d_v)
    x = (torch.linalg.pinv(V.transpose(-1, -2)) @ target[None, :, :, None])[..., 0]  # (B, h, m)
    res = torch.linalg.vector_norm((x[..., None, :] @ V)[..., 0, :] - target, dim=-1)
    rel = res / torch.linalg.vector_norm(target, dim=-1).clamp_min(1e-30)
    return x, rel


def mean(means: torch.Tensor, heads: Sequence[int] | None = None, *, residuals: list | None = None) -> Intervention:
    """Mean-ablation through the attention matrix (approximation, see the module docstring).

    ``means``: (H, d_v) mean head outputs of this site (from :func:`head_means`). Every query
    row of a chosen head becomes ``x = pinv(V^T) mu_h`` (min-norm least squares over the real
    keys), so the head outputs ``x V`` = mu_h exactly when mu_h is in the row space of V.
    ``residuals``: if a list, the relative residuals (B, heads) of each call are appended.
    """

    def fn(A, call, site):
        idx = list(range(A.shape[1])) if heads is None else list(heads)
        x, rel = _mean_rows(call, means, idx)
        if residuals is not None:
            residuals.append(rel.cpu())
        out = A.clone()
        out[:, idx] = x[:, :, None, :].expand(-1, -1, A.shape[2], -1).to(A.dtype)
        return out

    fn.kind = "mean"  # type: ignore[attr-defined]
    return fn


#: builders by name (for ``intervention_effects(kinds=...)``)
KINDS: Registry = Registry("intervention kind", {
    "identity": identity,
    "effective": effective_part,
    "distribution": distribution_variant,
    "null_perturbation": null_perturbation,
    "minus_effective": minus_effective,
    "uniform": uniform,
    "permute": permute,
    "topk": topk,
    "zero": zero,
})


def _kind_label(kind: Any) -> tuple[str, str, dict[str, Any]]:
    """``(label, name, options)`` of ``"name"``, ``"name:key=value,..."`` (the backend-spec syntax,
    :mod:`attnexplain.backends.spec`) or ``(name, {options})``."""
    if isinstance(kind, str):
        name, sep, rest = kind.partition(":")
        if not sep:
            return kind, kind, {}
        kind = (name.strip(), parse_key_values(rest, what=f"intervention option in {kind!r}"))
    if isinstance(kind, (tuple, list)) and len(kind) == 2 and isinstance(kind[0], str) and isinstance(kind[1], Mapping):
        name, opts = kind[0], dict(kind[1])
        label = name + "(" + ",".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else name
        return label, name, opts
    raise TypeError(f"a kind is a name, 'name:key=value,...' or (name, options dict), got {kind!r}")


def build_intervention(kind: str | tuple[str, Mapping[str, Any]], *, heads: Sequence[int] | None = None,
                       seed: int = 0) -> tuple[str, Intervention]:
    """``(label, fn)`` for a kind name or ``(name, options)``; ``heads``/``seed`` passed where taken."""
    label, name, opts = _kind_label(kind)
    builder = KINDS[name]  # UnknownNameError (a KeyError) listing the kinds
    import inspect

    params = inspect.signature(builder).parameters
    if "heads" in params:
        opts.setdefault("heads", heads)
    if "seed" in params:
        opts.setdefault("seed", seed)
    return label, builder(**opts)

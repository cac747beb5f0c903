"""Head-level interventions on attention matrices, and runners that measure their effect.

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

Runners: :func:`run_with_interventions` (one batch -> logits), :func:`run_conditions` (many
intervention sets in replicated batches: one forward for many conditions),
:func:`intervention_effects` (output change per example and kind: TVD of the output
distributions, max |logit change|, prediction flips, how much A changed), :func:`topk_sweep`
and :func:`minimal_k`, :func:`head_means` and :func:`head_ablation` (a layers x heads table).

Mean-ablation: replacing head h's output o_h(i) = a_i V by its mean mu_h over a data set (all
real query positions of all examples, :func:`head_means`) cannot always be written as ``A' V``:
``A'`` rows live in R^m, and ``x V = mu`` has an exact solution only when mu lies in the row
space of V (always when the m real keys' values span R^{d_v}, i.e. typically m >= d_v; MiniLM
d_v = 32, so not for shorter inputs). The attention-level version (``method="attention"``,
default) uses the least-squares (minimum-norm) solution ``x = pinv(V^T) mu`` and records the
relative residual ``|x V - mu| / |mu|`` (``mean_residual`` column); ``method="output"`` patches
the head's slice of the output projection's input with a forward pre-hook instead (exact, but
not through the attention function).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..backends import AttentionCall
from ..capturing.adapters import AttentionSite, find_attention_sites
from ..capturing.attention import session

__all__ = [
    "Intervention",
    "KINDS",
    "identity",
    "effective_part",
    "distribution_variant",
    "null_perturbation",
    "minus_effective",
    "uniform",
    "permute",
    "topk",
    "zero",
    "mean",
    "null_space_perturbation",
    "permute_rows",
    "topk_mask",
    "build_intervention",
    "site_keys",
    "run_with_interventions",
    "run_conditions",
    "intervention_effects",
    "topk_sweep",
    "minimal_k",
    "head_means",
    "head_ablation",
    "ablation_table",
]

Intervention = Callable[[torch.Tensor, AttentionCall, AttentionSite], torch.Tensor]


# --------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------


def _functional():
    """The functional package (written separately); imported lazily."""
    try:
        from ..functional import attention_distribution, column_space_basis, effective_attention_from_values, value_transforms
    except ImportError:  # package without __init__ re-exports
        from ..functional.distribution import attention_distribution
        from ..functional.effective import column_space_basis, effective_attention_from_values, value_transforms
    return attention_distribution, column_space_basis, effective_attention_from_values, value_transforms


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
    _, _, _, value_transforms = _functional()
    return value_transforms(call.value.detach(), _out_proj(site, call.value.shape[1]))


def _effective(A: torch.Tensor, call: AttentionCall, site: AttentionSite, preserve_row_sums: bool = False) -> torch.Tensor:
    _, _, eff_from_values, _ = _functional()
    W = _out_proj(site, A.shape[1])
    return eff_from_values(A, call.value.detach(), W, key_mask=_key_mask(call), preserve_row_sums=preserve_row_sums)


def _distribution(A: torch.Tensor, call: AttentionCall, site: AttentionSite, mode: str,
                  heads: Sequence[int] | None) -> torch.Tensor:
    attention_distribution = _functional()[0]
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


# --------------------------------------------------------------------------------------------
# pure tensor functions
# --------------------------------------------------------------------------------------------


def permute_rows(A: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly permute each row's weights among its allowed keys (Jain & Wallace, NAACL 2019).

    ``A`` (..., n, m), ``allowed`` (..., n, m) bool. Weights at disallowed keys stay (0 for
    softmax attention); each row gets an independent uniform random permutation.
    """
    allowed = allowed.expand(A.shape)
    r = torch.rand(A.shape, generator=generator, dtype=torch.float64).to(A.device)
    r = torch.where(allowed, r, torch.full_like(r, 2.0))  # disallowed keys sort last
    src = torch.argsort(r, dim=-1)  # allowed positions in random order, then the others
    dst = torch.argsort((~allowed).to(torch.int8), dim=-1, stable=True)  # allowed in order, then the others
    out = torch.empty_like(A)
    out.scatter_(-1, dst, A.gather(-1, src))
    # tail entries: disallowed keys map to disallowed keys (in a different order): restore them
    return torch.where(allowed, out, A)


def topk_mask(W: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """(..., n, m) bool: the ``k`` largest entries of each row of ``W`` among the allowed keys.

    Ties: the earlier key first (stable sort). Rows with fewer than ``k`` allowed keys select
    all of them.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    allowed = allowed.expand(W.shape)
    s = torch.where(allowed, W.to(torch.float64), torch.full(W.shape, -math.inf, dtype=torch.float64, device=W.device))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., : min(k, W.shape[-1])]
    sel = torch.zeros(W.shape, dtype=torch.bool, device=W.device)
    sel.scatter_(-1, order, True)
    return sel & allowed


def null_space_perturbation(
    A: torch.Tensor,
    T: torch.Tensor,
    *,
    key_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    nonnegative: bool = True,
    scale: float = 1.0,
    steps: int = 10,
    rtol: float | None = None,
) -> torch.Tensor:
    """Add random vectors of the left null space of ``[T, 1]`` to the rows of ``A``.

    Each step draws Gaussian noise ``z`` on the real keys, projects it on the null space,
    ``p = z - (z U) U^T`` with ``U`` an orthonormal basis of the column space of ``[T, 1]``
    (so ``p T = 0`` and ``sum(p) = 0``), normalises ``||p||_1 = 1`` and moves ``a <- a + t p``.

    * ``nonnegative=True`` (default, hit-and-run in the polytope {a' >= 0, sum a' = 1,
      a'T = aT}): ``t`` is uniform on the feasible segment ``{t : a + t p >= 0}`` intersected
      with ``[-scale, scale]``; ``steps`` steps.
    * ``nonnegative=False``: one step with ``t = scale`` (entries may become negative).

    Either way ``A' T = A T`` and the row sums are unchanged (up to float error); rows with an
    empty null space (``m_real <= rank(T) + 1``) are returned unchanged. ``A`` (..., n, m),
    ``T`` (..., m, d) broadcast; ``key_mask`` (..., m) bool, True = real key (pass
    ``mask[:, None, :]`` for (B, H, n, m)). Computed in float64; returns ``A``'s dtype.
    """
    column_space_basis = _functional()[1]
    U, _ = column_space_basis(T, key_mask=key_mask, rtol=rtol, with_ones=True)  # (..., m, r)
    a = A.to(torch.float64)
    real = torch.ones(a.shape[-1], dtype=torch.bool, device=A.device) if key_mask is None else key_mask[..., None, :]
    real = torch.broadcast_to(real, a.shape)
    Ut = U.transpose(-1, -2)
    n_steps = steps if nonnegative else 1
    for _ in range(n_steps):
        z = torch.randn(a.shape, generator=generator, dtype=torch.float64).to(A.device)
        z = torch.where(real, z, torch.zeros_like(z))
        p = z - (z @ U) @ Ut
        p = torch.where(real, p, torch.zeros_like(p))
        norm = p.abs().sum(-1, keepdim=True)
        ok = norm > 1e-9
        p = torch.where(ok, p / torch.where(ok, norm, torch.ones_like(norm)), torch.zeros_like(p))
        if nonnegative:
            inf = torch.full_like(a, math.inf)
            hi = torch.where(p < 0, a.clamp_min(0) / (-p).clamp_min(1e-300), inf).amin(-1, keepdim=True)
            lo = torch.where(p > 0, -a.clamp_min(0) / p.clamp_min(1e-300), -inf).amax(-1, keepdim=True)
            hi = hi.clamp(max=scale)
            lo = lo.clamp(min=-scale)
            u = torch.rand(hi.shape, generator=generator, dtype=torch.float64).to(A.device)
            t = torch.where(ok & (hi >= lo), lo + u * (hi - lo), torch.zeros_like(hi))
        else:
            t = torch.where(ok, torch.full_like(norm, float(scale)), torch.zeros_like(norm))
        a = a + t * p
        if nonnegative:
            a = a.clamp_min(0.0)  # round-off at the boundary only (~1e-17)
    return a.to(A.dtype)


# --------------------------------------------------------------------------------------------
# intervention builders: fn(A, call, site) -> A'
# --------------------------------------------------------------------------------------------


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
KINDS: dict[str, Callable[..., Intervention]] = {
    "identity": identity,
    "effective": effective_part,
    "distribution": distribution_variant,
    "null_perturbation": null_perturbation,
    "minus_effective": minus_effective,
    "uniform": uniform,
    "permute": permute,
    "topk": topk,
    "zero": zero,
}


def _kind_label(kind: Any) -> tuple[str, str, dict[str, Any]]:
    if isinstance(kind, str):
        return kind, kind, {}
    if isinstance(kind, (tuple, list)) and len(kind) == 2 and isinstance(kind[0], str) and isinstance(kind[1], Mapping):
        name, opts = kind[0], dict(kind[1])
        label = name + "(" + ",".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else name
        return label, name, opts
    raise TypeError(f"a kind is a name or (name, options dict), got {kind!r}")


def build_intervention(kind: str | tuple[str, Mapping[str, Any]], *, heads: Sequence[int] | None = None,
                       seed: int = 0) -> tuple[str, Intervention]:
    """``(label, fn)`` for a kind name or ``(name, options)``; ``heads``/``seed`` passed where taken."""
    label, name, opts = _kind_label(kind)
    if name not in KINDS:
        raise KeyError(f"unknown intervention kind {name!r}; known: {', '.join(KINDS)}")
    builder = KINDS[name]
    import inspect

    params = inspect.signature(builder).parameters
    if "heads" in params:
        opts.setdefault("heads", heads)
    if "seed" in params:
        opts.setdefault("seed", seed)
    return label, builder(**opts)


# --------------------------------------------------------------------------------------------
# runners
# --------------------------------------------------------------------------------------------


def _torch_model(lm: Any) -> torch.nn.Module:
    return lm.model if hasattr(lm, "model") and isinstance(lm.model, torch.nn.Module) else lm


def _sites_by_key(lm: Any) -> dict[str, AttentionSite]:
    model = _torch_model(lm)
    cached = getattr(model, "_attnexplain_sites", None)
    sites = cached if cached is not None else find_attention_sites(model)
    return {s.key: s for s in sites.values()}


def site_keys(lm: Any, layers: Sequence[int | str] | int | str | None = None) -> list[str]:
    """Site keys for ``layers``: ints are layers of the primary stack's self-attention
    (``"main"``, else ``"encoder"``), strings are site keys; None = all self-attention layers of
    the primary stack."""
    sites = _sites_by_key(lm)
    stacks = {s.stack for s in sites.values()}
    primary = next((c for c in ("main", "encoder", "decoder") if c in stacks), next(iter(stacks)))
    own = sorted((s for s in sites.values() if s.stack == primary and s.kind == "self"), key=lambda s: s.layer)
    if layers is None:
        return [s.key for s in own]
    if isinstance(layers, (int, str)):
        layers = [layers]
    out = []
    for l in layers:
        if isinstance(l, str):
            if l not in sites:
                raise KeyError(f"unknown attention site {l!r}; this model has {sorted(sites)}")
            out.append(l)
        else:
            match = [s.key for s in own if s.layer == int(l)]
            if not match:
                raise ValueError(f"layer {l} out of range: {primary} self-attention layers are {[s.layer for s in own]}")
            out.append(match[0])
    return out


def _as_batch(lm: Any, inputs: Any) -> dict[str, torch.Tensor]:
    if isinstance(inputs, (str, list, tuple)):
        return lm.tokenize([inputs] if isinstance(inputs, str) else list(inputs))
    return dict(inputs)


def _logits(out: Any) -> torch.Tensor:
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits if logits.dim() == 2 else logits[:, -1]


def _resolve_keys(lm: Any, interventions: Mapping[Any, Intervention]) -> dict[str, Intervention]:
    out: dict[str, Intervention] = {}
    for key, fn in interventions.items():
        out[site_keys(lm, key)[0] if not isinstance(key, str) else key] = fn
    return out


def run_with_interventions(lm: Any, batch: Any, interventions: Mapping[str | int, Intervention] | None = None) -> torch.Tensor:
    """Logits ((B, C); last position for sequence outputs) of the model run with ``interventions``
    ({site key or layer int: fn(A, call, site) -> A'}). ``batch``: texts or tokenized inputs."""
    batch = _as_batch(lm, batch)
    model = _torch_model(lm)
    with torch.no_grad(), session(model, interventions=_resolve_keys(lm, interventions or {})):
        return _logits(model(**batch)).detach()


def _slice_call(call: AttentionCall, sl: slice) -> AttentionCall:
    def cut(x):
        return None if x is None else (x[sl] if x.shape[0] > 1 else x)

    return AttentionCall(
        query=call.query[sl], key=call.key[sl], value=call.value[sl], mask=cut(call.mask), scaling=call.scaling,
        causal=call.causal, key_padding_mask=None if call.key_padding_mask is None else call.key_padding_mask[sl],
        dropout=call.dropout, training=call.training, extras=call.extras,
    )


def _grouped(per_group: list[Intervention | None], B: int) -> Intervention:
    """One intervention for a batch made of len(per_group) consecutive groups of B rows."""

    def fn(A, call, site):
        parts = []
        for g, f in enumerate(per_group):
            sl = slice(g * B, (g + 1) * B)
            parts.append(A[sl] if f is None else f(A[sl], _slice_call(call, sl), site).to(A.dtype))
        return torch.cat(parts, dim=0)

    return fn


def run_conditions(
    lm: Any,
    batch: Any,
    conditions: Sequence[Mapping[str | int, Intervention]],
    *,
    max_batch: int = 256,
) -> torch.Tensor:
    """Logits (len(conditions), B, C) of the batch under each set of interventions.

    The batch is replicated, one copy per condition, and as many copies as fit in ``max_batch``
    rows go through one forward pass; each site's intervention applies each condition's own
    function to its rows (a condition without a function at a site leaves those rows as is).
    """
    batch = _as_batch(lm, batch)
    model = _torch_model(lm)
    B = next(iter(batch.values())).shape[0]
    conds = [_resolve_keys(lm, c) for c in conditions]
    per_fwd = max(1, max_batch // max(B, 1))
    outs = []
    for start in range(0, len(conds), per_fwd):
        group = conds[start : start + per_fwd]
        keys = sorted({k for c in group for k in c})
        inter = {k: _grouped([c.get(k) for c in group], B) for k in keys}
        rep = {k: v.repeat(len(group), *([1] * (v.dim() - 1))) for k, v in batch.items()}
        with torch.no_grad(), session(model, interventions=inter):
            logits = _logits(model(**rep)).detach()
        outs.append(logits.reshape(len(group), B, -1))
    return torch.cat(outs, dim=0)


def _output_change(base: torch.Tensor, new: torch.Tensor) -> dict[str, np.ndarray]:
    from ..metrics import tvd

    pb = torch.softmax(base.double(), -1)
    pn = torch.softmax(new.double(), -1)
    return {
        "tvd": tvd(pb, pn).cpu().numpy(),
        "max_abs_logit_change": (new.double() - base.double()).abs().amax(-1).cpu().numpy(),
        "pred": base.argmax(-1).cpu().numpy(),
        "pred_intervened": new.argmax(-1).cpu().numpy(),
    }


def _measured(fn: Intervention, acc: dict[str, torch.Tensor]) -> Intervention:
    """Wrap fn to accumulate, per example, the mean half-L1 distance between rows of A and A'
    (over heads that changed are not singled out: all heads, real query rows)."""

    def wrapped(A, call, site):
        new = fn(A, call, site)
        d = 0.5 * (new.double() - A.double()).abs().sum(-1)  # (B, H, n)
        km = call.key_padding_mask
        rows = torch.ones(d.shape[0], d.shape[2], dtype=torch.bool, device=d.device) if km is None or km.shape[-1] != d.shape[2] else km
        s = (d * rows[:, None, :]).sum((1, 2))
        c = rows.sum(-1) * d.shape[1]
        acc["sum"] = acc.get("sum", 0) + s.cpu()
        acc["count"] = acc.get("count", 0) + c.cpu()
        return new

    return wrapped


def intervention_effects(
    lm: Any,
    texts: str | Sequence[str],
    kinds: Sequence[str | tuple[str, Mapping[str, Any]]] = ("effective", "null_perturbation", "minus_effective", "uniform", "permute"),
    *,
    layers: Sequence[int | str] | None = None,
    heads: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 16,
):
    """How much each intervention changes the model's output, per example.

    Each kind (a name of :data:`KINDS` or ``(name, options)``, e.g. ``("topk", {"k": 4})``) is
    applied at all ``layers`` (None = every self-attention layer) to ``heads`` (None = all) at
    once. Returns a DataFrame with one row per (example, kind): ``tvd`` (total variation
    between the output distributions), ``max_abs_logit_change``, ``flip`` (prediction changed),
    ``pred`` / ``pred_intervened``, and ``attention_change`` (mean over intervened sites, heads
    and real query rows of 1/2 |a' - a|_1: how much A moved). Compared with the model run
    without interventions.
    """
    import pandas as pd

    texts = [texts] if isinstance(texts, str) else list(texts)
    keys = site_keys(lm, layers)
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[start : start + batch_size])
        base = run_with_interventions(lm, batch, {})
        for kind in kinds:
            label, fn = build_intervention(kind, heads=heads, seed=seed)
            acc: dict[str, torch.Tensor] = {}
            wrapped = _measured(fn, acc)
            new = run_with_interventions(lm, batch, {k: wrapped for k in keys})
            ch = _output_change(base, new)
            att = (acc["sum"] / acc["count"].clamp_min(1)).numpy() if acc else np.zeros(len(new))
            for i in range(len(new)):
                rows.append({
                    "example": start + i, "kind": label, "tvd": float(ch["tvd"][i]),
                    "max_abs_logit_change": float(ch["max_abs_logit_change"][i]),
                    "flip": bool(ch["pred"][i] != ch["pred_intervened"][i]),
                    "pred": int(ch["pred"][i]), "pred_intervened": int(ch["pred_intervened"][i]),
                    "attention_change": float(att[i]),
                })
    return pd.DataFrame(rows)


def topk_sweep(
    lm: Any,
    texts: str | Sequence[str],
    ks: Sequence[int] = (1, 2, 4, 8, 16, 32),
    *,
    by: Sequence[str] = ("raw", "effective"),
    values: str = "raw",
    layers: Sequence[int | str] | None = None,
    heads: Sequence[int] | None = None,
    batch_size: int = 16,
    max_batch: int = 256,
):
    """Keep-top-k and remove-top-k sweeps (all ``layers``/``heads`` at once).

    For each k, ranking ``by`` ("raw", "effective", "distribution") and action ("keep": only
    the top-k keys per row, renormalised; "remove": all but them), the output change versus
    the unmodified model. All (k, by, action) conditions of a batch run in replicated forward
    passes (:func:`run_conditions`). Returns a DataFrame: example, by, k, action, tvd,
    max_abs_logit_change, flip. See :func:`minimal_k`.
    """
    import pandas as pd

    texts = [texts] if isinstance(texts, str) else list(texts)
    keys = site_keys(lm, layers)
    specs = [(b, int(k), act) for b in by for k in ks for act in ("keep", "remove")]
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[start : start + batch_size])
        base = run_with_interventions(lm, batch, {})
        conds = [{key: topk(k, heads, by=b, values=values, remove=(act == "remove")) for key in keys} for b, k, act in specs]
        out = run_conditions(lm, batch, conds, max_batch=max_batch)
        for (b, k, act), new in zip(specs, out):
            ch = _output_change(base, new)
            for i in range(new.shape[0]):
                rows.append({
                    "example": start + i, "by": b, "k": k, "action": act, "tvd": float(ch["tvd"][i]),
                    "max_abs_logit_change": float(ch["max_abs_logit_change"][i]),
                    "flip": bool(ch["pred"][i] != ch["pred_intervened"][i]),
                })
    return pd.DataFrame(rows)


def minimal_k(sweep) -> Any:
    """Per (example, by): the smallest swept k whose keep-top-k keeps the prediction
    (``min_k_keep``, NaN if none), and whether removing those top-k keys flips it
    (``remove_flips``) with the TVD of that removal."""
    import pandas as pd

    rows = []
    for (ex, b), grp in sweep.groupby(["example", "by"], sort=False):
        keep = grp[(grp.action == "keep") & ~grp.flip].sort_values("k")
        if len(keep):
            k = int(keep.k.iloc[0])
            rem = grp[(grp.action == "remove") & (grp.k == k)]
            rows.append({"example": ex, "by": b, "min_k_keep": k, "remove_flips": bool(rem.flip.iloc[0]),
                         "remove_tvd": float(rem.tvd.iloc[0])})
        else:
            rows.append({"example": ex, "by": b, "min_k_keep": float("nan"), "remove_flips": None, "remove_tvd": float("nan")})
    return pd.DataFrame(rows)


def head_means(lm: Any, texts: str | Sequence[str], *, layers: Sequence[int | str] | None = None,
               batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Mean head output per site: {site key: (H, d_v)}, ``mu_h = mean over all real query
    positions of all texts of a_i V_h`` (the head's output before the output projection)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    keys = site_keys(lm, layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}

    def make(key):
        def fn(A, call, site):
            o = torch.matmul(A.to(call.value.dtype), call.value).double()  # (B, H, n, d_v)
            km = call.key_padding_mask
            if km is not None and km.shape[-1] == o.shape[2]:
                o = o * km[:, None, :, None]
                c = float(km.sum())
            else:
                c = float(o.shape[0] * o.shape[2])
            sums[key] = sums.get(key, 0) + o.sum((0, 2)).cpu()
            counts[key] = counts.get(key, 0.0) + c
            return A

        return fn

    for start in range(0, len(texts), batch_size):
        run_with_interventions(lm, texts[start : start + batch_size], {k: make(k) for k in keys})
    return {k: (sums[k] / counts[k]).float() for k in keys}


def _output_patch(site: AttentionSite, H: int, groups: list[dict[int, torch.Tensor | None]], B: int):
    """Forward pre-hook on the output projection: replace head slices of each row group."""

    def hook(module, args):
        x = args[0]
        d_v = x.shape[-1] // H
        x = x.clone()
        for g, spec in enumerate(groups):
            for h, val in spec.items():
                sl = slice(h * d_v, (h + 1) * d_v)
                x[g * B : (g + 1) * B, ..., sl] = 0.0 if val is None else val.to(x.dtype)
        return (x, *args[1:])

    return site.out_proj.register_forward_pre_hook(hook)


def head_ablation(
    lm: Any,
    texts: str | Sequence[str],
    *,
    mode: str = "zero",
    layers: Sequence[int | str] | None = None,
    head_sets: Sequence[Mapping[str | int, Sequence[int]]] | None = None,
    method: str = "attention",
    means: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 16,
    max_batch: int = 256,
):
    """Ablate one head at a time (default) or chosen sets of heads over a data set.

    Args:
        mode: ``"zero"`` (A' = 0: the head contributes 0) or ``"mean"`` (the head's output is
            replaced by its mean over ``texts``, from :func:`head_means` unless ``means`` given).
        layers: layers whose heads are ablated one at a time (None = all).
        head_sets: instead of single heads, a list of sets ``{layer or site key: [heads]}``
            ablated together (one condition each).
        method: ``"attention"`` (through the attention function: zero -> A' = 0, mean -> the
            least-squares A' of :func:`mean`, residual reported) or ``"output"`` (a forward
            pre-hook on the output projection writes 0 / mu into the head's slice: exact).

    All conditions run in replicated batches (:func:`run_conditions` style). Returns a
    DataFrame, one row per condition: ``layer``, ``head`` (single-head mode) or ``set``,
    ``mean_tvd``, ``flip_rate``, ``mean_max_abs_logit_change``, ``n``, and for
    ``mode="mean", method="attention"`` ``mean_residual`` (mean relative residual of x V = mu).
    See :func:`ablation_table` for the (layers x heads) pivot.
    """
    import pandas as pd

    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    if method not in ("attention", "output"):
        raise ValueError(f"method must be 'attention' or 'output', got {method!r}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    sites = _sites_by_key(lm)
    H = lm.num_heads if hasattr(lm, "num_heads") else None
    if head_sets is None:
        keys = site_keys(lm, layers)
        conds = [({k: [h]}, sites[k].layer, h) for k in keys for h in range(H)]
    else:
        conds = []
        for j, hs in enumerate(head_sets):
            resolved = {site_keys(lm, k)[0]: list(v) for k, v in hs.items()}
            conds.append((resolved, None, j))
    if mode == "mean" and means is None:
        need = sorted({k for c, _, _ in conds for k in c})
        means = head_means(lm, texts, layers=need, batch_size=batch_size)

    stats = [{"tvd": [], "flip": [], "dlogit": [], "res": []} for _ in conds]
    for start in range(0, len(texts), batch_size):
        batch = lm.tokenize(texts[start : start + batch_size])
        B = batch["input_ids"].shape[0]
        base = run_with_interventions(lm, batch, {})
        per_fwd = max(1, max_batch // B)
        for g0 in range(0, len(conds), per_fwd):
            group = conds[g0 : g0 + per_fwd]
            rep = {k: v.repeat(len(group), *([1] * (v.dim() - 1))) for k, v in batch.items()}
            residuals: list[list[torch.Tensor]] = [[] for _ in group]
            model = _torch_model(lm)
            if method == "attention":
                keys = sorted({k for c, _, _ in group for k in c})
                inter = {}
                for key in keys:
                    fns = []
                    for gi, (c, _, _) in enumerate(group):
                        if key not in c:
                            fns.append(None)
                        elif mode == "zero":
                            fns.append(zero(c[key]))
                        else:
                            fns.append(mean(means[key], c[key], residuals=residuals[gi]))
                    inter[key] = _grouped(fns, B)
                with torch.no_grad(), session(model, interventions=inter):
                    logits = _logits(model(**rep)).detach()
            else:
                handles = []
                try:
                    keys = sorted({k for c, _, _ in group for k in c})
                    for key in keys:
                        specs = []
                        for c, _, _ in group:
                            hs = c.get(key, [])
                            specs.append({h: (None if mode == "zero" else means[key][h]) for h in hs})
                        if sites[key].out_proj is None:
                            raise ValueError(f"site {key} has no known output projection; use method='attention'")
                        handles.append(_output_patch(sites[key], H, specs, B))
                    with torch.no_grad():
                        logits = _logits(model(**rep)).detach()
                finally:
                    for h in handles:
                        h.remove()
            for gi, new in enumerate(logits.reshape(len(group), B, -1)):
                ch = _output_change(base, new)
                st = stats[g0 + gi]
                st["tvd"].extend(ch["tvd"].tolist())
                st["flip"].extend((ch["pred"] != ch["pred_intervened"]).tolist())
                st["dlogit"].extend(ch["max_abs_logit_change"].tolist())
                st["res"].extend(float(r.mean()) for r in residuals[gi])
    rows = []
    for (c, layer, h), st in zip(conds, stats):
        row: dict[str, Any] = {}
        if head_sets is None:
            row.update(layer=layer, head=h)
        else:
            row.update(set=h, heads={k: list(v) for k, v in c.items()})
        row.update(mean_tvd=float(np.mean(st["tvd"])), flip_rate=float(np.mean(st["flip"])),
                   mean_max_abs_logit_change=float(np.mean(st["dlogit"])), n=len(st["tvd"]))
        if mode == "mean" and method == "attention":
            row["mean_residual"] = float(np.mean(st["res"])) if st["res"] else float("nan")
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(mode=mode, method=method)
    return df


def ablation_table(df, value: str = "mean_tvd"):
    """(layers x heads) pivot of a single-head :func:`head_ablation` result."""
    return df.pivot(index="layer", columns="head", values=value)

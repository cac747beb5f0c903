"""Per-generated-token explanations for encoder-decoder models (BART, T5, ...).

Generated token ``y_t`` is predicted at decoder position ``t`` from the source (the encoder input
``x``, padding removed) and the decoder input ``[start, y_0, ..., y_{t-1}]``. Its row of scores has
one column per source token and one per generated token (``y_s`` scored for ``s < t``, NaN from
``t`` on; the decoder start token gets no column), the layout of
:class:`~attnexplain.generation.GenerationAttribution`: ``n_prompt`` = number of source tokens.

What each method computes (``A_cross^l``, ``A_self^l``: the decoder's cross- and self-attention of
layer ``l`` from the one teacher-forced capture of :func:`attnexplain.generate`; their row ``t`` is
the row the decoding step computed, tested equal to ``generate(output_attentions=True)``):

* ``raw_attention``: source ``mean_l reduce_h A_cross^{l,h}[t, j]``; target side
  ``mean_l reduce_h A_self^{l,h}[t, s + 1]`` (the key holding ``y_s``); the method's ``layers`` and
  ``head_reduction`` options apply (over the decoder's layers).
* ``effective_attention``: the same rows of effective attention (Brunner et al. 2020): cross
  ``A_cross U_r U_r^T`` with ``U_r`` the basis of the cross-attention value transforms of the
  source tokens; self: the basis of the value transforms of the keys step ``t`` sees
  (decoder positions ``0..t``), so no mass moves to keys the causal row cannot see.
* ``norm``: norm-based attention (Kobayashi et al. 2020) of the same rows,
  ``|| sum_h A^h[t, j] f^h(x_j) ||`` with ``f`` the cross- (source) or self-attention (target)
  value transforms.
* ``rollout``: source ``reduce_h A_cross^{top}[t, :] @ R_enc`` -- the top decoder layer's
  cross-attention row carried through the encoder's rollout ``R_enc`` (Abnar & Zuidema 2020, over
  the encoder's self-attention) to the input tokens; target side: row ``t`` of the rollout of the
  decoder's self-attention through the layers up to the top. (Rollout has no rule that mixes the
  cross-attention into the decoder's residual stream; this composition is the project's own.)
* ``gradient_x_input``: ``x_j . dF/dx_j`` for the source tokens (``x``: the input of the first
  encoder block, or the word embeddings with ``input="word_embeddings"``) and the decoder inputs
  (the first decoder block's input / the word embeddings), ``F`` the logit of ``y_t`` at decoder
  position ``t``; one backward per step (the steps of an example run as one batch).
* ``integrated_gradients``: IG (captum, Gauss-Legendre, ``n_steps``) on the word embeddings of
  source and decoder inputs together, passed as ``inputs_embeds`` / ``decoder_inputs_embeds``;
  baseline: every real source token and every generated decoder input replaced by the pad token's
  embedding (the decoder start token is kept).
* ``occlusion``: ``p(y_t) - p(y_t | token replaced)`` (the method's replacement id; special
  tokens left alone unless ``occlude_special``), for source tokens and earlier generated tokens;
  one forward per occluded variant serves every step (the decoder is causal).
* ``random``: uniform scores seeded by (seed, the source ids, the decoder inputs up to ``t``).

Contrastive explanations (``contrast=``) attribute ``log p(y_t) - log p(c_t)``: gradient methods
as ``attribution(logit y_t) - attribution(logit c_t)`` (exact, the normaliser cancels), occlusion
as the drop of the difference. Other registered methods are not defined here (they raise, or are
left out under ``"all"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..models import LoadedModel

#: registered methods with an encoder-decoder per-token form (see the module docstring)
ENCODER_DECODER_METHODS = ("raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input",
                           "integrated_gradients", "occlusion", "random")


def _reduce(x: torch.Tensor, how: str) -> torch.Tensor:
    """(H, ...) -> (...)"""
    return x.mean(0) if how == "mean" else x.amax(0)


class _Example:
    """One example of an encoder-decoder generation, padding removed."""

    def __init__(self, gen: Any, i: int):
        self.i = i
        self.src = gen.attention_mask[i].bool().nonzero().flatten()  # real encoder positions
        self.n_src = int(self.src.numel())
        self.steps = gen.steps(i)
        self.N = len(self.steps)
        self.src_ids = gen.input_ids[i, self.src]
        self.dec_ids = gen.decoder_input_ids[i, : 1 + self.N]  # start + y_0 .. y_{N-1}
        self.targets = gen.generated_ids[i, : self.N]


def _attention_scores(method: Any, gen: Any, ex: _Example) -> np.ndarray:
    """(N, n_src + N) for raw / effective / norm attention."""
    from ..functional import effective_attention_from_basis, norm_based_attention, value_space_basis
    from ..methods.attention_methods import select_layers

    name = method.name
    i = ex.i
    layers = select_layers(method.layers, gen.layers(stack="decoder", kind="cross"))
    out = np.zeros((ex.N, ex.n_src + ex.N))
    how = method.head_reduction
    for layer in layers:
        Ac = gen.attention(layer, stack="decoder", kind="cross")[i].float()  # (H, 1+N', m)
        As = gen.attention(layer, stack="decoder", kind="self")[i].float()  # (H, 1+N', 1+N')
        if name == "raw_attention":
            src = _reduce(Ac[:, : ex.N][:, :, ex.src.to(Ac.device)], how)  # (N, n_src)
            tgt = [_reduce(As[:, t, 1: t + 1], how) for t in range(ex.N)]
        elif name == "effective_attention":
            E = gen.effective_attention(layer, stack="decoder", kind="cross", rtol=method.rtol,
                                        preserve_row_sums=method.preserve_row_sums)[i].float()
            src = E[:, : ex.N][:, :, ex.src.to(E.device)]
            src = _reduce(src.abs() if method.absolute else src, how)
            V = gen.values(layer, stack="decoder", kind="self")[i]  # (H, 1+N', d_v)
            W = gen.out_proj_blocks(layer, stack="decoder", kind="self")
            tgt = []
            for t in range(ex.N):
                U, _ = value_space_basis(V[:, : t + 1], W, rtol=method.rtol, with_ones=method.preserve_row_sums)
                e = effective_attention_from_basis(As[:, t: t + 1, : t + 1].to(U.device), U)[:, 0, 1:].float()
                tgt.append(_reduce(e.abs() if method.absolute else e, how))
        elif name == "norm":
            Tc = gen.value_transforms(layer, stack="decoder", kind="cross")[i].float()[:, ex.src.to(Ac.device)]
            res = norm_based_attention(Ac[:, : ex.N][:, :, ex.src.to(Ac.device)], Tc)
            src = res.summed if how == "summed" else _reduce(res.per_head, how)
            Ts = gen.value_transforms(layer, stack="decoder", kind="self")[i].float()
            tgt = []
            tgt = [torch.zeros(0)]  # step 0 sees no generated token
            for t in range(1, ex.N):
                r = norm_based_attention(As[:, t: t + 1, 1: t + 1], Ts[:, 1: t + 1])
                tgt.append((r.summed if how == "summed" else _reduce(r.per_head, how))[0])
        else:  # pragma: no cover - dispatch guards this
            raise KeyError(name)
        out[:, : ex.n_src] += src.detach().double().cpu().numpy()
        for t in range(ex.N):
            out[t, ex.n_src: ex.n_src + t] += tgt[t].reshape(-1).detach().double().cpu().numpy()
    return out / len(layers)


def _rollout_scores(method: Any, gen: Any, ex: _Example) -> np.ndarray:
    from ..functional import attention_rollout
    from ..methods.attention_methods import select_layers

    i = ex.i
    src = ex.src
    enc = gen.stacked(stack="encoder", kind="self")[:, i].float()  # (L_e, H, m, m)
    enc = enc[:, :, src][:, :, :, src]
    R_enc = attention_rollout(enc, residual=method.residual, head_reduction=method.head_reduction)[-1]  # (n, n)
    dec_layers = gen.layers(stack="decoder", kind="self")
    tops = select_layers(method.layers, dec_layers)
    dec = gen.stacked(stack="decoder", kind="self")[:, i].float()  # (L_d, H, 1+N', 1+N')
    R_dec = attention_rollout(dec, residual=method.residual, head_reduction=method.head_reduction)  # (L_d, ., .)
    out = np.zeros((ex.N, ex.n_src + ex.N))
    for top in tops:
        Ac = gen.attention(top, stack="decoder", kind="cross")[i].float()[:, : ex.N][:, :, src]  # (H, N, n_src)
        out[:, : ex.n_src] += (_reduce(Ac, method.head_reduction) @ R_enc).double().cpu().numpy()
        R = R_dec[dec_layers.index(top)]
        for t in range(ex.N):
            out[t, ex.n_src: ex.n_src + t] += R[t, 1: t + 1].double().cpu().numpy()
    return out / len(tops)


def _objective(logits: torch.Tensor, target: torch.Tensor, foil: torch.Tensor | None) -> torch.Tensor:
    """(rows, V) logits at the readout positions -> (rows,) the explained quantity (logit of the
    target, or the logit difference target - foil, which equals the log-probability difference)."""
    f = logits.float().gather(1, target[:, None])[:, 0]
    if foil is not None:
        f = f - logits.float().gather(1, foil[:, None])[:, 0]
    return f


def _gxi_scores(method: Any, lm: LoadedModel, ex: _Example, foil: torch.Tensor | None) -> np.ndarray:
    """All steps of an example as one batch: row t reads decoder position t."""
    from ..capturing.adapters import first_block
    from ..methods.gradients import _block_input_leaf

    model = lm.model
    N = ex.N
    src = ex.src_ids[None].repeat(N, 1)
    dec = ex.dec_ids[:N][None].repeat(N, 1)  # positions 0..N-1 suffice: row t reads position t (causal)
    rows = torch.arange(N, device=dec.device)
    with torch.enable_grad():
        if method.input == "word_embeddings":
            emb = model.get_input_embeddings()
            e_s = emb(src).detach().requires_grad_(True)
            e_d = emb(dec).detach().requires_grad_(True)
            out = model(inputs_embeds=e_s, decoder_inputs_embeds=e_d)
        else:
            store_s: dict[str, torch.Tensor] = {}
            store_d: dict[str, torch.Tensor] = {}
            with _block_input_leaf(first_block(model), store_s), _block_input_leaf(first_block(model, "decoder"), store_d):
                out = model(input_ids=src, decoder_input_ids=dec)
            e_s, e_d = store_s["e"], store_d["e"]
        f = _objective(out.logits[rows, rows], ex.targets.to(dec.device), foil)
        g_s, g_d = torch.autograd.grad(f.sum(), [e_s, e_d])
    ps, pd_ = g_s * e_s, g_d * e_d
    s_src = ps.sum(-1) if method.aggregation == "sum" else ps.norm(dim=-1)  # (N, n_src)
    s_dec = pd_.sum(-1) if method.aggregation == "sum" else pd_.norm(dim=-1)  # (N, N)
    out_m = np.full((N, ex.n_src + N), np.nan)
    out_m[:, : ex.n_src] = s_src.detach().double().cpu().numpy()
    for t in range(N):
        out_m[t, ex.n_src: ex.n_src + t] = s_dec[t, 1: t + 1].detach().double().cpu().numpy()
    return out_m


def _ig_scores(method: Any, lm: LoadedModel, ex: _Example, foil: torch.Tensor | None) -> np.ndarray:
    from captum.attr import IntegratedGradients

    from ..methods.gradients import pad_token_id

    model = lm.model
    emb = model.get_input_embeddings()
    N = ex.N
    src = ex.src_ids[None].repeat(N, 1)
    dec = ex.dec_ids[:N][None].repeat(N, 1)
    pad = pad_token_id(lm)
    base_dec = dec.clone()
    base_dec[:, 1:] = pad
    with torch.no_grad():
        e_s, e_d = emb(src), emb(dec)
        b_s, b_d = emb(torch.full_like(src, pad)), emb(base_dec)
    targets = ex.targets.to(dec.device)

    def forward(es, ed, rows, tg, fo):
        logits = model(inputs_embeds=es, decoder_inputs_embeds=ed).logits
        return _objective(logits[torch.arange(es.shape[0], device=es.device), rows], tg, fo)

    rows = torch.arange(N, device=dec.device)
    fo = foil.to(dec.device) if foil is not None else None
    with torch.enable_grad():
        ig = IntegratedGradients(forward)
        a_s, a_d = ig.attribute((e_s, e_d), baselines=(b_s, b_d), additional_forward_args=(rows, targets, fo),
                                n_steps=int(method.n_steps), internal_batch_size=int(method.internal_batch_size))
    s_src, s_dec = a_s.sum(-1), a_d.sum(-1)
    out = np.full((N, ex.n_src + N), np.nan)
    out[:, : ex.n_src] = s_src.detach().double().cpu().numpy()
    for t in range(N):
        out[t, ex.n_src: ex.n_src + t] = s_dec[t, 1: t + 1].detach().double().cpu().numpy()
    return out


@torch.no_grad()
def _occlusion_scores(method: Any, lm: LoadedModel, ex: _Example, foil: torch.Tensor | None) -> np.ndarray:
    from ..methods.gradients import special_token_ids

    model = lm.model
    N = ex.N
    special = special_token_ids(lm)
    repl = method.replacement_id(lm)
    occl_src = [j for j in range(ex.n_src) if method.occlude_special or int(ex.src_ids[j]) not in special]
    occl_dec = [s for s in range(N - 1) if method.occlude_special or int(ex.dec_ids[s + 1]) not in special]
    srcs = ex.src_ids[None].repeat(1 + len(occl_src) + len(occl_dec), 1)
    decs = ex.dec_ids[:N][None].repeat(srcs.shape[0], 1)
    for r, j in enumerate(occl_src, start=1):
        srcs[r, j] = repl
    for r, s in enumerate(occl_dec, start=1 + len(occl_src)):
        decs[r, s + 1] = repl
    vals = []
    tg = ex.targets.to(decs.device)
    for a in range(0, srcs.shape[0], int(method.batch_size)):
        lp = torch.log_softmax(model(input_ids=srcs[a: a + int(method.batch_size)],
                                     decoder_input_ids=decs[a: a + int(method.batch_size)]).logits.float(), -1)  # (b, N, V)
        y = lp.gather(-1, tg[None, :, None].expand(lp.shape[0], N, 1))[..., 0]  # (b, N)
        if foil is None:
            vals.append(y.exp())
        else:
            c = lp.gather(-1, foil.to(lp.device)[None, :, None].expand(lp.shape[0], N, 1))[..., 0]
            vals.append(y - c)
    v = torch.cat(vals).double().cpu()  # (rows, N)
    out = np.full((N, ex.n_src + N), np.nan)
    out[:, : ex.n_src] = 0.0
    for r, j in enumerate(occl_src, start=1):
        out[:, j] = (v[0] - v[r]).numpy()
    for t in range(N):
        out[t, ex.n_src: ex.n_src + t] = 0.0
    for r, s in enumerate(occl_dec, start=1 + len(occl_src)):
        for t in range(s + 1, N):
            out[t, ex.n_src + s] = float(v[0, t] - v[r, t])
    return out


def _random_scores(method: Any, ex: _Example) -> np.ndarray:
    out = np.full((ex.N, ex.n_src + ex.N), np.nan)
    src = [int(x) for x in ex.src_ids.tolist()]
    dec = [int(x) for x in ex.dec_ids.tolist()]
    for t in range(ex.N):
        seq = src + dec[: t + 1]
        rng = np.random.default_rng(np.random.SeedSequence([int(method.seed), len(seq), *seq]))
        out[t, : ex.n_src + t] = rng.random(ex.n_src + t)
    return out


def encoder_decoder_scores(method: Any, lm: LoadedModel, gen: Any, example: int,
                           foil: torch.Tensor | None = None) -> np.ndarray:
    """(N_i, n_src + N_i) scores of one method for every generated token of ``example``, NaN where
    a column is not visible (see the module docstring). ``foil``: (N_i,) contrast token ids (>= 0)."""
    from ..capturing import UnsupportedArchitectureError

    ex = _Example(gen, example)
    name = method.name
    if name in ("raw_attention", "effective_attention", "norm"):
        out = _attention_scores(method, gen, ex)
        for t in range(ex.N):
            out[t, ex.n_src + t:] = np.nan
        return out
    if name == "rollout":
        out = _rollout_scores(method, gen, ex)
        for t in range(ex.N):
            out[t, ex.n_src + t:] = np.nan
        return out
    if name == "gradient_x_input":
        return _gxi_scores(method, lm, ex, foil)
    if name == "integrated_gradients":
        return _ig_scores(method, lm, ex, foil)
    if name == "occlusion":
        return _occlusion_scores(method, lm, ex, foil)
    if name == "random":
        return _random_scores(method, ex)
    raise UnsupportedArchitectureError(
        f"method {name!r} has no per-token form for encoder-decoder generations; ones that do: "
        f"{', '.join(ENCODER_DECODER_METHODS)}")

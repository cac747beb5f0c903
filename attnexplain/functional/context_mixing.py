"""Context mixing: how much each input token contributes to a representation once the residual
connection, the layer normalisation and the value/output projections are counted.

Pure tensor functions; the model knowledge (which module is which LayerNorm, where the residual
enters) lives in :mod:`attnexplain.capturing.mixing` and the adapter table.

Notation for one post-LN block (BERT family), one example, ``n`` tokens, width ``d``::

    x_j                                   layer input (residual stream) at token j        (n, d)
    T^h_j = (x_j W_V^h + b_V^h) W_O^h     head h's transformed value of token j           (H, n, d)
    z_i = sum_h sum_j A^h_ij T^h_j + b_O + x_i                    (input of the first LayerNorm)
    LN(z) = gamma * (z - mean(z)) / s(z) + beta,    s(z) = sqrt(var(z) + eps)

Because ``mean`` is linear and ``s`` is computed once from the whole sum ``z_i``, the LayerNorm
is linear in the parts of ``z_i`` (Kobayashi et al. 2021)::

    LN(z_i) = sum_j g_i(u_ij) + g_i(b_O) + beta,   g_i(v) = gamma * (v - mean(v)) / s(z_i)
    u_ij    = sum_h A^h_ij T^h_j + [i = j] x_i                  (token j's part of z_i)

Papers:

* G. Kobayashi, T. Kuribayashi, S. Yokoi, K. Inui, "Incorporating Residual and Normalization
  Layers into Analysis of Masked Language Models", EMNLP 2021 (:func:`attention_residual_vectors`,
  :func:`layer_norm_parts`, :func:`norm_residual_ln`).
* A. Modarressi, M. Fayyaz, Y. Yaghoobzadeh, M. T. Pilehvar, "GlobEnc: Quantifying Global Token
  Attribution by Incorporating the Whole Encoder Layer in Transformers", NAACL 2022
  (:func:`globenc_layer`, :func:`contribution_rollout`).
* J. Ferrando, G. I. Gallego, M. R. Costa-jussa, "Measuring the Mixing of Contextual Information
  in the Transformer", EMNLP 2022 (:func:`alti_layer`, :func:`contribution_rollout`).
* H. Mohebbi, W. Zuidema, G. Chrupala, A. Alishahi, "Quantifying Context Mixing in Transformers",
  EACL 2023 (:func:`value_zeroing_scores`).
"""

from __future__ import annotations

import torch

__all__ = [
    "attention_residual_vectors",
    "layer_norm_parts",
    "attention_layer_norm_parts",
    "norm_residual_ln",
    "alti_layer",
    "globenc_layer",
    "layer_norm_maps",
    "mixed_part_norms",
    "globenc_contributions",
    "normalize_rows",
    "contribution_rollout",
    "value_zeroing_scores",
]


def _check(x: torch.Tensor, name: str, dims: int, shape: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(x).__name__}")
    if x.dim() < dims:
        raise ValueError(f"{name} must be {shape} (at least {dims} dims), got shape {tuple(x.shape)}")


def attention_residual_vectors(A: torch.Tensor, T: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Token ``j``'s part of position ``i``'s attention-block sum (Kobayashi et al. 2021).

    Formula: ``u_ij = sum_h A^h_ij T^h_j + [i = j] x_i`` (``x`` None: no residual term, the
    whole-layer vector of norm-based attention).

    Args:
        A: ``(..., H, n, m)`` attention probabilities.
        T: ``(..., H, m, d)`` transformed values ``(x_j W_V^h + b_V^h) W_O^h``.
        x: ``(..., n, d)`` layer input (the residual), self-attention only (``n == m``).

    Returns:
        ``(..., n, m, d)``. ``sum_j u_ij + b_O`` is the input of the block's LayerNorm.
    """
    _check(A, "A", 3, "(..., H, n, m)")
    _check(T, "T", 3, "(..., H, m, d)")
    if A.shape[-1] != T.shape[-2] or A.shape[-3] != T.shape[-3]:
        raise ValueError(f"A {tuple(A.shape)} and T {tuple(T.shape)} disagree on heads or keys")
    T = T.to(A.dtype) if T.dtype != A.dtype else T
    u = torch.einsum("...hij,...hjd->...ijd", A, T)
    if x is not None:
        n, m = A.shape[-2], A.shape[-1]
        if n != m:
            raise ValueError(f"the residual term needs self-attention (n == m), got A of shape {tuple(A.shape)}")
        if x.shape[-2:] != (n, T.shape[-1]):
            raise ValueError(f"x must be (..., n, d) = (..., {n}, {T.shape[-1]}), got {tuple(x.shape)}")
        u = u.clone()
        u.diagonal(dim1=-3, dim2=-2).add_(x.to(u.dtype).transpose(-1, -2))
    return u


def layer_norm_parts(vectors: torch.Tensor, norm_input: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The LayerNorm applied to each part of a sum, with the scale of the whole sum.

    Formula: ``g_i(v) = gamma * (v - mean(v)) / sqrt(var(z_i) + eps)`` for every part ``v`` of
    position ``i``, where ``z_i`` is the LayerNorm's actual input (``var`` biased, as
    ``nn.LayerNorm``). ``sum_j g_i(u_ij) + beta = LN(z_i)`` when ``sum_j u_ij = z_i``.

    Args:
        vectors: ``(..., n, m, d)`` the parts ``u_ij`` of each position's sum.
        norm_input: ``(..., n, d)`` the LayerNorm's input ``z_i`` (gives the scale ``s(z_i)``).
        weight: ``(d,)`` gamma (None: ones).
        eps: the LayerNorm's epsilon.

    Returns:
        ``(..., n, m, d)``.
    """
    _check(vectors, "vectors", 3, "(..., n, m, d)")
    z = norm_input.to(vectors.dtype)
    s = torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + float(eps))  # (..., n, 1)
    out = (vectors - vectors.mean(-1, keepdim=True)) / s.unsqueeze(-2)
    if weight is not None:
        out = out * weight.to(vectors.dtype)
    return out


def attention_layer_norm_parts(
    A: torch.Tensor, T: torch.Tensor, x: torch.Tensor, norm_input: torch.Tensor, weight: torch.Tensor | None, eps: float,
    *, prepared: bool = False,
) -> torch.Tensor:
    """``layer_norm_parts(attention_residual_vectors(A, T, x), norm_input, weight, eps)`` computed
    in fewer passes over the ``(..., n, n, d)`` result: centring and ``gamma`` are applied to ``T``
    and ``x`` (linear, small) before the head sum, then one division by ``s(z_i)``.

    ``prepared=True``: ``T`` is already centred over ``d`` and multiplied by ``weight`` (e.g.
    ``V @ Wc`` with the output projection's columns centred and scaled once per layer).

    Shapes as in :func:`attention_residual_vectors`; returns ``(..., n, n, d)``.
    """
    _check(A, "A", 3, "(..., H, n, n)")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"the residual term needs self-attention (n == m), got A of shape {tuple(A.shape)}")
    dt = A.dtype
    w = None if weight is None else weight.to(dt)
    Tc = T.to(dt) if prepared else T.to(dt) - T.to(dt).mean(-1, keepdim=True)
    xc = x.to(dt) - x.to(dt).mean(-1, keepdim=True)
    if w is not None:
        xc = xc * w
        if not prepared:
            Tc = Tc * w
    z = norm_input.to(dt)
    s = torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + float(eps))  # (..., n, 1)
    parts = torch.einsum("...hij,...hjd->...ijd", A, Tc)
    parts.diagonal(dim1=-3, dim2=-2).add_(xc.transpose(-1, -2))
    parts.div_(s.unsqueeze(-2))
    return parts


def norm_residual_ln(
    A: torch.Tensor, T: torch.Tensor, x: torch.Tensor, norm_input: torch.Tensor, weight: torch.Tensor | None, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention + residual + LayerNorm in the norm-based analysis (Kobayashi et al., EMNLP 2021).

    Formula: ``N_ij = || g_i( sum_h A^h_ij T^h_j + [i = j] x_i ) ||_2`` (see the module
    docstring for ``g_i``).

    Args:
        A ``(..., H, n, n)``, T ``(..., H, n, d)``, x ``(..., n, d)``: as in
        :func:`attention_residual_vectors`; norm_input ``(..., n, d)``, weight ``(d,)``, eps: the
        first LayerNorm's input and parameters.

    Returns:
        ``(N, parts)``: ``N`` ``(..., n, n)`` non-negative; ``parts`` ``(..., n, n, d)`` the vectors
        ``g_i(u_ij)`` (``sum_j parts_ij + g_i(b_O) + beta`` is the LayerNorm's output).
    """
    parts = attention_layer_norm_parts(A, T, x, norm_input, weight, eps)
    return torch.linalg.vector_norm(parts, dim=-1), parts


def alti_layer(parts: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """ALTI's per-layer contributions (Ferrando et al., EMNLP 2022).

    Formula, with ``T_i(x_j)`` = ``parts[i, j]`` the vector token ``j`` adds to position ``i``'s
    output ``y_i`` (including the residual for ``j = i``)::

        c_ij = max(0, ||y_i||_1 - ||y_i - T_i(x_j)||_1),     C_ij = c_ij / sum_k c_ik

    (rows whose ``c`` are all 0 stay 0). ``y_i`` is the actual output (bias terms included), as in
    the authors' code.

    Args:
        parts: ``(..., n, m, d)``; output: ``(..., n, d)``.

    Returns:
        ``(..., n, m)``, non-negative, rows summing to 1.
    """
    _check(parts, "parts", 3, "(..., n, m, d)")
    y = output.to(parts.dtype)
    dist = (y.unsqueeze(-2) - parts).abs_().sum(-1)  # (..., n, m)
    c = (y.abs().sum(-1, keepdim=True) - dist).clamp_min(0)
    return normalize_rows(c)


def globenc_layer(parts: torch.Tensor, norm2_input: torch.Tensor, weight2: torch.Tensor | None, eps2: float) -> torch.Tensor:
    """GlobEnc's per-layer contributions (Modarressi et al., NAACL 2022).

    The parts ``g_i(u_ij)`` after the first LayerNorm are carried through the second residual
    connection (the feed-forward network, non-linear, is left out) into the second LayerNorm,
    scaled with the standard deviation of its actual input ``z2_i = h_i + FFN(h_i)``::

        N2_ij = || gamma2 * (p_ij - mean(p_ij)) / sqrt(var(z2_i) + eps2) ||_2,   p_ij = g_i(u_ij)
        C_ij  = N2_ij / sum_k N2_ik

    Args:
        parts: ``(..., n, n, d)`` from :func:`norm_residual_ln`; norm2_input ``(..., n, d)``,
        weight2 ``(d,)``, eps2: the second LayerNorm's input and parameters.

    Returns:
        ``(..., n, n)``, non-negative, rows summing to 1.
    """
    p2 = layer_norm_parts(parts, norm2_input, weight2, eps2)
    return normalize_rows(torch.linalg.vector_norm(p2, dim=-1))


def layer_norm_maps(v: torch.Tensor, *weights: torch.Tensor | None) -> torch.Tensor:
    """The linear part of one or more LayerNorms in a row, without their scale: for each weight
    in order, ``v <- gamma * (v - mean_d(v))`` (``None``: no gamma). Applied to the last dim.

    ``layer_norm_maps(v, g1) / s1`` is ``g_i(v)`` of :func:`layer_norm_parts`;
    ``layer_norm_maps(v, g1, g2) / (s1 s2)`` is a part carried through both LayerNorms of a block
    (GlobEnc). Linear in ``v``, so it can be applied to ``W_O``'s rows instead of to every
    ``(i, j)`` vector.
    """
    for w in weights:
        v = v - v.mean(-1, keepdim=True)
        if w is not None:
            v = v * w.to(v.dtype)
    return v


def mixed_part_norms(A: torch.Tensor, Q: torch.Tensor, r: torch.Tensor | None = None,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
    """Norms of the head-mixed parts ``|| sum_h A^h_ij Q^h_j + [i = j] r_i ||_2 / scale_i``
    without building the ``(n, m, d)`` vectors.

    Through each key's Gram matrix of heads ``G_j[h, g] = <Q^h_j, Q^g_j>`` (``H x H``)::

        ||.||^2 = sum_{h,g} A^h_ij A^g_ij G_j[h, g] + [i = j] (2 sum_h A^h_ii <Q^h_i, r_i> + ||r_i||^2)

    ``O(m H^2 d + n m H^2)`` instead of ``O(n m H d)``. The Gram matrices and the quadratic form
    are evaluated in float64 whatever the input dtype, so the result is as accurate as the norm of
    the explicitly summed vector in the input dtype (a squared norm in float32 would lose digits
    where heads cancel).

    Args:
        A: ``(..., H, n, m)`` attention probabilities.
        Q: ``(..., H, m, d)`` each head's vector per key (e.g. ``V_h W_O^h`` with any linear map
            applied to ``W_O``'s rows, see :func:`layer_norm_maps`).
        r: ``(..., n, d)`` the extra vector on the diagonal (the mapped residual; self-attention,
            ``n == m``), or None.
        scale: ``(..., n)`` positive divisor per query position, or None.

    Returns:
        ``(..., n, m)`` float64, non-negative.
    """
    _check(A, "A", 3, "(..., H, n, m)")
    _check(Q, "Q", 3, "(..., H, m, d)")
    if A.shape[-1] != Q.shape[-2] or A.shape[-3] != Q.shape[-3]:
        raise ValueError(f"A {tuple(A.shape)} and Q {tuple(Q.shape)} disagree on heads or keys")
    f64 = torch.float64
    lead, H, m, d = Q.shape[:-3], Q.shape[-3], Q.shape[-2], Q.shape[-1]
    if r is not None and (A.shape[-1] != A.shape[-2] or r.shape[-2:] != (A.shape[-2], d)):
        raise ValueError(f"r must be (..., n, d) with n == m, got r {tuple(r.shape)} for A {tuple(A.shape)}")
    # one pass: float64 and the key-major layout the batched product wants (contiguous, so matmul
    # does not copy again); r rides along as an extra row, so one Gram matrix also gives
    # <Q^h_i, r_i> and ||r_i||^2
    Qk = torch.empty((*lead, m, H + (r is not None), d), dtype=f64, device=Q.device)
    Qk[..., :H, :].copy_(Q.transpose(-3, -2))
    if r is not None:
        Qk[..., H, :].copy_(r)
    G = Qk @ Qk.transpose(-1, -2)  # (..., m, H(+1), H(+1))
    P = torch.empty((*A.shape[:-3], A.shape[-1], A.shape[-2], H), dtype=f64, device=A.device)
    P.copy_(A.permute(*range(A.dim() - 3), -1, -2, -3))  # (..., m, n, H): P[j, i, h] = A^h_ij
    sq = (P @ G[..., :H, :H]).mul_(P).sum(-1).transpose(-1, -2)  # (..., n, m)
    if r is not None:
        Ad = P.diagonal(dim1=-3, dim2=-2)  # (..., H, n): A^h_ii
        extra = 2 * (Ad * G[..., :H, H].transpose(-1, -2)).sum(-2) + G[..., H, H]
        sq = sq.clone()
        sq.diagonal(dim1=-2, dim2=-1).add_(extra)
    N = sq.clamp_min_(0).sqrt_()
    if scale is not None:
        N = N / scale.to(f64).unsqueeze(-1)
    return N


def globenc_contributions(
    A: torch.Tensor, T: torch.Tensor, x: torch.Tensor, norm_input: torch.Tensor, weight: torch.Tensor | None, eps: float,
    norm2_input: torch.Tensor, weight2: torch.Tensor | None, eps2: float, *, prepared: bool = False,
) -> torch.Tensor:
    """``globenc_layer(attention_layer_norm_parts(A, T, x, norm_input, weight, eps), norm2_input,
    weight2, eps2)`` without the ``(..., n, n, d)`` parts (same formula, see :func:`globenc_layer`).

    Both LayerNorms are linear in the parts, so ``N2_ij = || M(u_ij) || / (s1_i s2_i)`` with
    ``M = layer_norm_maps(., gamma1, gamma2)`` applied once to ``T`` (or, ``prepared=True``, already
    applied: e.g. ``V @ M(W_O)``) and to the residual ``x``; the norms come from
    :func:`mixed_part_norms`.

    Args:
        A ``(..., H, n, n)``, T ``(..., H, n, d)``, x ``(..., n, d)``: as in
        :func:`attention_residual_vectors`; norm_input / weight / eps and norm2_input / weight2 /
        eps2: the first and second LayerNorm's actual input ``(..., n, d)`` and parameters.

    Returns:
        ``(..., n, n)`` float64, non-negative, rows summing to 1.
    """
    _check(A, "A", 3, "(..., H, n, n)")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"the residual term needs self-attention (n == m), got A of shape {tuple(A.shape)}")
    dt = A.dtype
    Q = T.to(dt) if prepared else layer_norm_maps(T.to(dt), weight, weight2)
    r = layer_norm_maps(x.to(dt), weight, weight2)
    s1 = torch.sqrt(norm_input.to(dt).var(-1, unbiased=False) + float(eps))
    s2 = torch.sqrt(norm2_input.to(dt).var(-1, unbiased=False) + float(eps2))
    return normalize_rows(mixed_part_norms(A, Q, r, s1 * s2))


def normalize_rows(C: torch.Tensor) -> torch.Tensor:
    """``C_ij / sum_k C_ik``; rows summing to 0 stay 0."""
    s = C.sum(-1, keepdim=True)
    return torch.where(s > 0, C / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(C))


def contribution_rollout(C: torch.Tensor) -> torch.Tensor:
    """Aggregate per-layer token-to-token contributions through the layers (rollout without the
    extra identity: the residual is already inside the contributions).

    Formula: ``R(1) = C(1)``, ``R(l) = C(l) @ R(l - 1)``. Used by GlobEnc, ALTI and value zeroing
    (global view).

    Args:
        C: ``(..., L, n, n)`` per-layer contributions, layer 0 first.

    Returns:
        ``(..., L, n, n)``: ``R[..., l]`` is the contribution of input token ``j`` to position
        ``i`` after layer ``l``. Row-stochastic when every ``C(l)`` is.
    """
    _check(C, "C", 3, "(..., L, n, n)")
    if C.shape[-1] != C.shape[-2]:
        raise ValueError(f"contribution_rollout needs square per-layer matrices, got {tuple(C.shape[-2:])}")
    out = [C[..., 0, :, :]]
    for layer in range(1, C.shape[-3]):
        out.append(C[..., layer, :, :] @ out[-1])
    return torch.stack(out, dim=-3)


def value_zeroing_scores(original: torch.Tensor, altered: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Value zeroing's per-layer context-mixing matrix (Mohebbi et al., EACL 2023).

    Formula, with ``h_i`` a layer's output at position ``i`` and ``h_i^{-j}`` the same layer's
    output when token ``j``'s value vectors are zeroed in every head::

        c_ij = 1 - cos(h_i, h_i^{-j}),      C_ij = c_ij / sum_k c_ik   (``normalize``)

    Args:
        original: ``(..., n, d)`` the layer's outputs.
        altered: ``(..., m, n, d)``: ``altered[..., j, i]`` = ``h_i^{-j}`` (one run per zeroed token).

    Returns:
        ``(..., n, m)`` ``C[i, j]``, non-negative.
    """
    _check(altered, "altered", 3, "(..., m, n, d)")
    # 1 - cos(a, b) = ||a/|a| - b/|b|||^2 / 2, evaluated in the second form: no cancellation when the
    # outputs barely move (1 - cos loses all digits below float eps there)
    a = torch.nn.functional.normalize(original.to(altered.dtype), dim=-1).unsqueeze(-3)
    b = torch.nn.functional.normalize(altered, dim=-1)
    c = (0.5 * (a - b).square().sum(-1)).transpose(-1, -2)  # (..., n, m)
    return normalize_rows(c) if normalize else c

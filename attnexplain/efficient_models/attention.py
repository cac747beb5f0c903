"""Five self-attention modules to train from scratch and explain with the same capture tools.

All share the constructor ``(d_model, n_heads, *, causal=False, max_len=None, ...)`` and
``forward(x (B, n, d), key_padding_mask (B, n) bool, True = real token, or None) -> (B, n, d)``.
Each computes its token-mixing matrix explicitly (no fused kernel, so that timings compare like
with like) and hands it to :func:`attnexplain.capturing.report_attention` together with the
per-head values, such that (except for element-wise attention, see there)

    output = concat_h(M_h @ V_h) @ W_O^T + b_O          M_h: (n, n), V_h: (n, d_h)

with ``W_O``/``b_O`` the module's ``out_proj`` (an ``nn.Linear``). Reporting is a no-op unless
a capture session is running and the module was marked an attention site (the classifier does
this: ``mark_attention_site(module, layer=i, out_proj=module.out_proj)``).

Parameter counts (every linear map has a bias; d = d_model, l = max_len):

* ``StandardAttention``: 4 d^2 + 4 d (W_Q, W_K, W_V, W_O)
* ``OptimisedAttention``: 3 d^2 + 3 d (W_Q, W_K, W_O; no W_V: -25 %)
* ``EfficientAttention``: 2 d^2 + 2 d (W_Q, W_O; no W_V, no W_K: -50 %)
* ``SuperAttention``: 2 d^2 + 2 d + l^2 (Efficient + W_A, one l x l matrix shared by the heads)
* ``ElementwiseAttention``: 4 d^2 + 4 d (W_Q, W_K, W_V, W_O; no extra parameters)

:func:`attention_param_formula` returns these numbers.

Padding rows: a query whose allowed key set is empty (only possible for padding queries) gets
an all-zero mixing row, hence output ``b_O``; such rows are never read by the classifier.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._registry import Registry
from ..capturing.attention import active_session
from ..capturing.sites import report_attention

__all__ = [
    "StandardAttention",
    "OptimisedAttention",
    "EfficientAttention",
    "SuperAttention",
    "ElementwiseAttention",
    "ATTENTION_MECHANISMS",
    "make_attention",
    "attention_param_formula",
    "count_parameters",
]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def attention_param_formula(attention: str, d_model: int, max_len: int | None = None) -> int:
    """Parameter count of one attention module as the formula in the module docstring states.

    Biases included (every linear map has one). ``max_len`` is needed for ``"super"`` only.
    """
    d = d_model
    if attention in ("standard", "elementwise"):
        return 4 * d * d + 4 * d
    if attention == "optimised":
        return 3 * d * d + 3 * d
    if attention == "efficient":
        return 2 * d * d + 2 * d
    if attention == "super":
        if max_len is None:
            raise ValueError("the super-attention parameter count needs max_len (W_A is max_len x max_len)")
        return 2 * d * d + 2 * d + max_len * max_len
    ATTENTION_MECHANISMS[attention]  # UnknownNameError listing the mechanisms
    raise AssertionError(f"no parameter formula for the attention mechanism {attention!r}")


class _AttentionBase(nn.Module):
    """Shape checks, masks and head splitting shared by the modules."""

    def __init__(self, d_model: int, n_heads: int, *, causal: bool = False, max_len: int | None = None) -> None:
        super().__init__()
        if not isinstance(d_model, int) or not isinstance(n_heads, int) or d_model < 1 or n_heads < 1:
            raise ValueError(f"d_model and n_heads must be positive integers, got {d_model!r} and {n_heads!r}")
        if d_model % n_heads:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by n_heads ({n_heads}); "
                f"e.g. d_model={n_heads * max(1, round(d_model / n_heads))}"
            )
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            raise ValueError(f"max_len must be a positive integer or None, got {max_len!r}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.causal = bool(causal)
        self.max_len = max_len

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}, max_len={self.max_len}"

    # -- helpers ----------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (batch, seq, d_model={self.d_model}), "
                f"got {tuple(x.shape)}"
            )
        if self.max_len is not None and x.shape[1] > self.max_len:
            raise ValueError(
                f"input has {x.shape[1]} tokens but {type(self).__name__} was built with "
                f"max_len={self.max_len}; truncate the input or rebuild with a larger max_len"
            )
        if key_padding_mask is not None:
            if key_padding_mask.shape != x.shape[:2]:
                raise ValueError(
                    f"key_padding_mask must have shape (batch, seq) = {tuple(x.shape[:2])}, "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            if key_padding_mask.dtype != torch.bool:
                raise ValueError(f"key_padding_mask must be bool (True = real token), got {key_padding_mask.dtype}")

    def _allowed(self, key_padding_mask: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        """(B or 1, 1, n, n) bool: which key j query i may read; None = all."""
        allowed = None
        if self.causal:
            allowed = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]
        if key_padding_mask is not None:
            kp = key_padding_mask[:, None, None, :]
            allowed = kp if allowed is None else allowed & kp
        return allowed

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, n, d) -> (B, H, n, d_h)."""
        b, n, _ = t.shape
        return t.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)

    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        """(B, H, n, d_h) -> (B, n, d)."""
        b, h, n, dh = t.shape
        return t.transpose(1, 2).reshape(b, n, h * dh)

    @staticmethod
    def _softmax(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        if allowed is None:
            return torch.softmax(scores, dim=-1)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        # rows with no allowed key would be uniform: zero them (padding queries only)
        return torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)

    def _capturing(self) -> bool:
        return active_session() is not None and getattr(self, "_attnexplain_site", None) is not None


class StandardAttention(_AttentionBase):
    """Multi-head softmax attention (Vaswani et al., 2017), the control.

    Per head h: ``A_h = softmax(Q_h K_h^T / sqrt(d_h))`` with ``Q = X W_Q + b_Q``,
    ``K = X W_K + b_K``, ``V = X W_V + b_V``; output ``concat_h(A_h V_h) W_O + b_O``.
    Parameters: 4 d^2 + 4 d. Captured: ``A`` (row-stochastic) and ``V_h``.
    """

    def __init__(self, d_model: int, n_heads: int, *, causal: bool = False, max_len: int | None = None) -> None:
        super().__init__(d_model, n_heads, causal=causal, max_len=max_len)
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, key_padding_mask)
        q, k, v = self._split(self.w_q(x)), self._split(self.w_k(x)), self._split(self.w_v(x))
        attn = self._softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim),
                             self._allowed(key_padding_mask, x.shape[1], x.device))
        report_attention(self, attn, v)
        return self.out_proj(self._merge(attn @ v))


class OptimisedAttention(_AttentionBase):
    """Optimised attention (Hosseini & Hosseini 2024, "You Need to Pay Better Attention").

    Standard attention without W_V: head h uses its slice of the input,
    ``X_h = X[:, h d_h : (h+1) d_h]``, as values:
    ``A_h = softmax(Q_h K_h^T / sqrt(d_h))``, output ``concat_h(A_h X_h) W_O + b_O``.
    Parameters: 3 d^2 + 3 d (W_Q, W_K, W_O with biases), 25 % fewer than standard.
    Captured: ``A`` (row-stochastic) and ``X_h``.
    """

    def __init__(self, d_model: int, n_heads: int, *, causal: bool = False, max_len: int | None = None) -> None:
        super().__init__(d_model, n_heads, causal=causal, max_len=max_len)
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, key_padding_mask)
        q, k, v = self._split(self.w_q(x)), self._split(self.w_k(x)), self._split(x)
        attn = self._softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim),
                             self._allowed(key_padding_mask, x.shape[1], x.device))
        report_attention(self, attn, v)
        return self.out_proj(self._merge(attn @ v))


class EfficientAttention(_AttentionBase):
    """Efficient attention (Hosseini & Hosseini 2024): Optimised attention without W_K either.

    Head h: ``A_h = softmax((X W_Q^h + b_Q^h) X_h^T / sqrt(d_h))`` (keys = values = the input
    slice ``X_h``), output ``concat_h(A_h X_h) W_O + b_O``.
    Parameters: 2 d^2 + 2 d (W_Q, W_O with biases), 50 % fewer than standard.
    Captured: ``A`` (row-stochastic) and ``X_h``.

    (Not the "efficient attention" of Naim & Asher in ``methods.md``, which is an explanation.)
    """

    def __init__(self, d_model: int, n_heads: int, *, causal: bool = False, max_len: int | None = None) -> None:
        super().__init__(d_model, n_heads, causal=causal, max_len=max_len)
        self.w_q = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _probs(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        q, xs = self._split(self.w_q(x)), self._split(x)
        attn = self._softmax(q @ xs.transpose(-1, -2) / math.sqrt(self.head_dim),
                             self._allowed(key_padding_mask, x.shape[1], x.device))
        return attn, xs

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, key_padding_mask)
        attn, xs = self._probs(x, key_padding_mask)
        report_attention(self, attn, xs)
        return self.out_proj(self._merge(attn @ xs))


class SuperAttention(EfficientAttention):
    """Super attention (Hosseini & Hosseini 2024): Efficient attention plus a learned l x l
    matrix ``W_A`` (l = ``max_len``, one matrix shared by all heads) applied to the values from
    the left:

        head h:  M_h = A_h W_A,     output = concat_h(M_h X_h) W_O + b_O

    with ``A_h`` the efficient-attention probabilities. **The token mixing M_h is not
    row-stochastic** (rows need not sum to 1, entries can be negative): the capture reports
    ``M_h`` as the matrix, so tools that assume probabilities must not renormalise it.

    * ``max_len`` is required (fixed context length). Inputs with n < max_len use the top-left
      n x n block of ``W_A``; inputs longer than max_len raise ``ValueError``.
    * Padding keys: the columns of ``W_A`` of padding positions are zeroed, so padding tokens
      never reach real ones (otherwise ``W_A`` would mix them back in).
    * ``causal=True``: ``W_A`` is used lower-triangular (``tril``), so ``M_h = A_h W_A`` stays
      lower-triangular; the upper triangle is then unused (but still counted as parameters).
    * ``W_A`` starts as the identity, i.e. the module starts as Efficient attention.

    Parameters: 2 d^2 + 2 d + l^2.
    """

    def __init__(self, d_model: int, n_heads: int, *, causal: bool = False, max_len: int | None = None) -> None:
        if max_len is None:
            raise ValueError("SuperAttention needs max_len: W_A is a learned max_len x max_len matrix")
        super().__init__(d_model, n_heads, causal=causal, max_len=max_len)
        self.w_a = nn.Parameter(torch.eye(max_len))

    def mixing_weight(self, n: int, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The (B or 1, 1, n, n) block of ``W_A`` used for an input of n tokens (masks applied)."""
        if n > self.max_len:
            raise ValueError(
                f"input has {n} tokens but SuperAttention was built with max_len={self.max_len}; "
                f"truncate the input or rebuild with a larger max_len"
            )
        w = self.w_a[:n, :n]
        if self.causal:
            w = w.tril()
        w = w[None, None]
        if key_padding_mask is not None:
            w = w * key_padding_mask[:, None, None, :].to(w.dtype)
        return w

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, key_padding_mask)
        attn, xs = self._probs(x, key_padding_mask)
        w = self.mixing_weight(x.shape[1], key_padding_mask)
        if self._capturing():
            mixing = attn @ w
            report_attention(self, mixing, xs)
            heads = mixing @ xs
        else:
            heads = attn @ (w @ xs)  # O(n^2 d_h) instead of O(n^3)
        return self.out_proj(self._merge(heads))


class ElementwiseAttention(_AttentionBase):
    """Element-wise attention (Feng 2025, "Element-wise Attention Is All You Need").

    ``Q, K, V = X W_Q + b_Q, X W_K + b_K, X W_V + b_V`` (n x D, D = d_model). Every channel c
    is its own attention over the sequence, weighted by the negative squared distance:

        exp(-(q_ic - k_jc)^2) = exp(-q_ic^2) exp(-k_jc^2) exp(2 q_ic k_jc)

    ``exp(-q_ic^2)`` cancels in the normalisation, and ``exp(2 q k)`` is replaced by its
    degree-t Taylor polynomial ``P_t(y) = sum_{p<=t} y^p / p!`` at ``y = 2 q_ic k_jc``:

        A^(c)_ij = m_ij exp(-k_jc^2) P_t(2 q_ic k_jc) / sum_j' (same)      (m: causal/padding mask)
        o_ic     = sum_j A^(c)_ij v_jc,   output = o W_O + b_O

    (``methods.md`` writes ``P_t(q k)``; the factor 2 comes from expanding the square.)
    Because ``P_t(2 q k) = sum_p (2^p / p!) q^p k^p`` separates, the sums over j reduce to
    t + 1 per-power sums ``S_p = sum_j k_j^p e^{-k_j^2} v_j`` and ``Z_p = sum_j k_j^p e^{-k_j^2}``
    (element-wise over channels): training costs O(t n D) (prefix sums for the causal form) and
    inference is an RNN whose state is (S_p, Z_p)_{p<=t}, i.e. O(t D)
    (:meth:`forward_recurrent`).

    **Taylor order.** ``taylor_order`` t must be >= 1. For even t, ``P_t(y) > 0`` for every real
    y (the even-degree truncations of the exponential series have no real root), so the weights
    are positive and each ``A^(c)`` is row-stochastic. For odd t, ``P_t(y) < 0`` for negative
    enough y, weights can be negative and the normaliser can cross zero. Clamping would break the
    separable form, so we **reject odd t by default** (``ValueError``); ``allow_odd_order=True``
    accepts it unclamped (an explicit opt-in, for ablations). Normalisers are clamped below at
    the dtype's smallest normal number, so a query with no allowed key (padding only) outputs 0.

    **Capture.** The exact mixing is one n x n matrix per channel, (B, D, n, n): too large to
    report. :func:`report_attention` receives a documented reduction: per head h (channels
    ``h d_h .. (h+1) d_h - 1``) the mean over the head's channels of ``A^(c)``, (B, H, n, n),
    row-stochastic for even t, with the head's value slices ``V_h``. **The reduced map does not
    reproduce the output** (``mean_c(A^(c)) V_h != [A^(c) v_c]_c``); use
    :meth:`channel_matrices` for the exact per-channel matrices. ``n_heads`` only sets this
    grouping (the mechanism itself has no heads).

    Parameters: 4 d^2 + 4 d (as standard attention).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        causal: bool = False,
        max_len: int | None = None,
        taylor_order: int = 2,
        allow_odd_order: bool = False,
    ) -> None:
        super().__init__(d_model, n_heads, causal=causal, max_len=max_len)
        if isinstance(taylor_order, bool) or not isinstance(taylor_order, int) or taylor_order < 1:
            raise ValueError(f"taylor_order must be an integer >= 1, got {taylor_order!r}")
        if taylor_order % 2 and not allow_odd_order:
            raise ValueError(
                f"taylor_order={taylor_order} is odd: the Taylor polynomial of exp then takes negative values, "
                "so attention weights can be negative and normalisers can vanish. Use an even order "
                "(2, 4, ...) or pass allow_odd_order=True to accept that"
            )
        self.taylor_order = taylor_order
        self.allow_odd_order = bool(allow_odd_order)
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        coeffs = torch.tensor([2.0**p / math.factorial(p) for p in range(taylor_order + 1)], dtype=torch.float64)
        self.register_buffer("_coeffs", coeffs, persistent=False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", taylor_order={self.taylor_order}"

    # -- pieces -----------------------------------------------------------------------------
    def _qkv(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None):
        q, k, v = self.w_q(x), self.w_k(x), self.w_v(x)
        g = torch.exp(-k * k)  # (B, n, D)
        if key_padding_mask is not None:
            g = g * key_padding_mask[..., None].to(g.dtype)
        return q, k, v, g

    def _powers(self, t: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., t+1, D): t^0 .. t^order."""
        out = [torch.ones_like(t)]
        for _ in range(self.taylor_order):
            out.append(out[-1] * t)
        return torch.stack(out, dim=-2)

    def _tiny(self, dtype: torch.dtype) -> float:
        return torch.finfo(dtype).tiny

    def _combine(self, q: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Numerator / denominator from the per-power sums s, z (..., t+1, D) and q (..., D)."""
        qp = self._powers(q) * self._coeffs.to(q.dtype)[:, None]
        num = (qp * s).sum(-2)
        den = (qp * z).sum(-2)
        return num / den.clamp_min(self._tiny(den.dtype))

    # -- forms ------------------------------------------------------------------------------
    def mix(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The mixed values o (B, n, D) before ``out_proj`` (parallel form, O(t n D))."""
        q, k, v, g = self._qkv(x, key_padding_mask)
        kp = self._powers(k) * g[..., None, :]  # (B, n, t+1, D)
        kv = kp * v[..., None, :]
        if self.causal:
            z, s = kp.cumsum(dim=1), kv.cumsum(dim=1)
        else:
            z, s = kp.sum(dim=1, keepdim=True), kv.sum(dim=1, keepdim=True)
        return self._combine(q, s, z)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, key_padding_mask)
        o = self.mix(x, key_padding_mask)
        if self._capturing():
            report_attention(self, self.head_maps(x, key_padding_mask), self._split(self.w_v(x)))
        return self.out_proj(o)

    def init_state(self, batch_size: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty recurrent state ``(S, Z)``, each (B, t+1, D)."""
        p = self.out_proj.weight
        shape = (batch_size, self.taylor_order + 1, self.d_model)
        z = torch.zeros(shape, dtype=dtype or p.dtype, device=device or p.device)
        return z, z.clone()

    def step(self, x_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
             real: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One recurrent step: x_t (B, D) -> (output (B, D), new state). ``real`` (B,) bool:
        False for a padding token, which does not enter the state."""
        s, z = state
        q, k, v = self.w_q(x_t), self.w_k(x_t), self.w_v(x_t)
        g = torch.exp(-k * k)
        if real is not None:
            g = g * real[:, None].to(g.dtype)
        kp = self._powers(k) * g[:, None, :]
        s = s + kp * v[:, None, :]
        z = z + kp
        return self.out_proj(self._combine(q, s, z)), (s, z)

    def forward_recurrent(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The causal form as an RNN, token by token with O(t D) state per sequence.

        Returns ``(output (B, n, d), state)``; pass ``state`` back to continue a sequence.
        Equals :meth:`forward` of a ``causal=True`` module (to float rounding).
        """
        if not self.causal:
            raise ValueError("forward_recurrent is the causal form; build the module with causal=True")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected x of shape (batch, seq, {self.d_model}), got {tuple(x.shape)}")
        if key_padding_mask is not None and key_padding_mask.shape != x.shape[:2]:
            raise ValueError(f"key_padding_mask must have shape {tuple(x.shape[:2])}, got {tuple(key_padding_mask.shape)}")
        if state is None:
            state = self.init_state(x.shape[0], dtype=x.dtype, device=x.device)
        outs = []
        for i in range(x.shape[1]):
            real = key_padding_mask[:, i] if key_padding_mask is not None else None
            y, state = self.step(x[:, i], state, real)
            outs.append(y)
        return torch.stack(outs, dim=1), state

    # -- explicit matrices (capture / explanation) ------------------------------------------
    def _channel_block(self, q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, allowed: torch.Tensor | None,
                       channels: slice) -> torch.Tensor:
        """A^(c) for the given channels: (B, C, n, n)."""
        qc = q[..., channels].transpose(1, 2)[..., :, None]  # (B, C, n, 1)
        kc = k[..., channels].transpose(1, 2)[..., None, :]  # (B, C, 1, n)
        y = 2.0 * qc * kc
        poly = torch.zeros_like(y)
        for p in range(self.taylor_order, -1, -1):  # Horner: P_t(y) = sum y^p / p!
            poly = poly * y + 1.0 / math.factorial(p)
        w = poly * g[..., channels].transpose(1, 2)[..., None, :]
        if allowed is not None:
            w = w.masked_fill(~allowed, 0.0)
        den = w.sum(-1, keepdim=True).clamp_min(self._tiny(w.dtype))
        return w / den

    def channel_matrices(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The exact per-channel mixing matrices ``A^(c)``, (B, D, n, n).

        ``out_proj(einsum("bcij,bjc->bic", A, V))`` equals :meth:`forward` (to float rounding),
        with ``V = w_v(x)``. Memory O(B D n^2).
        """
        self._check(x, key_padding_mask)
        q, k, _, g = self._qkv(x, key_padding_mask)
        allowed = self._allowed(None, x.shape[1], x.device)  # padding keys are already 0 in g
        return self._channel_block(q, k, g, allowed, slice(None))

    def head_maps(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The reduced map reported to capture: mean of ``A^(c)`` over each head's channels,
        (B, H, n, n). Built head by head (memory O(B d_h n^2)). Does not reproduce the output."""
        q, k, _, g = self._qkv(x, key_padding_mask)
        allowed = self._allowed(None, x.shape[1], x.device)
        maps = []
        for h in range(self.n_heads):
            block = self._channel_block(q, k, g, allowed, slice(h * self.head_dim, (h + 1) * self.head_dim))
            maps.append(block.mean(1))
        return torch.stack(maps, dim=1)


#: name -> class
ATTENTION_MECHANISMS: Registry = Registry("attention mechanism", {
    "standard": StandardAttention,
    "optimised": OptimisedAttention,
    "efficient": EfficientAttention,
    "super": SuperAttention,
    "elementwise": ElementwiseAttention,
})


def make_attention(attention: str, d_model: int, n_heads: int, *, causal: bool = False,
                   max_len: int | None = None, taylor_order: int = 2, allow_odd_order: bool = False) -> nn.Module:
    """Build one of :data:`ATTENTION_MECHANISMS` by name (``taylor_order`` only for elementwise)."""
    cls = ATTENTION_MECHANISMS[attention]  # UnknownNameError (a ValueError) listing the mechanisms
    if cls is ElementwiseAttention:
        return cls(d_model, n_heads, causal=causal, max_len=max_len, taylor_order=taylor_order,
                   allow_odd_order=allow_odd_order)
    return cls(d_model, n_heads, causal=causal, max_len=max_len)

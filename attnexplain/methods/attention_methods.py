"""Attention-derived explanation methods: one importance score per real token, read off a capture.

Every method here reads the :class:`~attnexplain.capturing.CaptureResult` of the batch (captured
once by :func:`attnexplain.methods.explain_batch` and shared), removes padding per example
(``capture.key_mask``; left and right padding alike), and scores each real key token ``j`` by how
much the *readout* query position attends to it. The maths lives in :mod:`attnexplain.functional`;
this module only selects rows, layers and heads.

Options shared by all attention methods (constructor keyword arguments):

* ``readout``: which query row(s) are read.
  ``"auto"`` (default): ``"last"`` for causal models (``lm.task == "causal-lm"`` or a captured
  self-attention module with ``is_causal``, e.g. GPT-2 / Llama classifiers, which pool the last
  real token), else ``"cls"``.
  ``"cls"``: the first real token (position 0 after removing padding: [CLS] for BERT, <s> for
  RoBERTa/BART). ``"last"``: the last real token. ``"mean"``: the mean over all real query rows.
  An ``int``: that real position (negative counts from the end); an example shorter than that
  raises ValueError.
* ``layers``: ``"all"`` (mean over captured layers), ``"last"``, an ``int`` (a layer index;
  negative counts from the end of the captured layers) or a list of ints (mean over them).
* ``head_reduction``: ``"mean"`` or ``"max"`` over the captured heads (per layer, before the
  layer mean).

Order of reductions: readout row(s) per layer and head -> mean over readout rows (``"mean"``
readout only) -> head reduction -> mean over the selected layers.

Batch independence: each example is sliced to its real tokens before any maths, so its scores do
not depend on the other examples of the batch (up to the model's own float error under padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..models import LoadedModel
from .base import ExplanationMethod, register_method


__all__ = [
    "AttentionMethod",
    "RawAttention",
    "EffectiveAttention",
    "AttentionDistribution",
    "NormAttentionMethod",
    "Rollout",
    "Flow",
    "is_causal_model",
    "readout_rows",
    "readout_positions",
    "real_positions",
]

_READOUTS = ("auto", "cls", "last", "mean")
_HEAD_REDUCTIONS = ("mean", "max")


# --------------------------------------------------------------------------------------------
# helpers (row, layer and head selection; no attention maths)
# --------------------------------------------------------------------------------------------


def real_positions(attention_mask: torch.Tensor | None, i: int, n: int) -> torch.Tensor:
    """Indices of the real (non-padding) tokens of example ``i``, in token order."""
    if attention_mask is None:
        return torch.arange(n)
    return attention_mask[i].bool().nonzero().flatten().cpu()


def is_causal_model(lm: LoadedModel, capture: Any | None = None) -> bool:
    """True for decoder-only (causal) models: they are explained from the last real token."""
    if getattr(lm, "task", None) == "causal-lm":
        return True
    if capture is not None:
        stack = capture.primary_stack
        for key, site in capture.sites.items():
            if key in capture.records and site.stack == stack and site.kind == "self":
                if bool(getattr(site.module, "is_causal", False)):
                    return True
        return False
    from ..models import torch_module

    model = torch_module(lm)
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    return any(bool(getattr(m, "is_causal", False)) for m in model.modules())


def resolve_readout(readout: str | int, lm: LoadedModel, capture: Any | None = None) -> str | int:
    """``"auto"`` -> ``"last"`` for causal models, else ``"cls"``; other values unchanged."""
    if readout == "auto":
        return "last" if is_causal_model(lm, capture) else "cls"
    return readout


def readout_rows(readout: str | int, n: int) -> list[int]:
    """Positions (among the ``n`` real tokens of an example) of the readout query row(s)."""
    if n < 1:
        raise ValueError("an example has no real tokens")
    if readout == "cls":
        return [0]
    if readout == "last":
        return [n - 1]
    if readout == "mean":
        return list(range(n))
    if isinstance(readout, (int, np.integer)) and not isinstance(readout, bool):
        r = int(readout)
        if not -n <= r < n:
            raise ValueError(f"readout position {r} is out of range for an example with {n} real tokens")
        return [r % n]
    raise ValueError(f"readout must be one of {_READOUTS} or an int position, got {readout!r}")


def readout_positions(readout: str | int, attention_mask: torch.Tensor | None, batch: int, n: int) -> torch.Tensor:
    """(B,) long: the padded-batch position of each example's readout row (``readout`` resolved,
    not ``"mean"``)."""
    idxs = [real_positions(attention_mask, i, n) for i in range(batch)]
    return torch.stack([idx[readout_rows(readout, idx.numel())[0]] for idx in idxs])


def _check_readout(readout: Any) -> None:
    if isinstance(readout, bool) or not (readout in _READOUTS or isinstance(readout, (int, np.integer))):
        raise ValueError(f"readout must be one of {_READOUTS} or an int position, got {readout!r}")


def _check_layers(layers: Any) -> None:
    ok = layers in ("all", "last") or (isinstance(layers, (int, np.integer)) and not isinstance(layers, bool))
    if not ok and isinstance(layers, (list, tuple)) and layers:
        ok = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in layers)
    if not ok:
        raise ValueError(f"layers must be 'all', 'last', an int or a non-empty list of ints, got {layers!r}")


def select_layers(layers: str | int | list[int], captured: list[int]) -> list[int]:
    """The captured layer ids selected by a ``layers`` option."""
    if not captured:
        raise ValueError("the capture holds no self-attention layers")
    if layers == "all":
        return list(captured)
    if layers == "last":
        return [captured[-1]]
    wanted = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    out = []
    for l in wanted:
        l = int(l)
        if l < 0:
            if -l > len(captured):
                raise ValueError(f"layer {l} is out of range: {len(captured)} captured layers {captured}")
            out.append(captured[l])
        elif l in captured:
            out.append(l)
        else:
            raise ValueError(f"layer {l} was not captured (captured layers: {captured})")
    return out


def _reduce_heads(x: torch.Tensor, how: str) -> torch.Tensor:
    """(H, m) -> (m,)."""
    return x.mean(0) if how == "mean" else x.amax(0)


def _reduce_heads_batched(x: torch.Tensor, how: str) -> torch.Tensor:
    """(B, H, m) -> (B, m): :func:`_reduce_heads` of every example at once."""
    return x.mean(1) if how == "mean" else x.amax(1)


def _need_capture(method: ExplanationMethod, capture: Any) -> None:
    if capture is None:
        raise ValueError(
            f"method {method.name!r} reads captured attention: pass capture=attnexplain.capture(lm, batch) "
            "(explain() and explain_batch() do this for you)"
        )


# --------------------------------------------------------------------------------------------
# the shared base: per layer, per example, the readout rows of a (H, k, n_i) score matrix
# --------------------------------------------------------------------------------------------


@dataclass
class AttentionMethod(ExplanationMethod):
    """Base of the attention-derived methods (see the module docstring for the options)."""

    readout: str | int = "auto"
    layers: str | int | list[int] = "all"
    head_reduction: str = "mean"

    uses_capture: ClassVar[bool] = True
    #: head reductions this method accepts
    _head_reductions: ClassVar[tuple[str, ...]] = _HEAD_REDUCTIONS
    #: True when :meth:`_layer_scores` needs the value transforms T
    _needs_values: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_readout(self.readout)
        _check_layers(self.layers)
        if self.head_reduction not in self._head_reductions:
            raise ValueError(f"head_reduction must be one of {self._head_reductions}, got {self.head_reduction!r}")

    # subclasses: per-key data of one layer, and scores of the readout rows of one example
    def _layer_data(self, capture: Any, layer: int) -> torch.Tensor | None:
        """(B, H, m, *) per-key data of a layer handed to :meth:`_layer_scores` (rows of the
        example's real keys): the value transforms ``T`` when ``_needs_values``, else None."""
        return capture.value_transforms(layer) if self._needs_values else None

    def _layer_scores(self, A: torch.Tensor, T: torch.Tensor | None, rows: list[int]) -> torch.Tensor:
        """``A`` (H, n_i, n_i) real tokens only, ``T`` (H, n_i, *) from :meth:`_layer_data` or None
        -> (H, len(rows), n_i) per-head scores, or (len(rows), n_i) when the method reduces heads itself."""
        raise NotImplementedError

    def _rows_data(self, capture: Any, layer: int) -> Any:
        """What :meth:`_rows_scores` receives for a layer (default: :meth:`_layer_data`)."""
        return self._layer_data(capture, layer)

    def _rows_scores(self, rows: torch.Tensor, T: torch.Tensor | None) -> torch.Tensor:
        """Optional batched form of :meth:`_layer_scores` for one readout row per example:
        ``rows`` (B, H, 1, n) over the padded keys, ``T`` the whole batch's :meth:`_layer_data`
        -> (B, H, 1, n) or (B, 1, n); only the real keys of each example are read. Methods whose
        score of a key depends only on that key's column (and per-key data) can implement it."""
        raise NotImplementedError

    def _batched(self, readout: str | int) -> bool:
        """Whether :meth:`attribute` scores the batch from one readout row per example."""
        return readout != "mean" and type(self)._rows_scores is not AttentionMethod._rows_scores

    def capture_needs(self, lm: Any) -> set:
        """What :meth:`attribute` reads from a capture: ``("rows", readout)`` (one readout row per
        example, ``readout`` resolved: ``"cls"``, ``"last"`` or an int) or ``"full"``."""
        readout = resolve_readout(self.readout, lm)
        return {("rows", readout)} if self._batched(readout) else {"full"}

    def _finish_layer(self, s: torch.Tensor) -> torch.Tensor:
        """(H, k, n_i) or (k, n_i) -> (n_i,): mean over readout rows, then the head reduction."""
        if s.dim() == 3:
            return _reduce_heads(s.mean(1), self.head_reduction)
        return s.mean(0)

    def attribute(self, lm, batch, *, target, capture=None) -> list[np.ndarray]:
        _need_capture(self, capture)
        readout = resolve_readout(self.readout, lm, capture)
        layer_ids = select_layers(self.layers, capture.layers())
        mask = capture.attention_mask if capture.attention_mask is not None else batch.get("attention_mask")
        # one readout row per example: the whole batch is scored at once (_rows_scores), from the
        # readout rows alone (all a capture with query_rows keeps)
        batched = self._batched(readout)
        # every column's score is its own (per key), so the reduction over the readout row and the
        # heads runs on the whole padded batch at once; the real keys of each example are taken at the end
        whole_batch = batched and type(self)._finish_layer is AttentionMethod._finish_layer
        total: torch.Tensor | None = None
        sums: list[torch.Tensor | None] = []
        for li, layer in enumerate(layer_ids):
            A = None if batched else capture.attention(layer)
            if li == 0:
                B = capture.batch_size
                n = capture.num_keys(layer)
                idxs = [real_positions(mask, i, n) for i in range(B)]
                sums = [None] * B
                if batched:  # the readout position of each example in the padded batch
                    pos = readout_positions(readout, mask, B, n)
            if batched:
                rows = capture.readout_rows(layer, pos).float()  # (B, H, 1, n)
                S = self._rows_scores(rows, self._rows_data(capture, layer))  # (B, H, 1, n) or (B, 1, n)
                if whole_batch:  # _finish_layer on every example at once: (B, n) over the padded keys
                    F = _reduce_heads_batched(S.mean(2), self.head_reduction) if S.dim() == 4 else S.mean(1)
                    total = F if total is None else total + F
                    continue
                scores = (S[i].index_select(-1, idx.to(S.device)) for i, idx in enumerate(idxs))
            else:
                T = self._layer_data(capture, layer)
                idxs = [idx.to(A.device) for idx in idxs]
                scores = (self._layer_scores(A[i].index_select(-2, idx).index_select(-1, idx).float(),
                                             T[i].index_select(-2, idx.to(T.device)) if T is not None else None,
                                             readout_rows(readout, idx.numel()))
                          for i, idx in enumerate(idxs))
            for i, s in enumerate(scores):
                s = self._finish_layer(s)
                sums[i] = s if sums[i] is None else sums[i] + s
        if whole_batch:
            sums = [total[i].index_select(-1, idx.to(total.device)) for i, idx in enumerate(idxs)]
        return [(s / len(layer_ids)).detach().double().cpu().numpy() for s in sums]


# --------------------------------------------------------------------------------------------
# the methods
# --------------------------------------------------------------------------------------------


@register_method
@dataclass
class RawAttention(AttentionMethod):
    """Raw attention weights of the readout row.

    Formula: ``score_j = mean_{l in layers} reduce_h A^{l,h}[r, j]`` with ``r`` the readout
    position (``mean`` readout: averaged over all real query rows ``r``) and ``reduce_h`` the
    head reduction (mean or max). Rows are attention probabilities, so with ``head_reduction=
    "mean"`` the scores of an example sum to 1.

    Paper: the attention-as-explanation baseline examined by S. Jain, B. C. Wallace, "Attention
    is not Explanation", NAACL 2019, and S. Wiegreffe, Y. Pinter, "Attention is not not
    Explanation", EMNLP 2019.
    """

    name: ClassVar[str] = "raw_attention"
    description: ClassVar[str] = "raw attention weights of the readout row, mean over layers and heads"

    def _layer_scores(self, A, T, rows):
        return A[:, rows, :]

    def _rows_scores(self, rows, T):
        return rows


@register_method
@dataclass
class EffectiveAttention(AttentionMethod):
    """Effective attention of the readout row (Brunner et al., ICLR 2020).

    Formula: per layer and head, with ``T = V_h W_O^h`` (the captured value transforms) and
    ``U_r`` the left singular vectors of ``T`` above the rank tolerance::

        A_eff = A - Proj_LN(T)(A) = A U_r U_r^T        (only the readout row(s) are projected)
        score_j = mean_{l} reduce_h A_eff^{l,h}[r, j]

    with ``U_r`` from :meth:`CaptureResult.effective_basis
    <attnexplain.capturing.CaptureResult.effective_basis>` (the exact basis of
    :func:`attnexplain.functional.value_space_basis`, padding keys excluded, computed once per
    layer and batch and shared with every other consumer of the capture), restricted to each
    example's real tokens. **Signed**: effective weights can be negative; the score is the signed value as is
    (averaged over heads and layers; ``absolute=True`` takes ``|A_eff|`` before the reductions).
    Rows need not sum to 1 (``preserve_row_sums=True`` projects onto ``[T, 1]`` instead, which
    keeps the row sums). Equal to ``raw_attention`` when an example has at most ``rank(T)``
    (generically ``d_h``) real tokens.

    Options (besides readout / layers / head_reduction): ``rtol`` (rank tolerance, default from
    T's dtype), ``preserve_row_sums`` (False), ``absolute`` (False).

    Paper: G. Brunner, Y. Liu, D. Pascual, O. Richter, M. Ciaramita, R. Wattenhofer, "On
    Identifiability in Transformers", ICLR 2020.
    """

    name: ClassVar[str] = "effective_attention"
    description: ClassVar[str] = "effective attention A U_r U_r^T of the readout row (signed), mean over layers and heads"
    _needs_values: ClassVar[bool] = True

    rtol: float | None = None
    preserve_row_sums: bool = False
    absolute: bool = False

    def _layer_data(self, capture, layer):
        U, _ = capture.effective_basis(layer, rtol=self.rtol, preserve_row_sums=self.preserve_row_sums)
        return U  # (B, H, m, r): orthonormal columns, zero rows at padding keys

    def _layer_scores(self, A, U, rows):
        from ..functional import effective_attention_from_basis

        s = effective_attention_from_basis(A[:, rows, :], U)
        return s.abs() if self.absolute else s

    def _rows_scores(self, rows, U):  # U's padding rows are 0, so padded keys add nothing
        from ..functional import effective_attention_from_basis

        s = effective_attention_from_basis(rows, U)
        return s.abs() if self.absolute else s


@register_method
@dataclass
class AttentionDistribution(AttentionMethod):
    """Attention as a probability distribution that keeps the head's output (after Naim & Asher, ECAI 2024).

    Formula (the project's own formulation, see :mod:`attnexplain.functional.distribution`): per
    layer and head, for the readout row ``a`` of ``A`` over the real keys::

        F(a) = { a' >= 0, sum(a') = 1, a'^T T = a^T T }
        nearest  (default): a' = argmin_{a' in F(a)} ||a' - a_eff||^2    (the distribution closest
                            to effective attention; exact least-distance QP via NNLS)
        sparsest:           a vertex of F(a) (LP, HiGHS): at most rank(T) + 1 non-zeros
        score_j = mean_{l} reduce_h a'^{l,h}_j

    computed by :func:`attnexplain.functional.attention_distribution` for the readout row(s)
    only (``rows=``): one small QP/LP per (example, layer, head, readout row), i.e. ``L x H``
    solves per example (``readout="mean"`` solves every row: ``n`` times slower). Scores are
    non-negative and, with ``head_reduction="mean"``, sum to 1 per example.

    Options: ``mode`` ("nearest" | "sparsest"), ``tol`` (support threshold, 1e-6), ``rtol``.

    Paper (idea): N. Naim, N. Asher, "Efficient attention", ECAI 2024.
    """

    name: ClassVar[str] = "attention_distribution"
    description: ClassVar[str] = "readout row as the output-preserving distribution nearest to effective attention"
    _needs_values: ClassVar[bool] = True

    mode: str = "nearest"
    tol: float = 1e-6
    rtol: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("nearest", "sparsest"):
            raise ValueError(f"mode must be 'nearest' or 'sparsest', got {self.mode!r}")

    def _layer_scores(self, A, T, rows):
        from ..functional import attention_distribution

        res = attention_distribution(A, T, mode=self.mode, tol=self.tol, rows=rows, rtol=self.rtol)
        return res.probs


@register_method
@dataclass
class NormAttentionMethod(AttentionMethod):
    """Norm-based attention of the readout row (Kobayashi et al., EMNLP 2020).

    Formula, with ``f^h(x_j) = (x_j W_V^h + b_V^h) W_O^h`` (the captured value transforms)::

        head_reduction="summed" (default): score_j = mean_l || sum_h A^{l,h}[r, j] f^{l,h}(x_j) ||
        head_reduction="mean" / "max":     score_j = mean_l reduce_h  A^{l,h}[r, j] ||f^{l,h}(x_j)||

    ``"summed"`` is the paper's layer-level measure (the norm of the vector the whole attention
    block moves from ``j`` to ``r``). Computed for the readout row(s) only, by
    :func:`attnexplain.functional.norm_based_attention_from_values` (one readout row per example,
    the whole batch at once) or :func:`attnexplain.functional.norm_based_attention` (``"mean"``
    readout). Non-negative; not normalised.

    Paper: G. Kobayashi, T. Kuribayashi, S. Yokoi, K. Inui, "Attention is Not Only a Weight:
    Analyzing Transformers with Vector Norms", EMNLP 2020.
    """

    name: ClassVar[str] = "norm"
    description: ClassVar[str] = "norm-based attention ||sum_h A_rj f_h(x_j)|| of the readout row (Kobayashi et al.)"
    _needs_values: ClassVar[bool] = True
    _head_reductions: ClassVar[tuple[str, ...]] = ("summed", "mean", "max")

    head_reduction: str = "summed"

    def _layer_scores(self, A, T, rows):
        from ..functional import norm_based_attention

        res = norm_based_attention(A[:, rows, :], T)
        return res.summed if self.head_reduction == "summed" else res.per_head

    def _rows_data(self, capture, layer):  # the readout rows need no T = V W_O (one GEMM instead)
        return capture.values(layer), capture.out_proj_blocks(layer)

    def _rows_scores(self, rows, VW):  # per key: ||sum_h A_rj V_j W_h|| reads only key j's column
        from ..functional import norm_based_attention_from_values

        V, W = VW
        res = norm_based_attention_from_values(rows, V.to(rows.device), W.to(rows.device))
        return res.summed if self.head_reduction == "summed" else res.per_head


class _LayeredGraphMethod(AttentionMethod):
    """Rollout and flow: they combine all layers up to a top layer, so ``layers`` picks the top.

    ``layers="last"`` (default): through the last captured layer. ``int``: through that layer.
    ``"all"`` / a list: mean over the results with each of those layers as the top.
    They need every layer from the first up to the top, so the capture must hold consecutive
    layers starting at its first.
    """

    #: True when the method needs only the head mean of each layer with ``head_reduction="mean"``
    _reads_head_means: ClassVar[bool] = False

    def _uses_head_means(self) -> bool:
        return self._reads_head_means and self.head_reduction == "mean"

    def capture_needs(self, lm: Any) -> set:
        return {"head_means"} if self._uses_head_means() else {"full"}

    def _stack(self, capture) -> tuple[list[int], list[int], torch.Tensor]:
        captured = capture.layers()
        if captured != list(range(captured[0], captured[0] + len(captured))):
            raise ValueError(f"{self.name} needs consecutive captured layers, got {captured}")
        tops = select_layers(self.layers, captured)
        if self._uses_head_means():  # the mean over heads is all a "mean" head reduction reads: (L, B, 1, n, n)
            att = torch.stack([capture.head_mean(layer) for layer in captured]).unsqueeze(2)
        else:
            att = capture.stacked()  # (L, B, H, n, n)
        return captured, [captured.index(t) for t in tops], att

    def _scores_per_example(self, att: torch.Tensor, rows: list[int], tops: list[int]) -> torch.Tensor:
        """att (L, H, n_i, n_i) -> (n_i,)."""
        raise NotImplementedError

    def attribute(self, lm, batch, *, target, capture=None) -> list[np.ndarray]:
        _need_capture(self, capture)
        readout = resolve_readout(self.readout, lm, capture)
        _, tops, att = self._stack(capture)
        mask = capture.attention_mask if capture.attention_mask is not None else batch.get("attention_mask")
        out = []
        for i in range(att.shape[1]):
            idx = real_positions(mask, i, att.shape[-1]).to(att.device)
            ai = att[:, i].index_select(-2, idx).index_select(-1, idx).float()
            s = self._scores_per_example(ai, readout_rows(readout, idx.numel()), tops)
            out.append(s.detach().double().cpu().numpy())
        return out


@register_method
@dataclass
class Rollout(_LayeredGraphMethod):
    """Attention rollout (Abnar & Zuidema, ACL 2020): the readout row of the rolled-out attention.

    Formula (:func:`attnexplain.functional.attention_rollout`)::

        A_aug(l) = residual * I + (1 - residual) * reduce_h A^h(l)      (rows renormalised)
        rollout(l) = A_aug(l) @ rollout(l - 1),    rollout(first) = A_aug(first)
        score_j = rollout(top)[r, j]

    on the example's real tokens only; ``top`` is the last captured layer by default (see
    ``layers``: an int picks the top layer, ``"all"`` averages over every top layer).
    ``head_reduction`` ("mean" | "max") is applied inside the rollout, per layer. Options:
    ``residual`` (0.5, the paper's). Non-negative; each row sums to 1.

    Paper: S. Abnar, W. Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.
    """

    name: ClassVar[str] = "rollout"
    description: ClassVar[str] = "attention rollout (Abnar & Zuidema): readout row of the last layer's rollout"

    layers: str | int | list[int] = "last"
    residual: float = 0.5
    _reads_head_means: ClassVar[bool] = True

    def _scores_per_example(self, att, rows, tops):
        from ..functional import attention_rollout

        ro = attention_rollout(att, residual=self.residual, head_reduction=self.head_reduction)  # (L, n, n)
        return ro[tops][:, rows, :].mean(dim=(0, 1))


@register_method
@dataclass
class Flow(_LayeredGraphMethod):
    """Attention flow (Abnar & Zuidema, ACL 2020): max flow from the readout position to each token.

    Formula (:func:`attnexplain.functional.attention_flow`): a layered graph whose edges from
    layer ``l`` to ``l - 1`` have capacities ``A_aug(l)`` (as in rollout: ``residual * I +
    (1 - residual) * reduce_h A^h(l)``, rows renormalised)::

        score_j = maxflow( readout position r at the top layer  ->  input token j )

    on the example's real tokens only. ``layers`` picks the top layer as for rollout (``"all"``
    solves one max-flow problem set per layer: L times the cost). Non-negative. Cost: one
    max-flow per (example, input token); fine for short inputs, slow for hundreds of tokens.

    Paper: S. Abnar, W. Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.
    """

    name: ClassVar[str] = "flow"
    description: ClassVar[str] = "attention flow (Abnar & Zuidema): max flow from the readout position to each token"

    layers: str | int | list[int] = "last"
    residual: float = 0.5
    _reads_head_means: ClassVar[bool] = True

    def _scores_per_example(self, att, rows, tops):
        from ..functional import attention_flow

        n = att.shape[-1]
        total = torch.zeros(n, dtype=torch.float64)
        for t in tops:
            fl = attention_flow(att[: t + 1], query=rows, residual=self.residual, head_reduction=self.head_reduction)
            total += torch.as_tensor(fl, dtype=torch.float64).reshape(-1, n).mean(0).cpu()
        return total / len(tops)

"""One batch of ``analyze``: capture, explanations, ERASER faithfulness, per-head statistics,
head ablation and the stored attention arrays (:func:`analyze_batch`; the steps are listed in
:mod:`attnexplain.runs.analyze`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..models import LoadedModel
from ..metrics import jsd


@dataclass
class _Setup:
    lm: LoadedModel
    methods: list[Any]  # built ExplanationMethod objects
    method_names: list[str]
    bins: tuple[float, ...]
    removal: str
    head_ablation: bool
    max_length: int
    readout: str
    label_mapping: list[int] | None
    label_names: list[str] | None
    model_labels: list[str]
    precision: str = "float32"
    #: "needed": the capture keeps only what the methods and statistics read (readout rows, head
    #: means, the stored examples' full matrices; the statistics over whole matrices are taken
    #: layer by layer during the forward); "full": every layer's full matrices for every example
    #: (the reference route; same results)
    capture_mode: str = "needed"


def _readout(lm: LoadedModel, cap: Any) -> str:
    from ..methods.attention_methods import resolve_readout

    r = resolve_readout("auto", lm, cap)
    return r if r in ("cls", "last") else "cls"


def _faithfulness(setup: _Setup, enc: dict[str, torch.Tensor], scores: dict[str, list[np.ndarray]],
                  pred: torch.Tensor) -> dict[str, np.ndarray]:
    """ERASER comprehensiveness / sufficiency of every method and bin of a batch, in one batched
    call of :func:`attnexplain.ablations.eraser.faithfulness` (identical perturbed inputs run
    once; batch-invariant forwards, so an example's numbers do not depend on the batch it falls in
    or on the run's sharding).

    Returns ``values[method] -> (B, 2, K)`` (0: comprehensiveness, 1: sufficiency).
    """
    from ..ablations.eraser import faithfulness

    B, K = int(pred.shape[0]), len(setup.bins)
    # max_batch must not depend on the batch (e.g. on its widest example): that would change the
    # forwards' shapes, hence their round-off, with the batch; the plan bounds tokens per forward
    res = faithfulness(setup.lm, enc, scores, target=pred.cpu(), bins=setup.bins, mode=setup.removal,
                       precision=setup.precision)
    t = res.table
    m_idx = t["method"].map({m: i for i, m in enumerate(setup.method_names)}).to_numpy()
    w_idx = (t["metric"].to_numpy() == "sufficiency").astype(np.int64)
    k_idx = np.searchsorted(np.asarray(setup.bins), t["fraction"].to_numpy())
    vals = np.full((len(setup.method_names), B, 2, K), np.nan)
    vals[m_idx, t["example"].to_numpy(), w_idx, k_idx] = t["value"].to_numpy()
    return {m: vals[i] for i, m in enumerate(setup.method_names)}


def _layer_head_stats(A: torch.Tensor, E: torch.Tensor | None, km: torch.Tensor, readout_pos: torch.Tensor):
    """One layer's per-head statistics (B, H) each: entropy of the readout row; JSD and L1 between
    raw and effective attention rows, mean over the real query rows (NaN without ``E``).

    ``A`` (B, H, n, n) raw attention, ``E`` its effective attention (None when it cannot be
    computed), ``km`` (B, n) bool real tokens, ``readout_pos`` (B,) the readout row of each example."""
    B, H = A.shape[:2]
    colmask = km[:, None, None, :]
    rows = A[torch.arange(B), :, readout_pos, :].float() * colmask[:, :, 0]  # (B, H, n)
    ent = -(torch.where(rows > 0, rows * torch.log(rows.clamp_min(1e-30)), torch.zeros(()))).sum(-1)
    if E is None:
        nan = torch.full(rows.shape[:2], float("nan"))
        return ent, nan, nan.clone()
    # the real query rows only, packed (R, H, n): padding rows would be computed and then dropped
    b_of_row, q_of_row = km.nonzero(as_tuple=True)
    nq = km.sum(-1).clamp_min(1).float()  # (B,)
    Ar = A[b_of_row, :, q_of_row].float() * colmask[b_of_row, 0]  # (R, H, n)
    Er = E[b_of_row, :, q_of_row].float()
    absE = Er.abs()
    Q = absE / absE.sum(-1, keepdim=True).clamp_min(1e-30)
    per_row = torch.stack([jsd(Ar, Q), (Ar - Er).abs().sum(-1)])  # (2, R, H)
    sums = torch.zeros(2, B, H, dtype=per_row.dtype).index_add_(1, b_of_row, per_row)
    means = sums / nq[None, :, None]
    return ent, means[0], means[1]


def _head_stats(setup: _Setup, cap: Any, mask: torch.Tensor, readout_pos: torch.Tensor, stored: list[int]):
    """Per (layer, example, head): entropy, eff_raw_jsd, eff_raw_l1; plus effective matrices of ``stored``
    (from a capture holding every example's full matrices)."""
    km = mask.bool()
    ent, jsds, l1 = [], [], []
    eff_store: dict[int, list[torch.Tensor]] = {i: [] for i in stored}
    for layer in cap.layers():
        try:  # the basis is cached on the capture: the effective_attention method shares it
            E = cap.effective_attention(layer).float()
        except (ValueError, RuntimeError):
            E = None
        e, j, l = _layer_head_stats(cap.attention(layer), E, km, readout_pos)
        ent.append(e), jsds.append(j), l1.append(l)
        if E is not None:
            for i in stored:
                eff_store[i].append(E[i])
    stats = {"entropy": torch.stack(ent), "eff_raw_jsd": torch.stack(jsds), "eff_raw_l1": torch.stack(l1)}  # (L, B, H)
    eff = {i: torch.stack(v) for i, v in eff_store.items() if v}
    return stats, eff


class _HeadStatsDuringCapture:
    """``on_matrices`` of the "needed" capture: :func:`_layer_head_stats` of each layer while its
    full matrices exist (they are then cut to the stored examples), and the stored examples'
    effective attention, kept with the layer's record (``CaptureResult.derived``).
    :meth:`result` returns what :func:`_head_stats` returns."""

    def __init__(self, mask: torch.Tensor, readout_pos: torch.Tensor, stored: list[int]):
        self.km, self.readout_pos, self.stored = mask.bool(), readout_pos, stored

    def __call__(self, rec: Any):
        from ..functional import effective_attention_from_basis

        A = rec.probs.to_dense() if rec.probs.is_sparse else rec.probs
        E = None
        if rec.basis is not None:  # as CaptureResult.effective_attention, from the same basis
            U = rec.basis[0]
            km = rec.key_mask
            try:
                E = effective_attention_from_basis(A.to(U.device), U, key_mask=None if km is None else
                                                   km.to(A.device)[:, None, :]).float()
            except (ValueError, RuntimeError):
                E = None
        stats = _layer_head_stats(A, E, self.km, self.readout_pos)
        return stats, None if E is None else {i: E[i] for i in self.stored}

    def result(self, cap: Any):
        # read back per layer after capture (a module shared by several layers, ALBERT's, is
        # numbered by call there)
        per_layer = [cap.derived(layer) for layer in cap.layers()]
        stats = {name: torch.stack([d[0][k] for d in per_layer])
                 for k, name in enumerate(("entropy", "eff_raw_jsd", "eff_raw_l1"))}
        eff = {}
        for i in self.stored:
            per = [d[1][i] for d in per_layer if d[1] is not None]
            if per:
                eff[i] = torch.stack(per)
        return stats, eff


def _capture_needed(setup: _Setup, enc: dict[str, torch.Tensor], readout_pos: torch.Tensor, stored: list[int]):
    """Capture for one analyze batch and the head statistics: ``(capture, stats, effective of stored)``.

    What is kept is what the methods read (:meth:`ExplanationMethod.capture_needs`): their readout
    rows, the head means (rollout), full matrices only for the ``stored`` examples (the run's arrays)
    unless a method needs every example's; the statistics over whole matrices are computed layer
    by layer during the forward. ``setup.capture_mode == "full"`` keeps everything (the reference)."""
    from ..capturing import capture
    from ..methods.attention_methods import readout_positions

    lm = setup.lm
    mask = enc["attention_mask"]
    needs: set = set()
    for m in setup.methods:
        needs |= set(m.capture_needs(lm))
    row_readouts = {x[1] for x in needs if isinstance(x, tuple) and x[0] == "rows"}
    if setup.capture_mode == "full" or "full" in needs or len(row_readouts) > 1:
        cap = capture(lm, enc)
        stats, eff = _head_stats(setup, cap, mask.cpu(), readout_pos, stored)
        return cap, stats, eff
    B, n = mask.shape
    rows = readout_positions(next(iter(row_readouts)), mask.cpu(), B, n) if row_readouts else None
    collect = _HeadStatsDuringCapture(mask.cpu(), readout_pos, stored)
    # one layer's full matrices at a time (the forward needs them for the statistics anyway); kept:
    # readout rows, head means, the stored examples' matrices, the effective-attention basis
    cap = capture(lm, enc, query_rows=rows, head_means="head_means" in needs, full_examples=stored,
                  effective_basis=True, on_matrices=collect)
    stats, eff = collect.result(cap)
    return cap, stats, eff


def _head_ablation(setup: _Setup, cap: Any, batch: dict[str, torch.Tensor], base_probs: torch.Tensor) -> torch.Tensor:
    """TVD of the output distribution when each head is zero-ablated: (L, B, H)."""
    from ..capturing import session

    lm = setup.lm
    layers = cap.layers()
    stack = cap.primary_stack
    H = len(cap.heads())
    B = base_probs.shape[0]
    rep = {k: v.repeat(H, *([1] * (v.dim() - 1))) for k, v in batch.items()}
    head_of_row = torch.arange(H).repeat_interleave(B)  # row r = h * B + b
    out = []
    for layer in layers:
        def zero_head(probs, call, site, _h=head_of_row):
            probs = probs.clone()
            probs[torch.arange(probs.shape[0]), _h.to(probs.device)] = 0
            return probs

        with torch.no_grad(), session(lm.model, None, interventions={f"{stack}.{layer}.self": zero_head}):
            logits = lm.model(**rep).logits
        logits = logits if logits.dim() == 2 else logits[:, -1]
        p = torch.softmax(logits.float(), -1).reshape(H, B, -1)
        out.append(0.5 * (p - base_probs[None]).abs().sum(-1).T)  # (B, H)
    return torch.stack(out)


def analyze_batch(setup: _Setup, ids: list[str], positions: list[int], texts: list[str],
                  labels: list[int | None] | None, label_names: list[str | None] | None,
                  text_pairs: list[str] | None, store: set[int]):
    """Everything for one batch: (tables dict of columns, attention arrays by example id)."""
    from ..methods import explain_batch
    from ..models import untruncated_ids

    lm = setup.lm
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*longer than .* tokens.*")
        enc = lm.tokenize(texts, max_length=setup.max_length, text_pairs=text_pairs)
    kw = {"text_pair": list(text_pairs)} if text_pairs is not None else {}
    full_len = [len(x) for x in untruncated_ids(lm.tokenizer, texts, **kw)]
    mask = enc.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(enc["input_ids"])
        enc["attention_mask"] = mask
    B = len(texts)
    km = mask.bool().cpu()
    real_idx = [km[i].nonzero().flatten() for i in range(B)]
    readout_pos = torch.tensor([int(r[0]) if setup.readout == "cls" else int(r[-1]) for r in real_idx])
    stored_local = [i for i in range(B) if i in store]
    cap, stats, eff = _capture_needed(setup, enc, readout_pos, stored_local)
    probs = cap.probs  # (B, C)
    pred = probs.argmax(-1)
    scores, _, _ = explain_batch(lm, enc, setup.methods, target=pred, capture_result=cap)
    tokens = lm.tokens(enc["input_ids"], mask)
    pred_np = pred.cpu().numpy()
    probs_np = probs.cpu().numpy()
    faith = _faithfulness(setup, enc, scores, pred)

    # -- examples ------------------------------------------------------------------------------
    n_tok = np.array([len(t) for t in tokens], dtype=np.int32)
    ex: dict[str, Any] = {
        "example_id": list(ids), "index": list(positions), "text": list(texts),
        "label": list(labels) if labels is not None else [None] * B,
        "label_name": list(label_names) if label_names is not None else [None] * B,
        "pred": pred_np.astype(np.int64).tolist(),
        "pred_label": [setup.model_labels[p] if p < len(setup.model_labels) else str(p) for p in pred_np],
        "probs": [row.astype(np.float32) for row in probs_np],
        "correct": [None if (labels is None or labels[i] is None) else bool(labels[i] == pred_np[i]) for i in range(B)],
        "n_tokens": n_tok, "truncated": [bool(f > n) for f, n in zip(full_len, n_tok)],
    }
    for m in setup.method_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ex[f"comp_aopc__{m}"] = np.nanmean(faith[m][:, 0, :], axis=1).astype(np.float32)
            ex[f"suff_aopc__{m}"] = np.nanmean(faith[m][:, 1, :], axis=1).astype(np.float32)

    # -- tokens (long) ---------------------------------------------------------------------------
    M = len(setup.method_names)
    eid_tok = np.repeat(np.asarray(ids, dtype=object), n_tok)
    pos_tok = np.concatenate([np.arange(n, dtype=np.int32) for n in n_tok]) if B else np.empty(0, np.int32)
    tok_str = np.asarray([t for toks in tokens for t in toks], dtype=object)
    tok_tab = {
        "example_id": np.tile(eid_tok, M), "position": np.tile(pos_tok, M), "token": np.tile(tok_str, M),
        "method": np.repeat(np.asarray(setup.method_names, dtype=object), len(pos_tok)),
        "score": np.concatenate([np.concatenate([np.asarray(s, dtype=np.float32) for s in scores[m]])
                                 for m in setup.method_names]) if B else np.empty(0, np.float32),
    }

    # -- faithfulness (long) -----------------------------------------------------------------------
    K = len(setup.bins)
    vals = np.stack([faith[m] for m in setup.method_names])  # (M, B, 2, K)
    mi, bi, wi, ki = np.meshgrid(np.arange(M), np.arange(B), np.arange(2), np.arange(K), indexing="ij")
    f_tab = {
        "example_id": np.asarray(ids, dtype=object)[bi.ravel()],
        "method": np.asarray(setup.method_names, dtype=object)[mi.ravel()],
        "metric": np.asarray(["comprehensiveness", "sufficiency"], dtype=object)[wi.ravel()],
        "k": np.asarray(setup.bins, dtype=np.float32)[ki.ravel()],
        "value": vals.ravel().astype(np.float32),
    }

    # -- heads (long) ------------------------------------------------------------------------------
    if setup.head_ablation:
        stats["ablation_tvd"] = _head_ablation(setup, cap, enc, probs)
    metric_names = list(stats)
    st = torch.stack([stats[k] for k in metric_names]).float().cpu().numpy()  # (S, L, B, H)
    layer_ids = np.asarray(cap.layers(), dtype=np.int32)
    S, L, _, H = st.shape
    si, li, bi2, hi = np.meshgrid(np.arange(S), np.arange(L), np.arange(B), np.arange(H), indexing="ij")
    h_tab = {
        "example_id": np.asarray(ids, dtype=object)[bi2.ravel()], "layer": layer_ids[li.ravel()],
        "head": hi.ravel().astype(np.int32), "metric": np.asarray(metric_names, dtype=object)[si.ravel()],
        "value": st.ravel().astype(np.float32),
    }

    # -- stored arrays -------------------------------------------------------------------------------
    attention: dict[str, dict[str, np.ndarray]] = {}
    for i, arrays in example_arrays(cap, km, stored_local, effective=eff).items():
        attention[str(ids[i])] = {"tokens": np.asarray(tokens[i], dtype=str), **arrays,
                                  "probs": probs_np[i].astype(np.float32)}
    return {"examples": ex, "tokens": tok_tab, "faithfulness": f_tab, "heads": h_tab}, attention


def example_arrays(cap: Any, key_mask: torch.Tensor, indices: Sequence[int], *,
                   effective: dict[int, torch.Tensor] | None = None,
                   dtype: torch.dtype = torch.float16) -> dict[int, dict[str, np.ndarray]]:
    """The attention arrays of a run folder's ``attention/<id>.npz`` for the batch examples ``indices``
    of a capture: ``raw`` and ``effective`` (L, H, n, n), ``norm`` (norm-based attention, heads summed)
    and ``rollout`` (L, n, n), cut to each example's real tokens (``key_mask`` (B, m), True = real),
    as ``dtype`` numpy arrays. ``effective`` gives matrices already computed per example (else
    ``cap.effective_attention``); ``effective`` / ``norm`` are left out where the capture cannot give
    them. Used by ``analyze`` (float16, stored) and the dashboard's Live page (float32)."""
    from ..functional import attention_rollout, norm_based_attention, value_transforms

    out: dict[int, dict[str, np.ndarray]] = {}
    if not len(indices):
        return out
    km = key_mask.bool().cpu()
    sub = torch.as_tensor(list(indices))
    raw = cap.stacked(examples=list(indices)).float()  # (L, S, H, n, n)
    subm = km[sub]
    roll = attention_rollout(raw, key_mask=subm)  # (S, L, n, n)
    try:  # per layer: the values of these examples and the output projection
        VW = [(cap.values(layer)[sub].float(), cap.out_proj_blocks(layer).float()) for layer in cap.layers()]
    except (ValueError, RuntimeError):
        VW = None
    if effective is None:
        effective = {}
        try:
            per_layer = [cap.effective_attention(layer, examples=list(indices)).float() for layer in cap.layers()]
            effective = {i: torch.stack([E[a] for E in per_layer]) for a, i in enumerate(indices)}
        except (ValueError, RuntimeError):
            pass
    for a, i in enumerate(indices):
        idx = km[i].nonzero().flatten()

        def cut(x):
            return x.index_select(-2, idx.to(x.device)).index_select(-1, idx.to(x.device)).to(dtype).cpu().numpy()

        arrays = {"raw": cut(raw[:, a]), "rollout": cut(roll[a])}
        if i in effective:
            arrays["effective"] = cut(effective[i])
        if VW is not None:
            # on the example's real tokens only, all layers in one call (the per-key Gram matrices
            # cost O(m H^2 d): padding keys would only add zeros at that price)
            try:
                T = torch.stack([value_transforms(V[a].index_select(-2, idx.to(V.device)), W) for V, W in VW])
                A = raw[:, a].index_select(-2, idx.to(raw.device)).index_select(-1, idx.to(raw.device))
                arrays["norm"] = norm_based_attention(A, T.to(A.device)).summed.to(dtype).cpu().numpy()
            except (ValueError, RuntimeError):
                pass
        out[i] = arrays
    return out


def build_setup(lm: Any, method_names: Sequence[str], *, seed: int, bins: Sequence[float], removal: str,
                head_ablation: bool, max_length: int, label_mapping: list[int] | None,
                label_names: list[str] | None, precision: str) -> _Setup:
    """The per-model state every batch of a run shares (the built methods, the readout, the options).

    The local engine builds it once; each Ray worker builds its own after loading the model."""
    from ..methods import get_method

    built = [get_method(m, seed=int(seed)) if m == "random" else get_method(m) for m in method_names]
    setup = _Setup(
        lm=lm, methods=built, method_names=list(method_names), bins=tuple(bins), removal=removal,
        head_ablation=bool(head_ablation), max_length=int(max_length), readout="cls",
        label_mapping=label_mapping, label_names=label_names, model_labels=list(lm.labels or []),
        precision=precision,
    )
    setup.readout = _readout(lm, None)
    return setup


def batch_inputs(ds: Any, batch: Sequence[int], mapping: list[int] | None, store_set: set[int]) -> dict[str, Any]:
    """What :func:`analyze_batch` needs for the dataset positions ``batch`` (small, picklable: the
    Ray engine sends it to a worker)."""
    ds_labels = ds.label_names
    if ds.labels is not None:
        raw_labels = [ds.labels[p] for p in batch]
        labels = [mapping[y] if mapping is not None else y for y in raw_labels]
        lnames = [ds_labels[y] if ds_labels is not None and y < len(ds_labels) else None for y in raw_labels]
    else:
        labels, lnames = None, None
    return {
        "ids": [ds.ids[p] for p in batch], "positions": list(batch), "texts": [ds.texts[p] for p in batch],
        "labels": labels, "label_names": lnames,
        "text_pairs": [ds.text_pairs[p] for p in batch] if ds.text_pairs is not None else None,
        "store": {j for j, p in enumerate(batch) if p in store_set},
    }


def run_batch(setup: _Setup, seed: int, inputs: Mapping[str, Any]):
    """:func:`analyze_batch` under the batch's own random seed (``seed * 1_000_003 + first position``),
    so a batch gives the same tables whichever process or engine runs it, and in whatever order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) * 1_000_003 + int(inputs["positions"][0]))
        return analyze_batch(setup, inputs["ids"], inputs["positions"], inputs["texts"], inputs["labels"],
                             inputs["label_names"], inputs["text_pairs"], inputs["store"])

"""Batching, Hungarian matching, the set-prediction loss, training and evaluation of :class:`SetDecoder`.

**Matching** (DETR, Carion et al. 2020). For one scene with Q queries and G gold groups the cost of
giving gold group g to query q is::

    cost[q, g] = - w_cls p_q(activity_g)                        (activity probability)
                 + w_bce BCE(member_logits_q, 1[j in g])         (mean over the real individuals)
                 + w_dice (1 - dice(sigmoid(member_logits_q), 1[j in g]))

with dice(p, y) = (2 sum p y + 1) / (sum p + sum y + 1). :func:`hungarian_match` solves the
assignment with ``scipy.optimize.linear_sum_assignment`` (each gold group gets its own query;
Q >= G is required).

**Loss** (:func:`set_loss`): cross-entropy of every query's activity logits against the matched
group's activity or, for unmatched queries, "no group" (class weight ``no_group_weight``, 0.1 as
in DETR); plus, for the matched queries, ``w_bce`` x membership BCE and ``w_dice`` x dice loss.

**Prediction** (:func:`predict_groups`): a query predicts a group when its most probable class is
not "no group"; its members are the individuals with membership probability > 0.5 (a group with
no member is dropped).

**Evaluation** (:func:`evaluate`):

* group-detection F1: a predicted group is a true positive when it is one-to-one matched to a
  gold group with IoU(members) >= 0.5 (the "half" criterion of group detection; the one-to-one
  matching maximises the number of such pairs, ``linear_sum_assignment`` on -1[IoU >= 0.5]);
  precision = TP / predicted groups, recall = TP / gold groups, F1 their harmonic mean, pooled over
  scenes. Duplicated groups (two queries on one group) count as false positives.
* activity accuracy: over gold groups, the share whose query (Hungarian-matched as in training)
  predicts the gold activity among the C activities (the "no group" class excluded) -- activity
  recognition separated from detection.

**Training recipe** (:func:`train_set_decoder`, :class:`TrainingSettings`): AdamW (lr 2e-3,
weight decay 1e-4), batch 64, linear warm-up over 5 % of the steps then cosine decay, gradient
clipping at 1.0, a seeded shuffle; 30 epochs over the 1,600 training scenes by default (750 steps;
about 20-40 s on one idle CPU core for the default model, several times that on a loaded one).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..data.social_scenes import ACTIVITIES, FEATURE_DIM, Scene, load_scenes, scene_features
from .model import SetDecoder, SetDecoderConfig, SetDecoderOutput

__all__ = [
    "SceneBatch",
    "collate",
    "MatchWeights",
    "match_costs",
    "batch_match_costs",
    "match_batch",
    "hungarian_match",
    "set_loss",
    "predict_groups",
    "group_detection_counts",
    "evaluate",
    "TrainingSettings",
    "train_set_decoder",
    "save_set_decoder",
    "load_set_decoder",
    "model_dir",
    "design_name",
]


# -- batching -----------------------------------------------------------------------------------


@dataclass
class SceneBatch:
    """Scenes padded to their largest: ``features`` (B, N, F), ``attention_mask`` (B, N) bool,
    ``membership`` (B, N) long (gold group index, -1 on padding), and the scenes."""

    features: torch.Tensor
    attention_mask: torch.Tensor
    membership: torch.Tensor
    scenes: list[Scene]

    def inputs(self) -> dict[str, torch.Tensor]:
        """The model's keyword inputs (what :func:`attnexplain.capture` takes)."""
        return {"features": self.features, "attention_mask": self.attention_mask}

    def __len__(self) -> int:
        return len(self.scenes)


def collate(scenes: Sequence[Scene], *, dtype: torch.dtype = torch.float32) -> SceneBatch:
    """Pad scenes on the right into one :class:`SceneBatch`."""
    scenes = list(scenes)
    if not scenes:
        raise ValueError("no scenes to batch")
    n = max(s.n for s in scenes)
    feats = torch.zeros(len(scenes), n, FEATURE_DIM, dtype=dtype)
    mask = torch.zeros(len(scenes), n, dtype=torch.bool)
    memb = torch.full((len(scenes), n), -1, dtype=torch.long)
    for b, s in enumerate(scenes):
        feats[b, : s.n] = torch.tensor(scene_features(s), dtype=dtype)
        mask[b, : s.n] = True
        memb[b, : s.n] = torch.tensor(s.membership())
    return SceneBatch(feats, mask, memb, scenes)


# -- matching and loss ---------------------------------------------------------------------------


@dataclass
class MatchWeights:
    cls: float = 1.0
    bce: float = 2.0
    dice: float = 2.0
    no_group_weight: float = 0.1


def _gold_masks(scene: Scene, n: int, device: torch.device) -> torch.Tensor:
    """(G, n) float: 1 where individual j is in gold group g (columns past scene.n are 0)."""
    y = torch.zeros(len(scene.groups), n, device=device)
    for g, members in enumerate(scene.groups):
        y[g, members] = 1.0
    return y


def match_costs(member_logits: torch.Tensor, activity_logits: torch.Tensor, scene: Scene,
                weights: MatchWeights | None = None) -> torch.Tensor:
    """(Q, G) matching cost of one scene (module docstring). ``member_logits`` (Q, N),
    ``activity_logits`` (Q, C + 1); only the scene's first ``scene.n`` individuals count."""
    w = weights or MatchWeights()
    n = scene.n
    dtype = torch.promote_types(member_logits.dtype, torch.float32)
    logits = member_logits[:, :n].to(dtype)
    y = _gold_masks(scene, n, logits.device).to(dtype)  # (G, n)
    prob = torch.softmax(activity_logits.to(dtype), -1)[:, scene.activities]  # (Q, G)
    # BCE(l, y) = softplus(l) - l y, averaged over the n individuals
    bce = (nn.functional.softplus(logits).sum(-1, keepdim=True) - logits @ y.T) / n
    p = torch.sigmoid(logits)
    dice = 1 - (2 * p @ y.T + 1) / (p.sum(-1, keepdim=True) + y.sum(-1)[None] + 1)
    return -w.cls * prob + w.bce * bce + w.dice * dice


def hungarian_match(cost: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of gold groups (columns) to queries (rows):
    ``(query indices, group indices)``, sorted by group. Needs Q >= G."""
    c = cost.detach().cpu().numpy() if isinstance(cost, torch.Tensor) else np.asarray(cost)
    if c.ndim != 2:
        raise ValueError(f"cost must be a (queries, groups) matrix, got shape {c.shape}")
    if c.shape[0] < c.shape[1]:
        raise ValueError(f"{c.shape[1]} gold groups but only {c.shape[0]} queries: use at least as many queries "
                         "as the most groups a scene has")
    rows, cols = linear_sum_assignment(c)
    order = np.argsort(cols)
    return rows[order], cols[order]


def _gold_batch(batch: SceneBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Y (B, G, N) float gold member masks, activities (B, G) long, valid (B, G) bool)``, G the
    most groups of a scene in the batch (missing groups: all-zero rows, not valid)."""
    G = max(len(s.groups) for s in batch.scenes)
    memb = batch.membership.to(device)
    Y = (memb[:, None, :] == torch.arange(G, device=device)[None, :, None]).float()
    acts = torch.zeros(len(batch), G, dtype=torch.long, device=device)
    valid = torch.zeros(len(batch), G, dtype=torch.bool, device=device)
    for b, s in enumerate(batch.scenes):
        acts[b, : len(s.activities)] = torch.as_tensor(s.activities, dtype=torch.long)
        valid[b, : len(s.activities)] = True
    return Y, acts, valid


def batch_match_costs(out: SetDecoderOutput, batch: SceneBatch, weights: MatchWeights | None = None) -> torch.Tensor:
    """(B, Q, G) matching costs of a whole batch, the formula of :func:`match_costs` (columns past
    a scene's own groups are meaningless). Exact for padded batches: padding individuals have member
    logit -1e4, so they add nothing to the sums, and each scene's BCE is divided by its own N_b."""
    w = weights or MatchWeights()
    dtype = torch.promote_types(out.member_logits.dtype, torch.float32)
    logits = out.member_logits.to(dtype)
    Y, acts, _ = _gold_batch(batch, logits.device)
    Y = Y.to(dtype)
    n_real = batch.attention_mask.to(logits.device).to(dtype).sum(-1)  # (B,)
    prob = torch.gather(torch.softmax(out.activity_logits.to(dtype), -1), 2,
                        acts[:, None, :].expand(-1, logits.shape[1], -1))  # (B, Q, G)
    real = batch.attention_mask.to(logits.device)[:, None, :]
    sp = torch.where(real, nn.functional.softplus(logits), torch.zeros_like(logits)).sum(-1, keepdim=True)
    bce = (sp - logits @ Y.transpose(1, 2)) / n_real[:, None, None]
    p = torch.sigmoid(logits)
    dice = 1 - (2 * p @ Y.transpose(1, 2) + 1) / (p.sum(-1, keepdim=True) + Y.sum(-1)[:, None, :] + 1)
    return -w.cls * prob + w.bce * bce + w.dice * dice


def match_batch(out: SetDecoderOutput, batch: SceneBatch, weights: MatchWeights | None = None
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hungarian matching of every scene of a batch (no gradient); one cost tensor for the batch."""
    with torch.no_grad():
        cost = batch_match_costs(out, batch, weights).detach().cpu().numpy()
    return [hungarian_match(cost[b, :, : len(s.groups)]) for b, s in enumerate(batch.scenes)]


def set_loss(out: SetDecoderOutput, batch: SceneBatch, weights: MatchWeights | None = None,
             matches: list[tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The set-prediction loss of a batch (module docstring); returns ``(loss, parts)``."""
    w = weights or MatchWeights()
    matches = match_batch(out, batch, w) if matches is None else matches
    B, Q, C1 = out.activity_logits.shape
    device = out.activity_logits.device
    Y, acts, _ = _gold_batch(batch, device)
    b_idx = torch.as_tensor(np.concatenate([np.full(len(qi), b) for b, (qi, _) in enumerate(matches)]), dtype=torch.long,
                            device=device)
    q_idx = torch.as_tensor(np.concatenate([qi for qi, _ in matches]), dtype=torch.long, device=device)
    g_idx = torch.as_tensor(np.concatenate([gi for _, gi in matches]), dtype=torch.long, device=device)
    target = torch.full((B, Q), C1 - 1, dtype=torch.long, device=device)
    target[b_idx, q_idx] = acts[b_idx, g_idx]
    logits = out.member_logits[b_idx, q_idx]  # (M, N)
    y = Y[b_idx, g_idx].to(logits.dtype)
    real = batch.attention_mask.to(device)[b_idx].to(logits.dtype)
    bce_all = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    bce = ((bce_all * real).sum(-1) / real.sum(-1)).mean()
    p = torch.sigmoid(logits) * real
    dice = (1 - (2 * (p * y).sum(-1) + 1) / (p.sum(-1) + y.sum(-1) + 1)).mean()
    class_w = torch.ones(C1, device=device)
    class_w[-1] = w.no_group_weight
    ce = nn.functional.cross_entropy(out.activity_logits.reshape(B * Q, C1).float(), target.reshape(-1), weight=class_w)
    loss = w.cls * ce + w.bce * bce + w.dice * dice
    return loss, {"ce": float(ce.detach()), "bce": float(bce.detach()), "dice": float(dice.detach()),
                  "loss": float(loss.detach())}


# -- prediction and evaluation -------------------------------------------------------------------


def predict_groups(out: SetDecoderOutput, batch: SceneBatch, *, threshold: float = 0.5
                   ) -> list[list[tuple[int, list[int], int]]]:
    """Per scene, the predicted groups ``(query, members, activity)`` (module docstring)."""
    member = (out.member_probs > threshold).cpu().numpy()
    act = out.activity_probs.argmax(-1).cpu().numpy()
    no_group = out.activity_logits.shape[-1] - 1
    result = []
    for b, s in enumerate(batch.scenes):
        groups = []
        for q in np.nonzero(act[b] != no_group)[0]:
            members = np.nonzero(member[b, q, : s.n])[0].tolist()
            if members:
                groups.append((int(q), members, int(act[b, q])))
        result.append(groups)
    return result


def iou(a: Sequence[int], b: Sequence[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def group_detection_counts(pred: Sequence[Sequence[int]], gold: Sequence[Sequence[int]], *, min_iou: float = 0.5
                           ) -> tuple[int, int, int]:
    """``(true positives, predicted, gold)`` of one scene: one-to-one matching of predicted and
    gold groups maximising the number of pairs with IoU >= ``min_iou``."""
    if not pred or not gold:
        return 0, len(pred), len(gold)
    hit = np.array([[iou(p, g) >= min_iou for g in gold] for p in pred], dtype=float)
    rows, cols = linear_sum_assignment(-hit)
    return int(hit[rows, cols].sum()), len(pred), len(gold)


def f1_from_counts(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


@torch.no_grad()
def evaluate(model: SetDecoder, scenes: Sequence[Scene], *, batch_size: int = 64,
             weights: MatchWeights | None = None) -> dict[str, Any]:
    """Group-detection precision / recall / F1 and activity accuracy (module docstring), and the
    mean loss, over ``scenes``."""
    model.eval()
    tp = n_pred = n_gold = 0
    correct = total = 0
    losses = []
    for start in range(0, len(scenes), batch_size):
        batch = collate(scenes[start : start + batch_size])
        out = model(**batch.inputs())
        matches = match_batch(out, batch, weights)
        losses.append(set_loss(out, batch, weights, matches)[1]["loss"] * len(batch))
        act = out.activity_logits[..., :-1].argmax(-1)
        for b, (s, groups, (qi, gi)) in enumerate(zip(batch.scenes, predict_groups(out, batch), matches)):
            t, p, g = group_detection_counts([m for _, m, _ in groups], s.groups)
            tp, n_pred, n_gold = tp + t, n_pred + p, n_gold + g
            for q, gg in zip(qi, gi):
                correct += int(int(act[b, q]) == s.activities[gg])
                total += 1
    res = f1_from_counts(tp, n_pred, n_gold)
    res.update({"activity_accuracy": correct / total if total else 0.0, "loss": sum(losses) / max(1, len(scenes)),
                "scenes": len(scenes), "gold_groups": n_gold, "predicted_groups": n_pred, "true_positives": tp})
    return res


# -- training ------------------------------------------------------------------------------------


@dataclass
class TrainingSettings:
    epochs: float = 30.0
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    clip: float = 1.0
    seed: int = 0
    train_limit: int | None = None


def design_name(config: SetDecoderConfig) -> str:
    """``"<query_init>-<sa|nosa>-q<Q>"``, e.g. ``learned-sa-q24``."""
    return f"{config.query_init}-{'sa' if config.query_self_attention else 'nosa'}-q{config.num_queries}"


def model_dir(config: SetDecoderConfig, settings: TrainingSettings, out_dir: str | Path | None = None) -> Path:
    """Where a trained model is cached: ``<out_dir or cache_dir()/"models">/set-decoder-<design>-e<epochs>-s<seed>``."""
    from ..models import cache_dir

    base = Path(out_dir) if out_dir is not None else cache_dir() / "models"
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"set-decoder-{design_name(config)}-e{settings.epochs:g}-s{settings.seed}")
    return base / tag


def _fit(model: SetDecoder, scenes: Sequence[Scene], s: TrainingSettings, weights: MatchWeights,
         progress: bool = False) -> dict[str, Any]:
    per_epoch = math.ceil(len(scenes) / s.batch_size)
    planned = max(1, math.ceil(s.epochs * per_epoch))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "query_embed" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr)
    warm = max(1, int(s.warmup_frac * planned))

    def lr_at(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warm) / max(1, planned - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(s.seed)
    model.train()
    step, losses, first = 0, [], None
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=planned, desc=f"train {design_name(model.config)}", leave=False)
    while step < planned:
        order = torch.randperm(len(scenes), generator=gen).tolist()
        for b in range(0, len(order), s.batch_size):
            batch = collate([scenes[i] for i in order[b : b + s.batch_size]])
            out = model(**batch.inputs())
            loss, _ = set_loss(out, batch, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), s.clip)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            if first is None:
                first = losses[-1]
            if bar is not None:
                bar.update(1)
            if step >= planned:
                break
    if bar is not None:
        bar.close()
    model.eval()
    tail = losses[-per_epoch:]
    return {"steps": step, "epochs_done": step / per_epoch, "train_seconds": time.perf_counter() - start,
            "first_loss": first, "final_loss": sum(tail) / len(tail), "losses": losses}


def train_set_decoder(
    config: SetDecoderConfig | None = None,
    settings: TrainingSettings | None = None,
    *,
    train_scenes: Sequence[Scene] | None = None,
    eval_scenes: Sequence[Scene] | None = None,
    weights: MatchWeights | None = None,
    out_dir: str | Path | None = None,
    save: bool = True,
    reuse: bool = True,
    progress: bool = False,
) -> tuple[SetDecoder, dict[str, Any]]:
    """Train a :class:`SetDecoder` on the social scenes (or ``train_scenes``) and evaluate it on
    the validation split (or ``eval_scenes``).

    The model is cached in :func:`model_dir` (outside the repository); with ``reuse`` an existing
    folder with the same configuration and settings is loaded instead of training again.
    ``torch.manual_seed(settings.seed)`` fixes the initialisation. Returns ``(model (eval mode),
    metrics)``; metrics hold the training summary (``first_loss``, ``final_loss``, ``steps``,
    ``train_seconds``) and :func:`evaluate`'s numbers on the evaluation scenes.
    """
    config = config or SetDecoderConfig()
    settings = settings or TrainingSettings()
    weights = weights or MatchWeights()
    if config.feature_dim != FEATURE_DIM or config.num_activities != len(ACTIVITIES):
        if train_scenes is None:
            raise ValueError(f"the social scenes have {FEATURE_DIM} features and {len(ACTIVITIES)} activities; "
                             f"the config says {config.feature_dim} and {config.num_activities}")
    path = model_dir(config, settings, out_dir)
    if reuse and save and train_scenes is None and (path / "set_decoder.json").exists():
        try:
            model, meta = load_set_decoder(path)
            if meta.get("config") == config.to_dict() and meta.get("settings") == asdict(settings):
                return model, meta["metrics"]
        except (OSError, ValueError, KeyError, RuntimeError):
            pass  # a stale or broken folder: train again
    if train_scenes is None:
        train_scenes = load_scenes("train", limit=settings.train_limit)
    if eval_scenes is None:
        eval_scenes = load_scenes("validation")
    max_groups = max(len(s.groups) for s in train_scenes)
    if config.num_queries < max_groups:
        raise ValueError(f"num_queries={config.num_queries} but a training scene has {max_groups} groups; "
                         f"use num_queries >= {max_groups}")
    torch.manual_seed(settings.seed)
    model = SetDecoder(config)
    fit = _fit(model, list(train_scenes), settings, weights, progress)
    metrics = {k: v for k, v in fit.items() if k != "losses"}
    metrics.update({f"eval_{k}": v for k, v in evaluate(model, eval_scenes, weights=weights).items()})
    metrics["design"] = design_name(config)
    metrics["torch_threads"] = torch.get_num_threads()
    if save:
        save_set_decoder(model, path, settings=settings, metrics=metrics)
        metrics["path"] = str(path)
    return model, metrics


def save_set_decoder(model: SetDecoder, path: str | Path, *, settings: TrainingSettings | None = None,
                     metrics: dict[str, Any] | None = None) -> Path:
    """Write ``model.pt`` (state dict) and ``set_decoder.json`` (config, settings, metrics)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "model.pt")
    meta = {"config": model.config.to_dict(), "settings": asdict(settings) if settings else None,
            "metrics": metrics or {}}
    tmp = path / "set_decoder.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    tmp.replace(path / "set_decoder.json")
    return path


def load_set_decoder(path: str | Path) -> tuple[SetDecoder, dict[str, Any]]:
    """``(model (eval mode), metadata)`` from a folder written by :func:`save_set_decoder`."""
    path = Path(path)
    meta_file = path / "set_decoder.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} has no set_decoder.json: not a folder written by train_set_decoder / "
                                "save_set_decoder")
    meta = json.loads(meta_file.read_text())
    model = SetDecoder(SetDecoderConfig(**meta["config"]))
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    return model.eval(), meta

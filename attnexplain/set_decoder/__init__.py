"""The learned-query set decoder: DETR-style set prediction of social groups, explained with the
same capture tools as every other model (issue 19; formulas in the submodules' docstrings).

* data: :mod:`attnexplain.data.social_scenes` (synthetic scenes, gold groups known by construction);
* model: :class:`SetDecoder` (:mod:`.model`): Q learned (or input-conditioned) queries
  cross-attending to the encoded individuals, with or without self-attention among the queries;
  member scores and an activity class (+ "no group") per query. Its attention runs through the
  attention-backend registry, so capture, interventions and backend swaps work as for HF models;
* training: :func:`train_set_decoder` (:mod:`.train`): Hungarian matching, set loss, cached in
  ``cache_dir()/"models"``; :func:`evaluate` gives group-detection F1 and activity accuracy;
* explanation: :mod:`.explain`: capture, per-query scores of each method (raw / effective
  cross-attention, rollout across decoder layers), membership AUPRC, ERASER faithfulness.

Public use::

    from attnexplain import set_decoder as sd
    model, metrics = sd.train_set_decoder(sd.SetDecoderConfig(num_queries=24))   # or sd.load_set_decoder(path)
    batch = sd.collate(sd.load_scenes("test", limit=8))
    out = model(**batch.inputs())                       # member_logits (B, Q, N), activity_logits (B, Q, C+1)
    cap = sd.capture_scenes(model, batch)               # attnexplain.CaptureResult
    cap.attention(1, stack="decoder", kind="cross")     # (B, H, Q, N)
"""

from ..data.social_scenes import ACTIONS, ACTIVITIES, MAX_GROUPS, Scene, generate_scenes, load_scenes, rule_groups
from .model import QUERY_INITS, SetAttention, SetDecoder, SetDecoderConfig, SetDecoderOutput
from .train import (
    MatchWeights,
    SceneBatch,
    TrainingSettings,
    collate,
    design_name,
    evaluate,
    hungarian_match,
    load_set_decoder,
    match_costs,
    model_dir,
    predict_groups,
    save_set_decoder,
    set_loss,
    train_set_decoder,
)
from .explain import capture_scenes, cross_attention_maps, query_rollout

__all__ = [
    "ACTIONS", "ACTIVITIES", "MAX_GROUPS", "Scene", "generate_scenes", "load_scenes", "rule_groups",
    "QUERY_INITS", "SetAttention", "SetDecoder", "SetDecoderConfig", "SetDecoderOutput",
    "MatchWeights", "SceneBatch", "TrainingSettings", "collate", "design_name", "evaluate", "hungarian_match",
    "load_set_decoder", "match_costs", "model_dir", "predict_groups", "save_set_decoder", "set_loss",
    "train_set_decoder", "capture_scenes", "cross_attention_maps", "query_rollout",
]

"""Small transformer classifiers running efficient attention mechanisms, trained here, explained
with the same capture tools as pretrained models (formulas: docs/methods.md, "Trained attention
mechanisms").

Mechanisms (:mod:`.attention`): standard softmax attention (control), Optimised / Efficient /
Super attention (Hosseini & Hosseini 2024) and element-wise attention (Feng 2025). Classifier:
:class:`EfficientTransformerClassifier`. Training recipe and comparison: :mod:`.train`.
"""

from .attention import (
    ATTENTION_MECHANISMS,
    EfficientAttention,
    ElementwiseAttention,
    OptimisedAttention,
    StandardAttention,
    SuperAttention,
    attention_param_formula,
    count_parameters,
    make_attention,
)
from .classifier import EfficientTransformerClassifier
from .train import (
    TextEncoder,
    compare_mechanisms,
    load_efficient_classifier,
    load_texts,
    train_efficient_classifier,
)

__all__ = [
    "ATTENTION_MECHANISMS",
    "StandardAttention",
    "OptimisedAttention",
    "EfficientAttention",
    "SuperAttention",
    "ElementwiseAttention",
    "make_attention",
    "attention_param_formula",
    "count_parameters",
    "EfficientTransformerClassifier",
    "TextEncoder",
    "load_texts",
    "train_efficient_classifier",
    "load_efficient_classifier",
    "compare_mechanisms",
]

"""Training: fine-tune the packaged MiniLM into the default classifiers, or train tiny models."""

from .finetune import CLASSIFIERS, TINY_TASKS, prepare_classifier, prepare_tiny
from .seq2seq import SEQ2SEQ_RECIPES, prepare_seq2seq

__all__ = ["CLASSIFIERS", "TINY_TASKS", "SEQ2SEQ_RECIPES", "prepare_classifier", "prepare_tiny", "prepare_seq2seq"]

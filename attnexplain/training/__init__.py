"""Training: fine-tune the packaged MiniLM into the default classifiers, or train tiny models."""

from .finetune import CLASSIFIERS, TINY_TASKS, prepare_classifier, prepare_tiny

__all__ = ["CLASSIFIERS", "TINY_TASKS", "prepare_classifier", "prepare_tiny"]

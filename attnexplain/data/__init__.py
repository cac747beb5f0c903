"""Data sets for attnexplain: user files, built-in corpora, synthetic tasks with gold rationales."""

from .loaders import SPLITS, DatasetError, Example, TextDataset, list_datasets, load_dataset, split_of

__all__ = ["SPLITS", "DatasetError", "Example", "TextDataset", "list_datasets", "load_dataset", "split_of"]

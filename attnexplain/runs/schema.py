"""The run-folder format (docs/run-format.md) in code: version, file names, the fields that must agree
to resume or merge, the Arrow schema of each table, the errors of the storage layer, and the
comparison of two manifests."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import AttnExplainError




FORMAT_VERSION = 1
TABLES = ("examples", "tokens", "faithfulness", "heads")
MANIFEST = "manifest.json"
SHARDS = "shards"
ATTENTION = "attention"
_META_KEY = b"attnexplain"

#: manifest fields that must be equal to resume into (or merge) a run folder
COMPAT_KEYS = (
    "model", "task", "dataset", "split", "limit", "shard", "backend", "backend_options", "methods",
    "faithfulness", "head_ablation", "label_map", "max_length", "store_attention", "seed",
    "text_column", "label_column", "text_pair_column", "generation",
)
_REQUIRED_MANIFEST = ("format_version", "model", "dataset", "methods", "status")
#: the manifest ``task`` of a generation run (``analyze --task generation``): its tables carry the
#: columns of :data:`GENERATION_COLUMNS` besides the classifier ones
GENERATION_TASK = "generation"
#: extra columns of each table in a generation run (one token-table row per generated token x visible token x method)
GENERATION_COLUMNS = {
    "examples": (("generated_text", "string"), ("generated_tokens", "list<string>"), ("step_probs", "list<float32>"),
                 ("n_generated", "int32")),
    "tokens": (("step", "int32"), ("generated_token", "string"), ("step_prob", "float32"), ("is_prompt", "bool")),
    "faithfulness": (("step", "int32"),),
    "heads": (),
}


class RunFormatError(AttnExplainError, ValueError):
    """A folder is not a readable run folder of this format version (the message says why)."""


class RunMismatchError(AttnExplainError, ValueError):
    """A run folder holds a different run than the one asked for (the message names the difference)."""


class RunLockedError(AttnExplainError, RuntimeError):
    """Another process is writing this run folder."""


class RunPathError(AttnExplainError, ValueError):
    """A run name that would leave the runs folder (``..``, an absolute path, a symlink out)."""


def table_schema(table: str, methods: Iterable[str] = (), task: str | None = None):
    """The pyarrow schema of ``table`` (``examples`` depends on the methods of the run; a
    generation run, ``task == "generation"``, adds the columns of :data:`GENERATION_COLUMNS`)."""
    import pyarrow as pa

    base = _base_schema(table, methods)
    if task != GENERATION_TASK:
        return base
    types = {"string": pa.string(), "int32": pa.int32(), "float32": pa.float32(), "bool": pa.bool_(),
             "list<string>": pa.list_(pa.string()), "list<float32>": pa.list_(pa.float32())}
    extra = [pa.field(n, types[t]) for n, t in GENERATION_COLUMNS[table]]
    if table == "examples":
        return pa.schema(list(base) + extra)
    # tokens / faithfulness: the step right after the example id (rows are read per example and step)
    return pa.schema([base.field(0)] + extra + list(base)[1:])


def _base_schema(table: str, methods: Iterable[str] = ()):
    import pyarrow as pa

    if table == "examples":
        fields = [
            ("example_id", pa.string()), ("index", pa.int64()), ("text", pa.string()), ("label", pa.int64()),
            ("label_name", pa.string()), ("pred", pa.int64()), ("pred_label", pa.string()),
            ("probs", pa.list_(pa.float32())), ("correct", pa.bool_()), ("n_tokens", pa.int32()),
            ("truncated", pa.bool_()),
        ]
        for m in methods:
            fields += [(f"comp_aopc__{m}", pa.float32()), (f"suff_aopc__{m}", pa.float32())]
        return pa.schema(fields)
    if table == "tokens":
        return pa.schema([("example_id", pa.string()), ("position", pa.int32()), ("token", pa.string()),
                          ("method", pa.string()), ("score", pa.float32())])
    if table == "faithfulness":
        return pa.schema([("example_id", pa.string()), ("method", pa.string()), ("metric", pa.string()),
                          ("k", pa.float32()), ("value", pa.float32())])
    if table == "heads":
        return pa.schema([("example_id", pa.string()), ("layer", pa.int32()), ("head", pa.int32()),
                          ("metric", pa.string()), ("value", pa.float32())])
    raise KeyError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")


def _to_table(data: Any, schema):
    """A pyarrow Table with exactly ``schema`` from a DataFrame, a dict of columns or a Table."""
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data.select(schema.names).cast(schema)
    if isinstance(data, Mapping):
        missing = [n for n in schema.names if n not in data]
        if missing:
            raise ValueError(f"missing columns {missing}")
        return pa.table({n: pa.array(_plain(data[n]), type=schema.field(n).type) for n in schema.names}, schema=schema)
    # pandas DataFrame
    return pa.Table.from_pandas(data[schema.names], schema=schema, preserve_index=False)


def _plain(col: Any) -> Any:
    if isinstance(col, np.ndarray) and col.dtype == np.float16:
        return col.astype(np.float32)
    return col


_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")


def attention_filename(example_id: str) -> str:
    """File name of an example's arrays: the id itself when it is a safe file name, else a hash.

    Ids with path separators, leading dots, odd characters or more than 151 characters are stored
    as ``~<sha1 of the id>.npz`` (the id is also saved inside the file as ``example_id``).
    """
    example_id = str(example_id)
    if _SAFE_ID.match(example_id):
        return f"{example_id}.npz"
    return f"~{hashlib.sha1(example_id.encode()).hexdigest()}.npz"


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def manifest_difference(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] = COMPAT_KEYS) -> list[str]:
    """Human-readable differences between two manifests on ``keys`` (empty when compatible)."""
    out = []
    for k in keys:
        a, b = _norm(old.get(k)), _norm(new.get(k))
        if a != b:
            out.append(f"{k}: {a!r} (in the folder) vs {b!r} (asked for)")
    return out

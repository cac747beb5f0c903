"""Merging complete runs of disjoint shards of one data set (``attnexplain merge``)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path


from .schema import ATTENTION, COMPAT_KEYS, MANIFEST, RunMismatchError, TABLES, manifest_difference
from .atomic_io import TEMP_PATTERN, _atomic_write, _log_stderr, _now, _write_json
from .reader import Run, _looks_like_run, open_run
from .writer import merge_tables


def _interrupted_merge(out: Path) -> bool:
    """``out`` holds only what a killed ``merge`` writes (tables, attention arrays, temp files, a
    manifest that is not complete): safe to delete and redo, with or without ``--force``."""
    import fnmatch
    import json

    if not out.is_dir() or out.is_symlink():
        return False
    ours = {f"{t}.parquet" for t in TABLES} | {MANIFEST, ATTENTION}
    for child in out.iterdir():
        if child.name in ours or fnmatch.fnmatch(child.name, TEMP_PATTERN):
            continue
        return False
    if (out / MANIFEST).is_file():
        try:
            if json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("status") == "complete":
                return False
        except (OSError, ValueError):
            pass
    return True


def merge_runs(paths: Iterable[str | os.PathLike], out: str | os.PathLike, *, force: bool = False,
               log: Callable[[str], None] | None = None) -> Run:
    """Merge complete runs of disjoint parts of one data set (``analyze --shard i/n``) into ``out``.

    The runs must agree on every :data:`COMPAT_KEYS` field except ``shard`` (else
    :class:`RunMismatchError` naming the difference) and share no example (else ``ValueError``).
    Tables are streamed in dataset order; attention arrays are copied. ``out`` must not exist or
    be empty, or hold a run and ``force`` be given.
    """
    log = log or _log_stderr
    runs = [open_run(p) for p in paths]
    if not runs:
        raise ValueError("give at least one run to merge")
    for r in runs:
        if not r.is_complete:
            raise RunMismatchError(f"{r.path} is not complete ({r.status}, {r.n_done} of {r.n_examples} examples); "
                                   f"finish it first (run the same analyze command again)")
    keys = [k for k in COMPAT_KEYS if k != "shard"]
    for r in runs[1:]:
        diff = manifest_difference(runs[0].manifest, r.manifest, keys)
        if diff:
            raise RunMismatchError(f"{r.path} and {runs[0].path} are not parts of the same run: "
                                   + "; ".join(d.replace("(in the folder)", f"({runs[0].name})").replace("(asked for)", f"({r.name})")
                                               for d in diff))
    out = Path(out)
    out_real = out.resolve()
    if any(r.path.resolve() == out_real for r in runs):
        raise ValueError(f"--out {out} is one of the runs being merged")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if (force and _looks_like_run(out)) or _interrupted_merge(out):
            if not force:
                log(f"[merge] {out} holds an interrupted merge (no complete manifest); merging again")
            shutil.rmtree(out)
        else:
            raise RunMismatchError(f"--out {out} already exists and is not empty"
                                   + ("; pass --force to replace it" if _looks_like_run(out) else ""))
    out.mkdir(parents=True, exist_ok=True)

    import pyarrow.parquet as pq

    def first_index(r: Run) -> int:
        t = pq.read_table(r.path / "examples.parquet", columns=["index"]).column("index")
        return min(t.to_pylist()) if t.length() else 0

    runs.sort(key=first_index)
    methods = runs[0].methods
    n = merge_tables({t: [r.path / f"{t}.parquet" for r in runs] for t in TABLES}, out, methods, runs[0].manifest.get("task"))
    (out / ATTENTION).mkdir(exist_ok=True)
    for r in runs:
        src = r.path / ATTENTION
        if src.is_dir():
            for f in src.glob("*.npz"):
                dst = out / ATTENTION / f.name
                _atomic_write(dst, lambda tmp, f=f: shutil.copyfile(f, tmp))
    shards = [r.manifest.get("shard") for r in runs]
    manifest = dict(runs[0].manifest)
    manifest.update({
        "shard": None, "status": "complete", "n_examples": n, "n_done": n, "created": _now(), "finished": _now(),
        "merged_from": [{"path": str(r.path), "shard": r.manifest.get("shard"), "n_examples": r.n_done} for r in runs],
        "command": list(sys.argv),
    })
    manifest.pop("resumed", None)
    _write_json(out / MANIFEST, manifest)
    total = {s.split("/")[1] for s in shards if s}
    if len(total) == 1:
        want = int(next(iter(total)))
        if len(set(shards)) < want:
            log(f"[merge] note: merged {len(set(shards))} of {want} shards ({', '.join(s for s in shards if s)})")
    return open_run(out)

"""Run folders for the dashboard: the runs folder, cached run reading, path safety and the run picker.

Run folders are read only through ``attnexplain.runs`` (open_run / list_runs / resolve_run and
the Run accessors). Reads are cached with keys (path, signature), where the signature holds the
modification times of the run's manifest and folders, so a run that changes on disk (a running
``analyze``) is read again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from attnexplain.dashboard.widgets import escape_md

RUNS_ENV = "ATTNEXPLAIN_RUNS_DIR"
ANALYZE_EXAMPLE = ("attnexplain analyze --model minilm-rotten-tomatoes --dataset rotten-tomatoes "
                   "--split test --limit 500 --out {runs_dir}/rotten-tomatoes-dense")


# ------------------------------------------------------------------------------------------
# runs folder and cached reading
# ------------------------------------------------------------------------------------------


def runs_dir() -> Path:
    """The folder the dashboard browses: ``$ATTNEXPLAIN_RUNS_DIR`` (set by ``attnexplain dashboard``) or ./runs."""
    return Path(os.environ.get(RUNS_ENV) or "runs").expanduser()


def analyze_command() -> str:
    return ANALYZE_EXAMPLE.format(runs_dir=str(runs_dir()).rstrip("/") or ".")


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def signature(path: Path | str) -> tuple[int, ...]:
    """Cache key part that changes when a run folder changes (manifest rewritten, shards, arrays)."""
    p = Path(path)
    return (_mtime(p), _mtime(p / "manifest.json"), _mtime(p / "shards"), _mtime(p / "attention"),
            _mtime(p / "examples.parquet"))


@st.cache_resource(show_spinner=False, max_entries=64)
def _open_cached(path: str, sig: tuple) -> Any:
    from attnexplain.runs import open_run

    return open_run(path)


def open_run_cached(path: Path | str) -> Any:
    """``attnexplain.runs.open_run`` cached by (path, signature); raises RunFormatError."""
    return _open_cached(str(path), signature(path))


def list_runs_cached(root: Path | None = None) -> list[Any]:
    """``attnexplain.runs.list_runs`` (cached per folder state): Run objects, broken ones with ``.error``."""
    root = root or runs_dir()
    if not root.is_dir():
        return []
    sig = tuple((c.name, signature(c)) for c in sorted(root.iterdir()) if not c.name.startswith("."))
    return _list_cached(str(root), sig)


@st.cache_resource(show_spinner=False, max_entries=8)
def _list_cached(root: str, sig: tuple) -> list[Any]:
    from attnexplain.runs import list_runs

    return list_runs(root)


@st.cache_data(show_spinner=False, max_entries=32)
def examples_table(path: str, sig: tuple) -> pd.DataFrame:
    return _open_cached(path, sig).examples()


@st.cache_data(show_spinner=False, max_entries=256)
def tokens_table(path: str, sig: tuple, example_id: str | None = None) -> pd.DataFrame:
    return _open_cached(path, sig).tokens(example_id)


@st.cache_data(show_spinner=False, max_entries=16)
def faithfulness_table(path: str, sig: tuple) -> pd.DataFrame:
    return _open_cached(path, sig).faithfulness()


@st.cache_data(show_spinner=False, max_entries=16)
def heads_table(path: str, sig: tuple, metric: str | None = None) -> pd.DataFrame:
    return _open_cached(path, sig).heads(metric=metric)


@st.cache_data(show_spinner=False, max_entries=32)
def stored_examples(path: str, sig: tuple) -> list[str]:
    return _open_cached(path, sig).stored_examples()


@st.cache_resource(show_spinner=False, max_entries=24)
def attention_arrays(path: str, sig: tuple, example_id: str) -> dict[str, np.ndarray] | None:
    """The stored arrays of one example only (cached without copying; never modified)."""
    return _open_cached(path, sig).attention(example_id)


class RunRef:
    """A run folder the user picked, with its cache key."""

    def __init__(self, run: Any):
        self.run = run
        self.path = str(run.path)
        self.sig = signature(run.path)
        self.name = run.name

    @property
    def manifest(self) -> dict:
        return self.run.manifest

    def examples(self) -> pd.DataFrame:
        return examples_table(self.path, self.sig)

    def tokens(self, example_id: str | None = None) -> pd.DataFrame:
        return tokens_table(self.path, self.sig, example_id)

    def faithfulness(self) -> pd.DataFrame:
        return faithfulness_table(self.path, self.sig)

    def heads(self, metric: str | None = None) -> pd.DataFrame:
        return heads_table(self.path, self.sig, metric)

    def stored(self) -> list[str]:
        return stored_examples(self.path, self.sig)

    def attention(self, example_id: str) -> dict[str, np.ndarray] | None:
        return attention_arrays(self.path, self.sig, example_id)

    @property
    def key(self) -> str:
        return f"{self.path}|{self.sig}"


# ------------------------------------------------------------------------------------------
# path safety and run selection
# ------------------------------------------------------------------------------------------


def _inside(p: Path, root_real: Path) -> bool:
    try:
        real = p.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return real == root_real or root_real in real.parents


def link_outside(path: Path | str, root: Path | str | None = None) -> str | None:
    """The first entry of the run folder ``path`` that resolves outside the runs folder, or None.

    Checks the folder itself and, recursively, every file and folder in it (``manifest.json``,
    the tables, ``attention/`` and its arrays, ``shards/``) with symlinks resolved; symlinked
    folders that stay inside are walked too (each real folder once, so link loops end). Returns
    the offending entry relative to ``path`` (``"."`` for the folder itself).
    """
    root_real = Path(root or runs_dir()).resolve()
    base = Path(path)
    if not _inside(base, root_real):
        return "."
    seen: set[Path] = set()
    stack = [base]
    while stack:
        folder = stack.pop()
        real = folder.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink() and not _inside(entry, root_real):
                return str(entry.relative_to(base))
            if entry.is_dir():
                stack.append(entry)
    return None


@st.cache_data(show_spinner=False, max_entries=256)
def _link_outside_cached(path: str, root: str, sig: tuple) -> str | None:
    return link_outside(path, root)


def refused_link(path: Path | str) -> str | None:
    """:func:`link_outside` for the current runs folder, cached by the run folder's signature."""
    return _link_outside_cached(str(path), str(runs_dir()), signature(path))


def safe_open(name: str, *, where: str = "the URL") -> RunRef | None:
    """Open ``RUNS_DIR/name``; refuse names or symlinks that leave RUNS_DIR, report broken runs. None on failure."""
    from attnexplain.runs import RunFormatError, RunPathError, resolve_run

    try:
        path = resolve_run(runs_dir(), name)
        bad = refused_link(runs_dir() / name)
        if bad is not None:
            raise RunPathError(f"{bad} is a symlink that leads outside the runs folder")
    except RunPathError as exc:
        st.error(f"Refused run \"{escape_md(name)}\" from {where}: it is not inside the runs folder "
                 f"{escape_md(runs_dir())} ({escape_md(exc)}).",
                 icon=":material/block:")
        return None
    try:
        return RunRef(open_run_cached(path))
    except RunFormatError as exc:
        st.error(f"Run \"{escape_md(name)}\" cannot be read: {escape_md(exc)}", icon=":material/error:")
        return None


def readable_runs() -> list[Any]:
    """Readable runs whose files all stay inside RUNS_DIR (see :func:`link_outside`)."""
    return [r for r in list_runs_cached() if r.ok and refused_link(r.path) is None]


def _query_run(param: str) -> str | None:
    value = st.query_params.get(param)
    if isinstance(value, list):
        value = value[0] if value else None
    return value or None


def _written(param: str) -> set[str]:
    return st.session_state.setdefault("ax_url_written", {}).setdefault(param, set())


def write_url_param(param: str, value: str) -> None:
    """Write ``?param=value`` and remember that this session wrote it (see :func:`stale_url_value`)."""
    _written(param).add(value)
    if st.query_params.get(param) != value:
        st.query_params[param] = value


def stale_url_value(param: str, value: str | None, current: str | None) -> bool:
    """True when ``value`` (read from ``?param=``) is one this session wrote earlier and has since replaced.

    The browser sends its query string with every rerun; a rerun requested before the browser applied
    the page's last URL change carries the old value. Such a value is not a request from the user (a
    value typed or pasted into the URL was never written by this session) and is ignored.
    """
    return value is not None and value != current and value in _written(param)


def pick_run(label: str = "Run", *, param: str = "run", state: str = "ax_run", key: str = "run_select",
             exclude: str | None = None) -> RunRef | None:
    """Run chooser: from ``?run=NAME`` (checked against RUNS_DIR) or a select box of readable runs.

    The choice is kept in session state across pages and written back to the URL.
    """
    runs = readable_runs()
    names = [r.name for r in runs]
    requested = _query_run(param)
    if stale_url_value(param, requested, st.session_state.get(state)):
        requested = None
    if requested is not None and requested != st.session_state.get(f"{state}_url_ok"):
        ref = safe_open(requested, where=f"the URL (?{param}=)")
        if ref is not None:
            st.session_state[state] = ref.name if ref.name in names else requested
            st.session_state[f"{state}_url_ok"] = requested
        else:
            st.query_params.pop(param, None)
    if not names:
        st.info(f"No readable runs in {escape_md(runs_dir())}. Make one with:")
        st.code(analyze_command(), language="bash")
        return None
    options = [n for n in names if n != exclude] or names
    current = st.session_state.get(state)
    index = options.index(current) if current in options else 0
    choice = st.selectbox(label, options, index=index, key=key)
    st.session_state[state] = choice
    if st.query_params.get(param) != choice:
        st.session_state[f"{state}_url_ok"] = choice
    write_url_param(param, choice)
    ref = safe_open(choice, where="the run list")
    return ref

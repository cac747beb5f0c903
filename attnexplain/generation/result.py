"""What :func:`attnexplain.generate` returns: a capture of a whole generation, step by step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..capturing.result import CaptureResult

__all__ = ["GenerationResult"]


@dataclass
class GenerationResult(CaptureResult):
    """Prompt + generated tokens, every captured layer's attention for every generated step, step scores.

    A :class:`~attnexplain.capturing.CaptureResult` of one teacher-forced forward pass over the
    prompt and the generated tokens (tested equal, row by row, to step-by-step decoding and to
    ``generate(output_attentions=True)`` of an eager copy), so every accessor of a capture works:
    ``attention(layer)``, ``values``, ``value_transforms``, ``effective_attention``,
    ``to_dataframe``, ``example``.

    Layout. Decoder-only models (``is_encoder_decoder=False``): ``input_ids`` (B, P + N) is the
    left-padded prompt (width P) followed by the N generated tokens; generated token ``t`` is
    predicted at position ``P - 1 + t`` (:meth:`readout_position`). Encoder-decoder models:
    ``input_ids`` / ``attention_mask`` are the encoder input (stack ``"encoder"``), the decoder
    runs on ``decoder_input_ids`` (B, 1 + N) = start token + generated tokens (stack
    ``"decoder"``, kinds ``"self"`` and ``"cross"``); token ``t`` is predicted at decoder position ``t``.

    Attributes (besides the capture's):
        prompts: the prompt texts.
        prompt_length: P, the padded prompt width (encoder width for encoder-decoder models).
        generated_ids: (B, N) generated (or forced) token ids; after a sequence's end, the pad id.
        generated_mask: (B, N) bool, True for the tokens of each continuation (through its first
            end-of-sequence token). ``attention_mask`` is 0 after that end (decoder-only).
        step_log_probs / step_probs / step_entropy: (B, N) float32: ``log p(y_t | x, y_<t)``, its
            exponential and the entropy ``-sum_v p_v log p_v`` (nats) of the model's distribution at
            step t (the model's own softmax, before any sampling processors such as temperature).
        top_ids / top_probs: (B, N, k) the k most probable tokens at each step and their probabilities.
        generated_tokens / top_tokens: readable strings (no ``Ġ``/``▁`` markers) of the above.
        generated_texts: the decoded continuations.
        forced: True when the continuation was given (``target=``) instead of generated.
        position_ids: (B, P + N) the positions the decoder-only forward used (left padding aware).
        decoder_input_ids: (B, 1 + N) for encoder-decoder models, else None.
        logits: (B, N, V) the logits at the N readout positions (``probs`` is the last step's).
    """

    prompts: list[str] = field(default_factory=list)
    prompt_length: int = 0
    generated_ids: torch.Tensor | None = None
    generated_mask: torch.Tensor | None = None
    step_log_probs: torch.Tensor | None = None
    step_probs: torch.Tensor | None = None
    step_entropy: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_probs: torch.Tensor | None = None
    generated_tokens: list[list[str]] = field(default_factory=list)
    top_tokens: list[list[list[str]]] = field(default_factory=list)
    generated_texts: list[str] = field(default_factory=list)
    forced: bool = False
    is_encoder_decoder: bool = False
    position_ids: torch.Tensor | None = None
    decoder_input_ids: torch.Tensor | None = None
    decoder_tokens: list[list[str]] = field(default_factory=list)
    #: ``generate(defer_last_step=True)``: the step feeding the last generated token, not run yet
    #: (run by the first read of ``records``); None once run or when there is none
    pending_last_step: Any = field(default=None, repr=False, compare=False)

    # -- steps ----------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """N, the number of generated positions (the longest continuation)."""
        return 0 if self.generated_ids is None else int(self.generated_ids.shape[1])

    def steps(self, example: int) -> list[int]:
        """The steps of ``example`` that belong to its continuation (through its end token)."""
        return self.generated_mask[example].nonzero().flatten().tolist()

    def readout_position(self, step: int) -> int:
        """The (padded) position whose output predicts generated token ``step``: ``P - 1 + step``
        for decoder-only models, decoder position ``step`` for encoder-decoder models."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} out of range: {self.num_steps} generated steps")
        return step if self.is_encoder_decoder else self.prompt_length - 1 + step

    def step_attention(self, step: int, layer: int, *, kind: str = "self") -> torch.Tensor:
        """(B, H, m) the attention row that predicted token ``step``: over the prompt and the
        tokens generated before it (decoder-only; ``m = P + step``), over the decoder's earlier
        positions (encoder-decoder ``kind="self"``; ``m = step + 1``) or over the encoder tokens
        (``kind="cross"``). This is the row ``generate(output_attentions=True)`` returns at that step."""
        r = self.readout_position(step)
        stack = "decoder" if self.is_encoder_decoder else None
        A = self.attention(layer, stack=stack, kind=kind)
        if kind == "cross":
            return A[:, :, r, :]
        return A[:, :, r, : r + 1]

    def step_view(self, step: int, *, values: bool = True) -> CaptureResult:
        """A decoder-only capture cut to what the prediction of token ``step`` sees: positions
        ``0 .. readout_position(step)`` (queries and keys), so its last position is the readout
        row. Explanation methods run on it unchanged (their ``"last"`` readout is this row);
        because attention is causal, those rows are exactly the rows of a forward over the
        shorter sequence, and effective attention's value space only spans the keys the row can see.

        ``values=False``: the view holds no value vectors (enough for raw attention, rollout and
        flow); it then reads the rows without running a deferred last step (``pending_last_step``)."""
        if self.is_encoder_decoder:
            raise ValueError("step_view is for decoder-only generations; use step_attention(kind='cross'/'self')")
        r = self.readout_position(step) + 1
        mask = self.attention_mask[:, :r]
        held = self.__dict__["_records"] if not values else self.records
        records = {
            key: [dataclasses.replace(rec, probs=(rec.probs.to_dense() if rec.probs.is_sparse else rec.probs)[:, :, :r, :r],
                                      values=None if (rec.values is None or not values) else rec.values[:, :, :r],
                                      key_mask=mask.bool().to(rec.probs.device), key_mask_known=True) for rec in recs]
            for key, recs in held.items()
        }
        return CaptureResult(
            input_ids=self.input_ids[:, :r], attention_mask=mask,
            tokens=[[t for t, keep in zip(self._all_tokens(i), mask[i].tolist()) if keep] for i in range(mask.shape[0])],
            logits=None if self.logits is None else self.logits[:, step: step + 1],
            labels=None, records=records, sites=self.sites, out_proj=self.out_proj, backend=self.backend,
        )

    def readout_rows_view(self, steps: list[int]) -> CaptureResult:
        """Decoder-only: the readout rows of several steps as one capture of ``B * len(steps)``
        examples, example ``b * len(steps) + s`` = what step ``steps[s]`` of example ``b`` sees:
        its attention mask is that of :meth:`step_view` (keys from ``readout_position + 1`` on are
        padding) and its records hold only the readout row (``Record.rows``, as a capture with
        ``query_rows``), so a method that reads one row per example (readout ``"last"``, no value
        vectors: raw attention) scores every step in one call, equal to calling it on each
        :meth:`step_view`. Reads the rows without running a deferred last step."""
        if self.is_encoder_decoder:
            raise ValueError("readout_rows_view is for decoder-only generations")
        B, S = self.generated_ids.shape[0], len(steps)
        pos = torch.as_tensor([self.readout_position(t) for t in steps], dtype=torch.long)
        n = self.input_ids.shape[1]
        mask = self.attention_mask[:, None, :].repeat(1, S, 1)  # (B, S, n)
        mask[torch.arange(n)[None, None, :].expand(B, S, n) > pos[None, :, None]] = 0
        mask = mask.reshape(B * S, n)
        row_pos = pos.repeat(B)
        records = {}
        for key, recs in self.__dict__["_records"].items():
            rec = recs[0]
            A = rec.probs.to_dense() if rec.probs.is_sparse else rec.probs  # (B, H, n, n)
            rows = A[:, :, pos.to(A.device), :].transpose(1, 2).reshape(B * S, A.shape[1], 1, A.shape[-1])
            records[key] = [dataclasses.replace(
                rec, probs=A.new_zeros((0, A.shape[1], A.shape[-2], A.shape[-1])), values=None,
                key_mask=mask.bool().to(A.device), key_mask_known=True, examples=[], batch_size=B * S,
                rows=rows, row_positions=row_pos.to(A.device), head_mean=None, basis=None, derived=None)]
        return CaptureResult(input_ids=self.input_ids.repeat_interleave(S, dim=0), attention_mask=mask, tokens=[],
                             logits=None, labels=None, records=records, sites=self.sites, out_proj=self.out_proj,
                             backend=self.backend)

    def step_batch(self, step: int) -> dict[str, torch.Tensor]:
        """Model inputs whose last position predicts token ``step`` (decoder-only: prompt + the
        tokens generated before it, with ``position_ids``; encoder-decoder: the encoder input and
        ``decoder_input_ids`` through decoder position ``step``)."""
        r = self.readout_position(step) + 1
        if self.is_encoder_decoder:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                    "decoder_input_ids": self.decoder_input_ids[:, :r]}
        return {"input_ids": self.input_ids[:, :r], "attention_mask": self.attention_mask[:, :r],
                "position_ids": self.position_ids[:, :r]}

    def _all_tokens(self, i: int) -> list[str]:
        """Readable tokens of example ``i`` at every padded position (padding as '')."""
        mask = self.attention_mask[i].tolist()
        real = iter(self.tokens[i])
        return [next(real) if m else "" for m in mask]

    def prompt_tokens(self, example: int) -> list[str]:
        """Readable prompt tokens of ``example`` (padding removed)."""
        if self.is_encoder_decoder:
            return list(self.tokens[example])
        n_prompt = int(self.attention_mask[example, : self.prompt_length].sum())
        return list(self.tokens[example][:n_prompt])

    # -- tables ---------------------------------------------------------------------------------
    def steps_dataframe(self):
        """One row per generated token: example, step, token, token_id, prob, log_prob, entropy, top-k."""
        import pandas as pd

        rows = []
        for i in range(self.generated_ids.shape[0]):
            for t in self.steps(i):
                rows.append({
                    "example": i, "step": t, "token": self.generated_tokens[i][t],
                    "token_id": int(self.generated_ids[i, t]), "prob": float(self.step_probs[i, t]),
                    "log_prob": float(self.step_log_probs[i, t]), "entropy": float(self.step_entropy[i, t]),
                    "top_k": ", ".join(f"{tok!r} {p:.3f}" for tok, p in zip(self.top_tokens[i][t], self.top_probs[i, t].tolist())),
                })
        return pd.DataFrame(rows)

    def summary(self, example: int = 0) -> str:
        """The prompt, the continuation and each step's probability, as text."""
        lines = [f"prompt: {self.prompts[example]!r}" if self.prompts else "",
                 f"{'forced' if self.forced else 'generated'}: {self.generated_texts[example]!r}"]
        for t in self.steps(example):
            lines.append(f"  {t:>3} {self.generated_tokens[example][t]!r:<16} p={float(self.step_probs[example, t]):.3f}")
        return "\n".join(l for l in lines if l)

    def to_numpy(self) -> dict[str, Any]:
        out = super().to_numpy()
        for name in ("generated_ids", "generated_mask", "step_log_probs", "step_probs", "step_entropy"):
            out[name] = getattr(self, name).cpu().numpy()
        return out

    def replace(self, **changes: Any) -> "GenerationResult":
        return dataclasses.replace(self, **changes)


def _get_records(self: GenerationResult) -> dict:
    pending = self.__dict__.get("pending_last_step")
    if pending is not None:
        self.__dict__["pending_last_step"] = None
        pending(self.__dict__["_records"])
    return self.__dict__["_records"]


def _set_records(self: GenerationResult, value: dict) -> None:
    self.__dict__["_records"] = value


def _getstate_generation(self: GenerationResult) -> dict[str, Any]:
    _get_records(self)  # pickled complete, not with the model and cache the pending step holds
    return CaptureResult.__getstate__(self)


# installed after @dataclass made the field (``records=`` stays a constructor argument): the first
# read runs a deferred last decoding step (``generate(defer_last_step=True)``)
GenerationResult.records = property(_get_records, _set_records,
                                    doc="site key -> list of records (complete: runs a deferred last step first)")
GenerationResult.__getstate__ = _getstate_generation


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    return -(log_probs.exp() * log_probs).nan_to_num(0.0).sum(-1)


def step_scores(step_logits: torch.Tensor, token_ids: torch.Tensor, top_k: int = 5) -> dict[str, torch.Tensor]:
    """Per step: log-probability, probability and entropy of the chosen token, and the top-k.

    ``step_logits`` (B, N, V) at the readout positions, ``token_ids`` (B, N).
    """
    lp = torch.log_softmax(step_logits.float(), dim=-1)
    chosen = lp.gather(-1, token_ids[..., None].to(lp.device)).squeeze(-1)
    k = max(1, min(int(top_k), lp.shape[-1]))
    top_lp, top_ids = lp.topk(k, dim=-1)
    return {"step_log_probs": chosen, "step_probs": chosen.exp(), "step_entropy": _entropy(lp),
            "top_ids": top_ids, "top_probs": top_lp.exp()}


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()

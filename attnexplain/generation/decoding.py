"""The ``generate`` verb: run ``model.generate`` and capture the attention of every generated step.

How (decoder-only, greedy or sampled, one sequence per prompt): the capture rides on the decoding
forwards themselves. The prefill pass records the prompt's rows, each cached decoding step the row
of the position it feeds, and one more cached step feeds the last generated token; assembled, they
are the (P + N) x (P + N) matrices of one teacher-forced forward over prompt + generated tokens
(tested equal to that forward, to step-by-step decoding and to ``generate(output_attentions=True,
return_dict_in_generate=True)`` of an eager copy, < 1e-5, with left-padded batches), at the cost of
one extra cached step instead of a whole extra forward pass. Otherwise (encoder-decoder models,
forced targets, beam search, several sequences per prompt) the model generates first and **one
teacher-forced forward pass** over prompt + generated tokens runs with capture on: because decoder
self-attention is causal, the row at position ``P - 1 + t`` of that pass is exactly the row
decoding step ``t`` computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..models import LoadedModel
from ..models import InputError
from ..token_text import readable_tokens
from .result import GenerationResult, step_scores


__all__ = ["generate", "check_generator", "continuation_ids", "eos_ids"]


def check_generator(lm: LoadedModel) -> None:
    """Refuse models that cannot generate text (classifiers, bare encoders), naming the fix."""
    model = getattr(lm, "model", None)
    if model is None or getattr(lm, "tokenizer", None) is None:
        raise InputError("generation needs a LoadedModel with a tokenizer (attnexplain.load_model(...))")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm.task not in ("causal-lm", "seq2seq") or head is None or not hasattr(model, "generate"):
        raise InputError(
            f"{lm.name} is a {lm.task} model without a language-model head; generation needs a causal or "
            "sequence-to-sequence language model: load one with attnexplain.load_model(name, task='causal-lm') "
            "(or 'seq2seq'), e.g. load_model('smollm2')"
        )


def eos_ids(lm: LoadedModel) -> set[int]:
    """End-of-sequence ids (generation config, then config, then tokenizer)."""
    out: set[int] = set()
    for src in (getattr(lm.model, "generation_config", None), lm.model.config, lm.tokenizer):
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(v, int):
            out.add(v)
        elif isinstance(v, (list, tuple)):
            out.update(int(x) for x in v)
        if out:
            break
    return out


def _pad_id(lm: LoadedModel) -> int:
    for src in (lm.tokenizer, getattr(lm.model, "generation_config", None), lm.model.config):
        v = getattr(src, "pad_token_id", None) if src is not None else None
        if isinstance(v, int):
            return v
    eos = sorted(eos_ids(lm))
    return eos[0] if eos else 0


def _ensure_pad_token(tokenizer: Any) -> None:
    """Tokenizers without a pad token (GPT-2, many causal LMs) pad with their end-of-sequence token."""
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token


def _as_list(x: str | Sequence[str], n: int, what: str) -> list[str]:
    items = [x] * n if isinstance(x, str) else list(x)
    if len(items) != n:
        raise InputError(f"{what}: got {len(items)} texts for {n} prompts; give one per prompt (or one string for all)")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InputError(f"{what} {i} is {type(t).__name__}, not str")
    return items


def _joined(prompt: str, continuation: str) -> str:
    """The text ``prompt`` + ``continuation``, with a space between two word characters
    (``"... France is" + "Paris"`` -> ``"... France is Paris"``)."""
    if prompt and continuation and prompt[-1].isalnum() and continuation[0].isalnum():
        return prompt + " " + continuation
    return prompt + continuation


def _ids_of(tok: Any, text: str, special: bool) -> list[int]:
    ids = tok(text, add_special_tokens=special)["input_ids"]
    if ids and isinstance(ids[0], (list, tuple)):  # tokenizers that always batch
        ids = ids[0]
    return [int(i) for i in ids]


def continuation_ids(lm: LoadedModel, prompt: str, continuation: str, *, what: str = "target") -> list[int]:
    """Token ids of ``continuation`` as it follows ``prompt`` (decoder-only: the tokens of
    ``prompt + continuation`` after those of ``prompt``, so " Paris" tokenizes as it would in the
    text; a space is put between two word characters; encoder-decoder: the continuation alone).

    Raises:
        InputError: the continuation tokenizes to no token.
    """
    tok = lm.tokenizer
    ids: list[int] = []
    if lm.task != "seq2seq":
        p = _ids_of(tok, prompt, True)
        full = _ids_of(tok, _joined(prompt, continuation), True)
        if full[: len(p)] == p:
            ids = list(full[len(p):])
        else:  # the join re-tokenized the prompt's end: tokenize the continuation alone
            ids = _ids_of(tok, continuation, False)
        specials = set(getattr(tok, "all_special_ids", None) or [])
        while ids and ids[-1] in specials - eos_ids(lm):  # e.g. a [SEP] the tokenizer appends
            ids.pop()
    else:
        ids = _ids_of(tok, continuation, False)
    if not ids:
        raise InputError(f"{what} {continuation!r} tokenizes to no token; give a non-empty continuation text")
    return [int(i) for i in ids]


def _tokenize_prompts(lm: LoadedModel, prompts: list[str]) -> dict[str, torch.Tensor]:
    tok = lm.tokenizer
    _ensure_pad_token(tok)
    side = getattr(tok, "padding_side", "right")
    if lm.task == "causal-lm":
        tok.padding_side = "left"  # generated tokens follow the prompt directly in every row
    try:
        enc = lm.tokenize(prompts, on_long="error")
        return {k: enc[k] for k in ("input_ids", "attention_mask")}  # token types are not generation inputs
    finally:
        tok.padding_side = side


def _end_mask(gen: torch.Tensor, lengths: torch.Tensor | None, eos: set[int]) -> torch.Tensor:
    """(B, N) True through the first end-of-sequence token (or the given lengths)."""
    B, N = gen.shape
    if lengths is not None:
        return torch.arange(N, device=gen.device)[None, :] < lengths[:, None].to(gen.device)
    if not eos:
        return torch.ones_like(gen, dtype=torch.bool)
    is_eos = torch.isin(gen, torch.tensor(sorted(eos), device=gen.device))
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS tokens strictly before t
    return before == 0


#: ``generate`` options under which the decoding forwards are not one cached step per token of each
#: prompt (beams, several sequences per prompt, assisted or contrastive search, no cache): the
#: attention is then captured by one teacher-forced forward pass after generating instead
_NOT_STEPWISE = ("num_beams", "num_return_sequences", "num_beam_groups", "assistant_model", "prompt_lookup_num_tokens",
                 "penalty_alpha", "generation_config", "use_cache", "past_key_values", "streamer", "synced_gpus")


def _stepwise(generate_kwargs: dict[str, Any]) -> bool:
    return not any(k in generate_kwargs and generate_kwargs[k] not in (None, 1, True) for k in _NOT_STEPWISE)


def _generate_capturing(lm: LoadedModel, batch: dict[str, torch.Tensor], kwargs: dict[str, Any], *,
                        layers, heads, stacks, kinds, dtype, store_values,
                        defer_last: bool = False) -> tuple[torch.Tensor, dict, torch.Tensor, Any] | None:
    """Decoder-only: generate with the capture riding on the decoding forwards themselves.

    The prefill pass records the prompt's rows (P x P), each cached decoding step the one row of
    the position it feeds, and one more cached step feeds the last generated token (its row and the
    values of all P + N keys), so the assembled (B, H, P + N, P + N) matrices are those of one
    teacher-forced forward over prompt + generated tokens (tested equal) without running it.
    Returns ``(generated ids (B, N), capture fields, step logits (B, N, V), finish)``, or None when
    the forwards did not come as one prefill plus one step per token (the caller then captures by a
    teacher-forced forward). ``finish`` is None, or with ``defer_last`` a function that runs the
    step feeding the last generated token later and completes the records in place (its query row
    and every key's values; no generated token is predicted from that row, so per-token
    explanations never read it: :attr:`GenerationResult.records` runs it on first read).
    """
    import dataclasses
    from collections import defaultdict

    from ..capturing.attention import CaptureSpec, backend_of, session
    from ..capturing.result import _prepare_model
    from ..validation import check_indices

    model = lm.model
    _prepare_model(model)
    if layers is not None:
        layers = check_indices("layers", layers, lm.num_layers, what="layer index")
    if heads is not None:
        heads = check_indices("heads", heads, lm.num_heads, what="head index")
    spec = CaptureSpec(layers=set(layers) if layers is not None else None, heads=list(heads) if heads is not None else None,
                       stacks=set(stacks) if stacks is not None else None, kinds=set(kinds) if kinds is not None else None,
                       dtype=dtype, store_values=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    B, P = ids.shape
    with torch.no_grad(), session(model, spec) as state:
        out = model.generate(**batch, **kwargs, return_dict_in_generate=True, output_logits=True)
        gen = out.sequences[:, P:]
        N = int(gen.shape[1])
        if N == 0 or getattr(out, "past_key_values", None) is None or out.logits is None:
            return None
        n_calls = len(state.records)
    full_mask = torch.cat([mask, torch.ones_like(gen, dtype=mask.dtype)], dim=1)
    last_pos = full_mask.long().sum(-1, keepdim=True) - 1
    cache = out.past_key_values
    final_spec = dataclasses.replace(spec, store_values=store_values)  # the last step holds every key's values

    def last_step_records() -> list:
        """Feed the last generated token (one cached step): its row and every key's values."""
        with torch.no_grad(), session(model, final_spec) as final:
            model(input_ids=gen[:, -1:], attention_mask=full_mask, position_ids=last_pos, past_key_values=cache,
                  use_cache=True)
        return final.records

    by_key: dict[str, list] = defaultdict(list)
    for rec in state.records:
        by_key[rec.site.key].append(rec)
    if not by_key or n_calls != len(by_key) * N:
        return None
    if not defer_last:
        for rec in last_step_records():
            by_key[rec.site.key].append(rec)
    records, sites, out_proj = {}, {}, {}
    for key, recs in by_key.items():
        first = recs[0].probs.to_dense() if recs[0].probs.is_sparse else recs[0].probs
        if len(recs) != N + (0 if defer_last else 1) or first.shape[-2:] != (P, P):
            return None
        full = first.new_zeros(B, first.shape[1], P + N, P + N)
        full[:, :, :P, :P] = first
        for k, rec in enumerate(recs[1:], start=1):
            row = rec.probs.to_dense() if rec.probs.is_sparse else rec.probs
            if row.shape[-2:] != (1, P + k):
                return None
            full[:, :, P + k - 1, : P + k] = row[:, :, 0]
        last = recs[-1]
        if defer_last:  # the last token's row stays 0 and no values until finish() fills them
            km = last.key_mask
            if km is not None:
                km = torch.cat([km, torch.ones_like(km[:, :1])], dim=1)
            records[key] = [dataclasses.replace(last, probs=full, values=None, key_mask=km)]
        else:
            records[key] = [dataclasses.replace(last, probs=full)]
        sites[key] = last.site
        if last.site.out_proj is not None:
            out_proj[key] = last.site.output_projection_blocks(last.num_heads).detach()
    backend = backend_of(model)
    fields = {"records": records, "sites": sites, "out_proj": out_proj,
              "backend": backend.name if backend is not None else str(model.config._attn_implementation)}
    finish = None
    if defer_last:
        def finish(recs_by_key: dict) -> None:
            for rec in last_step_records():
                held = recs_by_key[rec.site.key][0]
                row = rec.probs.to_dense() if rec.probs.is_sparse else rec.probs
                held.probs[:, :, P + N - 1, :] = row[:, :, 0]
                recs_by_key[rec.site.key][0] = dataclasses.replace(held, values=rec.values, key_mask=rec.key_mask)
    return gen, fields, torch.stack(list(out.logits), dim=1).detach(), finish


def generate(
    lm: LoadedModel,
    prompts: str | Sequence[str],
    max_new_tokens: int | None = 20,
    *,
    target: str | Sequence[str] | None = None,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    stacks: list[str] | None = None,
    kinds: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
    store_values: bool = True,
    top_k: int = 5,
    defer_last_step: bool = False,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Generate continuations of ``prompts`` and capture every layer's attention for every step.

    Args:
        lm: a :class:`~attnexplain.models.LoadedModel` with a language-model head (task
            ``"causal-lm"``: decoder-only; ``"seq2seq"``: encoder-decoder).
        prompts: one text or a list (a batch; decoder-only prompts are left-padded).
        max_new_tokens: N, tokens to generate (1 .. the model's context minus the prompt).
        target: a forced continuation (one text, or one per prompt) explained instead of a
            generated one (inseq's ``generated_texts``): ``target=" Paris"``. It is tokenized as it
            follows the prompt (a space is put between two word characters: ``"Paris"`` after
            ``"... is"`` is ``" Paris"``). ``max_new_tokens`` is then ignored.
        layers / heads / stacks / kinds / dtype / store_values: what to store, as in
            :func:`attnexplain.capture`.
        top_k: how many of the most probable tokens to keep per step (``top_ids``/``top_probs``).
        defer_last_step: decoder-only generations captured on the decoding forwards: run the cached
            step that feeds the last generated token (its attention row, every key's value
            vectors) only when the records are first read (:attr:`GenerationResult.records`; not
            :meth:`~GenerationResult.step_view` ``(values=False)``, which never needs it: no
            generated token is predicted from that row). :func:`explain_generation` uses it:
            one decoding step less when no method reads the whole matrices.
        generate_kwargs: passed to ``model.generate`` (default greedy: ``do_sample=False``).

    Returns:
        :class:`GenerationResult`.

    Raises:
        InputError: an empty prompt, ``max_new_tokens`` < 1 or beyond the model's context, a target
            that tokenizes to nothing, or a model without a language-model head (each message
            names the fix).
    """
    from ..capturing import capture

    check_generator(lm)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InputError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"prompt {i} is empty or whitespace only; give the text to continue")
    seq2seq = lm.task == "seq2seq"
    batch = _tokenize_prompts(lm, prompts)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    B, P = ids.shape
    device = ids.device
    eos = eos_ids(lm)
    if generate_kwargs.get("eos_token_id") is not None:
        given = generate_kwargs["eos_token_id"]
        eos = {int(given)} if isinstance(given, int) else {int(x) for x in given}
    pad = _pad_id(lm)
    context = int(lm.max_length)
    lengths = None
    if target is not None:
        targets = _as_list(target, B, "target")
        cont = [continuation_ids(lm, p, t) for p, t in zip(prompts, targets)]
        N = max(len(c) for c in cont)
        gen = torch.full((B, N), pad, dtype=torch.long, device=device)
        for i, c in enumerate(cont):
            gen[i, : len(c)] = torch.tensor(c, device=device)
        lengths = torch.tensor([len(c) for c in cont], device=device)
    else:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive int (tokens to generate), got {max_new_tokens!r}")
        N = max_new_tokens
    longest = int(mask.sum(-1).max())
    room = context - (1 if seq2seq else longest)
    if N > room:
        where = "the decoder's context" if seq2seq else f"the context left after the {longest}-token prompt"
        raise InputError(
            f"{'the target has' if target is not None else 'max_new_tokens ='} {N} tokens, more than {where} "
            f"({room} of {context} tokens); ask for at most {room} new tokens or shorten the prompt"
        )
    spec = dict(layers=layers, heads=heads, stacks=stacks, kinds=kinds, dtype=dtype, store_values=store_values)
    carried = None  # decoder-only: the capture rides on the decoding forwards (no extra forward pass)
    if target is None:
        kwargs = {"do_sample": False, "pad_token_id": pad, **generate_kwargs, "max_new_tokens": N}
        if not seq2seq and _stepwise(generate_kwargs):
            carried = _generate_capturing(lm, batch, kwargs, **spec, defer_last=bool(defer_last_step))
        if carried is not None:
            gen = carried[0]
        else:
            with torch.no_grad():
                out = lm.model.generate(**batch, **kwargs)
            out = out.sequences if hasattr(out, "sequences") else out
            gen = out[:, 1:] if seq2seq else out[:, P:]
        N = gen.shape[1]
        if N == 0:
            raise InputError("the model generated no token (it ended immediately); raise min_new_tokens or give a target")
    gen_mask = _end_mask(gen, lengths, eos if target is None else set())
    if carried is not None and not bool(torch.where(gen_mask, True, gen == pad).all()):
        carried = None  # tokens after an end that were not the pad token: capture what the mask says instead
    gen = torch.where(gen_mask, gen, torch.full_like(gen, pad))

    if seq2seq:
        start = getattr(lm.model.generation_config, "decoder_start_token_id", None)
        if start is None:
            start = lm.model.config.decoder_start_token_id
        dec = torch.cat([torch.full((B, 1), int(start), dtype=torch.long, device=device), gen], dim=1)
        cap = capture(lm, {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}, **spec)
        step_logits = cap.logits[:, :N]
        full_mask, positions = mask, None
    else:
        seq = torch.cat([ids, gen], dim=1)
        run_mask = torch.cat([mask, torch.ones_like(gen)], dim=1)  # as generate extends the mask
        positions = (run_mask.long().cumsum(-1) - 1).masked_fill(run_mask == 0, 0)
        if carried is not None:
            from ..capturing.result import CaptureResult

            cap = CaptureResult(input_ids=seq, attention_mask=run_mask, tokens=[], logits=None, labels=None,
                                **carried[1])
            step_logits = carried[2]
        else:
            cap = capture(lm, {"input_ids": seq, "attention_mask": run_mask, "position_ids": positions}, **spec)
            step_logits = cap.logits[:, P - 1 : P - 1 + N]
        full_mask = torch.cat([mask, gen_mask.long().to(mask.dtype)], dim=1)
        dec = None
    scores = step_scores(step_logits, gen, top_k=top_k)
    tok = lm.tokenizer
    seq_ids = cap.input_ids
    tokens = [readable_tokens(tok, [t for t, m in zip(seq_ids[i].tolist(), full_mask[i].tolist()) if m]) for i in range(B)]
    gen_tokens = [readable_tokens(tok, gen[i].tolist()) for i in range(B)]
    top_tokens = [[readable_tokens(tok, scores["top_ids"][i, t].tolist()) for t in range(N)] for i in range(B)]
    texts = [tok.decode(gen[i][gen_mask[i]].tolist(), skip_special_tokens=True) for i in range(B)]
    return GenerationResult(
        input_ids=seq_ids, attention_mask=full_mask, tokens=tokens, logits=step_logits.detach(), labels=None,
        records=cap.records, sites=cap.sites, out_proj=cap.out_proj, backend=cap.backend,
        prompts=prompts, prompt_length=P, generated_ids=gen, generated_mask=gen_mask,
        generated_tokens=gen_tokens, top_tokens=top_tokens, generated_texts=texts, forced=target is not None,
        is_encoder_decoder=seq2seq, position_ids=positions, decoder_input_ids=dec,
        decoder_tokens=[readable_tokens(tok, dec[i].tolist()) for i in range(B)] if dec is not None else [],
        pending_last_step=carried[3] if carried is not None else None,
        **scores,
    )

"""attnexplain.generate on a decoder-only model captures attention on the decoding forwards
themselves (prefill rows + one row per cached step + one extra step for the last token): the
assembled matrices, values and step logits equal one teacher-forced capture over prompt + generated
tokens, with left-padded batches; options that change the decoding forwards (beams) fall back to
the teacher-forced capture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnexplain
from attnexplain.generation import decoding
from attnexplain.testing import tiny_generator

PROMPTS = ["the cat sat on", "a dog"]  # the second is left-padded


def _teacher_forced(lm, g):
    P = g.prompt_length
    run_mask = torch.cat([g.attention_mask[:, :P], torch.ones_like(g.generated_ids)], dim=1)
    positions = (run_mask.long().cumsum(-1) - 1).masked_fill(run_mask == 0, 0)
    cap = attnexplain.capture(lm, {"input_ids": g.input_ids, "attention_mask": run_mask, "position_ids": positions})
    return cap, run_mask.bool()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_capture_on_the_decoding_forwards_equals_a_teacher_forced_forward(arch, monkeypatch):
    lm = tiny_generator(arch)
    used = []
    real_fn = decoding._generate_capturing
    monkeypatch.setattr(decoding, "_generate_capturing", lambda *a, **k: used.append(real_fn(*a, **k)) or used[-1])
    g = attnexplain.generate(lm, PROMPTS, max_new_tokens=5, min_new_tokens=5)
    assert used and used[0] is not None  # the decoding forwards carried the capture
    cap, real = _teacher_forced(lm, g)
    P, N = g.prompt_length, g.num_steps
    assert int(real[1, 0]) == 0  # left padding
    for layer in range(lm.num_layers):
        A, R = g.attention(layer), cap.attention(layer)
        assert A.shape == R.shape == (2, lm.num_heads, P + N, P + N)
        for i in range(2):
            q = real[i]
            torch.testing.assert_close(A[i][:, q][:, :, q], R[i][:, q][:, :, q], atol=1e-5, rtol=0)
            torch.testing.assert_close(g.values(layer)[i][:, q], cap.values(layer)[i][:, q], atol=1e-5, rtol=0)
    torch.testing.assert_close(g.logits, cap.logits[:, P - 1: P - 1 + N], atol=1e-4, rtol=0)


def test_a_deferred_last_step_completes_to_the_teacher_forced_forward_and_explanations_skip_it(monkeypatch):
    lm = tiny_generator("llama")
    g = attnexplain.generate(lm, PROMPTS, max_new_tokens=4, min_new_tokens=4, defer_last_step=True)
    assert g.pending_last_step is not None
    P, N = g.prompt_length, g.num_steps
    # the readout rows (what per-token explanations read) are there before the last step runs
    view = g.step_view(N - 1, values=False)
    assert g.pending_last_step is not None and view.records[next(iter(view.records))][0].values is None
    cap, real = _teacher_forced(lm, g)
    for t in range(N):
        for layer in range(lm.num_layers):
            torch.testing.assert_close(g.step_attention(t, layer), cap.attention(layer)[:, :, P - 1 + t, : P + t],
                                       atol=1e-5, rtol=0)
    assert g.pending_last_step is None  # step_attention read the records: the last step ran
    for layer in range(lm.num_layers):
        A, R = g.attention(layer), cap.attention(layer)
        for i in range(2):
            q = real[i]
            torch.testing.assert_close(A[i][:, q][:, :, q], R[i][:, q][:, :, q], atol=1e-5, rtol=0)
            torch.testing.assert_close(g.values(layer)[i][:, q], cap.values(layer)[i][:, q], atol=1e-5, rtol=0)
    # explain_generation defers it: raw attention and rollout never run it, and score as without deferring
    ex = attnexplain.explain_generation(lm, PROMPTS, ["raw_attention", "rollout"], max_new_tokens=4, min_new_tokens=4)
    assert ex.generation.pending_last_step is not None
    ref = attnexplain.explain_generation(lm, PROMPTS, ["raw_attention", "rollout"], max_new_tokens=4, min_new_tokens=4,
                                         defer_last_step=False)
    assert ref.generation.pending_last_step is None
    for m in ("raw_attention", "rollout"):
        for a, b in zip(ex[m].scores, ref[m].scores):
            np.testing.assert_allclose(a, b, atol=1e-6)
    # raw attention scores every step at once from readout_rows_view: equal to the method on each step's view
    from attnexplain.methods import get_method

    g = ex.generation
    raw = get_method("raw_attention")
    for t in range(4):
        per_step = raw.attribute(lm, g.step_batch(t), target=g.generated_ids[:, t], capture=g.step_view(t, values=False))
        for i in range(2):
            np.testing.assert_allclose(ex["raw_attention"].step_scores(i, t), per_step[i], atol=1e-6)
    assert g.pending_last_step is not None
    # a method that reads values completes it first
    eff = attnexplain.explain_generation(lm, PROMPTS, ["effective_attention"], max_new_tokens=4, min_new_tokens=4)
    assert eff.generation.pending_last_step is None


def test_beam_search_falls_back_to_the_teacher_forced_capture(monkeypatch):
    lm = tiny_generator("llama")
    monkeypatch.setattr(decoding, "_generate_capturing", lambda *a, **k: pytest.fail("beams need teacher forcing"))
    g = attnexplain.generate(lm, PROMPTS, max_new_tokens=3, min_new_tokens=3, num_beams=2)
    cap, real = _teacher_forced(lm, g)
    torch.testing.assert_close(g.attention(0), cap.attention(0), atol=1e-6, rtol=0)

"""attnexplain.generate on a decoder-only model captures attention on the decoding forwards
themselves (prefill rows + one row per cached step + one extra step for the last token): the
assembled matrices, values and step logits equal one teacher-forced capture over prompt + generated
tokens, with left-padded batches; options that change the decoding forwards (beams) fall back to
the teacher-forced capture."""

from __future__ import annotations

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


def test_beam_search_falls_back_to_the_teacher_forced_capture(monkeypatch):
    lm = tiny_generator("llama")
    monkeypatch.setattr(decoding, "_generate_capturing", lambda *a, **k: pytest.fail("beams need teacher forcing"))
    g = attnexplain.generate(lm, PROMPTS, max_new_tokens=3, min_new_tokens=3, num_beams=2)
    cap, real = _teacher_forced(lm, g)
    torch.testing.assert_close(g.attention(0), cap.attention(0), atol=1e-6, rtol=0)

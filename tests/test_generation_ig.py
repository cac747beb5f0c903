"""Integrated gradients of every generated token from one interpolation path over the whole
sequence (IntegratedGradients.attribute_positions) equals captum's IG run step by step on each
step's prefix, with left-padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnexplain
from attnexplain.methods import get_method
from attnexplain.testing import tiny_generator

PROMPTS = ["the cat sat on", "a dog"]  # different lengths: the second is left-padded


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_whole_path_ig_equals_per_step_ig(arch):
    lm = tiny_generator(arch)
    ig = get_method("integrated_gradients", n_steps=6, internal_batch_size=4)  # several chunks of alphas
    ex = attnexplain.explain_generation(lm, PROMPTS, [ig], max_new_tokens=4, min_new_tokens=4,
                                        exclude_special_tokens=False)
    g = ex.generation
    assert int(g.attention_mask[1, 0]) == 0  # left-padded
    ref = get_method("integrated_gradients", n_steps=6, internal_batch_size=4)
    for t in range(g.num_steps):
        per_step = ref.attribute(lm, g.step_batch(t), target=g.generated_ids[:, t])  # captum on the prefix
        for i in range(len(PROMPTS)):
            got = ex["integrated_gradients"].step_scores(i, t)
            assert got.shape == per_step[i].shape
            assert np.abs(per_step[i]).max() > 1e-4  # not trivially zero
            np.testing.assert_allclose(got, per_step[i], atol=2e-6 * max(1.0, np.abs(per_step[i]).max()), rtol=0)


def test_whole_path_ig_completeness_is_reported_per_step():
    lm = tiny_generator("llama")
    ig = get_method("integrated_gradients", n_steps=64)
    g = attnexplain.generate(lm, PROMPTS, max_new_tokens=3, min_new_tokens=3)
    positions = [g.readout_position(t) for t in range(3)]
    out = ig.attribute_positions(lm, g.step_batch(2), positions=positions, targets=g.generated_ids)
    assert ig.convergence_delta.shape == (2, 3)
    # F(x) - F(baseline) computed here from the model directly
    base = ig.baseline_ids(lm, g.step_batch(2))
    b = g.step_batch(2)
    with torch.no_grad():
        fx = lm.model(**b).logits
        emb = lm.model.get_input_embeddings()
        e0 = emb(base)
        fb = lm.model(inputs_embeds=e0, attention_mask=b["attention_mask"], position_ids=b["position_ids"]).logits
    for t, r in enumerate(positions):
        for i in range(2):
            tok = int(g.generated_ids[i, t])
            want = float(fx[i, r, tok] - fb[i, r, tok])
            # the reported convergence delta is the completeness gap computed here
            assert ig.convergence_delta[i, t] == pytest.approx(out[t][i].sum() - want, abs=1e-4)
            assert abs(ig.convergence_delta[i, t]) < 0.1 * max(1.0, abs(want))

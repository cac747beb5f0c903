"""runs.batch.example_arrays (what analyze stores per example and the Live page shows) against the
functional API applied to one unpadded example directly."""

from __future__ import annotations

import numpy as np
import torch

from attnexplain import functional as F
from attnexplain.capturing import capture
from attnexplain.runs.batch import example_arrays
from attnexplain.testing import tiny_model


def test_example_arrays_match_the_functional_api_on_each_unpadded_example():
    lm = tiny_model("bert")
    texts = ["a witty and moving film", "dull"]
    enc = lm.tokenize(texts)
    cap = capture(lm, enc)
    got = example_arrays(cap, enc["attention_mask"], [0, 1], dtype=torch.float32)
    assert set(got) == {0, 1}
    for i, text in enumerate(texts):
        one = lm.tokenize([text])  # the example alone: no padding
        c1 = capture(lm, one)
        A = c1.stacked()[:, 0].float()  # (L, H, n, n)
        T = torch.stack([c1.value_transforms(l)[0] for l in c1.layers()]).float()
        n = A.shape[-1]
        assert got[i]["raw"].shape == (A.shape[0], A.shape[1], n, n)
        np.testing.assert_allclose(got[i]["raw"], A.numpy(), atol=1e-5)
        np.testing.assert_allclose(got[i]["effective"], F.effective_attention(A, T).float().numpy(), atol=1e-4)
        np.testing.assert_allclose(got[i]["norm"], F.norm_based_attention(A, T).summed.float().numpy(), atol=1e-4)
        np.testing.assert_allclose(got[i]["rollout"], F.attention_rollout(A).float().numpy(), atol=1e-5)


def test_float16_is_what_analyze_stores():
    lm = tiny_model("bert")
    enc = lm.tokenize(["hello there"])
    arrays = example_arrays(capture(lm, enc), enc["attention_mask"], [0])[0]
    assert all(a.dtype == np.float16 for a in arrays.values())
    assert example_arrays(capture(lm, enc), enc["attention_mask"], []) == {}

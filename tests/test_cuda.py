"""The same exactness guarantees on a CUDA device (skipped where torch sees no GPU).

CI has no GPU, so these run only where one is present (``python -m pytest tests/test_cuda.py``
on a GPU machine; ``scripts/gpu_check.sh`` runs them with the rest of a short GPU check). They
repeat, on the device, the CPU suite's central checks:

* capture on every architecture of ``tests/test_architectures.py`` that is captured exactly:
  logits and every attention matrix equal an eager copy run with ``output_attentions=True`` on
  the same device, and equal the CPU capture of the same weights;
* a padded batch gives each example's numbers alone (right and left padding);
* every attention backend runs inside a model on the device in float32 and bfloat16 (CAB's four
  patterns, implied @ V == output and the dense limits: ``tests/test_backend_patterns.py`` with
  ``ATTNEXPLAIN_TEST_DEVICE=cuda``);
* explanations on the device equal the CPU's;
* effective attention on the device equals the CPU computation;
* a captured generation equals eager ``generate(output_attentions=True)`` on the device.

TF32 matmuls are turned off for the comparisons (they would differ from eager by ~1e-3).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

import attnexplain
from attnexplain.backends import available_backends
from attnexplain.testing import TINY_ARCHITECTURES, tiny_generator, tiny_inputs, tiny_model

#: the device under test; ATTNEXPLAIN_TEST_DEVICE=cpu dry-runs these checks on a machine without a GPU
DEV = os.environ.get("ATTNEXPLAIN_TEST_DEVICE", "cuda")

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(),
                                 reason="no CUDA device (these run on a GPU machine)")]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)  # no-ops on CPU
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _to(inputs: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}


def _exact_architectures() -> list[str]:
    from test_architectures import ARCHITECTURES, EXACT

    return [n for n, spec in ARCHITECTURES.items() if spec[-1] == EXACT]


@pytest.mark.parametrize("name", _exact_architectures())
def test_capture_on_cuda_equals_eager_and_cpu(name):
    from test_architectures import _build, _eager_groups, _inputs

    if name.startswith("swin"):
        pytest.skip("swin's folded windows are checked on CPU; the attention call is the same on CUDA")
    cpu_model = _build(name, "eager")
    inputs = _inputs(name, cpu_model)
    cpu_res = attnexplain.capture(copy.deepcopy(cpu_model), inputs)
    model = _build(name, "eager").to(DEV)
    reference = _build(name, "eager").to(DEV)
    res = attnexplain.capture(model, _to(inputs, DEV))
    with torch.no_grad():
        out = reference(**_to(inputs, DEV), output_attentions=True)
    if getattr(out, "logits", None) is not None:
        torch.testing.assert_close(res.logits, out.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(res.logits.cpu(), cpu_res.logits, atol=1e-4, rtol=0)
    compared = 0
    for (stack, kind), tensors in _eager_groups(out).items():
        stack = stack or res.primary_stack
        for layer, exp in enumerate(tensors):
            got = res.attention(layer, stack=stack, kind=kind)
            assert got.device.type == torch.device(DEV).type
            torch.testing.assert_close(got, exp, atol=1e-5, rtol=0, msg=f"{name} {stack}.{layer}.{kind}")
            torch.testing.assert_close(got.cpu(), cpu_res.attention(layer, stack=stack, kind=kind), atol=1e-5,
                                       rtol=0)
            compared += 1
    assert compared == len(res.records) > 0


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", [a for a in TINY_ARCHITECTURES if a != "vit"])
def test_batched_equals_alone_on_cuda(arch, side):
    """As tests/test_user_reports.py on the CPU: each example of a padded batch equals it alone."""
    from test_user_reports import LEFT_PADDING_REFUSED

    if side == "left" and arch in LEFT_PADDING_REFUSED:
        pytest.skip("left padding is refused for this classifier (tested on the CPU)")
    lm = tiny_model(arch)
    lm.model.to(DEV)
    inputs = tiny_inputs(arch, batch=2, length=9, pad=side)
    am = inputs["attention_mask"]
    inputs["input_ids"] = inputs["input_ids"].masked_fill(am == 0, lm.model.config.pad_token_id)
    res = attnexplain.capture(lm, _to(inputs, DEV))
    for i in range(2):
        idx = am[i].bool().nonzero().flatten()
        alone = attnexplain.capture(lm, _to({"input_ids": inputs["input_ids"][i:i + 1, idx],
                                             "attention_mask": am[i:i + 1, idx]}, DEV))
        torch.testing.assert_close(res.logits[i], alone.logits[0], atol=1e-5, rtol=0)
        for key in res.site_keys:
            site = res.sites[key]
            a = res.attention(site.layer, stack=site.stack, kind=site.kind)[i]
            b = alone.attention(site.layer, stack=site.stack, kind=site.kind)[0]
            a = a[..., idx.to(a.device), :][..., idx.to(a.device)]
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"{arch} {side} {key} example {i}")


def test_explain_on_cuda_equals_cpu():
    texts = ["a small test", "another one, a bit longer"]
    methods = ["raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "alti", "value_zeroing"]
    lm = tiny_model("bert")
    lm.model.to(DEV)
    got = attnexplain.explain(lm, texts, methods=methods)
    ref = attnexplain.explain(tiny_model("bert"), texts, methods=methods)
    for m in methods:
        assert got[m].tokens == ref[m].tokens and got[m].target == ref[m].target
        for a, b in zip(got[m].scores, ref[m].scores):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=m)


def test_effective_attention_on_cuda_equals_cpu():
    from attnexplain.functional import effective_attention

    g = torch.Generator().manual_seed(0)
    B, H, n, d = 2, 4, 24, 8
    A = torch.softmax(torch.randn(B, H, n, n, generator=g, dtype=torch.float64), -1)
    T = torch.randn(B, H, n, d, generator=g, dtype=torch.float64)
    cpu = effective_attention(A, T)
    gpu = effective_attention(A.to(DEV), T.to(DEV))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-8, rtol=0)
    # the defining property: effective attention times T equals attention times T
    torch.testing.assert_close(gpu @ T.to(DEV), A.to(DEV) @ T.to(DEV), atol=1e-8, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", sorted(available_backends()))
def test_every_backend_runs_inside_a_model_on_cuda(backend, dtype):
    """Each backend inside a tiny BERT on the device: finite logits, real rows sum to ~1."""
    lm = tiny_model("bert", backend=backend)
    lm.model.to(DEV, dtype=dtype)
    inputs = tiny_inputs("bert", batch=2, length=16)
    res = attnexplain.capture(lm, _to(inputs, DEV))
    assert res.logits.device.type == torch.device(DEV).type and torch.isfinite(res.logits.float()).all()
    real = inputs["attention_mask"].bool().to(DEV)
    for key in res.site_keys:
        probs = res.records[key][0].probs.float()
        assert torch.isfinite(probs).all(), key
        sums = probs.sum(-1).permute(0, 2, 1)[real]  # (real queries, heads)
        assert sums.numel() and (sums - 1).abs().max().item() < (3e-2 if dtype == torch.bfloat16 else 1e-3), key


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_on_cuda_equals_eager_generate(arch):
    """Left-padded batch of two prompts: each step's rows equal eager generate's on the device."""
    from attnexplain.generation.decoding import _tokenize_prompts

    prompts, n = ["the cat sat on", "a dog"], 4
    lm = tiny_generator(arch)
    lm.model.to(DEV)
    eager = copy.deepcopy(lm.model)
    eager.set_attn_implementation("eager")
    batch = _to(_tokenize_prompts(lm, prompts), DEV)
    with torch.no_grad():
        ref = eager.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_attentions=True,
                             return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id)
    res = attnexplain.generate(lm, prompts, max_new_tokens=n, min_new_tokens=n)
    P = batch["input_ids"].shape[1]
    assert torch.equal(res.generated_ids.to(DEV), ref.sequences[:, P:])
    for layer in range(lm.num_layers):
        for t in range(1, n):
            torch.testing.assert_close(res.step_attention(t, layer).to(DEV), ref.attentions[t][layer][:, :, -1, :],
                                       atol=1e-5, rtol=0)

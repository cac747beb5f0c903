"""Context-mixing methods against independent computations on tiny float64 models.

References are written from the papers' formulas directly, on an eager copy of the model
(``output_attentions`` / ``output_hidden_states``) and its weights, with explicit per-token loops;
value zeroing by literally zeroing the value projection's output with a forward hook; gradient
rollout with the gradients of the eager model's returned attention tensors.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from attnexplain.capturing import UnsupportedArchitectureError
from attnexplain.functional.context_mixing import contribution_rollout, normalize_rows
from attnexplain.methods import explain_batch, get_method
from attnexplain.testing import tiny_inputs, tiny_model

TOL = 1e-6


def _lm64(arch="bert", seed=0):
    lm = tiny_model(arch, seed=seed)
    # non-trivial LayerNorm parameters and biases, so that every term of the formulas matters
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "weight" in name and p.dim() == 2:
                p.mul_(10)  # init std 0.02 -> 0.2: attention that is not uniform
    lm.model.double()
    return lm


def _eager(lm):
    m = copy.deepcopy(lm.model)
    m.set_attn_implementation("eager")
    return m


def _scores(lm, batch, method, **opts):
    m = get_method(method, **opts)
    out, target, _ = explain_batch(lm, batch, [m])
    return out[method], target


def _bert_layers(model):
    base = getattr(model, "bert", None) or getattr(model, "roberta")
    return base.encoder.layer


@torch.no_grad()
def _reference_parts(model, batch):
    """Per example, per layer: (parts (n,n,d) list of lists, LN1 output (n,d), LN2 input (n,d), LN2 module)
    by explicit loops over i, j and heads on the eager model."""
    out = model(**batch, output_attentions=True, output_hidden_states=True)
    layers = _bert_layers(model)
    H = model.config.num_attention_heads
    dh = model.config.hidden_size // H
    mask = batch["attention_mask"]
    res = []
    for b in range(batch["input_ids"].shape[0]):
        idx = mask[b].bool().nonzero().flatten().tolist()
        per_layer = []
        for l, layer in enumerate(layers):
            x = out.hidden_states[l][b]
            A = out.attentions[l][b]
            Wv, bv = layer.attention.self.value.weight, layer.attention.self.value.bias
            Wo, bo = layer.attention.output.dense.weight, layer.attention.output.dense.bias
            ln1 = layer.attention.output.LayerNorm
            n = len(idx)
            u = torch.zeros(n, n, x.shape[-1], dtype=torch.float64)
            for ii, i in enumerate(idx):
                for jj, j in enumerate(idx):
                    v = x[j] @ Wv.T + bv
                    for h in range(H):
                        f = v[h * dh:(h + 1) * dh] @ Wo[:, h * dh:(h + 1) * dh].T
                        u[ii, jj] += A[h, i, j] * f
                    if i == j:
                        u[ii, jj] += x[i]
            z = u.sum(1) + bo  # LN1's input, rebuilt from the parts
            s = torch.sqrt(z.var(-1, unbiased=False) + ln1.eps)
            parts = torch.zeros_like(u)
            for ii in range(n):
                for jj in range(n):
                    parts[ii, jj] = ln1.weight * (u[ii, jj] - u[ii, jj].mean()) / s[ii]
            y = ln1(z)
            h_out = out.hidden_states[l + 1][b][idx]
            ffn = layer.output.dense(layer.intermediate(y))
            per_layer.append((parts, y, ffn + y, layer.output.LayerNorm, h_out, bo, ln1))
        res.append((idx, per_layer))
    return res


@pytest.fixture(scope="module")
def bert64():
    return _lm64("bert")


@pytest.fixture(scope="module")
def batch():
    return tiny_inputs("bert", batch=2, length=7, pad="right")


def test_norm_residual_ln_matches_explicit_loop(bert64, batch):
    ref = _reference_parts(_eager(bert64), batch)
    for layers in ("all", "last", 0):
        got, _ = _scores(bert64, batch, "norm_residual_ln", layers=layers, readout="cls")
        for b, (idx, per_layer) in enumerate(ref):
            sel = {"all": [0, 1], "last": [1], 0: [0]}[layers]
            want = sum(per_layer[l][0][0].norm(dim=-1) for l in sel) / len(sel)
            np.testing.assert_allclose(got[b], want.numpy(), atol=TOL, rtol=0)


def test_layer_norm_parts_sum_to_the_layernorm_output(bert64, batch):
    """Kobayashi et al.'s decomposition is exact: sum_j g(u_ij) + g(b_O) + beta = LN1(z_i)."""
    from attnexplain.capturing.mixing import capture_mixing
    from attnexplain.functional.context_mixing import layer_norm_parts
    from attnexplain.methods.norm_residual_ln import post_ln_parts

    from attnexplain.functional.context_mixing import attention_residual_vectors

    mc = capture_mixing(bert64.model, batch, norms=True)
    for p in range(len(mc.blocks)):
        for b in range(2):
            idx = batch["attention_mask"][b].bool().nonzero().flatten()
            parts, rec = post_ln_parts(mc, p, b, idx)
            z, y, w, beta, eps = rec.norms["attention"]
            bias_part = layer_norm_parts(rec.out_proj_bias.expand(len(idx), 1, -1), z[b][idx], w, eps)[:, 0]
            torch.testing.assert_close(parts.sum(1) + bias_part + beta, y[b][idx], atol=1e-10, rtol=0)
            # the fused route equals the two-step definition
            A = rec.attention[b][:, idx][:, :, idx]
            u = attention_residual_vectors(A, rec.value_transforms()[b][:, idx], rec.hidden_in[b][idx])
            torch.testing.assert_close(parts, layer_norm_parts(u, z[b][idx], w, eps), atol=1e-12, rtol=0)


def test_globenc_contributions_equal_the_parts_route(bert64, batch):
    """The Gram-matrix route (no (n, n, d) parts) equals globenc_layer on the explicit parts, per
    example on its real tokens and for the whole padded batch at once (real rows)."""
    from attnexplain.capturing.mixing import capture_mixing
    from attnexplain.functional.context_mixing import (
        attention_layer_norm_parts, globenc_contributions, globenc_layer, mixed_part_norms)

    mc = capture_mixing(bert64.model, batch, norms=True)
    for rec in mc.blocks:
        z1, _, w1, _, eps1 = rec.norms["attention"]
        z2, _, w2, _, eps2 = rec.norms["output"]
        T = rec.value_transforms()
        mask = batch["attention_mask"].bool()
        whole = globenc_contributions(rec.attention * mask[:, None, None, :], T, rec.hidden_in, z1, w1, eps1, z2, w2, eps2)
        for b in range(2):
            idx = mask[b].nonzero().flatten()
            A = rec.attention[b][:, idx][:, :, idx]
            args = (A, T[b][:, idx], rec.hidden_in[b][idx], z1[b][idx], w1, eps1)
            want = globenc_layer(attention_layer_norm_parts(*args), z2[b][idx], w2, eps2)
            torch.testing.assert_close(globenc_contributions(*args, z2[b][idx], w2, eps2), want, atol=1e-12, rtol=0)
            torch.testing.assert_close(whole[b][idx][:, idx], want, atol=1e-12, rtol=0)
    # float32 input: as close to float64 as the explicit float32 vectors are (heads that nearly cancel)
    g = torch.Generator().manual_seed(0)
    A = torch.softmax(torch.randn(4, 6, 6, generator=g, dtype=torch.float64), -1)
    Q = torch.randn(4, 6, 32, generator=g, dtype=torch.float64)
    Q[1, 0] = -Q[0, 0] * A[0, 0, 0] / A[1, 0, 0] * (1 + 1e-4)  # heads 0 and 1 cancel at (0, 0)
    Q[2:, 0] = 0
    exact = torch.linalg.vector_norm(torch.einsum("hij,hjd->ijd", A, Q), dim=-1)
    torch.testing.assert_close(mixed_part_norms(A, Q), exact, atol=1e-12, rtol=0)
    explicit32 = torch.linalg.vector_norm(torch.einsum("hij,hjd->ijd", A.float(), Q.float()), dim=-1).double()
    gram32 = mixed_part_norms(A.float(), Q.float())
    # (a float32 Gram matrix would be off by ~1e-6 at (0, 0): sqrt of a cancelled float32 sum)
    assert (gram32 - exact).abs().max() <= 2 * (explicit32 - exact).abs().max() + 1e-8


def test_post_ln_check_refuses_a_block_whose_layernorm_output_differs(bert64, batch):
    from attnexplain.capturing import UnsupportedArchitectureError
    from attnexplain.capturing.mixing import capture_mixing
    from attnexplain.methods.norm_residual_ln import check_post_ln, real_position_mask

    mc = capture_mixing(bert64.model, batch, norms=True)
    mask = batch["attention_mask"].bool()
    real = real_position_mask([m.nonzero().flatten() for m in mask], mask.shape[1])
    rec = mc.blocks[1]
    A = rec.attention * mask[:, None, None, :]
    check_post_ln(rec, A, real)  # the real block passes
    z, y, *rest = rec.norms["attention"]
    y_pad = y.clone()
    y_pad[~real] += 1.0  # padded positions are not checked
    rec.norms["attention"] = (z, y_pad, *rest)
    check_post_ln(rec, A, real)
    for b, i in ((0, 0), (1, 3)):  # first / last real position of each example
        y_bad = y.clone()
        y_bad[b, i, 3] += 1e-3
        rec.norms["attention"] = (z, y_bad, *rest)
        with pytest.raises(UnsupportedArchitectureError, match="not a post-LN block"):
            check_post_ln(rec, A, real)
    # a block whose LayerNorm input is not x + Attn(x) (here: the residual left out) is refused
    rec.norms["attention"] = (z, y, *rest)
    rec.hidden_in = torch.zeros_like(rec.hidden_in)
    with pytest.raises(UnsupportedArchitectureError, match="not a post-LN block"):
        check_post_ln(rec, A, real)


def test_globenc_and_alti_match_explicit_loop(bert64, batch):
    ref = _reference_parts(_eager(bert64), batch)
    got_g, _ = _scores(bert64, batch, "globenc", readout="cls")
    got_a, _ = _scores(bert64, batch, "alti", readout="mean")
    for b, (idx, per_layer) in enumerate(ref):
        n = len(idx)
        G, C = [], []
        for parts, y, z2, ln2, *_ in per_layer:
            s2 = torch.sqrt(z2.var(-1, unbiased=False) + ln2.eps)
            g = torch.zeros(n, n, dtype=torch.float64)
            c = torch.zeros(n, n, dtype=torch.float64)
            for i in range(n):
                for j in range(n):
                    p = parts[i, j]
                    g[i, j] = (ln2.weight * (p - p.mean()) / s2[i]).norm()
                    c[i, j] = max(0.0, float(y[i].abs().sum() - (y[i] - p).abs().sum()))
            G.append(g / g.sum(1, keepdim=True))
            C.append(c / c.sum(1, keepdim=True))
        # rollout written out: R = C2 @ C1
        Rg, Ra = G[1] @ G[0], C[1] @ C[0]
        np.testing.assert_allclose(got_g[b], Rg[0].detach().numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(got_a[b], Ra.mean(0).detach().numpy(), atol=TOL, rtol=0)
        assert abs(got_g[b].sum() - 1) < 1e-9 and abs(got_a[b].sum() - 1) < 1e-9


def test_value_zeroing_matches_value_projection_hook(bert64, batch):
    """Reference: zero token j's value vector by editing the value projection's output of layer l
    (forward hook) in a full forward of the eager model; layer l's input is unchanged, so
    hidden_states[l + 1] is the altered layer output."""
    model = _eager(bert64)
    layers = _bert_layers(model)
    with torch.no_grad():
        clean = model(**batch, output_hidden_states=True).hidden_states
    got_roll, _ = _scores(bert64, batch, "value_zeroing", readout="cls")
    got_mean, _ = _scores(bert64, batch, "value_zeroing", readout="mean", aggregation="mean")
    for b in range(2):
        idx = batch["attention_mask"][b].bool().nonzero().flatten()
        one = {k: v[b:b + 1] for k, v in batch.items()}
        Cs = []
        for l, layer in enumerate(layers):
            C = torch.zeros(len(idx), len(idx), dtype=torch.float64)
            for jj, j in enumerate(idx.tolist()):
                def zero(mod, inp, out, j=j):
                    out = out.clone()
                    out[:, j] = 0
                    return out
                h = layer.attention.self.value.register_forward_hook(zero)
                with torch.no_grad():
                    alt = model(**one, output_hidden_states=True).hidden_states[l + 1][0]
                h.remove()
                for ii, i in enumerate(idx.tolist()):
                    C[ii, jj] = 1 - torch.nn.functional.cosine_similarity(clean[l + 1][b, i], alt[i], dim=0)
            Cs.append(C / C.sum(1, keepdim=True))
        np.testing.assert_allclose(got_roll[b], (Cs[1] @ Cs[0])[0].numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(got_mean[b], ((Cs[0] + Cs[1]) / 2).mean(0).numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_grad_rollout_matches_eager_attention_gradients(arch):
    """Reference: gradients of the target logit w.r.t. the eager model's returned attention maps."""
    lm = _lm64(arch)
    # (the eager Llama reference returns NaN on left-padded rows in float64, so no padding there;
    # padding is covered by the batch-invariance test)
    batch = tiny_inputs(arch, batch=2, length=7, pad=None if arch == "llama" else "right")
    model = _eager(lm)
    got, target = _scores(lm, batch, "grad_rollout")
    got_ag, _ = _scores(lm, batch, "attention_gradient", readout="mean")
    out = model(**batch, output_attentions=True)
    for a in out.attentions:
        a.retain_grad()
    from attnexplain.methods.gradients import target_scores

    target_scores(out.logits, batch["attention_mask"]).gather(1, target[:, None]).sum().backward()
    for b in range(2):
        idx = batch["attention_mask"][b].bool().nonzero().flatten()
        n = len(idx)
        R = torch.eye(n, dtype=torch.float64)
        abar_mean = torch.zeros(n, n, dtype=torch.float64)
        for a in out.attentions:
            A = a[b][:, idx][:, :, idx]
            G = a.grad[b][:, idx][:, :, idx]
            abar = torch.stack([torch.clamp(G[h] * A[h], min=0) for h in range(A.shape[0])]).mean(0)
            R = R + abar @ R
            abar_mean += abar / len(out.attentions)
        row = n - 1 if arch == "llama" else 0
        np.testing.assert_allclose(got[b], R[row].detach().numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(got_ag[b], abar_mean.mean(0).detach().numpy(), atol=TOL, rtol=0)


def test_grad_rollout_encoder_decoder_rules():
    """BART classifier: encoder self, decoder self and cross-attention rules against the eager
    model's attention gradients, with Chefer et al.'s updates written out."""
    lm = _lm64("bart")
    batch = tiny_inputs("bart", batch=2, length=7)
    model = _eager(lm)
    got, target = _scores(lm, batch, "grad_rollout")
    out = model(**batch, output_attentions=True)
    maps = list(out.encoder_attentions) + list(out.decoder_attentions) + list(out.cross_attentions)
    for a in maps:
        a.retain_grad()
    out.logits.gather(1, target[:, None]).sum().backward()

    def abar(a, b):
        return (a.grad[b] * a[b]).clamp(min=0).mean(0).detach()

    def rbar(R):
        Rh = R - torch.eye(R.shape[0], dtype=R.dtype)
        s = Rh.sum(1, keepdim=True)
        Rh = torch.where(s != 0, Rh / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(Rh))
        return Rh + torch.eye(R.shape[0], dtype=R.dtype)

    for b in range(2):
        idx = batch["attention_mask"][b].bool().nonzero().flatten()
        n = out.encoder_attentions[0].shape[-1]
        R_ee = torch.eye(n, dtype=torch.float64)
        for a in out.encoder_attentions:
            R_ee = R_ee + abar(a, b) @ R_ee
        nd = out.decoder_attentions[0].shape[-1]
        R_dd, R_de = torch.eye(nd, dtype=torch.float64), torch.zeros(nd, n, dtype=torch.float64)
        for sa, ca in zip(out.decoder_attentions, out.cross_attentions):
            R_dd = R_dd + abar(sa, b) @ R_dd
            R_de = R_de + abar(sa, b) @ R_de
            R_de = R_de + rbar(R_dd).T @ abar(ca, b) @ rbar(R_ee)
        want = R_de[idx[-1]][idx]
        np.testing.assert_allclose(got[b], want.numpy(), atol=TOL, rtol=0)
        assert np.abs(got[b]).sum() > 0


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------

ALL = ["norm_residual_ln", "globenc", "alti", "value_zeroing", "grad_rollout", "attention_gradient"]


@pytest.mark.parametrize("method", ALL)
def test_one_token_is_trivial(bert64, method):
    batch = {"input_ids": torch.tensor([[7]]), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
    got, _ = _scores(bert64, batch, method)
    assert got[0].shape == (1,)
    if method in ("globenc", "alti"):
        assert got[0][0] == pytest.approx(1.0, abs=1e-12)
    if method == "value_zeroing":  # the only key zeroed: the row is all of its mixing
        assert got[0][0] == pytest.approx(1.0, abs=1e-12)
    assert np.isfinite(got[0]).all() and got[0][0] >= 0


@pytest.mark.parametrize("method", ALL)
def test_batch_of_one_equals_batch_of_sixteen(method):
    lm = _lm64("bert", seed=3)
    lm.model.float()  # float32: the precision the methods run in
    batch = tiny_inputs("bert", batch=16, length=9, pad="right", seed=5)
    batch["attention_mask"][2:, -1] = 0  # assorted lengths
    batch["attention_mask"][5:9, -4:] = 0
    m = get_method(method)
    full, target, _ = explain_batch(lm, batch, [m])
    for i in (0, 1, 6, 15):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        n = int(one["attention_mask"].sum())
        one = {k: v[:, :n] for k, v in one.items()}
        single, _, _ = explain_batch(lm, one, [m], target=target[i:i + 1])
        np.testing.assert_allclose(single[method][0], full[method][i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["globenc", "alti", "value_zeroing"])
def test_rollout_scores_are_distributions(bert64, batch, method):
    got, _ = _scores(bert64, batch, method)
    for s in got:
        assert (s >= 0).all() and abs(s.sum() - 1) < 1e-9


def test_value_zeroing_on_gqa_decoder_matches_value_hook():
    """Llama (grouped-query attention, left padding): zeroing key column j of every query head equals
    zeroing the shared value vector (hook on v_proj)."""
    lm = _lm64("llama")
    batch = tiny_inputs("llama", batch=2, length=6, pad="left")
    model = _eager(lm)
    got, _ = _scores(lm, batch, "value_zeroing", aggregation="mean", layers="last", readout="last")
    layer = model.model.layers[-1]
    b = 1  # the left-padded example; the reference runs it alone, unpadded (eager Llama gives NaN on padded rows)
    real = batch["attention_mask"][b].bool()
    one = {k: v[b:b + 1, real] for k, v in batch.items()}
    idx = list(range(int(real.sum())))
    row = []
    L = len(model.model.layers)
    for j in idx:
        def zero(mod, inp, out, j=j):
            out = out.clone()
            out[:, j] = 0
            return out
        h = layer.self_attn.v_proj.register_forward_hook(zero)
        # the last block's output: hidden_states[L] of HF is after the final norm, so read the block
        keep = {}
        h2 = layer.register_forward_hook(lambda m, i, o: keep.__setitem__("h", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            model(**one, use_cache=False)
        h.remove(); h2.remove()
        alt = keep["h"][0]
        keep2 = {}
        h3 = layer.register_forward_hook(lambda m, i, o: keep2.__setitem__("h", o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            model(**one, use_cache=False)
        h3.remove()
        ref = keep2["h"][0]
        i = idx[-1]
        row.append(float(1 - torch.nn.functional.cosine_similarity(ref[i], alt[i], dim=0)))
    row = np.clip(np.asarray(row), 0, None)
    np.testing.assert_allclose(got[b], row / row.sum(), atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bart"])
@pytest.mark.parametrize("method", ["norm_residual_ln", "globenc", "alti"])
def test_decompositions_refuse_other_architectures(arch, method):
    lm = tiny_model(arch)
    with pytest.raises(UnsupportedArchitectureError, match="post-LN"):
        explain_batch(lm, tiny_inputs(arch), [method])


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="aggregation"):
        get_method("value_zeroing", aggregation="max")
    with pytest.raises(ValueError, match="layers"):
        get_method("norm_residual_ln", layers="first")
    with pytest.raises(ValueError, match="readout"):
        get_method("alti", readout="middle")
    with pytest.raises(ValueError, match="head_reduction"):
        get_method("grad_rollout", head_reduction="max")


def test_contribution_rollout_and_normalize_rows():
    g = torch.Generator().manual_seed(0)
    C = normalize_rows(torch.rand(3, 5, 5, generator=g, dtype=torch.float64))
    R = contribution_rollout(C)
    torch.testing.assert_close(R[-1], C[2] @ C[1] @ C[0])
    torch.testing.assert_close(R.sum(-1), torch.ones(3, 5, dtype=torch.float64))
    Z = normalize_rows(torch.zeros(2, 2))
    assert (Z == 0).all()


# ---------------------------------------------------------------------------------------------
# through the CLI: explain, analyze --methods, report
# ---------------------------------------------------------------------------------------------

NEW = "norm_residual_ln,globenc,alti,value_zeroing,grad_rollout,attention_gradient"


@pytest.fixture
def tiny_cli(monkeypatch):
    import attnexplain.runs.analyze as analyze_mod

    def fake(name, *, backend="dense", backend_options=None):
        lm = tiny_model("bert")
        lm.model.config.id2label = {0: "neg", 1: "pos"}
        lm.labels = ["neg", "pos"]
        return lm

    monkeypatch.setattr(analyze_mod, "load_model_for_run", fake)
    monkeypatch.setenv("ATTNEXPLAIN_FSYNC", "0")


def test_cli_explain_analyze_and_report_run_the_new_methods(tiny_cli, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from attnexplain.cli.main import app
    from attnexplain.runs import open_run

    runner = CliRunner()
    res = runner.invoke(app, ["explain", "a very good film", "--model", "tiny", "--methods", NEW])
    assert res.exit_code == 0, (res.output, res.exception)
    for m in NEW.split(","):
        assert m in res.stdout
    data = tmp_path / "d.csv"
    pd.DataFrame({"text": ["good film", "bad plot, dull", "not very good", "great"], "label": ["pos", "neg", "neg", "pos"]}
                 ).to_csv(data, index=False)
    out = tmp_path / "run"
    res = runner.invoke(app, ["analyze", "--dataset", str(data), "--split", "all", "--model", "tiny", "--batch-size", "2",
                              "--no-progress", "--methods", NEW + ",random", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    run = open_run(out)
    assert run.methods == NEW.split(",") + ["random"]
    res = runner.invoke(app, ["report", str(out), "--n-resamples", "50"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "globenc" in res.stdout and "value_zeroing" in res.stdout


def test_cli_refuses_a_decomposition_on_a_pre_ln_model_with_exit_2(monkeypatch):
    import attnexplain.runs.analyze as analyze_mod
    from typer.testing import CliRunner

    from attnexplain.cli.main import app

    monkeypatch.setattr(analyze_mod, "load_model_for_run", lambda name, **kw: tiny_model("gpt2"))
    res = CliRunner().invoke(app, ["explain", "a very good film", "--model", "tiny", "--methods", "alti"])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "post-LN" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------------------------------------
# analyze / explain --methods all on architectures the decompositions do not cover
# ---------------------------------------------------------------------------------------------

def _tiny_classifier(arch):
    lm = tiny_model(arch)
    lm.model.config.id2label = {0: "neg", 1: "pos"}
    lm.labels = ["neg", "pos"]
    return lm


def _refusing_methods(arch):
    """Independently: the registered methods whose explain_batch raises UnsupportedArchitectureError
    on this architecture (tried one by one on a tiny batch)."""
    from attnexplain.methods import available_methods
    from attnexplain.runs.settings import SLOW_METHODS

    lm = _tiny_classifier(arch)
    refused = set()
    for m in available_methods():
        if m in SLOW_METHODS:
            continue
        try:
            explain_batch(lm, tiny_inputs(arch, batch=2, length=5), [m])
        except UnsupportedArchitectureError:
            refused.add(m)
    return refused


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_analyze_all_leaves_out_methods_the_architecture_does_not_support(arch, tmp_path, monkeypatch):
    import pandas as pd

    from attnexplain.methods import available_methods
    from attnexplain.runs.analyze import analyze
    from attnexplain.runs.settings import SLOW_METHODS

    monkeypatch.setenv("ATTNEXPLAIN_FSYNC", "0")
    refused = _refusing_methods(arch)
    assert {"alti", "globenc", "norm_residual_ln"} <= refused  # the premise: the post-LN decompositions refuse
    data = tmp_path / "d.csv"
    pd.DataFrame({"text": ["good film", "bad plot", "not good", "great"], "label": ["pos", "neg", "neg", "pos"]}
                 ).to_csv(data, index=False)
    logged = []
    run = analyze(tmp_path / "run", model=_tiny_classifier(arch), dataset=str(data), split="all", methods="all",
                  batch_size=2, progress=False, log=logged.append)
    expected = [m for m in available_methods() if m not in SLOW_METHODS and m not in refused]
    assert run.methods == expected
    assert set(run.manifest["methods_left_out"]) == refused
    warning = [line for line in logged if "left out" in line]
    assert len(warning) == 1 and all(m in warning[0] for m in refused)
    assert run.is_complete and set(run.tokens()["method"].unique()) == set(expected)


@pytest.mark.parametrize("command", ["analyze", "explain"])
def test_a_named_method_the_architecture_does_not_support_is_exit_2_before_the_run(command, tmp_path, monkeypatch):
    import pandas as pd
    from typer.testing import CliRunner

    import attnexplain.runs.analyze as analyze_mod
    from attnexplain.cli.main import app

    monkeypatch.setattr(analyze_mod, "load_model_for_run", lambda name, **kw: _tiny_classifier("llama"))
    monkeypatch.setenv("ATTNEXPLAIN_FSYNC", "0")
    data = tmp_path / "d.csv"
    pd.DataFrame({"text": ["good film", "bad plot"], "label": ["pos", "neg"]}).to_csv(data, index=False)
    out = tmp_path / "run"
    args = (["analyze", "--dataset", str(data), "--split", "all", "--model", "tiny", "--no-progress", "--out", str(out)]
            if command == "analyze" else ["explain", "a good film", "--model", "tiny"])
    res = CliRunner().invoke(app, [*args, "--methods", "raw_attention,globenc"])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "globenc" in res.output and "post-LN" in res.output and "Traceback" not in res.output
    assert not out.exists()  # refused before the run folder is made
    res = CliRunner().invoke(app, [*args, "--methods", "all"])  # the same model with 'all': runs, says what it left out
    assert res.exit_code == 0, (res.output, res.exception)
    if command == "explain":
        assert "globenc" not in res.stdout and "value_zeroing" in res.stdout


# ---------------------------------------------------------------------------------------------
# value zeroing: each example at its own length
# ---------------------------------------------------------------------------------------------

def test_length_groups_is_the_cheapest_contiguous_partition():
    """Against brute force over every partition of the length-sorted examples into runs."""
    import itertools

    from attnexplain.methods.value_zeroing import length_groups

    rng = np.random.default_rng(0)
    for trial in range(30):
        B = int(rng.integers(1, 8))
        lengths = rng.integers(1, 60, B).tolist()
        copies = [int(rng.integers(0, L + 1)) for L in lengths]
        cost = int(rng.choice([0, 50, 500, 5000]))
        order = sorted(range(B), key=lambda b: lengths[b])

        def total(groups, cost=cost, copies=copies, lengths=lengths):
            return sum(cost + sum(copies[b] + 1 for b in g) * max(lengths[b] for b in g) for g in groups)

        best = min(total([order[a:b] for a, b in zip((0, *cuts), (*cuts, B))])
                   for r in range(B) for cuts in itertools.combinations(range(1, B), r))
        groups = length_groups(lengths, copies, cost)
        assert sorted(b for g in groups for b in g) == list(range(B))
        assert total(groups) == best


def test_value_zeroing_runs_each_example_at_its_own_length(bert64):
    """The block re-runs see no trailing padding when every length is its own group: the tokens
    through block 0 are exactly sum_b (n_b + 1) * n_b (n_b zeroed copies and the clean forward, at
    the example's real length n_b); the matrices equal the single padded group's to float64 precision."""
    from attnexplain.methods.attention_methods import real_positions
    from attnexplain.methods.value_zeroing import value_zeroing_matrices

    batch = tiny_inputs("bert", batch=5, length=9, pad=None, seed=4)
    n_real = [9, 7, 4, 7, 2]
    for b, n in enumerate(n_real):
        batch["attention_mask"][b, n:] = 0
    idxs = [real_positions(batch["attention_mask"], b, 9) for b in range(5)]
    seen = []
    block = _bert_layers(bert64.model)[0]
    h = block.register_forward_pre_hook(lambda m, a, k: seen.append(tuple((a[0] if a else k["hidden_states"]).shape[:2])),
                                        with_kwargs=True)
    try:
        own = value_zeroing_matrices(bert64.model, batch, idxs, group_cost=0)
        tokens_own = sum(B * n for B, n in seen)
        seen.clear()
        padded = value_zeroing_matrices(bert64.model, batch, idxs, group_cost=10**9)
        tokens_padded = sum(B * n for B, n in seen)
    finally:
        h.remove()
    assert tokens_own == sum((n + 1) * n for n in n_real)
    assert tokens_padded == sum(n + 1 for n in n_real) * 9
    for a, b in zip(own, padded):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)

"""Tests for the social scenes (attnexplain.data.social_scenes) and the learned-query set decoder
(attnexplain.set_decoder): generator invariants, the decoder's captured attention against its
own probabilities computed independently, Hungarian matching against brute force, AUPRC against
a slow explicit loop, batch == alone, removal by masking == deletion, rollout against the rules
written out, and a tiny training run that lowers the loss. Tiny configurations only."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from attnexplain import set_decoder as sd
from attnexplain.data import social_scenes as ss
from attnexplain.set_decoder import explain as sx
from attnexplain.set_decoder.train import group_detection_counts, iou, match_costs


def _scenes(n=6, seed=5):
    return ss.generate_scenes(n, seed, prefix="t")


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(num_queries=8, d_model=16, n_heads=4, n_encoder_layers=1, n_decoder_layers=2)
    cfg.update(kw)
    model = sd.SetDecoder(sd.SetDecoderConfig(**cfg)).double().eval()
    with torch.no_grad():  # break the small init so that attention is far from uniform
        for p in model.parameters():
            p.add_(0.4 * torch.randn_like(p))
    return model


def _batch(scenes):
    return sd.collate(scenes, dtype=torch.float64)


DESIGNS = [dict(query_init=i, query_self_attention=s) for i in ("learned", "conditioned") for s in (True, False)]


# -- data -----------------------------------------------------------------------------------------


def test_every_individual_in_exactly_one_group_and_rule_agrees():
    scenes = ss.generate_scenes(150, 7, prefix="inv")
    for s in scenes:
        members = sorted(i for g in s.groups for i in g)
        assert members == list(range(s.n))
        assert len(s.activities) == len(s.groups)
        assert all(0 <= a < len(ss.ACTIVITIES) for a in s.activities)
        assert ss.MIN_INDIVIDUALS <= s.n <= ss.MAX_INDIVIDUALS
        assert len(s.groups) <= ss.MAX_GROUPS
        assert ss.rule_groups(s) == s.groups
        assert all(0 <= v <= ss.ARENA for v in s.x + s.y)
    assert any(len(g) == 1 for s in scenes for g in s.groups)  # singletons occur
    assert max(len(g) for s in scenes for g in s.groups) == 5


def test_generator_seeds_reproducible_and_distinct():
    a = [s.to_json() for s in ss.generate_scenes(20, 3)]
    b = [s.to_json() for s in ss.generate_scenes(20, 3)]
    c = [s.to_json() for s in ss.generate_scenes(20, 4)]
    assert a == b
    assert a != c


def test_committed_split_matches_generator():
    committed = ss.load_scenes("validation")
    fresh = ss.generate_split("validation")
    assert [s.to_json() for s in committed] == [s.to_json() for s in fresh]
    assert len(ss.load_scenes("test", limit=5)) == 5


def _scene(x, y, heading, speed):
    n = len(x)
    return ss.Scene("h", list(x), list(y), list(heading), list(speed), [0] * n, [[i] for i in range(n)], [0] * n)


def test_grouping_rule_proximity_orientation_motion():
    # two people 1 m apart facing each other: one group
    assert ss.rule_groups(_scene([0, 1], [0, 0], [0, math.pi], [0, 0])) == [[0, 1]]
    # back to back, 1 m apart, headings opposite: two groups
    assert ss.rule_groups(_scene([0, 1], [0, 0], [math.pi, 0], [0, 0])) == [[0], [1]]
    # facing each other but 3 m apart: two groups
    assert ss.rule_groups(_scene([0, 3], [0, 0], [0, math.pi], [0, 0])) == [[0], [1]]
    # facing each other, one walks past: two groups
    assert ss.rule_groups(_scene([0, 1], [0, 0], [0, math.pi], [0, 1.3])) == [[0], [1]]
    # side by side with a shared heading (walking together): one group
    assert ss.rule_groups(_scene([0, 0], [0, 0.7], [0, 0], [1.3, 1.3])) == [[0, 1]]
    # chains are transitive: 0-1 and 1-2 linked, 0-2 too far
    assert ss.rule_groups(_scene([0, 1.5, 3], [0, 0, 0], [0, 0, math.pi], [0, 0, 0])) == [[0, 1, 2]]


def test_features_shape_and_values():
    s = _scenes(1)[0]
    f = ss.scene_features(s)
    assert len(f) == s.n and all(len(r) == ss.FEATURE_DIM for r in f)
    for i, r in enumerate(f):
        assert r[0] == pytest.approx(s.x[i] / ss.ARENA) and r[2] == pytest.approx(math.cos(s.heading[i]))
        assert sum(r[5:]) == 1.0 and r[5 + s.action[i]] == 1.0


# -- model and capture ----------------------------------------------------------------------------


def _manual_probs(module, x, memory, kpm):
    """softmax(Q K^T / sqrt(d_h)) of a SetAttention, written out from its weights."""
    kv = x if memory is None else memory
    b, n, _ = x.shape
    m = kv.shape[1]
    H, dh = module.n_heads, module.head_dim
    q = (x @ module.w_q.weight.T + module.w_q.bias).view(b, n, H, dh).permute(0, 2, 1, 3)
    k = (kv @ module.w_k.weight.T + module.w_k.bias).view(b, m, H, dh).permute(0, 2, 1, 3)
    s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(dh)
    if kpm is not None:
        s = s.masked_fill(~kpm[:, None, None, :], float("-inf"))
    return torch.softmax(s, dim=-1)


@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: f"{d['query_init']}-sa{int(d['query_self_attention'])}")
def test_captured_attention_equals_own_probabilities(design):
    model = _model(**design)
    batch = _batch(_scenes(5))
    seen = {}
    hooks = []
    for mod in model.attention_modules():
        def hook(module, args, kwargs, output):
            x = args[0]
            memory = args[1] if len(args) > 1 else kwargs.get("memory")
            kpm = args[2] if len(args) > 2 else kwargs.get("key_padding_mask")
            seen[module._attnexplain_site.key] = (x, memory, kpm, output)
        hooks.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        cap = sd.capture_scenes(model, batch)
    finally:
        for h in hooks:
            h.remove()
    expected_keys = {"encoder.0.self", "decoder.0.cross", "decoder.1.cross"}
    if design["query_self_attention"]:
        expected_keys |= {"decoder.0.self", "decoder.1.self"}
    assert set(cap.records) == expected_keys == set(seen)
    for key, (x, memory, kpm, output) in seen.items():
        stack, layer, kind = key.split(".")
        module = next(m for m in model.attention_modules() if m._attnexplain_site.key == key)
        A = cap.attention(int(layer), stack=stack, kind=kind)
        ref = _manual_probs(module, x, memory, kpm)
        torch.testing.assert_close(A.double(), ref, atol=1e-6, rtol=0)
        # the captured matrix and values reproduce the module's output
        V = cap.values(int(layer), stack=stack, kind=kind).double()
        heads = A.double() @ V
        b, h, n, dh = heads.shape
        rebuilt = module.out_proj(heads.transpose(1, 2).reshape(b, n, h * dh))
        torch.testing.assert_close(rebuilt, output, atol=1e-6, rtol=0)
    # cross-attention is query x individual, padding columns zero
    A = cap.attention(1, stack="decoder", kind="cross")
    assert A.shape == (5, 4, 8, batch.features.shape[1])
    assert float(A.masked_select(~batch.attention_mask[:, None, None, :].expand_as(A)).abs().max()) == 0.0
    # effective attention keeps the output (A_eff T == A T)
    Aeff = cap.effective_attention(1, stack="decoder", kind="cross").double()
    T = cap.value_transforms(1, stack="decoder", kind="cross").double()
    torch.testing.assert_close(Aeff @ T, A.double() @ T, atol=1e-5, rtol=0)


def test_capture_leaves_output_unchanged():
    model = _model()
    batch = _batch(_scenes(4))
    plain = model(**batch.inputs())
    scores, out, _ = sx.method_scores(model, batch)
    torch.testing.assert_close(out.member_logits, plain.member_logits, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.activity_logits, plain.activity_logits, atol=1e-10, rtol=0)
    assert set(scores) == set(sx.SCORE_METHODS)


@pytest.mark.parametrize("design", DESIGNS, ids=lambda d: f"{d['query_init']}-sa{int(d['query_self_attention'])}")
def test_batch_equals_alone(design):
    model = _model(**design)
    scenes = _scenes(5)
    batch = _batch(scenes)
    out = model(**batch.inputs())
    cap = sd.capture_scenes(model, batch)
    for b, s in enumerate(scenes):
        alone = _batch([s])
        o1 = model(**alone.inputs())
        torch.testing.assert_close(out.member_logits[b, :, : s.n], o1.member_logits[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(out.activity_logits[b], o1.activity_logits[0], atol=1e-10, rtol=0)
        c1 = sd.capture_scenes(model, alone)
        torch.testing.assert_close(cap.attention(1, stack="decoder", kind="cross")[b, ..., : s.n],
                                   c1.attention(1, stack="decoder", kind="cross")[0], atol=1e-6, rtol=0)


def test_removal_by_mask_equals_deletion_for_learned_queries():
    model = _model(query_init="learned")
    s = _scenes(1, seed=9)[0]
    assert s.n >= 4
    keep = [j for j in range(s.n) if j not in (0, 2)]
    full = _batch([s])
    mask = full.attention_mask.clone()
    mask[0, [0, 2]] = False
    masked = model(full.features, mask)
    deleted = model(full.features[:, keep], full.attention_mask[:, keep])
    torch.testing.assert_close(masked.activity_logits, deleted.activity_logits, atol=1e-10, rtol=0)
    torch.testing.assert_close(masked.member_logits[:, :, keep], deleted.member_logits, atol=1e-10, rtol=0)


def test_conditioned_queries_start_from_individuals():
    model = _model(query_init="conditioned", num_queries=7)
    s = _scenes(1, seed=2)[0]
    batch = _batch([s])
    memory = model.encode(batch.features, batch.attention_mask)
    z = model.initial_queries(memory, batch.attention_mask)
    for q in range(7):
        expected = model.query_embed[q] + model.query_from_memory(memory[0, q % s.n])
        torch.testing.assert_close(z[0, q], expected)


def test_backend_swap_runs_through_registry():
    model = _model()
    batch = _batch(_scenes(3))
    dense = model(**batch.inputs())
    model.set_backend("local", window=64, kinds=("cross",))  # a full window is dense attention
    assert {v for k, v in model.backends().items() if k.endswith("cross")} == {"local"}
    same = model(**batch.inputs())
    torch.testing.assert_close(same.member_logits, dense.member_logits, atol=1e-8, rtol=0)
    model.set_backend("smyrf", q_cluster_size=64, k_cluster_size=64)  # one cluster everywhere: dense
    torch.testing.assert_close(model(**batch.inputs()).member_logits, dense.member_logits, atol=1e-8, rtol=0)
    model.set_backend("smyrf", q_cluster_size=4, k_cluster_size=4)  # approximate; still captured
    cap = sd.capture_scenes(model, batch)
    assert cap.attention(1, stack="decoder", kind="cross").shape[-2:] == (8, batch.features.shape[1])
    model.set_backend("dense")
    model.set_backend("local", window=1, kinds=("cross",))
    cap = sd.capture_scenes(model, batch)
    out = model(**batch.inputs())
    assert not torch.allclose(out.member_logits, dense.member_logits)
    assert cap.backend  # a string
    A = cap.attention(0, stack="decoder", kind="cross")
    assert A.shape[-2:] == (8, batch.features.shape[1])


def test_bad_inputs_name_the_problem():
    model = _model()
    with pytest.raises(ValueError, match="values per individual"):
        model(torch.zeros(1, 3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.zeros(1, 3, 9, dtype=torch.float64), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one individual"):
        model(torch.zeros(1, 3, 9, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="query_init"):
        sd.SetDecoderConfig(query_init="random")
    with pytest.raises(ValueError, match="divisible"):
        sd.SetDecoderConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="only 2 queries"):
        sd.hungarian_match(np.zeros((2, 3)))


# -- matching, loss, metrics ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_hungarian_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    q = int(rng.integers(1, 6))
    g = int(rng.integers(1, q + 1))
    cost = rng.normal(size=(q, g))
    if seed % 3 == 0:
        cost = np.round(cost, 0)  # ties
    rows, cols = sd.hungarian_match(cost)
    assert sorted(cols.tolist()) == list(range(g)) and len(set(rows.tolist())) == g
    best = min(sum(cost[p[j], j] for j in range(g)) for p in itertools.permutations(range(q), g))
    assert cost[rows, cols].sum() == pytest.approx(best, abs=1e-12)


def test_match_costs_against_explicit_loop():
    torch.manual_seed(0)
    s = _scenes(1, seed=4)[0]
    Q = 5
    ml = torch.randn(Q, s.n + 2, dtype=torch.float64)
    al = torch.randn(Q, len(ss.ACTIVITIES) + 1, dtype=torch.float64)
    w = sd.MatchWeights(cls=1.5, bce=2.0, dice=0.7)
    cost = match_costs(ml, al, s, w)
    for q in range(Q):
        for g, members in enumerate(s.groups):
            y = torch.tensor([1.0 if j in members else 0.0 for j in range(s.n)], dtype=torch.float64)
            logit = ml[q, : s.n]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
            p = torch.sigmoid(logit)
            dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
            prob = torch.softmax(al[q], -1)[s.activities[g]]
            assert float(cost[q, g]) == pytest.approx(float(-1.5 * prob + 2.0 * bce + 0.7 * dice), abs=1e-9)


def test_batched_costs_and_loss_against_per_scene_loop():
    model = _model()
    batch = _batch(_scenes(5, seed=12))
    with torch.no_grad():
        out = model(**batch.inputs())
    costs = sd.train.batch_match_costs(out, batch)
    for b, s in enumerate(batch.scenes):
        torch.testing.assert_close(costs[b, :, : len(s.groups)],
                                   match_costs(out.member_logits[b], out.activity_logits[b], s), atol=1e-10, rtol=0)
    matches = sd.train.match_batch(out, batch)
    loss, parts = sd.set_loss(out, batch, matches=matches)
    # the loss written out scene by scene
    w = sd.MatchWeights()
    C1 = out.activity_logits.shape[-1]
    ce_num, ce_den, bces, dices = 0.0, 0.0, [], []
    for b, (s, (qi, gi)) in enumerate(zip(batch.scenes, matches)):
        target = {int(q): s.activities[g] for q, g in zip(qi, gi)}
        for q in range(out.activity_logits.shape[1]):
            t = target.get(q, C1 - 1)
            weight = 1.0 if t < C1 - 1 else w.no_group_weight
            ce_num += weight * float(-torch.log_softmax(out.activity_logits[b, q], -1)[t])
            ce_den += weight
        for q, g in zip(qi, gi):
            y = torch.tensor([1.0 if j in s.groups[g] else 0.0 for j in range(s.n)], dtype=torch.float64)
            logit = out.member_logits[b, q, : s.n]
            bces.append(float(torch.nn.functional.binary_cross_entropy_with_logits(logit, y)))
            p = torch.sigmoid(logit)
            dices.append(float(1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)))
    assert parts["ce"] == pytest.approx(ce_num / ce_den, abs=1e-5)
    assert parts["bce"] == pytest.approx(np.mean(bces), abs=1e-5)
    assert parts["dice"] == pytest.approx(np.mean(dices), abs=1e-5)
    assert float(loss) == pytest.approx(w.cls * parts["ce"] + w.bce * parts["bce"] + w.dice * parts["dice"], abs=1e-5)


def _ap_slow(scores, gold):
    """Average precision by an explicit loop over the distinct thresholds, high to low."""
    pos = sum(gold)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        sel = [g for s, g in zip(scores, gold) if s >= t]
        recall = sum(sel) / pos
        ap += (recall - prev_recall) * (sum(sel) / len(sel))
        prev_recall = recall
    return ap


def test_membership_auprc_against_slow_loop():
    model = _model()
    batch = _batch(_scenes(4))
    scores, out, _ = sx.method_scores(model, batch, methods=("cross_last", "random", "member_probs"))
    got = sx.membership_auprc(scores, out, batch)
    matches = sd.train.match_batch(out, batch)
    i = 0
    for b, (s, (qi, gi)) in enumerate(zip(batch.scenes, matches)):
        for q, g in zip(qi, gi):
            gold = [j in s.groups[g] for j in range(s.n)]
            for m in scores:
                assert got[m][i] == pytest.approx(_ap_slow(scores[m][b, q, : s.n].tolist(), gold), abs=1e-12)
            i += 1
    assert i == sum(len(s.groups) for s in batch.scenes)
    # a perfect score ranks the members first: AUPRC 1
    perfect = torch.zeros_like(scores["random"])
    for b, (s, (qi, gi)) in enumerate(zip(batch.scenes, matches)):
        for q, g in zip(qi, gi):
            perfect[b, q, s.groups[g]] = 1.0
    assert all(v == 1.0 for v in sx.membership_auprc({"p": perfect}, out, batch)["p"])


def test_group_detection_counts():
    gold = [[0, 1, 2], [3], [4, 5]]
    assert group_detection_counts([[0, 1, 2], [3], [4, 5]], gold) == (3, 3, 3)
    # a duplicate of one group is a false positive; IoU 2/3 counts, IoU 1/3 does not
    assert group_detection_counts([[0, 1], [0, 1, 2], [4], [3, 4, 5]], gold) == (2, 4, 3)
    assert group_detection_counts([], gold) == (0, 0, 3)
    assert iou([0, 1], [1, 2]) == pytest.approx(1 / 3)


def test_rollout_follows_the_rules_written_out():
    model = _model()
    batch = _batch(_scenes(2))
    cap = sd.capture_scenes(model, batch)
    got = sx.query_rollout(cap).double()
    for b in range(2):
        def mean_map(layer, stack, kind):
            return cap.attention(layer, stack=stack, kind=kind)[b].double().mean(0).numpy()

        n = batch.features.shape[1]
        Q = 8
        r_xx = np.eye(n) + mean_map(0, "encoder", "self") @ np.eye(n)

        def rbar(R):
            Rh = R - np.eye(len(R))
            s = Rh.sum(1, keepdims=True)
            Rh = np.divide(Rh, s, out=np.zeros_like(Rh), where=s != 0)
            return Rh + np.eye(len(R))

        r_qq, r_qx = np.eye(Q), np.zeros((Q, n))
        for layer in range(2):
            a = mean_map(layer, "decoder", "self")
            r_qq = r_qq + a @ r_qq
            r_qx = r_qx + a @ r_qx
            r_qx = r_qx + rbar(r_qq).T @ mean_map(layer, "decoder", "cross") @ rbar(r_xx)
        np.testing.assert_allclose(got[b].numpy(), r_qx, atol=1e-5)


def test_attention_entropy_against_scipy():
    from scipy.stats import entropy

    model = _model()
    batch = _batch(_scenes(3))
    _, out, cap = sx.method_scores(model, batch, methods=("cross_last",))
    ent = sx.attention_entropy(cap, out, batch)
    A = cap.attention(1, stack="decoder", kind="cross").double().numpy()
    vals = []
    for b, s in enumerate(batch.scenes):
        vals.append(np.mean([entropy(A[b, h, q, : s.n]) / math.log(s.n) for h in range(A.shape[1]) for q in range(8)]))
    assert ent["all"] == pytest.approx(float(np.mean(vals)), abs=1e-9)
    assert 0.0 < ent["matched"] <= 1.0


def test_faithfulness_against_one_explicit_removal():
    model = _model(query_init="conditioned")
    batch = _batch(_scenes(2, seed=8))
    scores, out, _ = sx.method_scores(model, batch, methods=("cross_last",))
    res = sx.membership_faithfulness(model, batch, scores, out, bins=(0.2,))
    assert res["cross_last"]["pairs"] == sum(len(s.groups) for s in batch.scenes if s.n >= 2)
    # recompute comprehensiveness for every pair by hand and average
    matches = sd.train.match_batch(out, batch)
    z0 = model.initial_queries(out.memory, batch.attention_mask)
    comp, suff = [], []
    for b, (s, (qi, _)) in enumerate(zip(batch.scenes, matches)):
        k = min(max(1, math.ceil(0.2 * s.n)), s.n - 1)
        for q in qi:
            c = int(out.activity_probs[b, q, :-1].argmax())
            top = torch.argsort(scores["cross_last"][b, q, : s.n], descending=True, stable=True)[:k]
            without = batch.attention_mask[b : b + 1].clone()
            without[0, top] = False
            only = torch.zeros_like(without)
            only[0, top] = True
            p0 = out.activity_probs[b, q, c]
            with torch.no_grad():
                pw = model(batch.features[b : b + 1], without, initial_queries=z0[b : b + 1]).activity_probs[0, q, c]
                po = model(batch.features[b : b + 1], only, initial_queries=z0[b : b + 1]).activity_probs[0, q, c]
            comp.append(float(p0 - pw))
            suff.append(float(p0 - po))
    assert res["cross_last"]["comprehensiveness"] == pytest.approx(np.mean(comp), abs=1e-9)
    assert res["cross_last"]["sufficiency"] == pytest.approx(np.mean(suff), abs=1e-9)


# -- training --------------------------------------------------------------------------------------


def test_tiny_training_lowers_loss_and_round_trips(tmp_path):
    train = ss.generate_scenes(64, 21, prefix="tr")
    cfg = sd.SetDecoderConfig(num_queries=6, d_model=16, n_heads=4, n_encoder_layers=1, n_decoder_layers=1)
    settings = sd.TrainingSettings(epochs=8, batch_size=16, lr=3e-3, seed=0)
    model, metrics = sd.train_set_decoder(cfg, settings, train_scenes=train, eval_scenes=train[:16],
                                          out_dir=tmp_path, save=True)
    assert metrics["final_loss"] < metrics["first_loss"]
    assert 0.0 <= metrics["eval_f1"] <= 1.0 and 0.0 <= metrics["eval_activity_accuracy"] <= 1.0
    loaded, meta = sd.load_set_decoder(metrics["path"])
    batch = sd.collate(train[:4])
    torch.testing.assert_close(loaded(**batch.inputs()).member_logits, model(**batch.inputs()).member_logits)
    assert meta["config"] == cfg.to_dict()
    with pytest.raises(FileNotFoundError, match="set_decoder.json"):
        sd.load_set_decoder(tmp_path / "nothing")


def test_gradient_rollout_against_manual_forward():
    """One decoder layer, no encoder, no query self-attention: the relevance is mean_h (dy/dA * A)^+
    of the cross-attention; dy/dA is taken here through the decoder written out by hand."""
    model = _model(n_encoder_layers=0, n_decoder_layers=1, query_self_attention=False, num_queries=5)
    batch = _batch(_scenes(3, seed=1))
    queries = torch.tensor([0, 3, 4])
    classes = torch.tensor([1, 0, 2])
    got = sx.gradient_rollout(model, batch, queries, classes).double()
    layer = model.decoder[0]
    attn = layer.cross_attn
    mask = batch.attention_mask
    memory = model.encode(batch.features, mask).detach()
    z0 = model.initial_queries(memory, mask).detach()
    x = layer.ln_cross(z0)
    A = _manual_probs(attn, x, memory, mask).detach().requires_grad_(True)
    B, H, Q, N = A.shape
    v = (memory @ attn.w_v.weight.T + attn.w_v.bias).view(B, N, H, -1).permute(0, 2, 1, 3)
    z1 = z0 + attn.out_proj((A @ v).transpose(1, 2).reshape(B, Q, -1))
    z2 = z1 + layer.mlp(layer.ln_mlp(z1))
    y = model.activity_head(model.ln_out(z2))
    score = y[torch.arange(B), queries, classes].sum()
    (grad,) = torch.autograd.grad(score, A)
    expected = (grad * A.detach()).clamp_min(0).mean(1)[torch.arange(B), queries]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_predict_groups_reads_classes_and_threshold():
    Q, N, C1 = 3, 4, len(ss.ACTIVITIES) + 1
    member = torch.full((1, Q, N), -5.0)
    member[0, 0, [0, 1]] = 5.0
    member[0, 1, [2]] = 5.0
    act = torch.full((1, Q, C1), -5.0)
    act[0, 0, 2] = 5.0
    act[0, 1, C1 - 1] = 5.0  # "no group": not predicted
    act[0, 2, 1] = 5.0  # no member above 0.5: dropped
    out = sd.SetDecoderOutput(member_logits=member, activity_logits=act, memory=torch.zeros(1, N, 2),
                              query_states=torch.zeros(1, Q, 2))
    s = ss.Scene("p", [0.0] * N, [0.0] * N, [0.0] * N, [0.0] * N, [0] * N, [[0, 1], [2], [3]], [2, 0, 0])
    assert sd.predict_groups(out, sd.collate([s])) == [[(0, [0, 1], 2)]]

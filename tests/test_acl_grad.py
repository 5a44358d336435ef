"""ACL-Grad's fast paths against its plain reference step (acl_grad.reference_step: per group, the
angle of the flattened gradients, the rule, autograd of the weighted sum): the per-parameter path
of full fine-tuning and the stacked path of stage 2, across thresholds that keep and drop the
auxiliary loss, with a reference loss, additive weights, and gradients accumulated over two calls."""
import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from acllib import acl_grad


def _exits(seed: int, n_exits: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 5, generator=g)
    y = torch.randint(0, 2, (8,), generator=g)
    ws = [torch.nn.Parameter(torch.randn(5, 2, generator=g)) for _ in range(n_exits)]
    bs = [torch.nn.Parameter(torch.randn(2, generator=g)) for _ in range(n_exits)]
    return x, y, ws, bs


def _losses(x, y, ws, bs, stacks=None):
    """main (CE), aux (a different objective per exit) and ref (CE on half the batch) summed over
    exits; through the stacks where given, as stage 2's stacked exits compute them."""
    main = aux = ref = 0.0
    for e in range(len(ws)):
        w, b = (stacks["w"][e], stacks["b"][e]) if stacks else (ws[e], bs[e])
        logits = x @ w + b
        main = main + F.cross_entropy(logits, y)
        aux = aux + (e + 1) * 0.3 * F.cross_entropy(logits, 1 - y) + 0.05 * (w ** 2).sum()
        ref = ref + F.cross_entropy(logits[:4], y[:4])
    return main, aux, ref


def _grads(params):
    return [p.grad.clone() for p in params]


def _zero(params):
    for p in params:
        p.grad = None


@pytest.mark.parametrize("threshold", [0.0, 90.0, 180.0])
@pytest.mark.parametrize("use_ref, additive", [(False, False), (True, False), (False, True)])
def test_per_parameter_path_equals_the_reference(threshold, use_ref, additive):
    x, y, ws, bs = _exits(0)
    params = [p for pair in zip(ws, bs) for p in pair]
    groups = [[ws[e], bs[e]] for e in range(len(ws))]
    out = {}
    for name, step in (("fast", acl_grad.backward), ("plain", acl_grad.reference_step)):
        _zero(params)
        measured = []
        for scale in (0.5, 0.5):  # two accumulated half-steps, as gradient accumulation makes them
            main, aux, ref = _losses(x, y, ws, bs)
            loss = acl_grad.Loss(main, aux, lam=0.3, groups=groups, additive=additive, ref=ref if use_ref else None)
            if step is acl_grad.backward:
                measured += step(loss, params, True, threshold, False, scale=scale)
            else:
                measured += step(loss, params, True, threshold, scale=scale)
        out[name] = (_grads(params), measured)
    for a, b in zip(out["fast"][0], out["plain"][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (angle_a, lam_a, *_), (angle_b, lam_b, *_) in zip(out["fast"][1], out["plain"][1]):
        assert angle_a == pytest.approx(angle_b, abs=1e-4) and lam_a == lam_b
    for angle, lam, *_ in out["plain"][1]:  # Eq. 4 on each group's reference angle: drop lam only over the threshold
        assert lam == (0.0 if angle > threshold else 0.3), (angle, threshold, lam)


def test_the_stacked_path_equals_the_reference():
    for seed, threshold in ((1, 90.0), (2, 90.0), (3, 0.0), (4, 180.0)):
        x, y, ws, bs = _exits(seed, n_exits=4)
        params = [p for pair in zip(ws, bs) for p in pair]
        groups = [[ws[e], bs[e]] for e in range(len(ws))]
        _zero(params)
        stacks = {"w": torch.stack(ws), "b": torch.stack(bs)}
        main, aux, ref = _losses(x, y, ws, bs, stacks)
        fast = acl_grad.backward(acl_grad.Loss(main, aux, lam=0.4, groups=groups, stacked=stacks, ref=ref),
                                 params, True, threshold, False)
        got = _grads(params)
        _zero(params)
        main, aux, ref = _losses(x, y, ws, bs)
        plain = acl_grad.reference_step(acl_grad.Loss(main, aux, lam=0.4, groups=groups, ref=ref), params, True, threshold)
        for a, b in zip(got, _grads(params)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert [lam for _, lam, *_ in fast] == [lam for _, lam, *_ in plain]
        assert [a for a, *_ in fast] == pytest.approx([a for a, *_ in plain], abs=1e-4)


def test_the_rule_drops_only_above_the_threshold_and_keeps_lam_without_a_direction():
    assert acl_grad.acl_grad_weight(90.1, 0.3, 90.0) == 0.0
    assert acl_grad.acl_grad_weight(90.0, 0.3, 90.0) == 0.3  # "exceeds": 90 itself keeps it
    assert acl_grad.acl_grad_weight(math.nan, 0.3, 90.0) == 0.3  # a zero gradient: no conflict to detect


# ---- issue #27: the gate's controls (PCGrad's projection, a random gate at the pair's rate)
def _linear_case(g_ce, g_aux):
    """One parameter w with main = g_ce . w and aux = g_aux . w: gradients exactly g_ce and g_aux."""
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    return w, (torch.tensor(g_ce, dtype=torch.float64) * w).sum(), (torch.tensor(g_aux, dtype=torch.float64) * w).sum()


@pytest.mark.parametrize("path", ["fast", "plain"])
def test_projection_by_hand_at_120_degrees(path):
    g_ce = [2.0, 0.0, 0.0]
    g_aux = [math.cos(math.radians(120)), math.sin(math.radians(120)), 0.0]  # |g_aux| 1, 120 degrees from g_ce
    w, main, aux = _linear_case(g_ce, g_aux)
    gate = acl_grad.Gate("project", 90.0)
    step = acl_grad.backward if path == "fast" else acl_grad.reference_step
    args = (True, 90.0, False) if path == "fast" else (True, 90.0)
    (d,) = step(acl_grad.Loss(main, aux, lam=0.4), [w], *args, gate=gate)
    # by hand: g_aux - (g_aux.g_ce / |g_ce|^2) g_ce = (-0.5, 0.866, 0) - (-1 / 4) (2, 0, 0) = (0, 0.866, 0)
    projected = torch.tensor([0.0, math.sin(math.radians(120)), 0.0], dtype=torch.float64)
    want = 0.6 * torch.tensor(g_ce, dtype=torch.float64) + 0.4 * projected
    torch.testing.assert_close(w.grad, want)
    assert float((w.grad - 0.6 * torch.tensor(g_ce, dtype=torch.float64)) @ torch.tensor(g_ce, dtype=torch.float64)) == pytest.approx(0.0, abs=1e-12)
    assert d.angle == pytest.approx(120.0) and d.lam == 0.4 and d.projected and d.norm_ratio == pytest.approx(0.5)


def test_projection_leaves_an_angle_under_90_degrees_alone():
    g_ce, g_aux = [2.0, 0.0, 0.0], [math.cos(math.radians(60)), math.sin(math.radians(60)), 0.0]
    w, main, aux = _linear_case(g_ce, g_aux)
    (d,) = acl_grad.backward(acl_grad.Loss(main, aux, lam=0.4), [w], True, 90.0, False, gate=acl_grad.Gate("project"))
    torch.testing.assert_close(w.grad, 0.6 * torch.tensor(g_ce, dtype=torch.float64) + 0.4 * torch.tensor(g_aux, dtype=torch.float64))
    assert not d.projected and d.lam == 0.4 and d.angle == pytest.approx(60.0)


@pytest.mark.parametrize("threshold", [60.0, 90.0, 120.0])
@pytest.mark.parametrize("use_ref, additive", [(False, False), (True, False), (False, True), (True, True)])
def test_the_projecting_paths_equal_autograd_of_the_projected_sum(use_ref, additive, threshold):
    """Per group, the update is autograd of w_main main + w_aux (aux - c ref) with c = g_aux.g_ref /
    |g_ref|^2 where their angle exceeds the threshold (computed here from each group's flattened
    gradients), through the per-parameter path, the stacked path and the reference step alike, the
    step accumulated from two half-weighted calls as gradient accumulation makes it."""
    for seed in range(4):
        x, y, ws, bs = _exits(seed, n_exits=4)
        params = [p for pair in zip(ws, bs) for p in pair]
        groups = [[ws[e], bs[e]] for e in range(len(ws))]
        # the independent expectation: per exit, its own losses, c from its flattened gradients
        want, conflicts = [], 0
        main, aux, ref = _losses(x, y, ws, bs)
        ref = ref if use_ref else main
        for e in range(len(ws)):  # exits are independent: the sums' gradients w.r.t. exit e are its own
            flat = lambda loss: torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [ws[e], bs[e]], retain_graph=True)])
            gr, ga = flat(ref), flat(aux)
            angle = math.degrees(math.acos(max(-1.0, min(1.0, float(ga @ gr / (ga.norm() * gr.norm()))))))
            c = float(ga @ gr / (gr @ gr)) if angle > threshold else 0.0
            conflicts += c != 0.0
            w_main = 1.0 if additive else 0.7
            want += list(torch.autograd.grad(w_main * main + 0.3 * (aux - c * ref), [ws[e], bs[e]], retain_graph=True))
        got = {}
        for name in ("fast", "stacked", "plain"):
            _zero(params)
            for _ in range(2):  # two accumulated half-steps of the same batch: together, one step
                stacks = {"w": torch.stack(ws), "b": torch.stack(bs)} if name == "stacked" else None
                main, aux, ref = _losses(x, y, ws, bs, stacks)
                loss = acl_grad.Loss(main, aux, lam=0.3, groups=groups, stacked=stacks, additive=additive,
                                     ref=ref if use_ref else None)
                gate = acl_grad.Gate("project", threshold)
                if name == "plain":
                    acl_grad.reference_step(loss, params, True, threshold, scale=0.5, gate=gate)
                else:
                    acl_grad.backward(loss, params, True, threshold, False, scale=0.5, gate=gate)
            got[name] = _grads(params)
        for name, grads in got.items():
            for a, b in zip(grads, want):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name}, seed {seed}")
    assert conflicts > 0  # the cases include conflicting exits (and, by seed, agreeing ones)


def test_a_random_gate_drops_at_its_rate_and_reproducibly():
    from scipy.stats import binomtest
    rates = [0.3, 0.05]
    dots = [(1.0, 1.0, 1.0), (-1.0, 1.0, 1.0)]  # the angles play no part in a random gate
    gate = acl_grad.Gate("random", rates=rates, seed=3)
    dropped = np.array([[lam == 0.0 for lam, c in gate.decide(dots, 0.2)] for _ in range(4000)])
    for g, q in enumerate(rates):
        ci = binomtest(int(dropped[:, g].sum()), len(dropped), q).proportion_ci(0.999)
        assert ci.low <= q <= ci.high, (g, dropped[:, g].mean())
    again = acl_grad.Gate("random", rates=rates, seed=3)
    assert (np.array([[lam == 0.0 for lam, _ in again.decide(dots, 0.2)] for _ in range(4000)]) == dropped).all()
    other = acl_grad.Gate("random", rates=rates, seed=4)
    assert not (np.array([[lam == 0.0 for lam, _ in other.decide(dots, 0.2)] for _ in range(4000)]) == dropped).all()


def test_drop_shares_read_each_group_of_the_log():
    # two groups, three steps, the second step accumulated over two micro-batches
    lam = 0.2
    log = [{"epoch": 1, "step": 0, "lam": 0.0}, {"epoch": 1, "step": 0, "lam": lam},
           {"epoch": 1, "step": 1, "lam": lam}, {"epoch": 1, "step": 1, "lam": 0.0},
           {"epoch": 1, "step": 1, "lam": 0.0}, {"epoch": 1, "step": 1, "lam": 0.0},
           {"epoch": 2, "step": 2, "lam": lam}, {"epoch": 2, "step": 2, "lam": lam}]
    assert acl_grad.drop_shares(log, lam, 2) == [pytest.approx(2 / 4), pytest.approx(2 / 4)]
    assert acl_grad.drop_shares(log[:2], lam, 2) == [1.0, 0.0]
    with pytest.raises(ValueError, match="lam 0"):
        acl_grad.drop_shares(log, 0.0, 2)
    with pytest.raises(ValueError, match="no entries for 2 groups"):
        acl_grad.drop_shares([], lam, 2)

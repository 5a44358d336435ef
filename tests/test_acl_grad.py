"""ACL-Grad's fast paths against its plain reference step (acl_grad.reference_step: per group, the
angle of the flattened gradients, the rule, autograd of the weighted sum): the per-parameter path
of full fine-tuning and the stacked path of stage 2, across thresholds that keep and drop the
auxiliary loss, with a reference loss, additive weights, and gradients accumulated over two calls."""
import math

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
    for (angle_a, lam_a), (angle_b, lam_b) in zip(out["fast"][1], out["plain"][1]):
        assert angle_a == pytest.approx(angle_b, abs=1e-4) and lam_a == lam_b
    for angle, lam in out["plain"][1]:  # Eq. 4 on each group's reference angle: drop lam only over the threshold
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
        assert [lam for _, lam in fast] == [lam for _, lam in plain]
        assert [a for a, _ in fast] == pytest.approx([a for a, _ in plain], abs=1e-4)


def test_the_rule_drops_only_above_the_threshold_and_keeps_lam_without_a_direction():
    assert acl_grad.acl_grad_weight(90.1, 0.3, 90.0) == 0.0
    assert acl_grad.acl_grad_weight(90.0, 0.3, 90.0) == 0.3  # "exceeds": 90 itself keeps it
    assert acl_grad.acl_grad_weight(math.nan, 0.3, 90.0) == 0.3  # a zero gradient: no conflict to detect

"""ACL-Grad (Eq. 4) in one place: the loss container, the rule, and both ways of combining the two
gradients into one update, beside the plain reference step they equal (the angles themselves, Eq. 2,
are losses.group_angles and losses.stacked_angles).

A step's loss is (1 - lam) main + lam aux (Eq. 3; main + lam aux if `additive`). ACL-Grad measures
the angle between aux's gradient and main's (or a reference loss's: stage 2's CE when main is CE +
KD) per parameter group (the whole model in full fine-tuning, each exit in stage 2) and sets lam to
0 on a group whose angle exceeds the threshold (90 degrees: the gradients conflict).

  backward()          per parameter: three autograd.grad calls on one forward graph, the weighted
                      sum written into .grad in place (no full-size temporaries)
  _backward_stacked() stage 2's stacked exits: gradients with respect to [E, ...] stacks, angles and
                      weights a few tensor operations per parameter name, not per exit and name
  reference_step()    the plain version both equal (tests/test_acl_grad.py): per group, the angle of
                      the flattened gradients, the rule, autograd of the weighted sum

Beyond the paper (issue #27), two controls of Eq. 4's rule as `Gate`s (config.GATES): a random gate
that drops the aux term at the rate the same run under Eq. 4 dropped it, and PCGrad's projection
(Yu et al. 2020), which keeps the aux gradient minus its component along the reference gradient when
they conflict (the main gradient is never projected).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .config import GATES, RunConfig
from .losses import angle_from_dots, group_dots, stacked_dots
from .models import reference
from .results import load_result


def acl_grad_weight(angle: float, lam: float, threshold: float) -> float:
    """Eq. 4: the auxiliary loss keeps its weight lam unless the angle exceeds the threshold."""
    return 0.0 if angle > threshold else lam  # nan > threshold is False: no conflict, keep lam


class Decision(NamedTuple):
    """What a step measured and decided for one parameter group (logged per step by train.fit)."""
    angle: float        # degrees between the aux gradient and the reference's (nan: either is zero)
    lam: float          # the aux weight used
    norm_ratio: float   # |g_aux| / |g_ref| (nan when g_ref is zero)
    projected: bool     # PCGrad removed the aux gradient's component along the reference's


# The random gate's own stream, apart from the training's (batches, dropout), so that a random-gate
# run draws the same batches and masks as its Eq. 4 pair: only the gate differs.
RANDOM_GATE_STREAM = 27


def drop_shares(angles: list[dict], lam: float, groups: int) -> list[float]:
    """Per parameter group, the share of a run's logged steps on which its aux term was dropped
    (lam used 0 where the run's lam was not): what a random gate matches. The log holds one entry per
    group and backward pass, in group order within each step (train.fit)."""
    if lam == 0.0:
        raise ValueError("a run with lam 0 drops nothing: there is no drop share to match")
    per = [[] for _ in range(groups)]
    for _, entries in _by_step(angles):
        for k, e in enumerate(entries):
            per[k % groups].append(e["lam"] == 0.0)
    if not all(per):
        raise ValueError(f"the run's angle log has no entries for {groups} groups")
    return [float(np.mean(p)) for p in per]


def _by_step(angles: list[dict]):
    steps: dict[tuple, list[dict]] = {}
    for e in angles:
        steps.setdefault((e["epoch"], e["step"]), []).append(e)
    return steps.items()


class Gate:
    """What a step does with each group's aux gradient, given (g_aux.g_ref, |g_ref|^2, |g_aux|^2):
    Eq. 4 ("angle"), a drop at random ("random", at `rates` per group, or the rates read from
    `pair`'s log at the first step), or PCGrad's projection ("project")."""

    def __init__(self, rule: str = "angle", threshold: float = 90.0, rates: list[float] | None = None,
                 seed: int = 0, pair: RunConfig | None = None):
        if rule not in GATES:
            raise ValueError(f"unknown gate {rule!r}; choose one of {', '.join(GATES)}")
        if rule == "random" and rates is None and pair is None:
            raise ValueError("a random gate needs its rates, or the paired run to read them from")
        self.rule, self.threshold, self.rates, self.pair = rule, threshold, rates, pair
        self.rng = np.random.default_rng([seed, RANDOM_GATE_STREAM]) if rule == "random" else None

    @classmethod
    def for_run(cls, cfg: RunConfig) -> "Gate":
        return cls(cfg.gate, cfg.angle_threshold, seed=cfg.seed, pair=cfg.gate_pair())

    def _rates(self, groups: int) -> list[float]:
        if self.rates is None:
            result = load_result(self.pair)
            if result is None:
                raise RuntimeError(f"the random gate's pair {self.pair.hash} has not run: run it first (runs.run does)")
            self.rates = drop_shares(result.angles, self.pair.lam, groups)
        if len(self.rates) != groups:
            raise ValueError(f"{len(self.rates)} drop rates for {groups} parameter groups")
        return self.rates

    def decide(self, dots: list[tuple[float, float, float]], lam: float) -> list[tuple[float, float]]:
        """(the aux weight, the projection coefficient c: g_aux <- g_aux - c g_ref) per group."""
        angles = [angle_from_dots(*d) for d in dots]
        if self.rule == "angle":
            return [(acl_grad_weight(a, lam, self.threshold), 0.0) for a in angles]
        if self.rule == "random":
            drop = self.rng.random(len(dots)) < np.asarray(self._rates(len(dots)))
            return [(0.0 if d else lam, 0.0) for d in drop]
        # project: only where the angle exceeds the threshold (90: a negative dot product), as PCGrad
        return [(lam, dot / sq_ref if a > self.threshold else 0.0) for a, (dot, sq_ref, _) in zip(angles, dots)]


def _decisions(dots, choices) -> list[Decision]:
    return [Decision(angle_from_dots(*d), lam, math.sqrt(d[2] / d[1]) if d[1] > 0 else float("nan"), c != 0.0)
            for d, (lam, c) in zip(dots, choices)]


@dataclass
class Loss:
    """(1 - lam) * main + lam * aux (or main + lam * aux if `additive`); ACL-Grad (Eq. 4) decides lam
    per parameter group, from the angle between aux's gradient and ref's (main's when ref is None)."""
    main: torch.Tensor
    aux: torch.Tensor | None = None
    lam: float = 0.0
    groups: list[list[torch.nn.Parameter]] | None = None  # None: one group, all parameters
    # Stage 2's stacked exits: {name: [E, ...] stack of that parameter of each exit} (the
    # stack_exit_params the forward used), groups[e] being exit e's parameters in that order.
    # ACL-Grad then differentiates with respect to the stacks: every use of an exit's parameter
    # in main or aux must go through them (a use of the parameter itself would be missed).
    stacked: dict[str, torch.Tensor] | None = None
    additive: bool = False
    ref: torch.Tensor | None = None  # e.g. stage 2's CE when main is CE + KD

    def weights(self, lam: float) -> tuple[float, float]:
        """The weights of main and aux for a group whose aux weight is lam."""
        return (1.0 if self.additive else 1.0 - lam), lam


def backward(loss: Loss, params: list[torch.nn.Parameter], acl_grad: bool, threshold: float,
             log_angles: bool, scale: float = 1.0, gate: Gate | None = None) -> list[Decision]:
    """Accumulate the step's gradient into .grad; return each group's Decision when measured.

    With ACL-Grad (or angle logging) both gradients come from the one forward pass: two backward
    passes through the same graph, then the weighted sum is written into .grad directly. `gate`:
    what ACL-Grad does per group (default: Eq. 4 at `threshold`; a given gate has its own threshold).
    """
    if loss.aux is None or not (acl_grad or log_angles):
        w_main, w_aux = loss.weights(loss.lam)
        total = loss.main if loss.aux is None else w_main * loss.main + w_aux * loss.aux
        if not total.requires_grad:  # it reaches no trained parameter (a Theseus batch that replaced
            return []                # no module): their .grad stays None and the optimizer skips them
        (total * scale).backward()
        return []
    gate = gate or Gate("angle", threshold)
    if reference():  # the plain step both paths below equal (models.reference_ops)
        return reference_step(loss, params, acl_grad, threshold, scale, gate)
    if loss.stacked is not None:
        return _backward_stacked(loss, acl_grad, scale, gate)
    g_main = torch.autograd.grad(loss.main, params, retain_graph=True, allow_unused=True)
    g_ref = g_main if loss.ref is None else torch.autograd.grad(loss.ref, params, retain_graph=True, allow_unused=True)
    g_aux = torch.autograd.grad(loss.aux, params, allow_unused=True)
    index = {id(p): i for i, p in enumerate(params)}
    groups = [[index[id(p)] for p in group] for group in loss.groups or [params]]
    dots = group_dots([g_ref[i] for ids in groups for i in ids], [g_aux[i] for ids in groups for i in ids],
                      [len(ids) for ids in groups])  # per group: g_ref.g_aux, |g_ref|^2, |g_aux|^2
    choices = gate.decide(dots, loss.lam) if acl_grad else [(loss.lam, 0.0)] * len(groups)
    for ids, (lam, c) in zip(groups, choices):
        w_main, w_aux = loss.weights(lam)
        # w_main g_main + w_aux (g_aux - c g_ref): with ref = main, one term less
        w_ref = -w_aux * c
        if loss.ref is None:
            w_main, w_ref = w_main + w_ref, 0.0
        for i in ids:
            # the weighted sum, in place in autograd's fresh buffers (one pass, no temporaries)
            terms = [(g, w) for g, w in ((g_main[i], w_main), (g_aux[i], w_aux), (g_ref[i] if w_ref else None, w_ref))
                     if g is not None and w != 0.0]
            if not terms:
                continue  # no gradient at all: leave .grad as it is, as loss.backward() would
            (first, w0), rest = terms[0], terms[1:]
            g = first.mul_(w0 * scale) if rest or w0 * scale != 1.0 else first
            for t, w in rest:
                g = g.add_(t, alpha=w * scale)
            p = params[i]
            if g.stride() != p.stride() or g.dtype != p.dtype:
                # .grad must be laid out like its parameter, as autograd's own accumulation ensures:
                # fused AdamW misreads gradients strided unlike their parameter (transposed ones from bmm)
                g = torch.empty_like(p).copy_(g)
            p.grad = g if p.grad is None else p.grad.add_(g)
    return _decisions(dots, choices)


def _backward_stacked(loss: Loss, acl_grad: bool, scale: float, gate: Gate) -> list[Decision]:
    """backward() for stacked exits: gradients with respect to the stacks, one [E, ...] tensor per
    parameter name, so that angles, weights and the combination are a few operations per name
    rather than per exit and name (the per-parameter loop was a tenth of a stage-2 step)."""
    names = list(loss.stacked)
    stacks = [loss.stacked[n] for n in names]
    g_main = torch.autograd.grad(loss.main, stacks, retain_graph=True, allow_unused=True)
    g_ref = g_main if loss.ref is None else torch.autograd.grad(loss.ref, stacks, retain_graph=True, allow_unused=True)
    g_aux = torch.autograd.grad(loss.aux, stacks, allow_unused=True)
    dots = stacked_dots(g_ref, g_aux, len(loss.groups))  # per exit: g_ref.g_aux, |g_ref|^2, |g_aux|^2
    choices = gate.decide(dots, loss.lam) if acl_grad else [(loss.lam, 0.0)] * len(loss.groups)
    dev = stacks[0].device
    weights = [loss.weights(lam) for lam, _ in choices]
    w_ref_e = [-wa * c for (_, wa), (_, c) in zip(weights, choices)]  # w_main g_main + w_aux (g_aux - c g_ref)
    if loss.ref is None:  # ref = main: fold the projection into main's weight
        weights, w_ref_e = [(wm + wr, wa) for (wm, wa), wr in zip(weights, w_ref_e)], [0.0] * len(w_ref_e)
    w_main = torch.tensor([wm * scale for wm, _ in weights], device=dev)  # per exit
    w_aux = torch.tensor([wa * scale for _, wa in weights], device=dev)
    w_ref = torch.tensor([wr * scale for wr in w_ref_e], device=dev)
    project = any(w_ref_e)
    by_name = [dict(zip(names, group, strict=True)) for group in loss.groups]
    for name, stack, a, b, r in zip(names, stacks, g_main, g_aux, g_ref):
        shape = (-1,) + (1,) * (stack.dim() - 1)
        # as backward(): a gradient whose weight is 0 is left out (not multiplied by 0), and an exit
        # left with neither keeps its .grad as it is
        pairs = ((a, w_main), (b, w_aux)) + (((r, w_ref),) if project else ())
        terms = [torch.where(w.view(shape) != 0, g * w.view(shape), 0) for g, w in pairs if g is not None]
        if not terms:
            continue
        g = sum(terms[1:], terms[0]).contiguous()  # exits' slices get their parameters' (contiguous) layout
        for e, params in enumerate(by_name):
            if not ((a is not None and weights[e][0] != 0.0) or (b is not None and weights[e][1] != 0.0)
                    or (r is not None and w_ref_e[e] != 0.0)):
                continue
            p = params[name]
            if p.shape != g[e].shape:
                raise ValueError(f"stacked {name!r} has slices {tuple(g[e].shape)}, exit {e}'s parameter "
                                 f"{tuple(p.shape)}: groups must list each exit's parameters in stacking order")
            p.grad = g[e] if p.grad is None else p.grad.add_(g[e])
    return _decisions(dots, choices)


def reference_step(loss: Loss, params: list[torch.nn.Parameter], acl_grad: bool, threshold: float,
                   scale: float = 1.0, gate: Gate | None = None) -> list[Decision]:
    """The plain ACL-Grad step that backward() and _backward_stacked() speed up: for each group, the
    dot product and norms of the flattened gradients, the gate's decision, then autograd of
    (w_main main + w_aux (aux - c ref)) * scale with respect to that group's parameters, c a constant
    (PCGrad's projection; 0 otherwise), added to .grad. Slow (one graph traversal per group and loss)
    and obviously right: backward() under models.reference_ops(), and the tests."""
    gate = gate or Gate("angle", threshold)
    groups = loss.groups or [params]
    ref = loss.main if loss.ref is None else loss.ref
    dots = []
    for group in groups:
        g_ref = torch.autograd.grad(ref, group, retain_graph=True, allow_unused=True)
        g_aux = torch.autograd.grad(loss.aux, group, retain_graph=True, allow_unused=True)
        flat = lambda gs: torch.cat([(torch.zeros_like(p) if g is None else g).double().reshape(-1)
                                     for g, p in zip(gs, group)])
        a, b = flat(g_ref), flat(g_aux)
        dots.append((float(a @ b), float(a @ a), float(b @ b)))
    choices = gate.decide(dots, loss.lam) if acl_grad else [(loss.lam, 0.0)] * len(groups)
    for group, (lam, c) in zip(groups, choices):
        w_main, w_aux = loss.weights(lam)
        aux = loss.aux if c == 0.0 else loss.aux - c * ref  # (c = 0: ref's gradient plays no part)
        total = (w_main * loss.main + w_aux * aux) * scale
        for p, g in zip(group, torch.autograd.grad(total, group, retain_graph=True, allow_unused=True)):
            if g is not None:
                p.grad = g.clone() if p.grad is None else p.grad + g
    return _decisions(dots, choices)

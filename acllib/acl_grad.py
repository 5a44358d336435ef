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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .losses import group_angles, stacked_angles
from .models import reference


def acl_grad_weight(angle: float, lam: float, threshold: float) -> float:
    """Eq. 4: the auxiliary loss keeps its weight lam unless the angle exceeds the threshold."""
    return 0.0 if angle > threshold else lam  # nan > threshold is False: no conflict, keep lam


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
             log_angles: bool, scale: float = 1.0) -> list[tuple[float, float]]:
    """Accumulate the step's gradient into .grad; return (angle, lam used) per group when measured.

    With ACL-Grad (or angle logging) both gradients come from the one forward pass: two backward
    passes through the same graph, then the weighted sum is written into .grad directly.
    """
    if loss.aux is None or not (acl_grad or log_angles):
        w_main, w_aux = loss.weights(loss.lam)
        total = loss.main if loss.aux is None else w_main * loss.main + w_aux * loss.aux
        if not total.requires_grad:  # it reaches no trained parameter (a Theseus batch that replaced
            return []                # no module): their .grad stays None and the optimizer skips them
        (total * scale).backward()
        return []
    if reference():  # the plain step both paths below equal (models.reference_ops)
        return reference_step(loss, params, acl_grad, threshold, scale)
    if loss.stacked is not None:
        return _backward_stacked(loss, acl_grad, threshold, scale)
    g_main = torch.autograd.grad(loss.main, params, retain_graph=True, allow_unused=True)
    g_ref = g_main if loss.ref is None else torch.autograd.grad(loss.ref, params, retain_graph=True, allow_unused=True)
    g_aux = torch.autograd.grad(loss.aux, params, allow_unused=True)
    index = {id(p): i for i, p in enumerate(params)}
    groups = [[index[id(p)] for p in group] for group in loss.groups or [params]]
    angles = group_angles([g_ref[i] for ids in groups for i in ids], [g_aux[i] for ids in groups for i in ids],
                          [len(ids) for ids in groups])
    measured = []
    for ids, angle in zip(groups, angles):
        lam = acl_grad_weight(angle, loss.lam, threshold) if acl_grad else loss.lam
        measured.append((angle, lam))
        w_main, w_aux = loss.weights(lam)
        for i in ids:
            # w_main g_main + w_aux g_aux, in place in autograd's fresh buffers (one pass, no temporaries)
            a = g_main[i] if w_main != 0.0 else None
            b = g_aux[i] if w_aux != 0.0 else None
            if a is None and b is None:
                continue  # no gradient at all: leave .grad as it is, as loss.backward() would
            if a is not None and b is not None:
                g = a.mul_(w_main * scale).add_(b, alpha=w_aux * scale)
            elif a is not None:
                g = a.mul_(w_main * scale) if w_main * scale != 1.0 else a
            else:
                g = b.mul_(w_aux * scale) if w_aux * scale != 1.0 else b
            p = params[i]
            if g.stride() != p.stride() or g.dtype != p.dtype:
                # .grad must be laid out like its parameter, as autograd's own accumulation ensures:
                # fused AdamW misreads gradients strided unlike their parameter (transposed ones from bmm)
                g = torch.empty_like(p).copy_(g)
            p.grad = g if p.grad is None else p.grad.add_(g)
    return measured


def _backward_stacked(loss: Loss, acl_grad: bool, threshold: float, scale: float) -> list[tuple[float, float]]:
    """backward() for stacked exits: gradients with respect to the stacks, one [E, ...] tensor per
    parameter name, so that angles, weights and the combination are a few operations per name
    rather than per exit and name (the per-parameter loop was a tenth of a stage-2 step)."""
    names = list(loss.stacked)
    stacks = [loss.stacked[n] for n in names]
    g_main = torch.autograd.grad(loss.main, stacks, retain_graph=True, allow_unused=True)
    g_ref = g_main if loss.ref is None else torch.autograd.grad(loss.ref, stacks, retain_graph=True, allow_unused=True)
    g_aux = torch.autograd.grad(loss.aux, stacks, allow_unused=True)
    angles = stacked_angles(g_ref, g_aux, len(loss.groups))
    lams = [acl_grad_weight(a, loss.lam, threshold) if acl_grad else loss.lam for a in angles]
    dev = stacks[0].device
    weights = [loss.weights(lam) for lam in lams]
    w_main = torch.tensor([wm * scale for wm, _ in weights], device=dev)  # per exit
    w_aux = torch.tensor([wa * scale for _, wa in weights], device=dev)
    by_name = [dict(zip(names, group, strict=True)) for group in loss.groups]
    for name, stack, a, b in zip(names, stacks, g_main, g_aux):
        shape = (-1,) + (1,) * (stack.dim() - 1)
        # as backward(): a gradient whose weight is 0 is left out (not multiplied by 0), and an exit
        # left with neither keeps its .grad as it is
        terms = [torch.where(w.view(shape) != 0, g * w.view(shape), 0) for g, w in ((a, w_main), (b, w_aux))
                 if g is not None]
        if not terms:
            continue
        g = sum(terms[1:], terms[0]).contiguous()  # exits' slices get their parameters' (contiguous) layout
        for e, params in enumerate(by_name):
            if not ((a is not None and weights[e][0] != 0.0) or (b is not None and weights[e][1] != 0.0)):
                continue
            p = params[name]
            if p.shape != g[e].shape:
                raise ValueError(f"stacked {name!r} has slices {tuple(g[e].shape)}, exit {e}'s parameter "
                                 f"{tuple(p.shape)}: groups must list each exit's parameters in stacking order")
            p.grad = g[e] if p.grad is None else p.grad.add_(g[e])
    return list(zip(angles, lams))


def reference_step(loss: Loss, params: list[torch.nn.Parameter], acl_grad: bool, threshold: float,
                   scale: float = 1.0) -> list[tuple[float, float]]:
    """The plain ACL-Grad step that backward() and _backward_stacked() speed up: for each group, its
    angle from the flattened gradients, lam from the rule, then autograd of (w_main main + w_aux aux)
    * scale with respect to that group's parameters, added to .grad. Slow (one graph traversal per
    group and loss) and obviously right: backward() under models.reference_ops(), and the tests."""
    groups = loss.groups or [params]
    measured = []
    for group in groups:
        g_ref = torch.autograd.grad(loss.main if loss.ref is None else loss.ref, group, retain_graph=True,
                                    allow_unused=True)
        g_aux = torch.autograd.grad(loss.aux, group, retain_graph=True, allow_unused=True)
        flat = lambda gs: torch.cat([(torch.zeros_like(p) if g is None else g).double().reshape(-1)
                                     for g, p in zip(gs, group)])
        a, b = flat(g_ref), flat(g_aux)
        angle = (float("nan") if a.norm() == 0 or b.norm() == 0
                 else math.degrees(math.acos(float((a @ b / (a.norm() * b.norm())).clamp(-1, 1)))))
        lam = acl_grad_weight(angle, loss.lam, threshold) if acl_grad else loss.lam
        measured.append((angle, lam))
        w_main, w_aux = loss.weights(lam)
        total = (w_main * loss.main + w_aux * loss.aux) * scale
        for p, g in zip(group, torch.autograd.grad(total, group, retain_graph=True, allow_unused=True)):
            if g is not None:
                p.grad = g.clone() if p.grad is None else p.grad + g
    return measured

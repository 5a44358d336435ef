"""The paper's losses: SupCon (Eq. 1), ACL-Embed (sec. 4.2), ACL-CL (sec. 4.4), the gradient angle
(Eq. 2, per parameter group and on stacked exits), and Hinton's logit distillation for 2ST. The
ACL-Grad rule (Eq. 4) and the steps that apply it live in acl_grad.py.

Every contrastive loss here reduces to `supcon_loss` on a batch augmented with extra labelled vectors,
so the three are one formula with three different batches.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

REDUCTIONS = ("sum", "mean")


def _check(temperature: float, reduction: str) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r} is not one of {', '.join(REDUCTIONS)}")


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float,
                reduction: str = "sum") -> torch.Tensor:
    """Supervised contrastive loss of Eq. 1 (Khosla et al. 2020; Gunel et al. 2021).

    z: [..., N, d] representations (l2-normalized here); labels: [N] ints, shared by the leading
    dims (stage 2 passes one batch per exit, [E, N, d], and gets E losses back).
    Anchor i's denominator runs over every k != i; its positives are the j != i with y_j = y_i.
    Anchors with no positive in the batch are left out entirely. "sum" adds the per-anchor losses,
    as Eq. 1 is printed; "mean" averages them over the anchors that count.
    """
    _check(temperature, reduction)
    z = F.normalize(z.float(), dim=-1)
    n = z.shape[-2]
    sim = z @ z.transpose(-1, -2) / temperature  # [..., N, N]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=-1, keepdim=True)  # log s(i, j), -inf on the diagonal
    positive = (labels[:, None] == labels[None, :]) & ~self_mask  # [N, N]
    n_pos = positive.sum(dim=1)
    has_pos = n_pos > 0
    # where() rather than multiply: the diagonal holds -inf and 0 * -inf is nan.
    pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=-1)  # [..., N]
    per_anchor = -pos_log_prob[..., has_pos] / n_pos[has_pos]
    if reduction == "sum" or per_anchor.shape[-1] == 0:  # no anchor counts: 0, graph (and zero gradient) kept
        return per_anchor.sum(dim=-1)
    return per_anchor.mean(dim=-1)


def _label_ids(labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.arange(k, device=labels.device, dtype=labels.dtype)


def acl_embed_loss(h: torch.Tensor, labels: torch.Tensor, label_embeddings: torch.Tensor,
                   temperature: float, reduction: str = "sum") -> torch.Tensor:
    """ACL-Embed (sec. 4.2): the K label embeddings join the batch as K samples labelled 0..K-1.

    h: [..., N, d] exit representations; label_embeddings: [..., K, d], the classifier's W columns
    as rows. All N + K vectors are anchors; gradient flows into the classifier through
    label_embeddings.
    """
    k = label_embeddings.shape[-2]
    lead = h.shape[:-2]
    z = torch.cat([h.float(), label_embeddings.float().expand(*lead, -1, -1)], dim=-2)  # [..., N + K, d]
    return supcon_loss(z, torch.cat([labels, _label_ids(labels, k)]), temperature, reduction)


def acl_cross_layer_loss(h_student: torch.Tensor, emb_student: torch.Tensor,
                         h_teacher: torch.Tensor, emb_teacher: torch.Tensor,
                         labels: torch.Tensor, temperature: float,
                         reduction: str = "sum") -> torch.Tensor:
    """ACL-CL (sec. 4.4): Eq. 1 on the 2N + 2K vectors of a student exit and the frozen teacher exit.

    Shapes as in acl_embed_loss; the teacher's ([N, d], [K, d]) may lack the student's leading dims.
    The teacher's representations and label embeddings are detached: the teacher only guides.
    """
    k = emb_student.shape[-2]
    lead = h_student.shape[:-2]
    parts = [h_student.float(), emb_student.float(), h_teacher.detach().float(), emb_teacher.detach().float()]
    z = torch.cat([t.expand(*lead, -1, -1) for t in parts], dim=-2)  # [..., 2N + 2K, d]
    label_ids = _label_ids(labels, k)
    y = torch.cat([labels, label_ids, labels, label_ids])  # [2N + 2K]
    return supcon_loss(z, y, temperature, reduction)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """Hinton et al. (2015) distillation: T^2 * KL(teacher_T || student_T), averaged over the batch.

    student_logits: [..., N, K]; teacher_logits: [N, K] or the student's shape; returns [...].
    """
    if not temperature > 0:
        raise ValueError(f"kd temperature must be > 0, got {temperature!r}")
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    p_teacher = log_p_teacher.exp()
    # xlogy: a teacher probability that underflows to 0 contributes 0, as in F.kl_div
    kl = (torch.xlogy(p_teacher, p_teacher) - p_teacher * log_p_student).sum(dim=-1)  # [..., N]
    return kl.mean(dim=-1) * t * t


def group_angles(grads_a: Sequence[torch.Tensor | None], grads_b: Sequence[torch.Tensor | None],
                 sizes: Sequence[int]) -> list[float]:
    """Angle in degrees between two gradients within each group, the groups being consecutive runs
    of `sizes` tensors of the matching lists grads_a and grads_b (None = zero).

    nan for a group where either gradient is exactly zero (no direction, so no conflict to detect).
    """
    return [angle_from_dots(*row) for row in group_dots(grads_a, grads_b, sizes)]


def group_dots(grads_a: Sequence[torch.Tensor | None], grads_b: Sequence[torch.Tensor | None],
               sizes: Sequence[int]) -> list[tuple[float, float, float]]:
    """(a.b, |a|^2, |b|^2) of two gradients within each group (as group_angles): what an angle, a
    norm ratio and PCGrad's projection (acl_grad.Gate) are computed from."""
    if sum(sizes) != len(grads_a):
        raise ValueError(f"group sizes {list(sizes)} do not add up to {len(grads_a)} gradients")
    present = [g for g in (*grads_a, *grads_b) if g is not None]
    if not present:
        return [(0.0, 0.0, 0.0)] * len(sizes)
    # Per-tensor dot products, no full-size temporaries (the naive a * b and a ** 2 over MiniLM's
    # 22.7M parameters cost as much as a backward pass), summed in float64 with one sync.
    zero = torch.zeros((), device=present[0].device)

    def dot(x, y):
        return zero if x is None or y is None else torch.dot(x.float().reshape(-1), y.float().reshape(-1))

    per_tensor = torch.stack([torch.stack([dot(a, b), dot(a, a), dot(b, b)])
                              for a, b in zip(grads_a, grads_b, strict=True)]).double()  # [tensors, 3]
    sums = torch.stack([s.sum(0) for s in per_tensor.split(list(sizes))])
    return [tuple(row) for row in sums.tolist()]


def stacked_angles(grads_a: Sequence[torch.Tensor | None], grads_b: Sequence[torch.Tensor | None],
                   groups: int) -> list[float]:
    """group_angles for stacked gradients: tensors [groups, ...] whose slice g belongs to group g
    (the gradients of stack_exit_params' stacks, one group per exit); one angle per group."""
    return [angle_from_dots(*row) for row in stacked_dots(grads_a, grads_b, groups)]


def stacked_dots(grads_a: Sequence[torch.Tensor | None], grads_b: Sequence[torch.Tensor | None],
                 groups: int) -> list[tuple[float, float, float]]:
    """group_dots for stacked gradients (as stacked_angles): (a.b, |a|^2, |b|^2) per group."""
    stats = []
    for a, b in zip(grads_a, grads_b, strict=True):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a.float()
        b = torch.zeros_like(a) if b is None else b.float()
        a, b = a.reshape(groups, -1), b.reshape(groups, -1)
        stats.append(torch.stack([(a * b).sum(1), (a * a).sum(1), (b * b).sum(1)], 1).double())
    if not stats:
        return [(0.0, 0.0, 0.0)] * groups
    return [tuple(row) for row in torch.stack(stats).sum(0).tolist()]  # [groups, 3]: dot, |a|^2, |b|^2


def angle_from_dots(dot: float, sq_a: float, sq_b: float) -> float:
    """Degrees from a dot product and squared norms; nan when either vector is exactly zero."""
    if sq_a == 0.0 or sq_b == 0.0:
        return float("nan")
    cos = dot / math.sqrt(sq_a * sq_b)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def angle_between(grads_a: Sequence[torch.Tensor | None], grads_b: Sequence[torch.Tensor | None]) -> float:
    """Angle in degrees between two gradients given as matching lists of tensors (None = zero).

    nan when either gradient is exactly zero (no direction, so no conflict to detect).
    """
    return group_angles(grads_a, grads_b, [len(grads_a)])[0]


def gradient_angle(loss_a: torch.Tensor, loss_b: torch.Tensor,
                   params: Iterable[torch.nn.Parameter]) -> float:
    """Eq. 2: the angle (degrees) between d loss_a / d params and d loss_b / d params."""
    params = [p for p in params if p.requires_grad]
    g_a = torch.autograd.grad(loss_a, params, retain_graph=True, allow_unused=True)
    g_b = torch.autograd.grad(loss_b, params, retain_graph=True, allow_unused=True)
    return angle_between(g_a, g_b)

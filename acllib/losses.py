"""The paper's losses: SupCon (Eq. 1), ACL-Embed (sec. 4.2), ACL-CL (sec. 4.4), the gradient angle
(Eq. 2) with the ACL-Grad weight rule (Eq. 4), and Hinton's logit distillation for 2ST.

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

    z: [N, d] representations (l2-normalized here); labels: [N] ints.
    Anchor i's denominator runs over every k != i; its positives are the j != i with y_j = y_i.
    Anchors with no positive in the batch are left out entirely. "sum" adds the per-anchor losses,
    as Eq. 1 is printed; "mean" averages them over the anchors that count.
    """
    _check(temperature, reduction)
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    sim = z @ z.T / temperature  # [N, N]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # log s(i, j), -inf on the diagonal
    positive = (labels[:, None] == labels[None, :]) & ~self_mask  # [N, N]
    n_pos = positive.sum(dim=1)
    has_pos = n_pos > 0
    # where() rather than multiply: the diagonal holds -inf and 0 * -inf is nan.
    pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos]
    if reduction == "sum":
        return per_anchor.sum()
    if per_anchor.numel() == 0:  # keeps the graph (and a zero gradient) when nothing counts
        return per_anchor.sum()
    return per_anchor.mean()


def acl_embed_loss(h: torch.Tensor, labels: torch.Tensor, label_embeddings: torch.Tensor,
                   temperature: float, reduction: str = "sum") -> torch.Tensor:
    """ACL-Embed (sec. 4.2): the K label embeddings join the batch as K samples labelled 0..K-1.

    h: [N, d] exit representations; label_embeddings: [K, d], the classifier's W columns as rows.
    All N + K vectors are anchors; gradient flows into the classifier through label_embeddings.
    """
    k = label_embeddings.shape[0]
    label_ids = torch.arange(k, device=labels.device, dtype=labels.dtype)
    z = torch.cat([h.float(), label_embeddings.float()])  # [N + K, d]
    return supcon_loss(z, torch.cat([labels, label_ids]), temperature, reduction)


def acl_cross_layer_loss(h_student: torch.Tensor, emb_student: torch.Tensor,
                         h_teacher: torch.Tensor, emb_teacher: torch.Tensor,
                         labels: torch.Tensor, temperature: float,
                         reduction: str = "sum") -> torch.Tensor:
    """ACL-CL (sec. 4.4): Eq. 1 on the 2N + 2K vectors of a student exit and the frozen teacher exit.

    The teacher's representations and label embeddings are detached: the teacher only guides.
    """
    k = emb_student.shape[0]
    label_ids = torch.arange(k, device=labels.device, dtype=labels.dtype)
    z = torch.cat([h_student.float(), emb_student.float(),
                   h_teacher.detach().float(), emb_teacher.detach().float()])
    y = torch.cat([labels, label_ids, labels, label_ids])  # [2N + 2K]
    return supcon_loss(z, y, temperature, reduction)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """Hinton et al. (2015) distillation: T^2 * KL(teacher_T || student_T), averaged over the batch."""
    if not temperature > 0:
        raise ValueError(f"kd temperature must be > 0, got {temperature!r}")
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    p_teacher = F.softmax(teacher_logits.detach().float() / t, dim=-1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * t * t


def angle_between(grads_a: Sequence[torch.Tensor | None], grads_b: Sequence[torch.Tensor | None]) -> float:
    """Angle in degrees between two gradients given as matching lists of tensors (None = zero).

    nan when either gradient is exactly zero (no direction, so no conflict to detect).
    """
    # Dot products and squared norms without full-size temporaries, summed in float64, one sync:
    # over MiniLM's 22.7M parameters the naive a * b and a ** 2 cost as much as a backward pass.
    dots, sq_a, sq_b = [], [], []
    for a, b in zip(grads_a, grads_b, strict=True):
        a = None if a is None else a.float().reshape(-1)
        b = None if b is None else b.float().reshape(-1)
        if a is not None:
            sq_a.append(torch.dot(a, a))
        if b is not None:
            sq_b.append(torch.dot(b, b))
        if a is not None and b is not None:
            dots.append(torch.dot(a, b))

    def total(xs):
        return float(torch.stack(xs).double().sum()) if xs else 0.0

    dot, norm_a, norm_b = total(dots), total(sq_a), total(sq_b)
    if norm_a == 0.0 or norm_b == 0.0:
        return float("nan")
    cos = dot / math.sqrt(norm_a * norm_b)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def gradient_angle(loss_a: torch.Tensor, loss_b: torch.Tensor,
                   params: Iterable[torch.nn.Parameter]) -> float:
    """Eq. 2: the angle (degrees) between d loss_a / d params and d loss_b / d params."""
    params = [p for p in params if p.requires_grad]
    g_a = torch.autograd.grad(loss_a, params, retain_graph=True, allow_unused=True)
    g_b = torch.autograd.grad(loss_b, params, retain_graph=True, allow_unused=True)
    return angle_between(g_a, g_b)


def acl_grad_weight(angle: float, lam: float, threshold: float) -> float:
    """Eq. 4: the auxiliary loss keeps its weight lam unless the angle exceeds the threshold."""
    return 0.0 if angle > threshold else lam  # nan > threshold is False: no conflict, keep lam

"""Tests of acllib.losses against independent references written from the paper's formulas.

Eq. 1 (SupCon, Khosla et al. 2020 / Gunel et al. 2021), with the anchor's own term left out of the
denominator, on l2-normalized vectors:

    s(i, j)  = exp(z_i . z_j / tau) / sum_{k != i} exp(z_i . z_k / tau)
    loss_i   = -1 / |P(i)| * sum_{j in P(i)} log s(i, j),   P(i) = {j != i : y_j = y_i}
    "sum"    = sum of loss_i over anchors with |P(i)| > 0
    "mean"   = that sum / number of anchors with |P(i)| > 0

The references below are naive per-anchor loops: one in pure Python float64 (math.exp / math.log),
one with float64 torch scalars (same loops, used for autograd gradients). The augmented batches of
ACL-Embed (N + K vectors) and ACL-CL (2N + 2K vectors) are assembled by hand in the tests.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from acllib.acl_grad import acl_grad_weight  # noqa: E402
from acllib.losses import (  # noqa: E402
    acl_cross_layer_loss,
    acl_embed_loss,
    angle_between,
    gradient_angle,
    kd_loss,
    supcon_loss,
)

torch.set_num_threads(1)

RTOL = 1e-5
ATOL = 1e-5


# --------------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------------

def ref_supcon_math(vectors, labels, tau, reduction="sum"):
    """Pure-Python float64 Eq. 1. vectors: list of lists of floats, labels: list of ints.

    Returns (loss, number_of_counting_anchors).
    """
    vecs = []
    for v in vectors:
        norm = math.sqrt(sum(float(x) * float(x) for x in v))
        vecs.append([float(x) / norm for x in v])
    n = len(vecs)
    total = 0.0
    counted = 0
    for i in range(n):
        positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        denom = 0.0
        for k in range(n):
            if k != i:
                dot = sum(a * b for a, b in zip(vecs[i], vecs[k]))
                denom += math.exp(dot / tau)
        acc = 0.0
        for j in positives:
            dot = sum(a * b for a, b in zip(vecs[i], vecs[j]))
            acc += math.log(math.exp(dot / tau) / denom)
        total += -acc / len(positives)
        counted += 1
    if reduction == "sum":
        return total, counted
    assert reduction == "mean"
    return (total / counted if counted else 0.0), counted


def ref_per_anchor_math(vectors, labels, tau):
    """{anchor index: loss_i} for the anchors that have a positive, one naive loop per anchor."""
    norms = [math.sqrt(sum(x * x for x in v)) for v in vectors]
    vecs = [[x / nv for x in v] for v, nv in zip(vectors, norms)]
    out = {}
    for i in range(len(vecs)):
        positives = [j for j in range(len(vecs)) if j != i and labels[j] == labels[i]]
        if positives:
            sims = {k: sum(a * b for a, b in zip(vecs[i], vecs[k])) / tau
                    for k in range(len(vecs)) if k != i}
            log_denom = math.log(sum(math.exp(v) for v in sims.values()))
            out[i] = -sum(sims[j] - log_denom for j in positives) / len(positives)
    return out


def ref_supcon_torch(z, labels, tau, reduction="sum"):
    """Same loops as ref_supcon_math, on float64 torch scalars so autograd gives reference gradients.

    z: [n, d] tensor (any float dtype, converted to float64); labels: list of ints.
    """
    z = z.double()
    n = z.shape[0]
    rows = [z[i] / torch.sqrt((z[i] * z[i]).sum()) for i in range(n)]
    total = z.new_zeros(())
    counted = 0
    for i in range(n):
        positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        denom = z.new_zeros(())
        for k in range(n):
            if k != i:
                denom = denom + torch.exp((rows[i] * rows[k]).sum() / tau)
        acc = z.new_zeros(())
        for j in positives:
            acc = acc + torch.log(torch.exp((rows[i] * rows[j]).sum() / tau) / denom)
        total = total - acc / len(positives)
        counted += 1
    if reduction == "mean" and counted:
        total = total / counted
    return total


def as_lists(t):
    return [[float(x) for x in row] for row in t.detach().double()]


def as_labels(t):
    return [int(x) for x in t]


def random_labels(gen, n, k):
    return torch.randint(0, k, (n,), generator=gen)


# --------------------------------------------------------------------------------------------------
# The references themselves on hand-computed cases (so that the references are trusted)
# --------------------------------------------------------------------------------------------------

# Case A: z1 = (1, 0), z2 = (1, 0), z3 = (0, 1), labels [0, 0, 1], tau = 1.
#   anchor 1: denominator over k in {2, 3} = e^1 + e^0 = e + 1; single positive 2:
#             loss_1 = -log(e / (e + 1)) = log(1 + 1/e) = 0.3132616875...
#   anchor 2: same as anchor 1 by symmetry.
#   anchor 3: label 1 appears once -> no positive -> excluded.
#   sum = 2 log(1 + 1/e) = 0.626523375...,  mean = sum / 2 = log(1 + 1/e).
HAND_A_Z = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
HAND_A_Y = [0, 0, 1]
HAND_A_SUM = 2.0 * math.log(1.0 + math.exp(-1.0))
HAND_A_MEAN = math.log(1.0 + math.exp(-1.0))

# Case B: z1 = (1, 0), z2 = (0, 1), z3 = (-1, 0), all label 0, tau = 0.5.
#   anchor 1: dots with z2, z3 = 0, -1 -> /tau = 0, -2; denominator = 1 + e^-2.
#             loss_1 = -1/2 [log(1/(1+e^-2)) + log(e^-2/(1+e^-2))] = 1 + log(1 + e^-2)
#   anchor 2: dots with z1, z3 = 0, 0; denominator = 2; loss_2 = -1/2 [2 log(1/2)] = log 2
#   anchor 3: symmetric to anchor 1: 1 + log(1 + e^-2)
#   sum = 2 + 2 log(1 + e^-2) + log 2 = 2 + 0.2538560 + 0.6931472 = 2.9470032...,  mean = sum / 3
HAND_B_Z = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
HAND_B_Y = [0, 0, 0]
HAND_B_SUM = 2.0 + 2.0 * math.log(1.0 + math.exp(-2.0)) + math.log(2.0)


def test_reference_matches_hand_computed_cases():
    s, c = ref_supcon_math(HAND_A_Z, HAND_A_Y, 1.0, "sum")
    assert c == 2
    assert s == pytest.approx(HAND_A_SUM, rel=1e-12)
    assert s == pytest.approx(0.6265233750364456, rel=1e-12)
    s, _ = ref_supcon_math(HAND_B_Z, HAND_B_Y, 0.5, "sum")
    assert s == pytest.approx(HAND_B_SUM, rel=1e-12)
    assert s == pytest.approx(2.9470032026, rel=1e-9)
    t = ref_supcon_torch(torch.tensor(HAND_B_Z), HAND_B_Y, 0.5, "mean")
    assert float(t) == pytest.approx(HAND_B_SUM / 3, rel=1e-12)


# --------------------------------------------------------------------------------------------------
# supcon_loss
# --------------------------------------------------------------------------------------------------

def test_supcon_hand_case_three_2d_vectors():
    z = torch.tensor(HAND_A_Z)
    y = torch.tensor(HAND_A_Y)
    assert float(supcon_loss(z, y, 1.0, "sum")) == pytest.approx(HAND_A_SUM, rel=1e-6)
    assert float(supcon_loss(z, y, 1.0, "mean")) == pytest.approx(HAND_A_MEAN, rel=1e-6)
    # Same vectors at different lengths: the loss normalizes, so nothing changes.
    z_scaled = torch.tensor([[2.0, 0.0], [0.5, 0.0], [0.0, 7.0]])
    assert float(supcon_loss(z_scaled, y, 1.0, "sum")) == pytest.approx(HAND_A_SUM, rel=1e-6)


def test_supcon_hand_case_single_class_three_vectors():
    z = torch.tensor(HAND_B_Z)
    y = torch.tensor(HAND_B_Y)
    assert float(supcon_loss(z, y, 0.5, "sum")) == pytest.approx(HAND_B_SUM, rel=1e-6)
    assert float(supcon_loss(z, y, 0.5, "mean")) == pytest.approx(HAND_B_SUM / 3, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("tau", [0.1, 0.3, 1.0])
def test_supcon_matches_reference_random(seed, k, tau):
    gen = torch.Generator().manual_seed(1000 * seed + 10 * k)
    n, d = 12, 6
    z = torch.randn(n, d, generator=gen) * 3.0
    y = random_labels(gen, n, k)
    ref_sum, counted = ref_supcon_math(as_lists(z), as_labels(y), tau, "sum")
    ref_mean, _ = ref_supcon_math(as_lists(z), as_labels(y), tau, "mean")
    got_sum = supcon_loss(z, y, tau, "sum")
    got_mean = supcon_loss(z, y, tau, "mean")
    assert got_sum.dim() == 0 and got_mean.dim() == 0
    assert float(got_sum) == pytest.approx(ref_sum, rel=RTOL, abs=ATOL)
    assert float(got_mean) == pytest.approx(ref_mean, rel=RTOL, abs=ATOL)
    assert float(got_mean) == pytest.approx(ref_sum / counted, rel=RTOL, abs=ATOL)


def test_supcon_default_reduction_is_sum():
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(8, 4, generator=gen)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 2, 2])
    ref_sum, _ = ref_supcon_math(as_lists(z), as_labels(y), 0.2, "sum")
    assert float(supcon_loss(z, y, 0.2)) == pytest.approx(ref_sum, rel=RTOL)


def test_supcon_arbitrary_label_values():
    # Labels need not be 0..K-1: only equality matters.
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(9, 5, generator=gen)
    y = torch.tensor([7, 3, 7, 11, 3, 11, 7, 3, 42])  # 42 appears once
    ref_sum, counted = ref_supcon_math(as_lists(z), as_labels(y), 0.3, "sum")
    assert counted == 8
    assert float(supcon_loss(z, y, 0.3, "sum")) == pytest.approx(ref_sum, rel=RTOL)
    y_remapped = torch.tensor([0, 1, 0, 2, 1, 2, 0, 1, 3])
    assert float(supcon_loss(z, y_remapped, 0.3, "sum")) == pytest.approx(ref_sum, rel=RTOL)


def test_supcon_anchor_without_positive_is_excluded_from_sum_and_mean():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(6, 4, generator=gen)
    y = torch.tensor([0, 0, 0, 1, 1, 2])  # class 2 appears once: anchor 5 has no positive
    tau = 0.25
    # The lone anchor's row does not contribute, but it is still a negative (it stays in the
    # other anchors' denominators), so this is not the same as dropping the sample.
    vecs = as_lists(z)
    labels = as_labels(y)
    per_anchor = ref_per_anchor_math(vecs, labels, tau)
    assert sorted(per_anchor) == [0, 1, 2, 3, 4]
    assert sum(per_anchor.values()) == pytest.approx(ref_supcon_math(vecs, labels, tau)[0], rel=1e-12)
    full_sum, counted = ref_supcon_math(vecs, labels, tau, "sum")
    assert counted == 5
    got_sum = float(supcon_loss(z, y, tau, "sum"))
    got_mean = float(supcon_loss(z, y, tau, "mean"))
    assert math.isfinite(got_sum) and math.isfinite(got_mean)
    assert got_sum == pytest.approx(full_sum, rel=RTOL)
    # The mean divides by the 5 counting anchors, not by the 6 samples.
    assert got_mean == pytest.approx(full_sum / 5, rel=RTOL)
    assert got_mean != pytest.approx(full_sum / 6, rel=1e-3)
    # Dropping sample 5 from the batch changes the loss (it is still a negative for the others).
    dropped_sum, _ = ref_supcon_math(vecs[:5], labels[:5], tau, "sum")
    assert got_sum != pytest.approx(dropped_sum, rel=1e-3)


def test_supcon_several_singleton_classes_mean_denominator():
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(7, 3, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 0, 0, 4])  # only the three 0's count
    ref_sum, counted = ref_supcon_math(as_lists(z), as_labels(y), 0.5, "sum")
    assert counted == 3
    assert float(supcon_loss(z, y, 0.5, "mean")) == pytest.approx(ref_sum / 3, rel=RTOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_supcon_single_class_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 5
    z = torch.randn(n, 4, generator=gen)
    y = torch.full((n,), 1, dtype=torch.long)
    ref_sum, counted = ref_supcon_math(as_lists(z), as_labels(y), 0.2, "sum")
    assert counted == n
    assert float(supcon_loss(z, y, 0.2, "sum")) == pytest.approx(ref_sum, rel=RTOL)
    assert float(supcon_loss(z, y, 0.2, "mean")) == pytest.approx(ref_sum / n, rel=RTOL)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_supcon_no_anchor_has_positive(n, reduction):
    gen = torch.Generator().manual_seed(n)
    z = torch.randn(n, 4, generator=gen, requires_grad=True)
    y = torch.arange(n)  # every label distinct
    loss = supcon_loss(z, y, 0.1, reduction)
    assert loss.dim() == 0
    assert torch.isfinite(loss)
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None
    assert torch.isfinite(z.grad).all()
    assert torch.count_nonzero(z.grad) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supcon_scale_invariance(seed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(10, 5, generator=gen)
    y = random_labels(gen, 10, 3)
    scales = torch.rand(10, 1, generator=gen) * 20 + 0.05  # per-row positive scaling
    base = float(supcon_loss(z, y, 0.3))
    assert float(supcon_loss(z * scales, y, 0.3)) == pytest.approx(base, rel=RTOL)
    assert float(supcon_loss(z * 100.0, y, 0.3)) == pytest.approx(base, rel=RTOL)
    # And the value is the reference's (which also normalizes), not the loss of raw dot products.
    ref_sum, _ = ref_supcon_math(as_lists(z * scales), as_labels(y), 0.3)
    assert base == pytest.approx(ref_sum, rel=RTOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_supcon_gradient_matches_reference(seed, reduction):
    gen = torch.Generator().manual_seed(100 + seed)
    n, d = 9, 5
    z0 = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2.0
    y = torch.tensor([0, 1, 2, 0, 1, 0, 1, 0, 2]) if seed != 2 else torch.tensor([0, 1, 1, 0, 0, 1, 1, 0, 2])
    tau = 0.3

    z = z0.clone().requires_grad_(True)
    supcon_loss(z, y, tau, reduction).backward()

    z_ref = z0.clone().requires_grad_(True)
    ref_supcon_torch(z_ref, as_labels(y), tau, reduction).backward()

    assert z.grad is not None
    assert torch.count_nonzero(z_ref.grad) > 0
    torch.testing.assert_close(z.grad.double(), z_ref.grad, rtol=1e-4, atol=1e-5)


def test_supcon_accepts_float64_input_value():
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    ref_sum, _ = ref_supcon_math(as_lists(z), as_labels(y), 0.5)
    assert float(supcon_loss(z, y, 0.5)) == pytest.approx(ref_sum, rel=RTOL)


@pytest.mark.parametrize("bad", [0.0, -0.5, -1, float("nan")])
def test_supcon_bad_temperature_raises(bad):
    z = torch.randn(4, 3)
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError) as excinfo:
        supcon_loss(z, y, bad)
    assert repr(bad) in str(excinfo.value)


@pytest.mark.parametrize("bad", ["avg", "none", "SUM", ""])
def test_supcon_bad_reduction_raises(bad):
    z = torch.randn(4, 3)
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError) as excinfo:
        supcon_loss(z, y, 0.1, bad)
    assert repr(bad) in str(excinfo.value)


def test_embed_and_cross_layer_validate_arguments():
    h = torch.randn(4, 3)
    emb = torch.randn(2, 3)
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="-0.2"):
        acl_embed_loss(h, y, emb, -0.2)
    with pytest.raises(ValueError, match="median"):
        acl_embed_loss(h, y, emb, 0.1, "median")
    with pytest.raises(ValueError, match="-3"):
        acl_cross_layer_loss(h, emb, h, emb, y, -3)
    with pytest.raises(ValueError, match="max"):
        acl_cross_layer_loss(h, emb, h, emb, y, 0.1, "max")


# --------------------------------------------------------------------------------------------------
# ACL-Embed: batch of N samples + K label embeddings labelled 0..K-1
# --------------------------------------------------------------------------------------------------

def embed_reference(h, y, emb, tau, reduction):
    # Augmented batch built by hand: the N sample rows, then row k of emb with label k.
    vectors = as_lists(h) + as_lists(emb)
    labels = as_labels(y) + list(range(emb.shape[0]))
    return ref_supcon_math(vectors, labels, tau, reduction)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_acl_embed_matches_reference(seed, k, reduction):
    gen = torch.Generator().manual_seed(10 * seed + k)
    n, d = 10, 8
    h = torch.randn(n, d, generator=gen)
    emb = torch.randn(k, d, generator=gen)
    y = random_labels(gen, n, k)
    ref, _ = embed_reference(h, y, emb, 0.2, reduction)
    got = acl_embed_loss(h, y, emb, 0.2, reduction)
    assert float(got) == pytest.approx(ref, rel=RTOL, abs=ATOL)


def test_acl_embed_hand_case():
    # h = [(1, 0)] with label 0; label embeddings l_0 = (1, 0), l_1 = (0, 1); tau = 1.
    # Augmented batch: v1 = (1,0) y=0, v2 = (1,0) y=0, v3 = (0,1) y=1 -> exactly case A above.
    h = torch.tensor([[3.0, 0.0]])
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0])
    assert float(acl_embed_loss(h, y, emb, 1.0, "sum")) == pytest.approx(HAND_A_SUM, rel=1e-6)
    assert float(acl_embed_loss(h, y, emb, 1.0, "mean")) == pytest.approx(HAND_A_MEAN, rel=1e-6)


def test_acl_embed_missing_class_mean_denominator():
    # K = 3 but class 2 absent from the batch: label embedding 2 has no positive, so it is not an
    # anchor that counts; every sample has its label embedding as positive -> N + 2 counting anchors.
    gen = torch.Generator().manual_seed(21)
    n, d, k = 6, 5, 3
    h = torch.randn(n, d, generator=gen)
    emb = torch.randn(k, d, generator=gen)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    ref_sum, counted = embed_reference(h, y, emb, 0.4, "sum")
    assert counted == n + 2
    assert float(acl_embed_loss(h, y, emb, 0.4, "sum")) == pytest.approx(ref_sum, rel=RTOL)
    assert float(acl_embed_loss(h, y, emb, 0.4, "mean")) == pytest.approx(ref_sum / (n + 2), rel=RTOL)


def test_acl_embed_all_distinct_labels_each_sample_has_label_embedding_positive():
    # N = 3 samples, all different labels: plain SupCon would be 0, ACL-Embed is not.
    gen = torch.Generator().manual_seed(22)
    h = torch.randn(3, 4, generator=gen)
    emb = torch.randn(3, 4, generator=gen)
    y = torch.tensor([2, 0, 1])
    ref_sum, counted = embed_reference(h, y, emb, 0.3, "sum")
    assert counted == 6
    got = float(acl_embed_loss(h, y, emb, 0.3))
    assert got > 0
    assert got == pytest.approx(ref_sum, rel=RTOL)


@pytest.mark.parametrize("k", [2, 3])
def test_acl_embed_gradient_flows_into_linear_weight(k):
    torch.manual_seed(0)
    n, d = 8, 6
    classifier = torch.nn.Linear(d, k, bias=False)  # weight [k, d]: row l is label l's embedding
    w0 = classifier.weight.detach().clone()
    gen = torch.Generator().manual_seed(k)
    h0 = torch.randn(n, d, generator=gen)
    y = random_labels(gen, n, k)
    tau = 0.2

    h = h0.clone().requires_grad_(True)
    loss = acl_embed_loss(h, y, classifier.weight, tau, "mean")
    loss.backward()
    g_w = classifier.weight.grad
    assert g_w is not None
    assert torch.count_nonzero(g_w) > 0

    # Reference gradients: hand-built augmented batch through the float64 loop reference.
    h_ref = h0.double().clone().requires_grad_(True)
    w_ref = w0.double().clone().requires_grad_(True)
    ref = ref_supcon_torch(torch.cat([h_ref, w_ref]), as_labels(y) + list(range(k)), tau, "mean")
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=RTOL)
    torch.testing.assert_close(g_w.double(), w_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h.grad.double(), h_ref.grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# ACL-CL: [h_s; emb_s; h_t; emb_t] with labels [y; 0..K-1; y; 0..K-1], teacher detached
# --------------------------------------------------------------------------------------------------

def cross_layer_reference_lists(h_s, emb_s, h_t, emb_t, y):
    k = emb_s.shape[0]
    vectors = as_lists(h_s) + as_lists(emb_s) + as_lists(h_t) + as_lists(emb_t)
    labels = as_labels(y) + list(range(k)) + as_labels(y) + list(range(k))
    return vectors, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_acl_cross_layer_matches_reference(seed, k, reduction):
    gen = torch.Generator().manual_seed(50 + 10 * seed + k)
    n, d = 6, 5
    h_s, h_t = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    e_s, e_t = torch.randn(k, d, generator=gen), torch.randn(k, d, generator=gen)
    y = random_labels(gen, n, k)
    vectors, labels = cross_layer_reference_lists(h_s, e_s, h_t, e_t, y)
    ref, counted = ref_supcon_math(vectors, labels, 0.3, reduction)
    assert counted == 2 * n + 2 * k  # every vector has at least its teacher/student twin
    got = acl_cross_layer_loss(h_s, e_s, h_t, e_t, y, 0.3, reduction)
    assert float(got) == pytest.approx(ref, rel=RTOL, abs=ATOL)


def test_acl_cross_layer_batch_labels_are_y_ids_y_ids():
    # The value must be that of labels [y; 0..K-1; y; 0..K-1] on [h_s; e_s; h_t; e_t], and must differ
    # from plausible mis-assemblies (guards the reference comparison against being insensitive).
    gen = torch.Generator().manual_seed(77)
    n, d, k = 4, 3, 2
    h_s, h_t = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    e_s, e_t = torch.randn(k, d, generator=gen), torch.randn(k, d, generator=gen)
    y = torch.tensor([1, 1, 1, 0])
    vectors, labels = cross_layer_reference_lists(h_s, e_s, h_t, e_t, y)
    ref, _ = ref_supcon_math(vectors, labels, 0.5)
    got = float(acl_cross_layer_loss(h_s, e_s, h_t, e_t, y, 0.5))
    assert got == pytest.approx(ref, rel=RTOL)
    # Wrong: labels [y; y; 0..K-1; 0..K-1] attached to the same vector order.
    wrong_labels = as_labels(y) + as_labels(y) + list(range(k)) + list(range(k))
    mislabelled, _ = ref_supcon_math(vectors, wrong_labels, 0.5)
    assert got != pytest.approx(mislabelled, rel=1e-3)
    # Wrong: teacher label embeddings left out (only N + K + N vectors).
    no_teacher_emb, _ = ref_supcon_math(vectors[: 2 * n + k], labels[: 2 * n + k], 0.5)
    assert got != pytest.approx(no_teacher_emb, rel=1e-3)


@pytest.mark.parametrize("k", [2, 3])
def test_acl_cross_layer_teacher_gets_no_gradient_student_does(k):
    gen = torch.Generator().manual_seed(300 + k)
    n, d = 7, 4
    h_s0, h_t0 = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    e_s0, e_t0 = torch.randn(k, d, generator=gen), torch.randn(k, d, generator=gen)
    y = random_labels(gen, n, k)
    tau = 0.25

    h_s = h_s0.clone().requires_grad_(True)
    e_s = e_s0.clone().requires_grad_(True)
    h_t = h_t0.clone().requires_grad_(True)
    e_t = e_t0.clone().requires_grad_(True)
    loss = acl_cross_layer_loss(h_s, e_s, h_t, e_t, y, tau, "sum")
    loss.backward()

    for teacher in (h_t, e_t):
        assert teacher.grad is None or torch.count_nonzero(teacher.grad) == 0
    assert h_s.grad is not None and torch.count_nonzero(h_s.grad) > 0
    assert e_s.grad is not None and torch.count_nonzero(e_s.grad) > 0

    # Student gradients equal the reference's, with the teacher rows as constants.
    rh = h_s0.double().clone().requires_grad_(True)
    re = e_s0.double().clone().requires_grad_(True)
    z = torch.cat([rh, re, h_t0.double(), e_t0.double()])
    labels = as_labels(y) + list(range(k)) + as_labels(y) + list(range(k))
    ref = ref_supcon_torch(z, labels, tau, "sum")
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=RTOL)
    torch.testing.assert_close(h_s.grad.double(), rh.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e_s.grad.double(), re.grad, rtol=1e-4, atol=1e-5)


def test_acl_cross_layer_teacher_from_module_gets_no_gradient():
    # Teacher representations produced by a module: its parameters must stay without gradient.
    torch.manual_seed(1)
    d, k, n = 5, 2, 6
    teacher_enc = torch.nn.Linear(d, d)
    teacher_cls = torch.nn.Linear(d, k, bias=False)
    student_enc = torch.nn.Linear(d, d)
    student_cls = torch.nn.Linear(d, k, bias=False)
    x = torch.randn(n, d)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    loss = acl_cross_layer_loss(student_enc(x), student_cls.weight, teacher_enc(x),
                                teacher_cls.weight, y, 0.3)
    loss.backward()
    for p in list(teacher_enc.parameters()) + list(teacher_cls.parameters()):
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    for p in list(student_enc.parameters()) + list(student_cls.parameters()):
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0


# --------------------------------------------------------------------------------------------------
# kd_loss: T^2 * KL(softmax(t / T) || softmax(s / T)), batch-averaged
# --------------------------------------------------------------------------------------------------

def ref_kd_math(student, teacher, t):
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        s_exp = [math.exp(v / t) for v in s_row]
        t_exp = [math.exp(v / t) for v in t_row]
        ps = [v / sum(s_exp) for v in s_exp]
        pt = [v / sum(t_exp) for v in t_exp]
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return t * t * total / len(student)


def test_kd_loss_hand_case_t2():
    # One example, 2 classes, T = 2: student logits (0, 0) -> p_s = (1/2, 1/2);
    # teacher logits (2 ln 3, 0) -> t/T = (ln 3, 0) -> p_t = (3/4, 1/4).
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.75 * 0.405465 - 0.25 * 0.693147 = 0.130812
    # T^2 * KL = 4 * 0.130812 = 0.523248
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[2.0 * math.log(3.0), 0.0]])
    expected = 4.0 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert expected == pytest.approx(0.5232481437645479, rel=1e-9)
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3])
def test_kd_loss_matches_hand_written_kl_t2(seed, k):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(5, k, generator=gen) * 3
    t = torch.randn(5, k, generator=gen) * 3
    ref = ref_kd_math(as_lists(s), as_lists(t), 2.0)
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    ref1 = ref_kd_math(as_lists(s), as_lists(t), 1.0)
    assert float(kd_loss(s, t, 1.0)) == pytest.approx(ref1, rel=1e-5, abs=1e-6)


def test_kd_loss_zero_when_equal_and_gradients():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 3, generator=gen)
    assert abs(float(kd_loss(logits, logits.clone(), 2.0))) < 1e-6

    b, t_temp = 4, 2.0
    s = torch.randn(b, 3, generator=gen, requires_grad=True)
    t = torch.randn(b, 3, generator=gen, requires_grad=True)
    kd_loss(s, t, t_temp).backward()
    # Teacher: no gradient.
    assert t.grad is None or torch.count_nonzero(t.grad) == 0
    # Student: d/ds [T^2 * mean_b KL] = T * (softmax(s/T) - softmax(t/T)) / B, written out by hand.
    expected = torch.empty(b, 3, dtype=torch.float64)
    for i in range(b):
        se = [math.exp(float(v) / t_temp) for v in s[i].detach()]
        te = [math.exp(float(v) / t_temp) for v in t[i].detach()]
        for c in range(3):
            expected[i, c] = t_temp * (se[c] / sum(se) - te[c] / sum(te)) / b
    torch.testing.assert_close(s.grad.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -2.0])
def test_kd_loss_bad_temperature_raises(bad):
    with pytest.raises(ValueError) as excinfo:
        kd_loss(torch.zeros(2, 2), torch.zeros(2, 2), bad)
    assert repr(bad) in str(excinfo.value)


# --------------------------------------------------------------------------------------------------
# Gradient angle (Eq. 2) and ACL-Grad weight (Eq. 4)
# --------------------------------------------------------------------------------------------------

def ref_angle_deg(va, vb):
    va, vb = va.double(), vb.double()
    cos = float((va * vb).sum()) / math.sqrt(float((va * va).sum()) * float((vb * vb).sum()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _losses(model, x, y, emb_tau=0.3):
    logits = model(x)
    ce = torch.nn.functional.cross_entropy(logits, y)
    h = model[1](model[0](x))
    aux = acl_embed_loss(h, y, model[2].weight, emb_tau, "mean")
    return ce, aux


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_angle_matches_separate_autograd_gradients(seed):
    model = _model(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 6, generator=gen)
    y = random_labels(gen, 10, 3)
    params = list(model.parameters())

    def grad_vector(which):
        model.zero_grad(set_to_none=True)
        ce, aux = _losses(model, x, y)
        (ce if which == 0 else aux).backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        vec = torch.nn.utils.parameters_to_vector([g.detach().clone() for g in grads])
        model.zero_grad(set_to_none=True)
        return vec

    g_ce = grad_vector(0)
    g_aux = grad_vector(1)
    expected = ref_angle_deg(g_ce, g_aux)
    assert 1.0 < expected < 179.0

    ce, aux = _losses(model, x, y)
    got = gradient_angle(ce, aux, model.parameters())
    assert got == pytest.approx(expected, abs=1e-2)
    # angle_between on the per-parameter lists gives the same
    # (aux does not touch the last bias: its gradient is None, which counts as zero)
    ga = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(aux, params, retain_graph=True, allow_unused=True)
    assert gb[-1] is None
    assert angle_between(ga, gb) == pytest.approx(expected, abs=1e-2)
    # The graph is still usable afterwards (ACL-Grad backprops the weighted sum next).
    (ce + aux).backward()
    assert all(p.grad is not None for p in params)


def test_gradient_angle_orthogonal_is_90():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    q = torch.nn.Parameter(torch.tensor([0.5]))
    loss_a = 3.0 * p[0] + 0.0 * q.sum()  # gradient (3, 0 | 0)
    loss_b = 5.0 * p[1] * p[1]  # gradient (0, 20 | None)
    assert gradient_angle(loss_a, loss_b, [p, q]) == pytest.approx(90.0, abs=1e-6)


def test_gradient_angle_opposite_is_180_and_same_is_0():
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    c = torch.tensor([[0.3, 1.0], [-2.0, 0.7]])
    loss_a = (w * c).sum()  # gradient c
    loss_b = -2.0 * (w * c).sum()  # gradient -2c
    assert gradient_angle(loss_a, loss_b, [w]) == pytest.approx(180.0, abs=1e-3)
    loss_c = 7.0 * (w * c).sum()
    assert gradient_angle(loss_a, loss_c, [w]) == pytest.approx(0.0, abs=0.1)


def test_gradient_angle_none_grad_counts_as_zero():
    # params [p1, p2]; loss_a = p1 + p2 -> (1, 1); loss_b = p2 only -> (0 [None], 1): 45 degrees.
    p1 = torch.nn.Parameter(torch.tensor([2.0]))
    p2 = torch.nn.Parameter(torch.tensor([-1.0]))
    loss_a = p1.sum() + p2.sum()
    loss_b = p2.sum()
    assert gradient_angle(loss_a, loss_b, [p1, p2]) == pytest.approx(45.0, abs=1e-4)
    # Same through angle_between with explicit None: (None, (1,0)) vs ((0,1)... ) combinations.
    a = [torch.tensor([1.0, 1.0]), None]
    b = [torch.tensor([1.0, 0.0]), torch.tensor([5.0])]
    # a = (1, 1, 0), b = (1, 0, 5): cos = 1 / (sqrt 2 * sqrt 26)
    expected = math.degrees(math.acos(1.0 / math.sqrt(2.0 * 26.0)))
    assert angle_between(a, b) == pytest.approx(expected, abs=1e-4)
    assert angle_between([None, torch.tensor([2.0])], [torch.tensor([3.0]), None]) == pytest.approx(90.0)


def test_gradient_angle_zero_gradient_is_nan():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    loss_a = (p * p).sum()
    loss_b = (p * 0.0).sum()
    assert math.isnan(gradient_angle(loss_a, loss_b, [p]))
    assert math.isnan(angle_between([None], [torch.tensor([1.0])]))
    assert math.isnan(angle_between([torch.zeros(3)], [torch.ones(3)]))


def test_gradient_angle_random_vectors_against_numpy_free_reference():
    gen = torch.Generator().manual_seed(123)
    for _ in range(20):
        a1, a2 = torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)
        b1, b2 = torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)
        expected = ref_angle_deg(torch.cat([a1.flatten(), a2]), torch.cat([b1.flatten(), b2]))
        assert angle_between([a1, a2], [b1, b2]) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    "angle, lam, threshold, expected",
    [
        (45.0, 0.1, 90.0, 0.1),
        (90.0, 0.1, 90.0, 0.1),  # gamma <= threshold keeps lambda
        (90.0001, 0.1, 90.0, 0.0),
        (135.0, 0.05, 90.0, 0.0),
        (0.0, 0.3, 60.0, 0.3),
        (60.5, 0.3, 60.0, 0.0),
        (180.0, 0.02, 179.9, 0.0),
        (float("nan"), 0.1, 90.0, 0.1),  # undefined angle is not "> threshold"
    ],
)
def test_acl_grad_weight_threshold_rule(angle, lam, threshold, expected):
    assert acl_grad_weight(angle, lam, threshold) == expected


# --------------------------------------------------------------------------------------------------
# Leading batch dims (stage 2 computes every exit's loss at once) and angles per parameter group
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_losses_with_leading_dims_equal_one_call_per_slice(reduction):
    gen = torch.Generator().manual_seed(7)
    e, n, k, d = 3, 9, 3, 5
    h = torch.randn(e, n, d, generator=gen)
    emb = torch.randn(e, k, d, generator=gen)
    h_t, emb_t = torch.randn(n, d, generator=gen), torch.randn(k, d, generator=gen)
    y = torch.tensor([2, 0, 1, 0, 1, 0, 1, 0, 1])  # label 2 once: without positives in SupCon
    got = {"scl": supcon_loss(h, y, 0.4, reduction),
           "embed": acl_embed_loss(h, y, emb, 0.4, reduction),
           "cl": acl_cross_layer_loss(h, emb, h_t, emb_t, y, 0.4, reduction)}
    for name, losses in got.items():
        assert losses.shape == (e,)
    for i in range(e):
        assert float(got["scl"][i]) == pytest.approx(float(supcon_loss(h[i], y, 0.4, reduction)), rel=RTOL)
        assert float(got["embed"][i]) == pytest.approx(float(acl_embed_loss(h[i], y, emb[i], 0.4, reduction)),
                                                       rel=RTOL)
        assert float(got["cl"][i]) == pytest.approx(
            float(acl_cross_layer_loss(h[i], emb[i], h_t, emb_t, y, 0.4, reduction)), rel=RTOL)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_supcon_with_leading_dims_and_no_anchor_counting(reduction):
    z = torch.randn(2, 4, 3, requires_grad=True)
    loss = supcon_loss(z, torch.arange(4), 0.5, reduction)  # every label once: no anchor counts
    assert loss.shape == (2,) and torch.count_nonzero(loss) == 0
    loss.sum().backward()
    assert torch.count_nonzero(z.grad) == 0


def test_kd_loss_with_leading_dims_equals_one_call_per_slice():
    gen = torch.Generator().manual_seed(8)
    s, t = torch.randn(4, 6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    got = kd_loss(s, t, 2.0)
    assert got.shape == (4,)
    for i in range(4):
        assert float(got[i]) == pytest.approx(float(kd_loss(s[i], t, 2.0)), rel=1e-5)


def test_group_angles_equal_the_angle_of_each_group():
    """Against the angle of each group's concatenated vectors, with transposed tensors and None gradients."""
    from acllib.losses import group_angles
    gen = torch.Generator().manual_seed(9)
    a = [torch.randn(4, 3, generator=gen).T, torch.randn(5, generator=gen), None,
         torch.randn(2, 2, generator=gen), torch.randn(3, generator=gen)]
    b = [torch.randn(4, 3, generator=gen).T, None, torch.randn(2, generator=gen),
         torch.randn(2, 2, generator=gen).T.contiguous().T, torch.randn(3, generator=gen)]
    zeros_like = [torch.zeros(3, 4), torch.zeros(5), torch.zeros(2), torch.zeros(2, 2), torch.zeros(3)]

    def vec(xs, ids):
        return torch.cat([(xs[i] if xs[i] is not None else zeros_like[i]).reshape(-1) for i in ids])

    got = group_angles(a, b, [3, 2])
    assert got[0] == pytest.approx(ref_angle_deg(vec(a, [0, 1, 2]), vec(b, [0, 1, 2])), abs=1e-3)
    assert got[1] == pytest.approx(ref_angle_deg(vec(a, [3, 4]), vec(b, [3, 4])), abs=1e-3)
    assert math.isnan(group_angles([torch.zeros(2), torch.ones(2)], [torch.ones(2), torch.ones(2)], [1, 1])[0])
    with pytest.raises(ValueError, match=r"group sizes \[2, 2\] do not add up to 5 gradients"):
        group_angles(a, b, [2, 2])


def test_stacked_angles_equal_group_angles_of_the_slices():
    from acllib.losses import group_angles, stacked_angles
    gen = torch.Generator().manual_seed(10)
    a = [torch.randn(3, 4, 2, generator=gen), torch.randn(3, 5, generator=gen).T.contiguous().T, None]
    b = [torch.randn(3, 4, 2, generator=gen), torch.randn(3, 5, generator=gen), torch.randn(3, 2, generator=gen)]
    b[0][1] = 0.0  # one exit's aux gradient is zero in one tensor, not in the others
    got = stacked_angles(a, b, 3)
    for g in range(3):
        want = group_angles([x if x is None else x[g] for x in a], [x[g] for x in b], [3])[0]
        assert got[g] == pytest.approx(want, abs=1e-4)
    assert all(math.isnan(x) for x in stacked_angles([torch.zeros(2, 3)], [torch.ones(2, 3)], 2))

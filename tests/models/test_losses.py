"""The training loss: per-sample and class weights, label smoothing, the shared denominator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from ecmf.models.losses import balanced_from_counts, class_weights, weighted_cross_entropy


def test_balanced_class_weights_match_sklearn():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 4, 4, 4, 4, 4])  # classes 3 and 5 absent
    present = np.unique(y)
    expected = compute_class_weight("balanced", classes=present, y=y)
    got = class_weights(y, 6, "balanced")
    np.testing.assert_allclose(got[present], expected, rtol=1e-6)
    np.testing.assert_array_equal(got[[3, 5]], [1.0, 1.0])
    np.testing.assert_array_equal(class_weights(y, 6, "none"), np.ones(6))
    # Counts summed over workers give the weights of the pooled labels.
    np.testing.assert_allclose(balanced_from_counts(np.bincount(y[:5], minlength=6)
                                                    + np.bincount(y[5:], minlength=6)), got)
    with pytest.raises(ValueError, match="balanced"):
        class_weights(y, 6, "inverse")


def batch(n=10, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)


def test_unit_weights_give_torch_mean_cross_entropy_with_smoothing():
    logits, y = batch()
    w = torch.ones(len(y))
    for eps in (0.0, 0.2):
        torch.testing.assert_close(weighted_cross_entropy(logits, y, w, eps),
                                   F.cross_entropy(logits, y, label_smoothing=eps))
    assert not torch.isclose(weighted_cross_entropy(logits, y, w, 0.2),
                             weighted_cross_entropy(logits, y, w, 0.0))


def test_sample_weights_are_a_weighted_mean_and_zero_weight_rows_count_for_nothing():
    logits, y = batch()
    w = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.0, 1.0, 0.7, 0.0, 1.0, 3.0])
    each = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(weighted_cross_entropy(logits, y, w), (each * w).sum() / w.sum())
    keep = w > 0
    torch.testing.assert_close(weighted_cross_entropy(logits, y, w),
                               weighted_cross_entropy(logits[keep], y[keep], w[keep]))
    # Scaling every weight changes nothing: pseudo-labels at 0.7 weigh relative to labeled ones.
    torch.testing.assert_close(weighted_cross_entropy(logits, y, 3 * w),
                               weighted_cross_entropy(logits, y, w))


def test_class_weights_match_torch_weighted_cross_entropy():
    logits, y = batch(40)
    cw = torch.tensor(class_weights(y.numpy(), 6, "balanced"))
    torch.testing.assert_close(weighted_cross_entropy(logits, y, torch.ones(40), class_weight=cw),
                               F.cross_entropy(logits, y, weight=cw))


def test_shared_total_splits_a_batch_into_worker_parts():
    # Two workers with parts of one batch, each dividing by (global weight)/2: the mean of their
    # gradients (what DDP computes) is the gradient of the whole batch's weighted mean.
    logits, y = batch(9)
    w = torch.rand(9) + 0.1
    whole = logits.clone().requires_grad_()
    weighted_cross_entropy(whole, y, w).backward()
    parts = logits.clone().requires_grad_()
    total = w.sum() / 2
    grads = []
    for rows in (slice(0, 6), slice(6, 9)):
        parts.grad = None
        weighted_cross_entropy(parts[rows], y[rows], w[rows], total=total).backward()
        grads.append(parts.grad.clone())
    torch.testing.assert_close((grads[0] + grads[1]) / 2, whole.grad)

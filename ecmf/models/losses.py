"""The training loss: cross-entropy with per-sample weights, optional class weights and label
smoothing, normalised by a weight total that distributed workers can share."""

from __future__ import annotations

import numpy as np

CLASS_WEIGHTS = ("none", "balanced")


def class_weights(y: np.ndarray, num_classes: int, mode: str = "none") -> np.ndarray:
    """Weight per class index, float32 [C]: ones for "none"; for "balanced", scikit-learn's
    `n / (n_present_classes * count_c)` (`compute_class_weight("balanced")`), 1.0 for classes
    absent from `y` (they weigh nothing: no sample carries them)."""
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class weights {mode!r}: expected one of {list(CLASS_WEIGHTS)}")
    out = np.ones(num_classes, dtype=np.float32)
    if mode == "none":
        return out
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    return balanced_from_counts(counts)


def balanced_from_counts(counts: np.ndarray) -> np.ndarray:
    """Balanced class weights from class counts (summed over workers when distributed)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    out = np.ones(len(counts), dtype=np.float32)
    if present.any():
        out[present] = counts.sum() / (present.sum() * counts[present])
    return out


def weighted_cross_entropy(logits, y, weight, label_smoothing: float = 0.0, class_weight=None,
                           total=None):
    """sum_i w_i * cw[y_i] * CE_i / total, where total defaults to sum_i w_i * cw[y_i].

    Distributed workers pass `total` = (the all-reduced sum of w_i * cw[y_i]) / world_size, so that
    DDP's mean over workers of their gradients is the gradient of the global weighted mean, even
    when a worker's batch is short or empty (all weights zero).
    """
    import torch.nn.functional as F

    each = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    w = weight if class_weight is None else weight * class_weight[y]
    denom = w.sum() if total is None else total
    return (each * w).sum() / denom.clamp(min=1e-8)

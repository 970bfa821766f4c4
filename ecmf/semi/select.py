"""Pseudo-label selection from pool probabilities: confidence threshold, agreement, class quotas.

Pure NumPy; the pseudo-labeling rounds call it on fold-ensemble probabilities.
"""

from __future__ import annotations

import numpy as np

# Guards floor(prior * budget) against products like 0.3 * 10 = 2.9999999999999996.
_EPS = 1e-9


def class_prior(labels, num_classes: int) -> np.ndarray:
    """Class proportions `[C]` of integer `labels` (a class absent from `labels` gets 0)."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"class_prior: expected a non-empty 1-D array of labels, got shape "
                         f"{y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"class_prior: expected integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"class_prior: labels must lie in [0, {num_classes}), got "
                         f"[{y.min()}, {y.max()}]")
    return np.bincount(y, minlength=num_classes) / y.size


def quotas(prior: np.ndarray, budget: int) -> np.ndarray:
    """Split `budget` slots over classes in proportion to `prior` (largest remainder method).

    The quotas sum to `budget` exactly (when some prior is positive); remainders go to the classes
    with the largest fractional parts, lower class index first on ties; zero prior gets zero.
    """
    prior = np.asarray(prior, dtype=np.float64)
    share = prior / prior.sum() * budget
    base = np.floor(share + _EPS).astype(np.int64)
    left = int(budget - base.sum())
    if left > 0:
        frac = np.where(prior > 0, share - base, -np.inf)
        order = np.lexsort((np.arange(prior.size), -frac))  # largest fraction, then lowest index
        base[order[:left]] += 1
    return base


def select_pseudo_labels(probs: np.ndarray, threshold: float, class_prior: np.ndarray | None = None,
                         max_total: int = 0, agree: np.ndarray | None = None) -> np.ndarray:
    """Indices (ascending) of pool rows whose predicted label is trusted as a pseudo-label.

    A row is a candidate when its top probability is >= `threshold` (and `agree[i]`, when given);
    its pseudo-label is the argmax (lowest class on ties). Candidates then fill a budget
    B = number of candidates, or `max_total` if that is smaller (0: no cap), split into per-class
    quotas by `quotas(target, B)`. The target proportions are `class_prior` (the labeled set's)
    when given, else the candidates' own, so a cap keeps the class mix either way. Each class takes
    its most confident candidates (lower index first on ties) up to its quota.

    Quotas are upper bounds: a class with fewer candidates than its quota takes all it has and
    its unused slots are not handed to other classes. So a rare class cannot shrink the others to
    nothing (as exact proportions would: one class without candidates would select nothing), and
    no class ever exceeds its prior share of the budget; classes with zero prior get nothing.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"select_pseudo_labels: probs must be [N, C], got shape {probs.shape}")
    n, c = probs.shape
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"select_pseudo_labels: threshold {threshold} is outside [0, 1]")
    if max_total < 0:
        raise ValueError(f"select_pseudo_labels: max_total {max_total} must be >= 0 (0: no cap)")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.isfinite(probs).all():
        bad = np.flatnonzero(~np.isfinite(probs).all(1))
        raise ValueError(f"select_pseudo_labels: non-finite probabilities in rows {bad[:10]}")

    conf = probs.max(1)
    pred = probs.argmax(1)
    cand = conf >= threshold
    if agree is not None:
        agree = np.asarray(agree)
        if agree.shape != (n,) or agree.dtype != bool:
            raise ValueError(f"select_pseudo_labels: agree must be a bool array of shape ({n},), "
                             f"got {agree.dtype} {agree.shape}")
        cand &= agree
    idx = np.flatnonzero(cand)
    if idx.size == 0:
        return idx.astype(np.int64)

    counts = np.bincount(pred[idx], minlength=c)
    if class_prior is None:
        target = counts.astype(np.float64)
    else:
        target = np.asarray(class_prior, dtype=np.float64)
        if target.shape != (c,) or (target < 0).any() or not target.sum() > 0:
            raise ValueError(f"select_pseudo_labels: class_prior must be {c} non-negative "
                             f"proportions with a positive sum, got {class_prior!r}")
    budget = idx.size if max_total == 0 else min(max_total, idx.size)
    quota = np.minimum(quotas(target, budget), counts)

    # Most confident first; among equal confidences the lower index, so the result is stable.
    order = idx[np.lexsort((idx, -conf[idx]))]
    picked = [order[pred[order] == k][:quota[k]] for k in range(c) if quota[k] > 0]
    if not picked:  # every candidate is of a class with zero prior
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64)

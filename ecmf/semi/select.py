"""Pseudo-label selection from pool probabilities: registered strategies (a fixed threshold,
curriculum percentiles, class-adaptive thresholds, soft weights), agreement, class quotas.

Pure NumPy; the pseudo-labeling rounds call a strategy (`SELECTION`, `pseudo.strategy`) on each
fold model's calibrated pool probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ecmf.registry import Registry

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
    its pseudo-label is the argmax (lowest class on ties). Each class takes its most confident
    candidates (lower index first on ties) up to its quota.

    With `class_prior` (the labeled set's proportions) the selection keeps that class mix: the
    budget B is the largest number of rows of which every class can supply its exact share from
    its own candidates (`mix_budget`), capped at `max_total` (0: no cap), and B splits into
    per-class quotas `quotas(prior, B)`. A class with a positive prior and no candidates
    therefore stops the selection (B = 0): pseudo-labels of the classes the model is sure of
    alone would shift the training set's mix toward them, which cost test WAF on the demo
    corpus (74 labels, none neutral or happy, took 1.8 points off). Classes with zero prior get
    nothing. Without `class_prior`, B is every candidate (or `max_total`) in the candidates'
    own proportions.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"select_pseudo_labels: probs must be [N, C], got shape {probs.shape}")
    n, c = probs.shape
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"select_pseudo_labels: threshold {threshold} is outside [0, 1]")
    if max_total < 0:
        raise ValueError(f"select_pseudo_labels: max_total {max_total} must be >= 0 (0: no cap)")
    if class_prior is not None:
        target = np.asarray(class_prior, dtype=np.float64)
        if target.shape != (c,) or (target < 0).any() or not target.sum() > 0:
            raise ValueError(f"select_pseudo_labels: class_prior must be {c} non-negative "
                             f"proportions with a positive sum, got {class_prior!r}")
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
        budget = idx.size
    else:
        share = target / target.sum()
        budget = mix_budget(share, counts)
    if max_total:
        budget = min(budget, max_total)
    # Most confident first; among equal confidences the lower index, so the result is stable.
    return top_per_class(probs, np.minimum(quotas(target, budget), counts), cand)


def mix_budget(share: np.ndarray, counts: np.ndarray) -> int:
    """The largest B of which every class can supply its exact share: B <= counts / share for
    every class with a positive share (`share`: proportions summing to 1; `counts`: candidates
    per class). Its rounded quotas `quotas(share, B)` then fit within `counts` too (a quota is
    at most ceil(share * B) <= count); the loop only guards against float rounding."""
    pos = share > 0
    budget = int(np.floor(np.min(counts[pos] / share[pos]) + _EPS))
    while budget > 0 and (quotas(share, budget) > counts).any():
        budget -= 1
    return budget


def agreeing_groups(pred: np.ndarray, sources: list[np.ndarray],
                    groups: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    """How many independent groups back `pred` [N], and which sources do, per row.

    `sources[j]` holds probabilities [N, C] of source j (NaN rows: no opinion), `groups[j]` its
    group (e.g. its feature set): sources of one group count once. A source backs a row when its
    top class is `pred[i]` and unique (a tie at its top backs nothing).
    """
    pred = np.asarray(pred)
    n = pred.shape[0]
    if len(sources) != len(groups):
        raise ValueError(f"agreeing_groups: {len(sources)} sources but {len(groups)} groups")
    backing = np.zeros((len(sources), n), dtype=bool)
    for j, p in enumerate(sources):
        p = np.asarray(p, dtype=np.float64)
        if p.shape[0] != n or p.ndim != 2:
            raise ValueError(f"agreeing_groups: source {j} has shape {p.shape}, expected [{n}, C]")
        ok = np.isfinite(p).all(axis=1)
        safe = np.where(ok[:, None], p, -np.inf)
        top = safe.argmax(axis=1) if p.shape[1] else np.zeros(n, dtype=np.int64)
        unique = (safe == safe.max(axis=1, keepdims=True)).sum(axis=1) == 1
        backing[j] = ok & unique & (top == pred)
    names = sorted(set(groups))
    by_group = np.zeros((len(names), n), dtype=bool)
    for j, g in enumerate(groups):
        by_group[names.index(g)] |= backing[j]
    count = by_group.sum(axis=0).astype(np.int64)
    return count, [np.flatnonzero(backing[:, i]).tolist() for i in range(n)]


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities [N, C] re-scaled as softmax(log(probs) / temperature)."""
    if not temperature > 0:
        raise ValueError(f"apply_temperature: temperature {temperature} must be > 0")
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray, bounds=(0.05, 20.0)) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` [N] under `probs`
    [N, C] (held-out predictions): > 1 means the model was over-confident. 1.0 for no rows."""
    from scipy.optimize import minimize_scalar

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"fit_temperature: probs [N, C] and labels [N] expected, got "
                         f"{probs.shape} and {labels.shape}")
    if len(labels) == 0:
        return 1.0
    rows = np.arange(len(labels))

    def nll(t: float) -> float:
        return float(-np.log(np.clip(apply_temperature(probs, t)[rows, labels], 1e-12, 1)).mean())

    return float(minimize_scalar(nll, bounds=bounds, method="bounded").x)


@dataclass(frozen=True)
class Selection:
    """What a strategy takes from the pool: row indices (ascending) and a training weight for
    each, in (0, 1]. The pseudo-label of a row is its argmax (lowest class on ties)."""

    index: np.ndarray
    weight: np.ndarray


# A strategy: (probs [N, C], prior [C] of the labeled set, round k >= 1, pool_total (the whole
# pool's size, taken rows included), settings (`PseudoConfig`), agree (bool [N] or None: rows
# the weak classifiers back)) -> Selection. Pure: the same inputs give the same selection.
Strategy = Callable[..., Selection]
SELECTION: Registry[Strategy] = Registry("pseudo-label selection strategy")


def _check_probs(probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"selection: probs must be [N, C], got shape {probs.shape}")
    if probs.size and not np.isfinite(probs).all():
        bad = np.flatnonzero(~np.isfinite(probs).all(1))
        raise ValueError(f"selection: non-finite probabilities in rows {bad[:10]}")
    return probs


def _uniform(index: np.ndarray, weight: float) -> Selection:
    index = np.asarray(index, dtype=np.int64)
    return Selection(index, np.full(index.size, float(weight)))


def _allowed(n: int, agree) -> np.ndarray:
    if agree is None:
        return np.ones(n, dtype=bool)
    agree = np.asarray(agree)
    if agree.shape != (n,) or agree.dtype != bool:
        raise ValueError(f"selection: agree must be a bool array of shape ({n},), got "
                         f"{agree.dtype} {agree.shape}")
    return agree


@SELECTION.register("threshold")
def threshold_strategy(probs, *, prior, round, pool_total, settings, agree=None) -> Selection:
    """Rows whose calibrated confidence reaches `settings.threshold` (`select_pseudo_labels`:
    with `class_balance`, the labeled mix, which a class without candidates stops). Takes
    nothing when the model is nowhere that sure: on a held-out text corpus no row reached 0.7."""
    idx = select_pseudo_labels(probs, settings.threshold,
                               prior if settings.class_balance else None,
                               settings.max_per_round, agree=agree)
    return _uniform(idx, settings.weight)


def top_per_class(probs: np.ndarray, quota: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Indices (ascending) of each class's `quota[c]` most confident rows predicted c among
    `allowed` (fewer where the class has fewer); ties: lower index first."""
    conf, pred = probs.max(1), probs.argmax(1)
    cand = np.flatnonzero(allowed)
    order = cand[np.lexsort((cand, -conf[cand]))]
    picked = [order[pred[order] == k][:quota[k]] for k in range(probs.shape[1]) if quota[k] > 0]
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, np.int64)


@SELECTION.register("curriculum")
def curriculum_strategy(probs, *, prior, round, pool_total, settings, agree=None) -> Selection:
    """Curriculum labeling (Cascante-Bonilla et al., AAAI 2021): each round takes a further
    `settings.step` of the pool (round k has taken k * step of it in all, at most
    `settings.max_share`), the most confident rows first, whatever their confidence. With
    `class_balance` the round's budget splits over classes in the labeled mix (`quotas`), each
    class taking its most confident rows predicted as it (all it has, when fewer): a rising
    percentile per class. Selects something whenever the pool is non-empty."""
    probs = _check_probs(probs)
    n = probs.shape[0]
    if n == 0:
        return _uniform(np.zeros(0, np.int64), settings.weight)
    allowed = _allowed(n, agree)
    share = min(settings.step * round, settings.max_share) - min(settings.step * (round - 1),
                                                                  settings.max_share)
    budget = max(1, round_half_up(share * pool_total)) if share > 0 else 0
    if settings.max_per_round:
        budget = min(budget, settings.max_per_round)
    if budget == 0:
        return _uniform(np.zeros(0, np.int64), settings.weight)
    if not settings.class_balance:  # the most confident rows, whatever their classes
        conf = probs.max(1)
        order = np.flatnonzero(allowed)[np.argsort(-conf[allowed], kind="stable")][:budget]
        return _uniform(np.sort(order), settings.weight)
    quota = quotas(np.asarray(prior, dtype=np.float64), budget)
    return _uniform(top_per_class(probs, quota, allowed), settings.weight)


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _cap(idx: np.ndarray, conf: np.ndarray, cap: int) -> np.ndarray:
    """`idx` (ascending), at most `cap` of them (0: no cap), the most confident first."""
    if cap and idx.size > cap:
        idx = np.sort(idx[np.lexsort((idx, -conf[idx]))][:cap])
    return idx.astype(np.int64)


@SELECTION.register("adaptive")
def adaptive_strategy(probs, *, prior, round, pool_total, settings, agree=None) -> Selection:
    """Class-adaptive thresholds in the manner of FreeMatch (Wang et al., ICLR 2023): a global
    threshold, the pool's mean confidence, scaled per class by how much probability the model
    puts on that class over the pool relative to its most expected class: a class the model is
    less sure of gets a lower bar. The row of highest confidence always passes, so something is
    taken whenever the pool is non-empty. `max_per_round` caps it (most confident first)."""
    probs = _check_probs(probs)
    allowed = _allowed(probs.shape[0], agree)
    if not allowed.any():
        return _uniform(np.zeros(0, np.int64), settings.weight)
    conf, pred = probs.max(1), probs.argmax(1)
    tau = conf[allowed].mean()
    local = probs[allowed].mean(0)
    bar = tau * local / local.max()
    take = allowed & (conf >= bar[pred])
    return _uniform(_cap(np.flatnonzero(take), conf, settings.max_per_round), settings.weight)


@SELECTION.register("soft")
def soft_strategy(probs, *, prior, round, pool_total, settings, agree=None) -> Selection:
    """Soft weights in the manner of SoftMatch (Chen et al., ICLR 2023): every row is taken,
    weighted by a Gaussian of its confidence truncated at the pool's mean (full weight at or
    above it; exp(-(conf - mean)^2 / (2 var)) below), times `settings.weight`. Rows whose weight
    falls under `settings.min_soft_weight` of the full one are left out."""
    probs = _check_probs(probs)
    n, _ = probs.shape
    allowed = _allowed(n, agree)
    if not allowed.any():
        return _uniform(np.zeros(0, np.int64), settings.weight)
    conf = probs.max(1)
    mu, var = conf[allowed].mean(), conf[allowed].var()
    rel = np.where(conf >= mu, 1.0, np.exp(-(conf - mu) ** 2 / (2 * max(var, 1e-12))))
    take = allowed & (rel >= settings.min_soft_weight)
    idx = _cap(np.flatnonzero(take), conf, settings.max_per_round)
    return Selection(idx, settings.weight * rel[idx])

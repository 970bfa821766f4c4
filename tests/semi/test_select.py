"""Pseudo-label selection: threshold, agreement, class quotas, cap, ties and empty cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecmf.semi.select import class_prior, quotas, select_pseudo_labels


def confident(labels, conf, c=3) -> np.ndarray:
    """Rows whose argmax is `labels[i]` with probability `conf[i]`, the rest spread evenly."""
    labels, conf = np.asarray(labels), np.asarray(conf, dtype=float)
    probs = np.tile(((1 - conf) / (c - 1))[:, None], (1, c))
    probs[np.arange(len(labels)), labels] = conf
    return probs


def per_class(sel, probs):
    return np.bincount(probs[sel].argmax(1), minlength=probs.shape[1])


def test_threshold_is_inclusive_and_result_sorted():
    probs = confident([0, 1, 2, 0, 1], [0.95, 0.5, 0.8, 0.79, 0.99])
    sel = select_pseudo_labels(probs, 0.8)
    assert sel.tolist() == [0, 2, 4]
    assert sel.dtype == np.int64


def test_agree_mask_removes_candidates():
    probs = confident([0, 1, 2, 0], [0.9, 0.9, 0.9, 0.9])
    agree = np.array([True, False, True, False])
    assert select_pseudo_labels(probs, 0.5, agree=agree).tolist() == [0, 2]
    with pytest.raises(ValueError, match="agree"):
        select_pseudo_labels(probs, 0.5, agree=np.array([1, 0, 1, 0]))


def test_nothing_confident_and_empty_pool():
    probs = confident([0, 1, 2], [0.4, 0.5, 0.6])
    assert select_pseudo_labels(probs, 0.7, class_prior=np.ones(3) / 3).size == 0
    empty = select_pseudo_labels(np.zeros((0, 6)), 0.5)
    assert empty.size == 0 and empty.dtype == np.int64


def test_quotas_keep_the_prior_mix_with_the_most_confident():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    conf = rng.uniform(0.85, 1.0, size=100)
    probs = confident(labels, conf)
    sel = select_pseudo_labels(probs, 0.8, class_prior=np.array([0.5, 0.25, 0.25]))
    # Class 2's 20 candidates are a quarter of at most 80 rows: quotas [40, 20, 20].
    assert per_class(sel, probs).tolist() == [40, 20, 20]
    ones = np.flatnonzero(labels == 1)
    best = ones[np.argsort(-conf[ones])[:20]]
    assert set(sel[labels[sel] == 1]) == set(best)


def test_cap_keeps_the_prior_proportions():
    probs = confident(np.repeat([0, 1, 2], 100), np.linspace(0.9, 0.99, 300))
    sel = select_pseudo_labels(probs, 0.8, class_prior=np.array([0.5, 0.3, 0.2]), max_total=20)
    assert per_class(sel, probs).tolist() == [10, 6, 4]


def test_cap_without_prior_keeps_the_candidates_proportions():
    probs = confident(np.repeat([0, 1, 2], [60, 30, 10]), np.full(100, 0.9))
    sel = select_pseudo_labels(probs, 0.8, max_total=10)
    assert per_class(sel, probs).tolist() == [6, 3, 1]
    assert select_pseudo_labels(probs, 0.8).size == 100  # no prior, no cap: every candidate


def test_a_class_without_candidates_stops_the_selection():
    probs = confident(np.repeat([0, 1], [40, 10]), np.full(50, 0.9))
    # Class 2 has a third of the prior and no candidate: any selection would shift the mix.
    assert select_pseudo_labels(probs, 0.8, class_prior=np.ones(3) / 3).size == 0
    sel = select_pseudo_labels(probs, 0.8, class_prior=np.array([0.5, 0.5, 0.0]))
    assert per_class(sel, probs).tolist() == [10, 10, 0]  # class 1's 10 bound the budget


def test_mix_budget_is_what_the_scarcest_class_can_supply():
    from ecmf.semi.select import mix_budget

    share = np.array([0.5, 0.3, 0.2])
    assert mix_budget(share, np.array([10, 6, 4])) == 20  # 6 / 0.3 is 19.999... in floats
    assert mix_budget(share, np.array([100, 6, 100])) == 20
    assert mix_budget(share, np.array([100, 100, 0])) == 0
    assert mix_budget(np.array([0.5, 0.0, 0.5]), np.array([3, 0, 7])) == 6
    thirds = np.ones(3) / 3
    assert mix_budget(thirds, np.array([3, 3, 1])) == 3
    assert quotas(thirds, 3).tolist() == [1, 1, 1]


def test_zero_prior_class_gets_nothing():
    probs = confident(np.repeat([0, 1, 2], 10), np.full(30, 0.9))
    sel = select_pseudo_labels(probs, 0.8, class_prior=np.array([0.5, 0.0, 0.5]))
    assert per_class(sel, probs).tolist() == [10, 0, 10]
    only_zero = confident([1, 1], [0.9, 0.9])
    assert select_pseudo_labels(only_zero, 0.8, class_prior=np.array([0.5, 0.0, 0.5])).size == 0


def test_ties_go_to_the_lower_index():
    probs = confident([1] * 8, [0.9] * 8)
    assert select_pseudo_labels(probs, 0.5, max_total=3).tolist() == [0, 1, 2]
    probs[6, 1] = 0.95  # a more confident row wins over the index order
    assert select_pseudo_labels(probs, 0.5, max_total=3).tolist() == [0, 1, 6]


def test_invalid_arguments():
    probs = confident([0, 1], [0.9, 0.9])
    with pytest.raises(ValueError, match="class_prior"):
        select_pseudo_labels(probs, 0.5, class_prior=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="threshold"):
        select_pseudo_labels(probs, 1.5)
    with pytest.raises(ValueError, match="max_total"):
        select_pseudo_labels(probs, 0.5, max_total=-1)
    with pytest.raises(ValueError, match="rows"):
        select_pseudo_labels(np.array([[np.nan, 0.5, 0.5]]), 0.5)


def test_quotas_sum_to_the_budget():
    assert quotas(np.array([0.3, 0.3, 0.4]), 10).tolist() == [3, 3, 4]
    assert quotas(np.array([1, 1, 1]), 10).tolist() == [4, 3, 3]
    assert quotas(np.array([0.0, 1.0]), 7).tolist() == [0, 7]


def test_class_prior():
    np.testing.assert_allclose(class_prior(np.array([0, 0, 2, 3]), 5), [0.5, 0, 0.25, 0.25, 0])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        class_prior(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="non-empty"):
        class_prior(np.array([], dtype=int), 3)


@st.composite
def pools(draw):
    c = draw(st.integers(2, 6))
    n = draw(st.integers(0, 120))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    # Coarse logits make exact ties in confidence common.
    logits = rng.integers(-3, 4, size=(n, c)) * draw(st.sampled_from([0.5, 1.0, 3.0]))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    prior = rng.dirichlet(np.ones(c)) * (rng.random(c) > 0.2)
    prior = prior if prior.sum() > 0 else np.ones(c)
    use_prior = draw(st.booleans())
    agree = rng.random(n) > 0.3 if draw(st.booleans()) else None
    return (probs, draw(st.sampled_from([0.0, 0.3, 0.5, 0.8])), prior if use_prior else None,
            draw(st.integers(0, 60)), agree)


@settings(max_examples=300, deadline=None)
@given(pools())
def test_selection_invariants(pool):
    probs, threshold, prior, cap, agree = pool
    sel = select_pseudo_labels(probs, threshold, prior, cap, agree)
    assert np.array_equal(sel, select_pseudo_labels(probs, threshold, prior, cap, agree))
    assert np.all(np.diff(sel) > 0)
    n, c = probs.shape
    conf, pred = probs.max(1), probs.argmax(1)
    cand = conf >= threshold if agree is None else (conf >= threshold) & agree
    assert cand[sel].all()
    if cap:
        assert sel.size <= cap
    if not cand.any():
        assert sel.size == 0
        return
    counts = np.bincount(pred[cand], minlength=c)
    if prior is None:
        target, budget = counts, cand.sum()
    else:
        from ecmf.semi.select import mix_budget

        share = prior / prior.sum()
        target, budget = prior, mix_budget(share, counts)
        # The largest budget of which every class can supply its exact share (the cap aside).
        pos = share > 0
        assert (budget * share[pos] <= counts[pos] + 1e-9).all()
        assert ((budget + 1) * share[pos] > counts[pos] - 1e-9).any()
    budget = budget if cap == 0 else min(cap, budget)
    quota = quotas(target, budget)
    chosen = np.zeros(n, dtype=bool)
    chosen[sel] = True
    for k in range(c):
        in_k = cand & (pred == k)
        taken = chosen & (pred == k)
        assert taken.sum() == min(quota[k], in_k.sum())  # full quota, or every candidate
        assert quota[k] <= target[k] / np.sum(target) * budget + 1
        left = np.flatnonzero(in_k & ~chosen)
        if taken.any() and left.size:
            worst = np.flatnonzero(taken)
            # Nothing left behind beats what was taken (lower index wins a tie).
            assert conf[left].max() <= conf[worst].min()
            tie = conf[worst].min()
            if conf[left].max() == tie:
                assert worst[conf[worst] == tie].max() < left[conf[left] == tie].min()


# ------------------------------------------------------------------ agreement and calibration


def test_agreeing_groups_counts_each_group_once_and_skips_ties_and_missing():
    from ecmf.semi.select import agreeing_groups

    pred = np.array([0, 1, 2])
    a = confident([0, 1, 0], [0.9, 0.9, 0.9])
    b = confident([0, 0, 2], [0.8, 0.8, 0.8])
    tie = np.array([[0.4, 0.4, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    missing = np.full((3, 3), np.nan)
    count, backing = agreeing_groups(pred, [a, b, tie, missing], ["x", "x", "y", "z"])
    assert count.tolist() == [1, 2, 2]  # row 0: a and b are one group; the tie backs nothing
    assert backing == [[0, 1], [0, 2], [1, 2]]


def test_agreeing_groups_empty_pool_and_shape_errors():
    from ecmf.semi.select import agreeing_groups

    count, backing = agreeing_groups(np.zeros(0, dtype=np.int64), [np.zeros((0, 3))], ["g"])
    assert count.shape == (0,) and backing == []
    with pytest.raises(ValueError, match="groups"):
        agreeing_groups(np.array([0]), [np.ones((1, 3))], [])
    with pytest.raises(ValueError, match="source 0"):
        agreeing_groups(np.array([0, 1]), [np.ones((1, 3))], ["g"])


def test_agreement_mask_gates_selection():
    probs = confident([0, 1, 2, 0], [0.95, 0.95, 0.95, 0.95])
    agree = np.array([True, False, True, False])
    assert select_pseudo_labels(probs, 0.9, agree=agree).tolist() == [0, 2]


def test_temperature_recovers_overconfidence_and_keeps_the_argmax():
    from ecmf.semi.select import apply_temperature, fit_temperature

    rng = np.random.default_rng(0)
    n, c = 4000, 4
    logits = rng.normal(0, 1.5, size=(n, c))
    calibrated = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=p) for p in calibrated])
    sharp = apply_temperature(calibrated, 0.5)  # twice the logits: over-confident
    t = fit_temperature(sharp, y)
    assert t == pytest.approx(2.0, rel=0.15)
    assert (apply_temperature(sharp, t).argmax(1) == sharp.argmax(1)).all()
    assert np.allclose(apply_temperature(sharp, t).sum(1), 1.0)
    assert fit_temperature(np.zeros((0, c)), np.zeros(0, dtype=np.int64)) == 1.0
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(sharp, 0.0)


# ---- registered strategies (pseudo.strategy) -------------------------------------------------


def settings_of(**kw):
    from ecmf.config import PseudoConfig

    return PseudoConfig(**kw)


def run_strategy(name, probs, prior=None, k=1, pool_total=None, agree=None, **kw):
    from ecmf.semi.select import SELECTION

    probs = np.asarray(probs, dtype=float)
    prior = np.full(probs.shape[1], 1 / probs.shape[1]) if prior is None else np.asarray(prior)
    return SELECTION.get(name)(probs, prior=prior, round=k,
                               pool_total=len(probs) if pool_total is None else pool_total,
                               settings=settings_of(**kw), agree=agree)


def unsure_pool(n=200, c=4, seed=0):
    """A pool where no row is confident: the top probability stays under 0.5."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 0.4, size=(n, c))
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def test_every_registered_strategy_but_threshold_takes_something_from_an_unsure_pool():
    from ecmf.semi.select import SELECTION

    probs = unsure_pool()
    assert probs.max() < 0.7
    assert run_strategy("threshold", probs).index.size == 0  # the held-out corpus' failure
    for name in SELECTION.names():
        if name == "threshold":
            continue
        sel = run_strategy(name, probs)
        assert sel.index.size > 0, name
        assert np.all(np.diff(sel.index) > 0) and sel.index.dtype == np.int64
        assert sel.weight.shape == sel.index.shape
        assert np.all((sel.weight > 0) & (sel.weight <= 0.7 + 1e-12)), name


def test_curriculum_takes_a_step_of_the_pool_per_round_in_the_labeled_mix():
    probs = unsure_pool(n=1000, c=4, seed=1)
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    sel = run_strategy("curriculum", probs, prior=prior, k=1, step=0.2)
    assert sel.index.size == 200
    counts = per_class(sel.index, probs)
    assert counts.tolist() == [80, 60, 40, 20]
    # Each class's share is its most confident rows predicted as it.
    conf, pred = probs.max(1), probs.argmax(1)
    for c in range(4):
        mine = sel.index[pred[sel.index] == c]
        rest = np.setdiff1d(np.flatnonzero(pred == c), mine)
        assert conf[mine].min() >= conf[rest].max()
    # Round 2 adds another step (of the whole pool) from what is left; past max_share, nothing.
    assert run_strategy("curriculum", probs, prior=prior, k=2, step=0.2).index.size == 200
    assert run_strategy("curriculum", probs, prior=prior, k=3, step=0.2,
                        max_share=0.4).index.size == 0
    assert run_strategy("curriculum", probs, prior=prior, k=1, step=0.2,
                        max_per_round=50).index.size == 50


def test_curriculum_without_class_balance_takes_the_most_confident_rows():
    probs = unsure_pool(n=100, seed=2)
    sel = run_strategy("curriculum", probs, step=0.1, class_balance=False)
    conf = probs.max(1)
    assert sel.index.size == 10
    assert conf[sel.index].min() >= np.delete(conf, sel.index).max()


def test_curriculum_a_class_short_of_rows_gives_what_it_has_and_agreement_gates():
    probs = confident([0] * 9 + [1], [0.6] * 10, c=2)
    sel = run_strategy("curriculum", probs, prior=[0.5, 0.5], step=0.4)
    assert per_class(sel.index, probs).tolist() == [2, 1]  # quota 2 and 2; class 1 has one
    agree = np.zeros(10, dtype=bool)
    agree[[3, 4]] = True
    assert run_strategy("curriculum", probs, prior=[0.5, 0.5], step=0.4,
                        agree=agree).index.tolist() == [3, 4]


def test_adaptive_lowers_the_bar_for_classes_the_model_is_less_sure_of():
    # Class 0 is predicted often and confidently, class 1 rarely and softly.
    probs = np.vstack([confident([0] * 8, [0.9] * 8, c=2), confident([1, 1], [0.6, 0.55], c=2)])
    sel = run_strategy("adaptive", probs)
    conf = probs.max(1)
    assert 8 in sel.index  # class 1's 0.6 passes, under the global mean confidence
    assert conf.mean() > 0.6
    assert run_strategy("adaptive", probs, max_per_round=3).index.size == 3


def test_soft_weights_fall_below_the_mean_confidence():
    probs = confident([0, 1, 2, 0, 1, 2], [0.9, 0.8, 0.6, 0.5, 0.45, 0.4])
    sel = run_strategy("soft", probs, weight=0.5, min_soft_weight=0.0)
    assert sel.index.tolist() == list(range(6))
    w = dict(zip(sel.index.tolist(), sel.weight))
    mean = probs.max(1).mean()
    assert all(w[i] == 0.5 for i in range(6) if probs[i].max() >= mean)
    assert w[3] > w[4] > w[5]  # further under the mean, lighter
    kept = run_strategy("soft", probs, weight=0.5, min_soft_weight=0.6).index
    assert 0 in kept and 5 not in kept


def test_strategies_are_pure_and_handle_an_empty_pool():
    from ecmf.semi.select import SELECTION

    probs = unsure_pool(n=50, seed=3)
    for name in SELECTION.names():
        a, b = run_strategy(name, probs.copy()), run_strategy(name, probs.copy())
        assert np.array_equal(a.index, b.index) and np.array_equal(a.weight, b.weight)
        empty = run_strategy(name, np.zeros((0, 4)), pool_total=0)
        assert empty.index.size == 0


def test_an_unknown_strategy_is_named_with_the_registered_ones():
    from ecmf.stages.common import load_config

    with pytest.raises(Exception, match="pseudo.strategy.*curriculum.*curiculum"):
        load_config(None, ["pseudo.strategy=curiculum"])

"""Label refinement rule: weighted soft vote, threshold, agreement, ties, missing sources."""

from __future__ import annotations

import numpy as np
import pytest

from ecmf.semi.refine import ORIGINAL, combine, sample_weights


def onehot(labels, c=3, p=1.0) -> np.ndarray:
    """Rows with probability `p` on `labels[i]` and the rest spread evenly."""
    labels = np.asarray(labels)
    out = np.full((len(labels), c), (1 - p) / (c - 1))
    out[np.arange(len(labels)), labels] = p
    return out


def test_confident_agreeing_sources_change_the_label_and_name_themselves():
    original = np.array([0, 1])
    sources = {"a": onehot([2, 1], p=0.9), "b": onehot([2, 1], p=0.8)}
    r = combine(sources, {"a": 1.0, "b": 1.0}, original, threshold=0.5, min_agree=2)
    assert r.label.tolist() == [2, 1]
    assert r.changed.tolist() == [True, False]
    # Sample 0: share of class 2 = (0.9 + 0.8) / 3 (original weighs 1, on class 0).
    assert r.confidence[0] == pytest.approx(1.7 / 3)
    assert r.agreed[0] == ["a", "b"]
    assert r.agreed[1] == [ORIGINAL, "a", "b"]


def test_threshold_is_inclusive():
    sources = {"a": onehot([1]), "b": onehot([1])}
    at = combine(sources, {"a": 1.0, "b": 1.0}, np.array([0]), threshold=2 / 3, min_agree=2)
    above = combine(sources, {"a": 1.0, "b": 1.0}, np.array([0]), threshold=0.67, min_agree=2)
    assert at.changed.tolist() == [True] and above.changed.tolist() == [False]
    assert above.label.tolist() == [0]
    assert above.confidence[0] == pytest.approx(1 / 3)  # the original keeps its own share


def test_min_agree_counts_groups_not_sources():
    sources = {"lr:text": onehot([1]), "svm:text": onehot([1]), "knn:text": onehot([1])}
    weights = dict.fromkeys(sources, 1.0)
    groups = dict.fromkeys(sources, "text")
    one_view = combine(sources, weights, np.array([0]), 0.5, min_agree=2, groups=groups)
    assert one_view.changed.tolist() == [False]
    each_own = combine(sources, weights, np.array([0]), 0.5, min_agree=2)
    assert each_own.changed.tolist() == [True]


def test_all_sources_disagree_keeps_the_original():
    sources = {"a": onehot([1], c=4), "b": onehot([2], c=4), "c": onehot([3], c=4)}
    r = combine(sources, {"a": 1.0, "b": 1.0, "c": 1.0}, np.array([0]), 0.0, min_agree=2)
    assert r.label.tolist() == [0] and not r.changed.any()
    # Even a vote that would pass without agreement must not change the label.
    heavy = combine(sources, {"a": 5.0, "b": 1.0, "c": 1.0}, np.array([0]), 0.0, min_agree=2)
    assert heavy.label.tolist() == [0]
    assert combine(sources, {"a": 5.0, "b": 1.0, "c": 1.0}, np.array([0]), 0.0,
                   min_agree=1).label.tolist() == [1]


def test_a_tie_at_the_top_keeps_the_original():
    sources = {"a": onehot([1]), "b": onehot([2])}
    r = combine(sources, {"a": 1.0, "b": 1.0}, np.array([0]), 0.0, min_agree=1,
                original_weight=0.5)
    assert r.label.tolist() == [0] and not r.changed.any()
    # A source tied at its own top backs no class.
    flat = {"a": np.array([[0.1, 0.45, 0.45]]), "b": onehot([1])}
    r = combine(flat, {"a": 1.0, "b": 1.0}, np.array([0]), 0.0, min_agree=2,
                original_weight=0.1)
    assert r.label.tolist() == [0] and r.agreed[0] == [ORIGINAL]


def test_missing_rows_leave_the_vote():
    nan = np.full((1, 3), np.nan)
    sources = {"a": onehot([2]), "llm": nan}
    r = combine(sources, {"a": 1.0, "llm": 100.0}, np.array([0]), 0.6, min_agree=1,
                original_weight=0.5)
    assert r.label.tolist() == [2]  # the missing LLM vote neither helps nor dilutes
    assert r.confidence[0] == pytest.approx(2 / 3)


def test_original_weight_zero_follows_the_sources():
    sources = {"a": onehot([1, 2], p=0.6), "b": onehot([1, 0], p=0.7)}
    r = combine(sources, {"a": 1.0, "b": 1.0}, np.array([0, 0]), 0.5, min_agree=2,
                original_weight=0.0)
    assert r.label.tolist() == [1, 0]


def test_empty_input_and_no_sources():
    r = combine({"a": np.zeros((0, 3))}, {"a": 1.0}, np.zeros(0, dtype=np.int64), 0.5, 1)
    assert r.label.shape == (0,) and r.agreed == []
    alone = combine({}, {}, np.array([2, 0]), 0.5, 1)
    assert alone.label.tolist() == [2, 0] and alone.confidence.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 1.5}, "threshold"),
    ({"min_agree": 0}, "min_agree"),
])
def test_bad_arguments_fail_naming_them(kwargs, match):
    args = {"threshold": 0.5, "min_agree": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        combine({"a": onehot([1])}, {"a": 1.0}, np.array([0]), **args)


def test_shape_and_weight_errors_name_the_source():
    with pytest.raises(ValueError, match="'b'"):
        combine({"a": onehot([1]), "b": np.zeros((2, 3))}, {"a": 1, "b": 1}, np.array([0]),
                0.5, 1)
    with pytest.raises(ValueError, match="no weight"):
        combine({"a": onehot([1])}, {}, np.array([0]), 0.5, 1)


def test_sample_weights_scale_changed_labels_only_and_floor():
    conf = np.array([0.8, 0.4, 0.1, 0.6, 0.3, 0.1])
    changed = np.array([False, False, False, True, True, True])
    w = sample_weights(conf, changed, min_weight=0.3, by_confidence=True)
    assert w.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5, 0.3])
    assert sample_weights(conf, changed, 0.3, by_confidence=False).tolist() == [1.0] * 6


def test_random_votes_never_change_a_label_without_enough_agreement():
    rng = np.random.default_rng(0)
    n, c = 200, 6
    sources = {f"s{j}": rng.dirichlet(np.ones(c), size=n) for j in range(4)}
    original = rng.integers(0, c, n)
    r = combine(sources, dict.fromkeys(sources, 1.0), original, 0.3, min_agree=3)
    tops = np.stack([p.argmax(1) for p in sources.values()])
    backing = (tops == r.label[None]).sum(0)
    assert (backing[r.changed] >= 3).all()
    assert (r.label[~r.changed] == original[~r.changed]).all()
    assert (r.confidence[r.changed] >= 0.3).all()


def test_pair_table_trains_each_pair_model_without_both_of_its_folds():
    import pandas as pd

    from ecmf import schema
    from ecmf.semi.refine import pair_table
    from ecmf.semi.weak import fold_pairs

    folds = 4
    table = pd.DataFrame({schema.SAMPLE_ID: [f"c{i:02d}" for i in range(20)],
                          "y": np.arange(20) % 6, "weight": 1.0, "fold": np.arange(20) % folds,
                          "train_fold": -1})
    pt = pair_table(table, folds)
    assert len(pt) == 20 * len(fold_pairs(folds))
    fold_of = table.set_index(schema.SAMPLE_ID)["fold"]
    for p, (a, b) in enumerate(fold_pairs(folds)):
        mine = pt[pt["train_fold"] == p]
        own = fold_of.loc[mine[schema.SAMPLE_ID]].to_numpy()
        # What train_one_fold(fold=p) trains on, and validates on.
        train = mine[mine["fold"] != p]
        val = mine[mine["fold"] == p]
        assert not fold_of.loc[train[schema.SAMPLE_ID]].isin([a, b]).any()
        assert set(fold_of.loc[val[schema.SAMPLE_ID]]) == {a, b}
        assert len(train) + len(val) == 20 and (np.isin(own, [a, b]) == (mine["fold"] == p)).all()
    # Labels and weights are the table's own (original labels).
    assert (pt.groupby(schema.SAMPLE_ID)["y"].nunique() == 1).all()

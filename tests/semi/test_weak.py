"""Weak classifiers: registry, design matrices, out-of-fold honesty, tiny and missing classes."""

from __future__ import annotations

import numpy as np
import pytest

from ecmf.semi.weak import WEAK_CLASSIFIERS, design_matrix, fit_predict


def clusters(n=120, c=3, d=5, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    centres = rng.normal(0, 3, size=(c, d))
    return centres[y] + rng.normal(0, spread, size=(n, d)), y


def test_registry_lists_known_names_on_a_typo():
    assert WEAK_CLASSIFIERS.names() == ["knn", "lr", "svm"]
    with pytest.raises(KeyError, match=r"available: \['knn', 'lr', 'svm'\]"):
        WEAK_CLASSIFIERS.get("forest")


@pytest.mark.parametrize("name", ["lr", "svm", "knn"])
def test_oof_probabilities_are_distributions_and_learn_separable_classes(name):
    x, y = clusters()
    folds = np.arange(len(y)) % 4
    oof, pool, tops = fit_predict(name, {}, x, y, folds, x[:10], num_classes=6)
    assert oof.shape == (120, 6) and pool.shape == (10, 6)
    assert np.allclose(oof.sum(1), 1.0) and np.allclose(pool.sum(1), 1.0)
    assert (oof[:, 3:] == 0).all()  # classes never seen get no mass
    assert (oof.argmax(1) == y).mean() > 0.95
    assert tops.shape == (4, 10) and (tops == y[:10]).mean() > 0.95


def test_oof_rows_come_from_models_that_never_saw_them():
    # Labels are pure noise: a model that had seen a row would predict it (k-NN, k=1 memorises).
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 4))
    y = rng.integers(0, 3, 90)
    folds = np.arange(90) % 3
    oof, _, _ = fit_predict("knn", {"n_neighbors": 1}, x, y, folds, x[:0], num_classes=3)
    assert (oof.argmax(1) == y).mean() < 0.6


def test_fold_tops_on_the_pool_come_from_each_fold_model_alone():
    # The pool is the labeled set itself and the labels pure noise: fold k's 1-NN model repeats
    # the label of every clip it was fit on (outside fold k) and guesses on fold k's clips.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(90, 4))
    y = rng.integers(0, 3, 90)
    folds = np.arange(90) % 3
    _, _, tops = fit_predict("knn", {"n_neighbors": 1}, x, y, folds, x, num_classes=3,
                             num_folds=4)
    for k in range(3):
        assert (tops[k][folds != k] == y[folds != k]).all()
        assert (tops[k][folds == k] == y[folds == k]).mean() < 0.6
    assert (tops[3] == -1).all()  # a fold without labeled rows has no model


def test_a_class_seen_once_does_not_break_calibration():
    x, y = clusters(n=30)
    y = y.copy()
    y[0] = 5  # one member only
    oof, pool, _ = fit_predict("svm", {}, x, y, np.arange(30) % 3, x[:4], num_classes=6)
    assert np.isfinite(oof).all() and np.isfinite(pool).all()


def test_design_matrix_appends_masks_for_several_features():
    feats = {"a": np.ones((3, 2), np.float32), "b": np.zeros((3, 4), np.float32)}
    masks = {"a": np.array([True, False, False]), "b": np.array([False, False, True])}
    x, have = design_matrix(feats, masks, ["a"])
    assert x.shape == (3, 2) and have.tolist() == [True, False, False]
    x, have = design_matrix(feats, masks, ["a", "b"])
    assert x.shape == (3, 8) and x[:, -2:].tolist() == [[1, 0], [0, 0], [0, 1]]
    assert have.tolist() == [True, False, True]


def test_fold_pairs_are_every_unordered_pair_once():
    from ecmf.semi.weak import fold_pairs

    assert fold_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    assert len(fold_pairs(5)) == 10 and len(set(fold_pairs(5))) == 10


def test_pair_probabilities_come_from_models_blind_to_both_folds():
    # Every clip has a twin (a near-copy) in the set and the labels are pure noise. A 1-NN model
    # that saw the twin repeats the twin's label. Fold j's entry for a clip of fold m comes from
    # the model fit without folds j and m: it never repeats a twin that lies in fold j or m.
    from ecmf.semi.weak import pair_oof

    rng = np.random.default_rng(3)
    base = rng.normal(size=(60, 4))
    x = np.concatenate([base, base + rng.normal(0, 1e-3, base.shape)])
    y = rng.integers(0, 3, 120)
    twin = np.r_[np.arange(60, 120), np.arange(60)]
    folds = rng.integers(0, 4, 120)
    pairs = pair_oof("knn", {"n_neighbors": 1}, x, y, folds, num_classes=3, num_folds=4)
    assert pairs.shape == (4, 120, 3)
    for j in range(4):
        assert np.isnan(pairs[j, folds == j]).all()
        outside = folds != j
        assert np.allclose(pairs[j, outside].sum(1), 1.0)
        top = pairs[j].argmax(1)
        seen = outside & (folds[twin] != j) & (folds[twin] != folds)
        blind = outside & ~seen
        assert (top[seen] == y[twin][seen]).all()  # the twin was fit on: repeated
        assert seen.sum() > 20 and blind.sum() > 10
        # Twins in fold j (or the clip's own fold) were never seen: no better than chance.
        assert (top[blind] == y[twin][blind]).mean() < 0.6

"""Pseudo-labels must not leak the labels a fold is validated on back into its training.

Labels here are pure noise and every pool clip is a near-copy of a labeled one. A teacher fold
model that memorised its training folds labels the copies of those folds' clips right and guesses
on the rest. A pseudo-label taken from the fold ensemble then tells fold k's next model the label
of (a copy of) every clip it is validated on, and its out-of-fold WAF soars on noise; the
fold-consistent selection of the rounds (fold k's labels from fold k's teacher) keeps it at
chance. Refined labels leak the same way when the sources that vote them saw every other fold;
fold-blind refinement (sources fit without the model's fold and the clip's) does not. Plain
`train_one_fold`, no Ray.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecmf import schema
from ecmf.config import TrainConfig
from ecmf.semi.rounds import select_round
from ecmf.stages.common import load_config
from ecmf.train.fit import training_table
from ecmf.train.loop import train_one_fold
from ecmf.train.predict import fold_prob_columns

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N, FOLDS, C = 90, 3, len(schema.LABELS)
DIMS = {"a": 8, "b": 8}


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    labeled = np.array([f"l{i:03d}" for i in range(N)])
    pool = np.array([f"u{i:03d}" for i in range(N)])  # u_i: a near-copy of l_i
    y = rng.integers(0, C, N)
    manifest = pd.DataFrame({
        schema.SAMPLE_ID: np.r_[labeled, pool], schema.SPLIT: ["train"] * N + ["pool"] * N,
        schema.LABEL: list(np.array(schema.LABELS)[y]) + [None] * N})
    fold = training_table(manifest, FOLDS, 0).set_index(schema.SAMPLE_ID).loc[labeled, "fold"]
    # Teacher fold k's probabilities on the pool: memorised outside fold k, a guess inside.
    preds = pd.DataFrame({schema.SAMPLE_ID: pool})
    for k in range(FOLDS):
        said = np.where(fold.to_numpy() != k, y, rng.integers(0, C, N))
        p = np.full((N, C), 0.02)
        p[np.arange(N), said] = 0.9
        preds[fold_prob_columns(k)] = p / p.sum(axis=1, keepdims=True)
    feats = {}
    for f, d in DIMS.items():
        x = rng.normal(0, 1, (N, d)).astype(np.float32)
        feats[f] = np.concatenate([x, x + rng.normal(0, 0.01, x.shape).astype(np.float32)])
    return {"manifest": manifest, "preds": preds, "feats": feats,
            "row": {s: i for i, s in enumerate(np.r_[labeled, pool])}}


def out_of_fold_waf(world, pseudo: pd.DataFrame | None) -> float:
    """Mean validation WAF over the folds of models trained on the labels plus `pseudo`."""
    table = training_table(world["manifest"], FOLDS, 0, pseudo=pseudo)
    rows = np.array([world["row"][s] for s in table[schema.SAMPLE_ID]])
    data = {schema.SAMPLE_ID: table[schema.SAMPLE_ID].to_numpy(), "y": table["y"].to_numpy(),
            "weight": table["weight"].to_numpy(np.float32), "fold": table["fold"].to_numpy(),
            "train_fold": table["train_fold"].to_numpy()}
    for f in DIMS:
        data[schema.feature_column(f)] = world["feats"][f][rows]
        data[schema.mask_column(f)] = np.ones(len(rows), dtype=bool)
    # The last epoch: what the pseudo-labels teach, not what an epoch choice adds.
    tc = TrainConfig(folds=FOLDS, epochs=40, hidden=32, heads=2, batch_size=16, lr=1e-2,
                     dropout=0.0, modality_dropout=0.0, weight_decay=0.0, select_epoch="last")
    return float(np.mean([train_one_fold(tc, data, list(DIMS), DIMS, k)["val_waf"]
                          for k in range(FOLDS)]))


def test_fold_consistent_pseudo_labels_keep_validation_blind(world):
    # Every confident row, whatever its class (the class mix is not what this test is about).
    cfg = load_config(None, ["train.folds=3", "pseudo.strategy=threshold", "pseudo.threshold=0.5",
                             "pseudo.min_agree=0",
                             "pseudo.weight=1.0", "pseudo.class_balance=false"])
    prior = np.full(C, 1 / C)
    consistent = select_round(world["preds"], cfg, prior, 1)
    assert set(consistent["train_fold"]) == {0, 1, 2}
    # What the rounds did before: every fold took the ensemble's (the folds' mean) labels.
    mean = np.mean([world["preds"][fold_prob_columns(k)].to_numpy() for k in range(FOLDS)], 0)
    shared = world["preds"].copy()
    for k in range(FOLDS):
        shared[fold_prob_columns(k)] = mean
    leaky = select_round(shared, cfg, prior, 1)
    assert len(leaky) > 0.8 * len(consistent)  # comparable amounts of pseudo-labels

    alone = out_of_fold_waf(world, None)
    assert out_of_fold_waf(world, leaky) > 0.8  # the leak: validation labels learnt via the pool
    assert out_of_fold_waf(world, consistent) < alone + 0.15  # noise stays noise


def _val_waf(manifest: pd.DataFrame, feats: dict, row: dict, refined: pd.DataFrame | None
             ) -> float:
    """Mean validation WAF (against the original labels) of fold models trained on `refined`."""
    table = training_table(manifest, FOLDS, 0, refined=refined)
    rows = np.array([row[s] for s in table[schema.SAMPLE_ID]])
    data = {schema.SAMPLE_ID: table[schema.SAMPLE_ID].to_numpy(), "y": table["y"].to_numpy(),
            "weight": table["weight"].to_numpy(np.float32), "fold": table["fold"].to_numpy(),
            "train_fold": table["train_fold"].to_numpy()}
    for f in DIMS:
        data[schema.feature_column(f)] = feats[f][rows]
        data[schema.mask_column(f)] = np.ones(len(rows), dtype=bool)
    # The last epoch: what the pseudo-labels teach, not what an epoch choice adds.
    tc = TrainConfig(folds=FOLDS, epochs=40, hidden=32, heads=2, batch_size=16, lr=1e-2,
                     dropout=0.0, modality_dropout=0.0, weight_decay=0.0, select_epoch="last")
    return float(np.mean([train_one_fold(tc, data, list(DIMS), DIMS, k)["val_waf"]
                          for k in range(FOLDS)]))


def test_fold_blind_refined_labels_keep_validation_blind():
    """Every labeled clip has a twin (a near-copy) among the labeled clips, labels pure noise,
    and a 1-NN weak source that outvotes the original label. Refined out of fold, a clip's
    label is its twin's whenever the twin lies in another fold: fold k's model then trains on
    the labels of its own validation clips. Fold-blind, fold k's labels come from sources that
    never saw fold k."""
    from ecmf.semi.refine import combine
    from ecmf.semi.weak import fit_predict, pair_oof

    rng = np.random.default_rng(5)
    half = N // 2
    ids = np.array([f"t{i:03d}" for i in range(N)])
    y = rng.integers(0, C, N)
    manifest = pd.DataFrame({schema.SAMPLE_ID: ids, schema.SPLIT: "train",
                             schema.LABEL: np.array(schema.LABELS)[y]})
    feats = {}
    for f, d in DIMS.items():
        x = rng.normal(0, 1, (half, d)).astype(np.float32)
        feats[f] = np.concatenate([x, x + rng.normal(0, 0.01, x.shape).astype(np.float32)])
    row = {s: i for i, s in enumerate(ids)}
    fold = training_table(manifest, FOLDS, 0).set_index(schema.SAMPLE_ID).loc[ids, "fold"]
    fold = fold.to_numpy()
    x = np.concatenate([feats[f] for f in DIMS], axis=1)
    knn = {"n_neighbors": 1}

    def vote(probs: np.ndarray) -> np.ndarray:
        ref = combine({"knn": probs}, {"knn": 2.0}, y, threshold=0.5, min_agree=1)
        return np.array(schema.LABELS)[ref.label]

    def per_fold(labels_for) -> pd.DataFrame:  # the fold-blind table format, fold by fold
        parts = [pd.DataFrame({schema.SAMPLE_ID: ids[fold != j], "train_fold": j,
                               "refined": labels_for(j)[fold != j], "weight": 1.0})
                 for j in range(FOLDS)]
        return pd.concat(parts, ignore_index=True)

    oof, _, _ = fit_predict("knn", knn, x, y, fold, x[:0], C)
    pairs = pair_oof("knn", knn, x, y, fold, C, FOLDS)
    out_of_fold = vote(oof)
    leaky = per_fold(lambda j: out_of_fold)  # the same label for every fold model
    blind = per_fold(lambda j: vote(np.nan_to_num(pairs[j], nan=1.0 / C)))

    alone = _val_waf(manifest, feats, row, None)
    assert _val_waf(manifest, feats, row, leaky) > alone + 0.25
    assert _val_waf(manifest, feats, row, blind) < alone + 0.15

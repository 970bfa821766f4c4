"""Refinement and two pseudo-label rounds through the `ecmf` CLI on a tiny synthetic workdir
(a manifest and a feature store written directly: no media, no encoders), then a resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ecmf import schema
from ecmf.cli import main

pytestmark = pytest.mark.ray  # every test here starts Ray

DIMS = {"a": 8, "b": 6}
N_TRAIN, N_POOL = 60, 40


def write_workdir(root, seed: int = 0) -> pd.DataFrame:
    """Classes as Gaussian clusters in two features; 10 flipped training labels; returns truth."""
    from ecmf.features.extract import to_store_rows

    rng = np.random.default_rng(seed)
    c = len(schema.LABELS)
    n = N_TRAIN + N_POOL
    truth = np.arange(n) % c
    ids = np.array([f"clip_{i:04d}" for i in range(n)])
    batch = {schema.SAMPLE_ID: ids, "error": np.array([""] * n)}
    for name, d in DIMS.items():
        centres = rng.normal(0, 5, size=(c, d))
        batch[schema.feature_column(name)] = centres[truth] + rng.normal(0, 1, size=(n, d))
        batch[schema.mask_column(name)] = np.ones(n, dtype=bool)
    store = root / "features" / "store"
    store.mkdir(parents=True)
    import pyarrow.parquet as pq

    pq.write_table(to_store_rows(batch, list(DIMS)), store / "part-0.parquet")
    labels = np.array(schema.LABELS)[truth].astype(object)
    flipped = rng.choice(N_TRAIN, 10, replace=False)
    labels[flipped] = np.array(schema.LABELS)[(truth[flipped] + 1) % c]
    split = np.array(["train"] * N_TRAIN + ["pool"] * N_POOL)
    labels[N_TRAIN:] = None
    pd.DataFrame({schema.SAMPLE_ID: ids, schema.SPLIT: split, schema.LABEL: labels}).to_parquet(
        root / "manifest.parquet", index=False)
    return pd.DataFrame({schema.SAMPLE_ID: ids, "truth": np.array(schema.LABELS)[truth],
                         "flipped": np.isin(np.arange(n), flipped)})


def _sets(root):
    items = [f"workdir={root}", "train.epochs=6", "train.folds=3", "train.batch_size=16",
             "train.hidden=32", "pseudo.rounds=2", "pseudo.patience=5", "pseudo.strategy=threshold",
             "pseudo.threshold=0.3",
             "pseudo.min_agree=1", "refine.enabled=true", "refine.cpus_per_task=1",
             "refine.threshold=0.3", "refine.options={knn: {n_neighbors: 5}}"]
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("semi")
    truth = write_workdir(root)
    assert main(["train", *_sets(root)]) == 0
    assert main(["refine", *_sets(root)]) == 0
    assert main(["pseudo-label", *_sets(root)]) == 0
    return {"root": root, "truth": truth}


def test_refine_writes_labels_with_provenance_and_keeps_the_original(run):
    root, truth = run["root"], run["truth"].set_index(schema.SAMPLE_ID)
    labels = pd.read_parquet(root / "refine" / "labels.parquet")
    assert list(labels.columns) == [schema.SAMPLE_ID, "original", "refined", schema.CONFIDENCE,
                                    "agreed", "changed", "weight"]
    manifest = pd.read_parquet(root / "manifest.parquet").set_index(schema.SAMPLE_ID)
    assert len(labels) == N_TRAIN
    assert (labels["original"].to_numpy() ==
            manifest.loc[labels[schema.SAMPLE_ID], schema.LABEL].to_numpy()).all()
    assert (labels["changed"] == (labels["original"] != labels["refined"])).all()
    assert labels["weight"].between(0.0, 1.0).all()
    # Separable clusters: what refinement changes, it changes to the truth, and it corrects some.
    changed = labels[labels["changed"]]
    assert len(changed) > 0
    assert (changed["refined"].to_numpy() ==
            truth.loc[changed[schema.SAMPLE_ID], "truth"].to_numpy()).mean() >= 0.8
    assert all("original" not in a for a in changed["agreed"])
    weak = pd.read_parquet(root / "refine" / "weak_probs.parquet")
    # 3 classifiers x (a, b, a+b), on the labeled set (OOF) and the pool.
    assert weak["source"].nunique() == 9
    assert sorted(weak["part"].unique()) == ["oof", "pair", "pool"]
    metrics = json.loads((root / "refine" / "metrics.json").read_text())
    assert metrics["changed"] == len(changed)
    assert "fusion" in metrics["sources"]


def test_fold_blind_labels_come_from_sources_blind_to_the_fold(run):
    """Each clip has a label for every fold model but its own fold's, voted by the weak
    classifiers' and the fusion pair run's models fit without both folds."""
    from ecmf.semi.refine import FOLD_LABEL_COLUMNS
    from ecmf.semi.weak import fold_pairs

    root = run["root"]
    folded = pd.read_parquet(root / "refine" / "fold_labels.parquet")
    assert list(folded.columns) == FOLD_LABEL_COLUMNS
    table = pd.read_parquet(root / "train" / "training_table.parquet")
    fold = table.set_index(schema.SAMPLE_ID)["fold"]
    assert len(folded) == N_TRAIN * 2  # 3 folds: two other fold models per clip
    assert (folded["train_fold"].to_numpy() != fold.loc[folded[schema.SAMPLE_ID]].to_numpy()
            ).all()
    assert (folded["changed"] == (folded["original"] != folded["refined"])).all()
    # The fusion source: a fold model per pair of folds, none trained on either of its folds.
    pairs = root / "refine" / "pairs"
    assert len(list((pairs / "models").glob("fold_*.pt"))) == len(fold_pairs(3)) == 3
    pt = pd.read_parquet(pairs / "training_table.parquet")
    for p, (a, b) in enumerate(fold_pairs(3)):
        trained = pt[(pt["train_fold"] == p) & (pt["fold"] != p)]
        assert len(trained) and not fold.loc[trained[schema.SAMPLE_ID]].isin([a, b]).any()
    oof = pd.read_parquet(pairs / "oof.parquet")
    assert len(oof) == N_TRAIN * 2  # each clip held out by the two pairs with its fold
    metrics = json.loads((root / "refine" / "metrics.json").read_text())
    assert metrics["fold_blind"] is True and metrics["fold_labels"]["rows"] == len(folded)
    # Separable clusters: fold-blind votes fix what the out-of-fold ones fix, nearly.
    truth = run["truth"].set_index(schema.SAMPLE_ID)["truth"]
    right = folded["refined"].to_numpy() == truth.loc[folded[schema.SAMPLE_ID]].to_numpy()
    orig_right = folded["original"].to_numpy() == truth.loc[folded[schema.SAMPLE_ID]].to_numpy()
    assert right.mean() > orig_right.mean()


def test_two_rounds_train_on_refined_labels_and_pseudo_labels_with_provenance(run):
    root = run["root"]
    r1 = pd.read_parquet(root / "rounds" / "1" / "labels.parquet")
    r2 = pd.read_parquet(root / "rounds" / "2" / "labels.parquet")
    assert 0 < len(r1) <= len(r2)
    assert set(r1[schema.SAMPLE_ID]) <= set(r2[schema.SAMPLE_ID])
    assert r2[schema.SAMPLE_ID].str.startswith("clip_").all()
    # One label per fold that took a clip, never two for one fold.
    assert set(r2["train_fold"]) <= {0, 1, 2}
    assert not r2.duplicated([schema.SAMPLE_ID, "train_fold"]).any()
    pool = set(run["truth"][schema.SAMPLE_ID].iloc[N_TRAIN:])
    assert set(r2[schema.SAMPLE_ID]) <= pool
    assert (r1[schema.CONFIDENCE] >= 0.3).all()
    assert r1["agreed"].str.startswith("fusion-fold-model,").all()  # min_agree=1
    table = pd.read_parquet(root / "rounds" / "1" / "training_table.parquet")
    # Fold model k trains on its fold-blind labels and validates on the original ones.
    folded = pd.read_parquet(root / "refine" / "fold_labels.parquet").set_index(
        [schema.SAMPLE_ID, "train_fold"])
    lab = table[table["fold"] >= 0]
    train = lab[lab["train_fold"] != lab["fold"]].set_index([schema.SAMPLE_ID, "train_fold"])
    assert len(train) == len(folded)
    assert (np.array(schema.LABELS)[train["y"]] == folded.loc[train.index, "refined"]).all()
    val = lab[lab["train_fold"] == lab["fold"]].set_index(schema.SAMPLE_ID)
    manifest = pd.read_parquet(root / "manifest.parquet").set_index(schema.SAMPLE_ID)
    assert len(val) == N_TRAIN
    assert (np.array(schema.LABELS)[val["y"]] == manifest.loc[val.index, schema.LABEL]).all()
    assert (table["fold"] == -1).sum() == len(r1)
    assert (table.loc[table["fold"] == -1, "train_fold"].sort_values().to_numpy() ==
            r1["train_fold"].sort_values().to_numpy()).all()
    for k in ("1", "2"):
        for name in ("config.yaml", "metrics.json", "selection.json"):
            assert (root / "rounds" / k / name).is_file()
    summary = json.loads((root / "rounds" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert summary["refined_labels"] is True and summary["fold_blind"] is True


def test_each_fold_trains_on_the_labels_its_own_model_chose(run):
    """Round 1's labels for fold f are fold f's model's choice (not the ensemble's, which saw
    fold f's validation clips) and agree with the weak classifiers' fold-f models."""
    from ecmf.train.predict import fold_prob_columns

    root = run["root"]
    r1 = pd.read_parquet(root / "rounds" / "1" / "labels.parquet")
    preds = pd.read_parquet(root / "rounds" / "1" / "pool_predictions").set_index(
        schema.SAMPLE_ID)
    weak = pd.read_parquet(root / "refine" / "weak_probs.parquet")
    weak = weak[weak["part"] == "pool"]
    for f, rows in r1.groupby("train_fold"):
        own = preds.loc[rows[schema.SAMPLE_ID], fold_prob_columns(f)].to_numpy().argmax(axis=1)
        assert (np.array(schema.LABELS)[own] == rows[schema.LABEL].to_numpy()).all()
        for ids, agreed, label in zip(rows[schema.SAMPLE_ID], rows["agreed"], rows[schema.LABEL]):
            for source in agreed.split(",")[1:]:
                top = weak[(weak["source"] == source) & (weak[schema.SAMPLE_ID] == ids)]
                assert schema.LABELS[int(top[f"top_f{f}"].iloc[0])] == label


def test_rerun_resumes_after_the_last_finished_round(run):
    root = run["root"]
    r1_models = {p: p.stat().st_mtime_ns for p in (root / "rounds" / "1").glob("models/*.pt")}
    r1_labels = pd.read_parquet(root / "rounds" / "1" / "labels.parquet")
    # Round 2 interrupted before it finished: its labels (written last) are missing.
    (root / "rounds" / "2" / "labels.parquet").unlink()
    assert main(["pseudo-label", *_sets(root)]) == 0
    assert {p: p.stat().st_mtime_ns for p in r1_models} == r1_models
    pd.testing.assert_frame_equal(pd.read_parquet(root / "rounds" / "1" / "labels.parquet"),
                                  r1_labels)
    assert (root / "rounds" / "2" / "labels.parquet").is_file()


def test_evaluate_reports_each_round_and_the_refinement(run):
    root = run["root"]
    assert main(["evaluate", *_sets(root)]) == 0
    metrics = json.loads((root / "evaluate" / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all("val_waf" in r and "pseudo_total" in r for r in rounds)
    assert metrics["refine"]["n_labeled"] == N_TRAIN


def _with(cfg, section: str, **changes):
    """`cfg` with keys of one section changed: a loaded config is frozen."""
    import dataclasses

    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section),
                                                                    **changes)})


@pytest.fixture
def copy(run, tmp_path):
    """A copy of the finished workdir (file times kept), to change without touching `run`."""
    import shutil

    from ecmf.stages.common import load_config

    root = tmp_path / "copy"
    shutil.copytree(run["root"], root)
    items = _sets(root)[1::2]
    return root, load_config(None, items)


def test_refined_labels_are_read_until_a_source_or_setting_changes_then_refused(copy):
    """One way: `ecmf refine` writes the labels, the rounds read them; stale labels are refused
    naming what changed and the command, never refined again inside pseudo-label."""
    from ecmf.errors import MissingInput
    from ecmf.semi.refine import refine_labels, refined_labels

    root, cfg = copy
    labels = root / "refine" / "labels.parquet"
    before = labels.stat().st_mtime_ns
    refined_labels(cfg)
    assert labels.stat().st_mtime_ns == before  # nothing changed: read as they are
    # A retrained fusion model: its out-of-fold predictions are another source.
    oof = pd.read_parquet(root / "train" / "oof.parquet")
    probs = list(schema.PROB_COLUMNS)
    oof[probs] = oof[probs].to_numpy()[:, ::-1]
    oof.to_parquet(root / "train" / "oof.parquet", index=False)
    with pytest.raises(MissingInput, match=r"stale: .*fusion.*run `ecmf refine` again"):
        refined_labels(cfg)
    assert labels.stat().st_mtime_ns == before
    refine_labels(cfg)
    refined_labels(cfg)
    # Another refine setting.
    cfg = _with(cfg, "refine", threshold=0.9)
    with pytest.raises(MissingInput, match=r"stale: refine\.threshold: 0\.3 -> 0\.9"):
        refined_labels(cfg)
    refine_labels(cfg)
    key = json.loads((root / "refine" / "refine_key.json").read_text())
    assert key["refine"]["threshold"] == 0.9
    # No labels at all: pseudo-label names the command before Ray starts.
    import shutil

    shutil.rmtree(root / "refine")
    assert main(["pseudo-label", *_sets(root)]) == 2


def test_weak_probabilities_are_refit_when_the_store_changes(copy):
    import os

    from ecmf.features.store import store_fingerprint
    from ecmf.semi.weak import weak_probabilities

    root, cfg = copy
    probs = root / "refine" / "weak_probs.parquet"
    before = probs.stat().st_mtime_ns
    weak_probabilities(cfg)
    assert probs.stat().st_mtime_ns == before
    # A re-extraction or resume rewrites the store's files.
    part = next((root / "features" / "store").glob("*.parquet"))
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    weak_probabilities(cfg)
    assert probs.stat().st_mtime_ns != before
    key = json.loads((root / "refine" / "weak_key.json").read_text())
    assert key["store"] == store_fingerprint(root / "features" / "store")


def test_rounds_resume_only_over_rounds_made_with_the_same_settings(copy):
    from ecmf.config import ConfigError
    from ecmf.semi.rounds import KEY_FILE, run_rounds

    root, cfg = copy
    assert (root / "rounds" / "1" / KEY_FILE).is_file()
    # How many rounds may run: free to change on a resume.
    cfg = _with(cfg, "pseudo", patience=3)
    summary = run_rounds(cfg)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    # What a round selects: the finished rounds no longer match.
    cfg = _with(cfg, "pseudo", threshold=0.5)
    with pytest.raises(ConfigError, match=r"rounds/1 was made with other settings.*"
                                          r"pseudo\.threshold: 0\.3 -> 0\.5") as err:
        run_rounds(cfg)
    assert err.value.rounds_dir == root / "rounds"


def test_the_demo_moves_stale_rounds_aside_instead_of_failing(copy):
    from ecmf.stages.demo import demo_rounds

    root, cfg = copy
    old = pd.read_parquet(root / "rounds" / "1" / "labels.parquet")
    cfg = _with(cfg, "refine", enabled=False)
    cfg = _with(cfg, "pseudo", threshold=1.0)  # nothing passes: the new rounds train nothing
    summary = demo_rounds(cfg)
    assert [r["round"] for r in summary["rounds"]] == [0]
    (aside,) = root.glob("rounds.stale-*")
    pd.testing.assert_frame_equal(pd.read_parquet(aside / "1" / "labels.parquet"), old)
    assert not (root / "rounds" / "1" / "labels.parquet").exists()


def test_a_round_that_selects_nothing_is_not_trained(copy):
    import shutil

    from ecmf.semi.rounds import run_rounds

    root, cfg = copy
    shutil.rmtree(root / "rounds")
    # On original labels an empty round would repeat the first run.
    cfg = _with(cfg, "refine", enabled=False)
    cfg = _with(cfg, "pseudo", threshold=1.0)
    summary = run_rounds(cfg)
    assert [r["round"] for r in summary["rounds"]] == [0]
    assert summary["stopped"] == "round 1: no pool clip passed the selection"
    assert json.loads((root / "rounds" / "1" / "selection.json").read_text())["added"] == 0
    assert not (root / "rounds" / "1" / "models").exists()
    assert summary["best"]["run"] == str(root / "train")


def test_out_of_fold_refinement_still_available_and_replaces_fold_labels(copy):
    from ecmf.semi.refine import refined_labels

    root, cfg = copy
    from ecmf.semi.refine import refine_labels

    assert "train_fold" in refined_labels(cfg)
    cfg = _with(cfg, "refine", fold_blind=False)
    refine_labels(cfg)
    plain = refined_labels(cfg)
    assert "train_fold" not in plain and len(plain) == N_TRAIN
    assert not (root / "refine" / "fold_labels.parquet").exists()
    weak = pd.read_parquet(root / "refine" / "weak_probs.parquet")
    assert "pair" not in set(weak["part"])  # refitted without the fold-blind rows

"""Every stage through the real `ecmf` CLI on a tiny demo corpus, sharing one local Ray.

One candidate clip is corrupted before extraction: it must land in the errors table, the job
must finish the rest, and the submission must still cover every candidate once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecmf import schema
from ecmf.cli import main

TINY = [
    "demo.n_train=36", "demo.n_pool=24", "demo.n_candidates=24", "demo.n_test=16",
    "demo.seconds=1.0", "demo.workers=2", "train.epochs=4", "train.folds=3",
    # The default selection (curriculum: a step of the pool per round): it takes labels even
    # from 4-epoch models on 36 clips, which no fixed threshold would.
    "pseudo.rounds=2", "pseudo.patience=5", "enrich.max_new_tokens=8",
    # One feature scored alone: the path is the same for each, and each is a training run.
    "demo.singles=[faces]",
]


def _sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("demo")
    assert main(["prepare-demo", "--out", str(out / "corpus"), *_sets(TINY)]) == 0
    truth = pd.read_csv(out / "corpus" / "hidden_truth.csv", dtype=str, keep_default_na=False)
    cands = truth[(truth["split"] == "candidate") & (truth["test"].str.lower() != "true")]
    broken = cands["name"].iloc[0]
    # A truncated video, no wav and no subtitle: no modality can be read, so the clip fails
    # (one with any modality left is kept: tests/reliability).
    video = out / "corpus" / "video" / f"{broken}.mp4"
    video.write_bytes(video.read_bytes()[:300])
    (out / "corpus" / "audio" / f"{broken}.wav").unlink()
    subs_path = out / "corpus" / "subtitle_chieng.csv"
    subs = pd.read_csv(subs_path, dtype=str, keep_default_na=False)
    subs.loc[subs["name"] == broken, ["chinese", "english"]] = ""
    subs.to_csv(subs_path, index=False)
    assert main(["demo", "--out", str(out), *_sets(TINY)]) == 0
    return {"out": out, "truth": truth, "broken": broken}


def _manifest(run) -> pd.DataFrame:
    return pd.read_parquet(run["out"] / "manifest.parquet")


def test_prepare_demo_writes_the_mer2025_layout(run):
    corpus = run["out"] / "corpus"
    for name in ("subtitle_chieng.csv", "track1_train_disdim.csv", "track_all_candidates.csv"):
        assert (corpus / name).is_file()
    m = _manifest(run)
    assert len(m) == 36 + 24 + 24
    assert m[schema.SPLIT].value_counts().to_dict() == {"train": 36, "pool": 24, "candidate": 24}


def test_enrich_covers_every_clip(run):
    enriched = pd.read_parquet(run["out"] / "enrich" / "enriched.parquet")
    assert sorted(enriched[schema.SAMPLE_ID]) == sorted(_manifest(run)[schema.SAMPLE_ID])
    empty = enriched[enriched[schema.ENRICH_STATUS] == "empty-subtitle"]
    assert (empty[schema.ENRICHED_TEXT] == "").all()
    assert (run["out"] / "enrich" / "config.yaml").is_file()


def test_extract_stores_every_good_clip_with_its_dimensions(run):
    from ecmf.features.store import read_features, store_dims

    store = run["out"] / "features" / "store"
    assert store_dims(store) == {"frames": 128, "faces": 128, "audio": 64, "text": 384,
                                 "enriched": 384}
    ft = read_features(store)
    ids = set(_manifest(run)[schema.SAMPLE_ID])
    assert set(ft.ids) == ids - {run["broken"]}
    assert len(ft.ids) == len(set(ft.ids))
    for name, x in ft.feats.items():
        assert np.isfinite(x).all(), name
        assert (np.abs(x[~ft.masks[name]]).sum(axis=1) == 0).all(), f"{name}: masked not zero"
    truth = run["truth"].set_index("name").loc[ft.ids]
    silent = truth["silent"].str.lower() == "true"
    empty = truth["empty_text"].str.lower() == "true"
    assert (ft.masks["audio"] == ~silent.to_numpy()).all()
    assert (ft.masks["text"] == ~empty.to_numpy()).all()
    assert ft.masks["frames"].all()
    # The Haar cascade never sees a face where the generator drew none; it misses some drawn ones.
    no_face = truth["no_face"].str.lower() == "true"
    assert not ft.masks["faces"][no_face.to_numpy()].any()
    assert ft.masks["faces"][~no_face.to_numpy()].mean() > 0.5


def test_a_corrupt_clip_goes_to_the_errors_table(run):
    errors = pd.read_parquet(run["out"] / "features" / "errors.parquet")
    assert set(errors[schema.SAMPLE_ID]) == {run["broken"]}
    assert sorted(errors["feature"]) == ["audio", "faces", "frames"]  # text: empty, not failed
    assert (errors["stage"] == "decode").all()
    assert errors["reason"].str.contains(run["broken"]).all()
    summary = json.loads((run["out"] / "features" / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["done"] == len(_manifest(run)) - 1


def test_extract_rerun_skips_what_is_stored(run, capsys):
    out = run["out"]
    assert main(["extract", str(out / "features" / "config.yaml")]) == 0
    summary = json.loads((out / "features" / "summary.json").read_text())
    assert summary["skipped"] == len(_manifest(run)) - 1
    assert summary["attempted"] == 1  # only the broken clip is tried again
    assert summary["failed"] == 1


def test_train_writes_fold_models_and_honest_oof_metrics(run):
    train = run["out"] / "train"
    assert sorted(p.name for p in (train / "models").glob("*.pt")) == [
        "fold_0.pt", "fold_1.pt", "fold_2.pt"]
    oof = pd.read_parquet(train / "oof.parquet")
    labeled = _manifest(run).query("split == 'train'")
    assert sorted(oof[schema.SAMPLE_ID]) == sorted(labeled[schema.SAMPLE_ID])
    probs = oof[list(schema.PROB_COLUMNS)].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    metrics = json.loads((train / "metrics.json").read_text())
    from sklearn.metrics import f1_score

    assert metrics["cv"]["waf"] == pytest.approx(
        f1_score(oof["label"], oof[schema.PRED], average="weighted"))
    assert (train / "config.yaml").is_file()


def test_pseudo_label_rounds_only_label_the_pool_and_accumulate(run):
    rounds = run["out"] / "rounds"
    unlabeled = set(_manifest(run).query("split != 'train'")[schema.SAMPLE_ID])
    r1 = pd.read_parquet(rounds / "1" / "labels.parquet")
    r2 = pd.read_parquet(rounds / "2" / "labels.parquet")
    assert len(r1) > 0
    assert set(r1[schema.SAMPLE_ID]) <= unlabeled and set(r2[schema.SAMPLE_ID]) <= unlabeled
    assert set(r1[schema.SAMPLE_ID]) <= set(r2[schema.SAMPLE_ID])
    assert not r2.duplicated([schema.SAMPLE_ID, "train_fold"]).any()  # a label per fold
    assert set(r2[schema.LABEL]) <= set(schema.LABELS)
    # Each fold model takes at most a step (20%) of the pool a round, in the labeled mix.
    assert (r1.groupby("train_fold").size() <= np.ceil(0.2 * len(unlabeled))).all()
    assert set(r1["train_fold"]) == {0, 1, 2}
    for k in ("1", "2"):
        assert (rounds / k / "config.yaml").is_file() and (rounds / k / "metrics.json").is_file()


def test_pseudo_label_rerun_resumes_without_retraining(run):
    rounds = run["out"] / "rounds"
    before = {p: p.stat().st_mtime for p in rounds.glob("*/models/*.pt")}
    assert main(["pseudo-label", str(run["out"] / "train" / "config.yaml")]) == 0
    assert {p: p.stat().st_mtime for p in rounds.glob("*/models/*.pt")} == before


def test_submission_covers_every_candidate_once(run):
    from ecmf.train.submission import check_submission

    out = run["out"]
    sub = pd.read_csv(out / "predict" / "submission.csv", dtype=str, keep_default_na=False)
    cands = pd.read_csv(out / "corpus" / "track_all_candidates.csv", dtype=str)["name"]
    assert list(sub.columns) == ["name", "discrete"]
    assert sub["name"].tolist() == cands.tolist()
    check_submission(out / "predict" / "submission.csv", cands.tolist())
    fallbacks = pd.read_csv(out / "predict" / "fallbacks.csv")
    assert fallbacks["name"].tolist() == [run["broken"]]


def test_evaluate_scores_the_submission_like_sklearn(run):
    from sklearn.metrics import f1_score

    out = run["out"]
    assert main(["evaluate", str(out / "evaluate" / "config.yaml"),
                 "--truth", str(out / "test_truth.csv")]) == 0
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    truth = pd.read_csv(out / "test_truth.csv")
    sub = pd.read_csv(out / "predict" / "submission.csv").set_index("name").loc[truth["name"]]
    assert metrics["test"]["waf"] == pytest.approx(
        f1_score(truth["discrete"], sub["discrete"], average="weighted"))
    assert set(metrics["cross_validation"]) == {"train", "rounds/1", "rounds/2"}
    assert (out / "evaluate" / "confusion.png").stat().st_size > 0


def test_demo_results_json_and_table(run):
    results = json.loads((run["out"] / "results.json").read_text())
    assert set(results["single"]) == {"faces"}
    assert all(0.0 <= v <= 1.0 for v in results["single"].values())
    assert 0.0 <= results["fused"] <= 1.0
    assert len(results["rounds"]) == 2
    assert results["test_size"] == 16


def test_bad_override_fails_naming_the_key(capsys):
    assert main(["train", "--set", "train.folds=1"]) == 2
    assert "train.folds" in capsys.readouterr().err
    assert main(["train", "--set", "train.nonsense=3"]) == 2
    assert "nonsense" in capsys.readouterr().err

"""`ecmf train` on a synthetic store: re-runs give the same metrics, a worker lost mid-run
costs only the fold it was training, `--resume` finishes an interrupted run
without retraining its finished folds (and refuses a changed config), two workers with uneven
shards keep every row; then `ecmf predict` and `ecmf evaluate` on the result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from synthetic_workdir import SMALL, make_workdir

from ecmf import schema
from ecmf.cli import main
from ecmf.train.loop import load_fold

N_TRAIN = 120


def sets(wd: Path, *extra: str) -> list[str]:
    items = [f"workdir={wd}", f"corpus.root={wd}", *SMALL, *extra]
    return [a for s in items for a in ("--set", s)]


def metrics(wd: Path) -> dict:
    return json.loads((wd / "train" / "metrics.json").read_text())


def trained_at(wd: Path) -> list[float]:
    return [load_fold(wd / "train" / "models" / f"fold_{k}.pt")["trained_at"] for k in range(3)]


def fault(monkeypatch, marker: Path, after: int, mode: str) -> None:
    monkeypatch.setenv("ECMF_FAULT_AFTER_FOLDS", str(after))
    monkeypatch.setenv("ECMF_FAULT_MARKER", str(marker))
    monkeypatch.setenv("ECMF_FAULT_MODE", mode)


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory) -> Path:
    wd = make_workdir(tmp_path_factory.mktemp("reference"), n_train=N_TRAIN)
    assert main(["train", *sets(wd)]) == 0
    return wd


@pytest.mark.ray
def test_train_writes_models_and_out_of_fold_metrics(reference):
    m = metrics(reference)
    assert sorted(p.name for p in (reference / "train" / "models").glob("*.pt")) == [
        "fold_0.pt", "fold_1.pt", "fold_2.pt"]
    oof = pd.read_parquet(reference / "train" / "oof.parquet")
    assert len(oof) == N_TRAIN == m["n_labeled"]
    assert m["cv"]["waf"] == pytest.approx(f1_score(oof["label"], oof[schema.PRED],
                                                    average="weighted"))
    assert m["cv"]["waf"] > 0.3  # six balanced classes: chance is about 0.17
    # One task per fold, each holding the whole table.
    assert m["resumed_folds"] == [] and m["shard_rows"] == [N_TRAIN] * 3
    assert (reference / "train" / "ray_run.json").is_file()


@pytest.mark.ray
def test_same_seed_same_metrics_on_a_rerun(reference, tmp_path):
    wd = make_workdir(tmp_path, n_train=N_TRAIN)
    assert main(["train", *sets(wd)]) == 0
    assert metrics(wd)["cv"] == metrics(reference)["cv"]
    oof_a = pd.read_parquet(reference / "train" / "oof.parquet")
    oof_b = pd.read_parquet(wd / "train" / "oof.parquet")
    pd.testing.assert_frame_equal(oof_a, oof_b)


@pytest.mark.ray
def test_a_lost_worker_costs_only_its_fold(reference, tmp_path, monkeypatch):
    wd = make_workdir(tmp_path / "wd", n_train=N_TRAIN)
    marker = tmp_path / "died"
    # os._exit in the worker of the fold submitted after fold 0 came back (one fold at a time)
    fault(monkeypatch, marker, after=1, mode="exit")
    assert main(["train", *sets(wd, "train.max_failures=2", "train.num_workers=1")]) == 0
    died = float(marker.read_text())
    times = trained_at(wd)
    assert times[0] < died < times[1] < times[2]  # fold 0 was kept, not trained again
    m = metrics(wd)
    assert m["resumed_folds"] == [] and m["retried_folds"] == [1]
    assert m["cv"] == metrics(reference)["cv"]


@pytest.mark.ray
def test_resume_finishes_an_interrupted_run(reference, tmp_path, monkeypatch, capsys):
    wd = make_workdir(tmp_path / "wd", n_train=N_TRAIN)
    marker = tmp_path / "stopped"
    fault(monkeypatch, marker, after=2, mode="raise")
    with pytest.raises(Exception, match="injected failure"):
        main(["train", *sets(wd, "train.max_failures=0", "train.num_workers=1")])
    assert not (wd / "train" / "metrics.json").exists()
    for var in ("ECMF_FAULT_AFTER_FOLDS", "ECMF_FAULT_MARKER", "ECMF_FAULT_MODE"):
        monkeypatch.delenv(var)

    # A changed setting is refused, naming it; resources may change.
    assert main(["train", *sets(wd, "train.epochs=7"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: 6 -> 7" in err and "--resume" in err
    assert main(["train", *sets(wd, "train.max_failures=1"), "--resume"]) == 0
    stopped = float(marker.read_text())
    times = trained_at(wd)
    assert times[0] < times[1] < stopped < times[2]
    m = metrics(wd)
    assert m["resumed_folds"] == [0, 1]
    assert m["cv"] == metrics(reference)["cv"]


def test_resume_without_a_run_says_so(tmp_path, capsys):
    wd = make_workdir(tmp_path, n_train=30)
    assert main(["train", *sets(wd), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.parametrize("in_memory_mb", [2048, 0], ids=["object-store", "streamed"])
def test_ddp_workers_with_uneven_shards_keep_every_row(ray_local, tmp_path, in_memory_mb):
    wd = make_workdir(tmp_path, n_train=N_TRAIN + 1)  # odd: an equal split would drop a row
    assert main(["train", *sets(wd, "train.num_workers=2", "train.cpus_per_worker=0.5",
                                "train.strategy=ddp", f"train.in_memory_mb={in_memory_mb}")]) == 0
    m = metrics(wd)
    assert len(m["shard_rows"]) == 2 and sum(m["shard_rows"]) == N_TRAIN + 1
    # It learns (six classes: chance is about 0.17); epochs chosen on an inner split, not on
    # the scored fold, so a small table's out-of-fold WAF is an honest, lower one.
    assert m["cv"]["waf"] > 0.25


@pytest.mark.ray
@pytest.mark.parametrize("in_memory_mb", [2048, 0], ids=["object-store", "worker-read"])
def test_fold_parallel_workers_train_the_same_models_as_one(reference, tmp_path, in_memory_mb):
    """The "folds" strategy: 2 tasks train folds 0 and 1 at once, then fold 2, each on every
    row, alone; the models are those one worker trains in turn, and so are the metrics. The
    table comes through the object store, or (too big to put) each task reads the store."""
    wd = make_workdir(tmp_path, n_train=N_TRAIN)
    assert main(["train", *sets(wd, "train.num_workers=2", "train.cpus_per_worker=0.5",
                                f"train.in_memory_mb={in_memory_mb}")]) == 0
    m = metrics(wd)
    assert m["strategy"] == "folds"
    assert m["shard_rows"] == [N_TRAIN] * 3  # every fold's task holds the whole table
    assert m["cv"] == metrics(reference)["cv"]
    pd.testing.assert_frame_equal(pd.read_parquet(wd / "train" / "oof.parquet"),
                                  pd.read_parquet(reference / "train" / "oof.parquet"))


@pytest.mark.ray
def test_predict_writes_a_checked_submission_and_probabilities(reference, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(reference, wd)
    run = wd / "train"
    assert main(["predict", *sets(wd), "--run", str(run)]) == 0
    cands = pd.read_parquet(wd / "manifest.parquet").query("split == 'candidate'")[
        schema.SAMPLE_ID].tolist()
    sub = pd.read_csv(wd / "predict" / "submission.csv", dtype=str)
    assert sub["name"].tolist() == cands
    probs = pd.read_parquet(wd / "predict" / "probabilities").set_index(schema.SAMPLE_ID)
    fallback = pd.read_csv(wd / "predict" / "fallbacks.csv")["name"].tolist()
    assert fallback == [cands[-1]]  # the candidate without features
    assert sorted(probs.index) == sorted(cands[:-1])
    p = probs[list(schema.PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    by_name = sub.set_index("name")["discrete"]
    assert (np.array(schema.LABELS)[p.argmax(1)] == by_name.loc[probs.index].to_numpy()).all()

    # Batch size and actor pool are configuration; they change nothing in the output.
    assert main(["predict", *sets(wd, "predict.batch_size=2", "predict.pool_size=2"),
                 "--run", str(run)]) == 0
    again = pd.read_parquet(wd / "predict" / "probabilities").set_index(schema.SAMPLE_ID)
    np.testing.assert_allclose(again.loc[probs.index, list(schema.PROB_COLUMNS)].to_numpy(), p,
                               atol=1e-6)

    assert main(["evaluate", *sets(wd), "--truth", str(wd / "candidate_truth.csv")]) == 0
    ev = json.loads((wd / "evaluate" / "metrics.json").read_text())
    truth = pd.read_csv(wd / "candidate_truth.csv").set_index("name")
    pred = by_name.loc[truth.index]
    assert ev["test"]["waf"] == pytest.approx(f1_score(truth["discrete"], pred,
                                                       average="weighted"))
    sk = f1_score(truth["discrete"], pred, labels=list(schema.LABELS), average=None,
                  zero_division=0)
    np.testing.assert_allclose([ev["test"]["per_class_f1"][c] for c in schema.LABELS], sk)
    assert (wd / "evaluate" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    cv = ev["cross_validation"]["train"]
    oof = pd.read_parquet(run / "oof.parquet")
    assert cv["waf"] == pytest.approx(f1_score(oof["label"], oof[schema.PRED], average="weighted"))
    assert set(cv["per_class_f1"]) == set(schema.LABELS)
    assert (wd / "evaluate" / cv["confusion_png"]).read_bytes()[:4] == b"\x89PNG"


def test_a_clip_pseudo_labeled_by_two_folds_trains_each_with_its_label():
    from ecmf.train.fit import attach_labels, label_lookup, training_table

    manifest = pd.DataFrame({schema.SAMPLE_ID: [f"l{i}" for i in range(6)] + ["u0", "u1"],
                             schema.SPLIT: ["train"] * 6 + ["pool"] * 2,
                             schema.LABEL: ["happy", "sad"] * 3 + [None, None]})
    pseudo = pd.DataFrame({schema.SAMPLE_ID: ["u0", "u0", "u1"],
                           schema.LABEL: ["angry", "worried", "sad"], "weight": 0.5,
                           "train_fold": [0, 1, -1]})
    table = training_table(manifest, 2, 0, pseudo=pseudo)
    assert (table.loc[table["fold"] >= 0, "train_fold"] == -1).all()
    batch = {schema.SAMPLE_ID: np.array(["u0", "x", "l1", "u1"]), "feat": np.arange(4)}
    out = attach_labels(batch, label_lookup(table))
    assert out[schema.SAMPLE_ID].tolist() == ["u0", "u0", "l1", "u1"]
    assert out["feat"].tolist() == [0, 0, 2, 3]
    assert [schema.LABELS[y] for y in out["y"]] == ["angry", "worried", "sad", "sad"]
    assert out["train_fold"].tolist() == [0, 1, -1, -1]
    assert out["fold"].tolist()[:2] == [-1, -1] and out["weight"].tolist()[:2] == [0.5, 0.5]
    with pytest.raises(ValueError, match=r"fold\(s\) \[2\] of a 2-fold run.*'u0'"):
        training_table(manifest, 2, 0, pseudo=pseudo.assign(train_fold=[2, 1, -1]))


def test_fold_blind_refined_labels_give_each_fold_model_its_own_and_validate_on_originals():
    from ecmf.train.fit import training_table

    manifest = pd.DataFrame({schema.SAMPLE_ID: [f"l{i}" for i in range(6)],
                             schema.SPLIT: ["train"] * 6,
                             schema.LABEL: ["happy", "sad"] * 3})
    plain = training_table(manifest, 3, 0)
    fold = plain.set_index(schema.SAMPLE_ID)["fold"]
    rows = [(s, j) for s in fold.index for j in range(3) if j != fold[s]]
    refined = pd.DataFrame({schema.SAMPLE_ID: [s for s, _ in rows],
                            "train_fold": [j for _, j in rows],
                            "refined": ["angry" if j == 0 else "worried" for _, j in rows],
                            "weight": 0.5})
    table = training_table(manifest, 3, 0, refined=refined)
    assert len(table) == 6 * 3
    val = table[table["train_fold"] == table["fold"]].set_index(schema.SAMPLE_ID)
    assert len(val) == 6 and (val["weight"] == 1.0).all()
    assert (val["y"] == plain.set_index(schema.SAMPLE_ID).loc[val.index, "y"]).all()
    train = table[table["train_fold"] != table["fold"]]
    assert [schema.LABELS[y] for y in train["y"]] == [
        "angry" if j == 0 else "worried" for j in train["train_fold"]]
    assert (train["fold"].to_numpy() == fold.loc[train[schema.SAMPLE_ID]].to_numpy()).all()
    # A label for a clip's own fold, or a missing one, is a split that does not match.
    own = refined.iloc[:1].assign(train_fold=fold[refined[schema.SAMPLE_ID].iloc[0]])
    with pytest.raises(ValueError, match="do not match a 3-fold split"):
        training_table(manifest, 3, 0, refined=pd.concat([refined.iloc[1:], own]))
    first_l0 = refined.index[refined[schema.SAMPLE_ID] == "l0"][0]
    with pytest.raises(ValueError, match=r"1 missing, e.g. \[\{'sample_id': 'l0'"):
        training_table(manifest, 3, 0, refined=refined.drop(index=first_l0))


@pytest.mark.ray
def test_out_of_fold_predictions_skip_a_labeled_clip_without_features(reference):
    """A labeled clip whose extraction failed (absent from the store's rows) never reached the
    fold models: it gets no out-of-fold row, and the others keep theirs."""
    from ecmf.train.predict import oof_predictions

    run = reference / "train"
    table = pd.read_parquet(run / "training_table.parquet")
    broken = table.iloc[:1].assign(**{schema.SAMPLE_ID: "not_extracted"})
    oof = oof_predictions(run, reference / "features" / "store", pd.concat([table, broken]))
    pd.testing.assert_frame_equal(oof, pd.read_parquet(run / "oof.parquet"))

"""The demo as users submit it (`jobs/demo.yaml`) to a real Ray head, then every stage's
outputs, and `ecmf submit` / `ecmf jobs` around it: a failing job, status, logs and stop.

One candidate clip of the demo corpus is corrupted before the job runs: it must land in the
errors table, the job must finish the rest, and the submission must still cover every
candidate once. The reruns (extract, pseudo-label, evaluate) run here, on the session's local
Ray, over what the job wrote.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecmf import schema
from ecmf.cli import main

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
DEMO_SPEC = REPO / "jobs" / "demo.yaml"
DEMO_CONFIG = REPO / "jobs" / "configs" / "demo-tiny.yaml"
SUBMISSION_ID = "ecmf-test-demo"


def write_spec(tmp_path, name: str, lines: list[str]):
    """A job spec in tmp_path whose working_dir is the repository."""
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join([f"name: {name}", *lines,
                               f"runtime_env: {{working_dir: {REPO}}}", ""]))
    return path


@pytest.fixture(scope="module")
def run(ray_head, ray_local, tmp_path_factory):
    """The demo corpus (demo-tiny's sizes) with a broken candidate, then jobs/demo.yaml on it."""
    out = tmp_path_factory.mktemp("demo")
    assert main(["prepare-demo", str(DEMO_CONFIG), "--out", str(out / "corpus")]) == 0
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
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        rc = main(["submit", str(DEMO_SPEC), "--address", ray_head.address,
                   "--env", f"ECMF_DEMO_OUT={out}", "--submission-id", SUBMISSION_ID,
                   "--follow", "--timeout", "900"])
    return {"out": out, "truth": truth, "broken": broken, "rc": rc,
            "printed": printed.getvalue(), "errors": errors.getvalue()}


def test_demo_job_succeeds_and_writes_its_outputs(run, ray_head, capsys):
    assert run["rc"] == 0, (run["printed"] + run["errors"])[-3000:]
    assert f"job {SUBMISSION_ID} SUCCEEDED" in run["printed"]
    assert run["printed"].startswith("equivalent: ray job submit --address ")
    assert "Test set: 16 clips" in run["printed"]  # the demo's table, streamed from the cluster
    results = json.loads((run["out"] / "results.json").read_text())
    assert {"single", "fused", "rounds"} <= set(results)
    assert main(["jobs", "status", SUBMISSION_ID, "--address", ray_head.address]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "SUCCEEDED" and status["metadata"]["ecmf_job"] == "ecmf-demo"
    assert main(["jobs", "logs", SUBMISSION_ID, "--tail", "5", "--address",
                 ray_head.address]) == 0
    tail = capsys.readouterr().out.strip().splitlines()
    assert 0 < len(tail) <= 5 and "results:" in "\n".join(tail)


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


def test_failing_job_is_reported_failed_with_its_log_tail(ray_head, tmp_path, capsys):
    spec = write_spec(tmp_path, "ecmf-test-fail", ["steps: [train]", "set:",
                                                   "  - corpus.root=/nonexistent/MER2025",
                                                   f"  - workdir={tmp_path / 'run'}"])
    rc = main(["submit", str(spec), "--address", ray_head.address, "--follow",
               "--submission-id", "ecmf-test-fail", "--timeout", "300"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "job ecmf-test-fail FAILED" in err
    assert "last 40 log lines" in err
    assert "corpus root /nonexistent/MER2025 is not a directory" in err  # the driver's error

    assert main(["jobs", "status", "ecmf-test-fail", "--address", ray_head.address]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "FAILED"


def test_jobs_stop_stops_a_running_job(ray_head, tmp_path, capsys):
    spec = write_spec(tmp_path, "ecmf-test-sleep",
                      [("entrypoint: python -c 'import time; print(\"sleeping\", flush=True); "
                        "time.sleep(600)'"), "entrypoint_num_cpus: 0"])
    assert main(["submit", str(spec), "--address", ray_head.address,
                 "--submission-id", "ecmf-test-sleep"]) == 0
    capsys.readouterr()
    assert main(["jobs", "stop", "ecmf-test-sleep", "--address", ray_head.address]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "STOPPED"
    # Following a stopped job reports it and exits non-zero.
    assert main(["jobs", "logs", "ecmf-test-sleep", "--follow", "--timeout", "60",
                 "--address", ray_head.address]) != 0
    assert "ecmf-test-sleep STOPPED" in capsys.readouterr().err
    assert main(["jobs", "list", "--address", ray_head.address]) == 0
    listed = {j["submission_id"]: j["status"] for j in json.loads(capsys.readouterr().out)}
    assert listed["ecmf-test-sleep"] == "STOPPED"


def test_unknown_job_id_and_reused_id_are_named(ray_head, tmp_path, capsys):
    assert main(["jobs", "status", "no-such-job", "--address", ray_head.address]) == 2
    assert "job no-such-job" in capsys.readouterr().err
    spec = write_spec(tmp_path, "ecmf-test-echo", ["entrypoint: echo hello",
                                                   "entrypoint_num_cpus: 0"])
    args = ["submit", str(spec), "--address", ray_head.address, "--submission-id", "ecmf-test-echo"]
    assert main([*args, "--follow", "--timeout", "120"]) == 0
    assert main(args) == 2  # a submission id is unique on a cluster
    assert "ecmf-test-echo" in capsys.readouterr().err

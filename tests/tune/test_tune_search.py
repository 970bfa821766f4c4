"""Searches on a tiny feature store: lockstep folds, a 4-trial ASHA search whose best.yaml trains,
resume after an interruption, CPU budgets, the hang watchdog, the fold-task and TorchTrainer
runners."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from ray.tune import Callback

from ecmf.cli import main
from ecmf.config import ConfigError, TrainConfig
from ecmf.stages.common import load_config
from ecmf.train.fit import training_table
from ecmf.train.loop import train_one_fold
from ecmf.tune.driver import SearchError, Watchdog, _search_alg, plan_concurrency, run_search
from ecmf.tune.trial import fold_task_epochs, lockstep_folds, trial_data

SEARCH = Path(__file__).with_name("search.yaml")


def test_lockstep_folds_equal_sequential_folds_and_stop_cleanly(workdir, one_thread):
    table = training_table(pd.read_parquet(workdir / "manifest.parquet"), 3, 0)
    data = trial_data(workdir / "features" / "store", table, ["text", "audio"])
    dims = {"text": 8, "audio": 4}
    # Without dropout nothing draws from torch's global RNG while training, so taking turns
    # must give exactly what one fold after the other gives.
    cfg = TrainConfig(epochs=3, hidden=16, heads=2, batch_size=16, dropout=0.0,
                      modality_dropout=0.0)
    lock = list(lockstep_folds(cfg, data, ["text", "audio"], dims, 3))
    seq = [train_one_fold(cfg, data, ["text", "audio"], dims, k)["history"] for k in range(3)]
    assert [r["epoch"] for r in lock] == [0, 1, 2]
    for e, rec in enumerate(lock):
        assert rec["fold_val_waf"] == [h[e]["val_waf"] for h in seq]
        assert rec["val_waf"] == pytest.approx(sum(h[e]["val_waf"] for h in seq) / 3)
    # With dropout, runs repeat exactly; the folds step in this thread (no thread per fold),
    # and a trial stopped after one epoch closes them.
    cfg = TrainConfig(epochs=2, hidden=16, heads=2, batch_size=16, dropout=0.3)
    assert list(lockstep_folds(cfg, data, ["text"], {"text": 8}, 3)) == \
        list(lockstep_folds(cfg, data, ["text"], {"text": 8}, 3))
    threads = set(threading.enumerate())
    records = lockstep_folds(cfg, data, ["text"], {"text": 8}, 3)
    next(records)
    assert set(threading.enumerate()) <= threads
    records.close()
    with pytest.raises(StopIteration):
        next(records)


@pytest.mark.ray
def test_four_trial_search_writes_outputs_and_its_best_yaml_trains(ray_local, workdir):
    assert main(["tune", str(SEARCH), "--set", f"workdir={workdir}"]) == 0
    out = workdir / "tune"
    trials = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped early"}
    assert trials["epochs_run"].between(1, 4).all() and (trials["epochs_run"] == 4).any()
    assert ((trials["status"] == "stopped early") == (trials["epochs_run"] < 4)).all()
    assert set(trials["features"]) <= {"text", "text,audio", "all"}
    assert trials["best_val_waf"].max() > 0.3  # chance is ~0.17: "text" carries the label
    assert (out / "val_waf.png").read_bytes()[:4] == b"\x89PNG"
    assert load_config(out / "config.yaml").tune.num_samples == 4

    best_row = trials.loc[trials["best_val_waf"].idxmax()]
    best = load_config(out / "best.yaml")
    assert best.workdir == str(workdir)
    assert (best.train.hidden, best.train.layers) == (best_row["hidden"], best_row["layers"])
    assert best.train.lr == pytest.approx(best_row["lr"])
    assert (",".join(best.train.features) or "all") == best_row["features"]
    assert best.train.heads == 2 and best.train.epochs == 4  # the search's own train overrides
    assert not best.tune.space
    assert main(["train", str(out / "best.yaml")]) == 0
    assert (workdir / "train" / "metrics.json").is_file()
    assert len(list((workdir / "train" / "models").glob("fold_*.pt"))) == best.train.folds


class InterruptOnFirstComplete(Callback):
    """Ctrl-C (SIGUSR1: the same handler in Tune) once a trial has finished, if `flag` exists."""

    def __init__(self, flag: Path):
        self.flag = str(flag)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # The callback comes back with the experiment on resume: fire only once.
        if os.path.exists(self.flag):
            os.remove(self.flag)
            signal.raise_signal(signal.SIGUSR1)


@pytest.mark.ray
def test_an_interrupted_search_resumes_without_rerunning_finished_trials(ray_local, workdir):
    cfg = load_config(SEARCH, [f"workdir={workdir}"])
    out = workdir / "tune"
    flag = workdir / "interrupt"
    flag.touch()
    with pytest.raises(SearchError, match="--resume"):
        run_search(cfg, out, callbacks=(InterruptOnFirstComplete(flag),))
    before = pd.read_csv(out / "trials.csv")
    done = before[before["status"] != "unfinished"].set_index("trial_id")
    assert 1 <= len(done) < 4 and (before["status"] == "unfinished").any()

    with pytest.raises(ConfigError, match="--resume"):
        run_search(cfg, out)
    with pytest.raises(ConfigError, match=r"tune\.seed"):
        run_search(load_config(SEARCH, [f"workdir={workdir}", "tune.seed=1"]), out, resume=True)
    # Where a search runs may change on resume.
    cfg = load_config(SEARCH, [f"workdir={workdir}", "ray.num_cpus=4"])
    summary = run_search(cfg, out, resume=True)
    after = pd.read_csv(out / "trials.csv").set_index("trial_id")
    assert summary["trials"] == 4 and len(after) == 4
    assert not (after["status"] == "unfinished").any()
    for col in ("best_val_waf", "epochs_run", "seconds"):
        assert after.loc[done.index, col].tolist() == done[col].tolist()


@pytest.mark.ray
def test_cpu_budgets_that_would_deadlock_fail_naming_the_keys(ray_local):
    # ray_local has 4 logical CPUs.
    cfg = load_config(None, ["tune.cpus_per_trial=0.5"])
    assert plan_concurrency(cfg, "process", 16) == 8
    assert plan_concurrency(cfg, "process", 3) == 3
    with pytest.raises(ConfigError, match=r"tune\.cpus_per_trial.* 4 ?"):
        plan_concurrency(load_config(None, ["tune.cpus_per_trial=5"]), "process", 4)
    with pytest.raises(ConfigError, match=r"tune\.max_concurrent_trials=3.*at most 2"):
        plan_concurrency(load_config(None, ["tune.max_concurrent_trials=3",
                                            "tune.cpus_per_trial=2"]), "process", 4)
    # A TorchTrainer trial: 0.5 (trial) + 2 x 0.5 (workers) per trial, and 1 CPU for Ray Data.
    cfg = load_config(None, ["tune.cpus_per_trial=0.5", "train.num_workers=2",
                             "train.cpus_per_worker=0.5"])
    assert plan_concurrency(cfg, "ray_train", 16) == 2
    with pytest.raises(ConfigError, match=r"train\.num_workers.*Ray Data"):
        plan_concurrency(load_config(None, ["train.num_workers=3"]), "ray_train", 4)
    with pytest.raises(ConfigError, match=r"tune\.gpus_per_trial"):
        plan_concurrency(load_config(None, ["tune.gpus_per_trial=1"]), "process", 4)
    # Fold tasks: 0.5 (trial) + 3 folds x 0.5 per trial, no Ray Data read to leave room for.
    cfg = load_config(None, ["tune.cpus_per_trial=0.5", "train.num_workers=0",
                             "train.cpus_per_worker=0.5", "tune.cv_folds=3"])
    assert plan_concurrency(cfg, "folds", 16) == 2
    with pytest.raises(ConfigError, match=r"tune\.cv_folds x train\.cpus_per_worker"):
        plan_concurrency(load_config(None, ["train.num_workers=4", "tune.cv_folds=4"]),
                         "folds", 4)


def test_a_fold_task_trial_holds_a_worker_per_fold():
    """Its folds step in lockstep: with fewer bundles than folds, the last fold would wait for
    the first ones to end every epoch, and the trial's first report would come after a whole
    fold (ASHA could then stop nothing early). The MER2025 config: 2 workers, 3 folds."""
    from ecmf.tune.driver import trial_workers

    cfg = load_config(None, ["train.num_workers=2", "tune.cv_folds=3"])
    assert trial_workers(cfg, "folds") == 3
    assert trial_workers(cfg, "ray_train") == 2 and trial_workers(cfg, "process") == 0


def test_auto_runner_follows_workers_and_strategy():
    from ecmf.tune.driver import resolve_runner

    assert resolve_runner(load_config(None, [])) == "process"  # num_workers 0 by default
    assert resolve_runner(load_config(None, ["train.num_workers=2"])) == "folds"
    assert resolve_runner(load_config(None, ["train.num_workers=2",
                                             "train.strategy=ddp"])) == "ray_train"
    assert resolve_runner(load_config(None, ["train.num_workers=2",
                                             "tune.runner=process"])) == "process"


def test_other_search_algorithms_fail_clearly_when_missing_or_given_a_grid():
    from ecmf.tune.space import parse_space

    cfg = load_config(None, ["tune.search=optuna", "tune.space.lr.uniform=[0.001,0.01]"])
    params = parse_space(cfg.tune.space)
    try:
        import optuna  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"tune\.search: 'optuna' needs a package"):
            _search_alg(cfg, params, None, 2)
    with pytest.raises(ConfigError, match=r"tune\.search.*must be one of"):
        _search_alg(load_config(None, ["tune.search=nosuch"]), {}, None, 2)
    grid = parse_space({"heads": {"grid": [2, 4]}})
    with pytest.raises(ConfigError, match=r"tune\.search: 'optuna' cannot run grid keys"):
        _search_alg(cfg, grid, None, 2)


def test_watchdog_turns_silence_into_an_error():
    dog = Watchdog(timeout_s=0.05, start_timeout_s=0.3)
    dog.setup()
    running = SimpleNamespace(trial_id="t1", status="RUNNING", placement_group_factory="1 CPU")
    dog.on_trial_start(0, [running], running)
    dog.on_step_begin(1, [running])  # reported just now: fine
    time.sleep(0.1)
    with pytest.raises(SearchError, match=r"t1 reported nothing.*tune\.no_progress_timeout_s"):
        dog.on_step_begin(2, [running])
    dog.setup()  # a resumed search starts its clocks again
    pending = SimpleNamespace(trial_id="t2", status="PENDING")
    dog.on_step_begin(0, [pending])
    time.sleep(0.1)
    # Longer than a silent trial may take, within the start timeout: a cold GPU node pulling
    # the image is still coming (before: the search failed here).
    dog.on_step_begin(1, [pending])
    time.sleep(0.3)
    with pytest.raises(SearchError, match=r"no trial could start.*tune\.start_timeout_s"):
        dog.on_step_begin(2, [pending])


@pytest.mark.ray
def test_a_silent_trial_fails_the_search_instead_of_hanging(ray_local, workdir):
    cfg = load_config(SEARCH, [f"workdir={workdir}", "tune.num_samples=1",
                               "tune.no_progress_timeout_s=0.001"])
    # Which clock runs out first (trial start or first report) depends on the machine's speed.
    with pytest.raises(SearchError, match="reported nothing|no trial could start"):
        run_search(cfg, workdir / "tune")


@pytest.mark.ray
def test_fold_tasks_step_like_folds_trained_alone_and_free_their_cpus_when_stopped(
        ray_local, workdir, one_thread):
    table = training_table(pd.read_parquet(workdir / "manifest.parquet"), 3, 0)
    data = trial_data(workdir / "features" / "store", table, ["text", "audio"])
    dims = {"text": 8, "audio": 4}
    shared = {"ref": ray_local.put(data), "rows": len(data["y"])}
    # Each fold task is a fold alone in its process, seeded as `train_one_fold` seeds it: the
    # same epochs, dropout included, as the folds trained one after the other here.
    cfg = TrainConfig(epochs=3, hidden=16, heads=2, batch_size=16, dropout=0.3)
    records = list(fold_task_epochs(cfg, shared, ["text", "audio"], dims, 3, 6))
    seq = [train_one_fold(cfg, data, ["text", "audio"], dims, k)["history"] for k in range(3)]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for e, rec in enumerate(records):
        assert rec["fold_val_waf"] == [h[e]["val_waf"] for h in seq]
        assert rec["train_loss"] == pytest.approx(sum(h[e]["train_loss"] for h in seq) / 3)
    # A trial Tune stops after one epoch (of many): its fold tasks end, their CPUs free again.
    total = ray_local.cluster_resources()["CPU"]

    def free_cpus_reach(test) -> bool:  # the resource view lags the scheduler a little
        deadline = time.monotonic() + 60
        while not test(ray_local.available_resources().get("CPU", 0)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    records = fold_task_epochs(dataclasses.replace(cfg, epochs=100_000), shared, ["text"],
                               {"text": 8}, 3, 6)
    next(records)
    assert free_cpus_reach(lambda free: free <= total - 3)  # the 3 folds train
    records.close()
    assert free_cpus_reach(lambda free: free == total)


@pytest.mark.ray
def test_fold_task_runner_reports_every_epoch_through_tune(ray_local, odd_workdir):
    workdir = odd_workdir
    cfg = load_config(SEARCH, [f"workdir={workdir}", "tune.num_samples=2", "tune.runner=folds",
                               "train.num_workers=0", "train.cpus_per_worker=0.5",
                               "tune.cpus_per_trial=0.5", "tune.cv_folds=2", "train.epochs=2",
                               "tune.scheduler=fifo"])
    summary = run_search(cfg, workdir / "tune")
    trials = pd.read_csv(workdir / "tune" / "trials.csv")
    assert summary["completed"] == 2 and trials["epochs_run"].tolist() == [2, 2]
    assert 0.0 < summary["best_val_waf"] <= 1.0
    from ecmf.data.manifest import load_manifest

    labeled = int((load_manifest(cfg)["split"] == "train").sum())
    assert trials["train_rows"].tolist() == [labeled, labeled]


@pytest.mark.ray
def test_ray_train_runner_reports_every_epoch_through_tune(ray_local, odd_workdir):
    workdir = odd_workdir
    cfg = load_config(SEARCH, [f"workdir={workdir}", "tune.num_samples=1", "tune.runner=ray_train",
                               "train.num_workers=2", "train.cpus_per_worker=0.5",
                               "tune.cpus_per_trial=0.5", "train.epochs=2"])
    summary = run_search(cfg, workdir / "tune")
    trials = pd.read_csv(workdir / "tune" / "trials.csv")
    assert summary["completed"] == 1 and trials["epochs_run"].tolist() == [2]
    assert 0.0 < summary["best_val_waf"] <= 1.0
    assert any((workdir / "tune" / "ray" / "train_runs").iterdir())
    # The two workers' shards hold every labeled row, as `fit`'s do (none dropped to even them).
    from ecmf.data.manifest import load_manifest

    labeled = int((load_manifest(cfg)["split"] == "train").sum())
    assert trials["train_rows"].tolist() == [labeled] and labeled == 73

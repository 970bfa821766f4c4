"""The search driver (`ecmf tune`): points drawn, trial resources checked against the cluster, a
Tuner started or restored, then trials.csv, val_waf.png, best.yaml and config.yaml written."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import yaml
from ray.tune import Callback  # this module is Ray's edge: `import ecmf` never loads it

from ecmf.config import Config, ConfigError, to_dict
from ecmf.data.manifest import with_labels
from ecmf.features.store import store_dims
from ecmf.runtime.capacity import check_placeable, cluster_capacity
from ecmf.train.fit import stage_table
from ecmf.tune import report, trial
from ecmf.tune.space import (
    feature_sets,
    max_epochs,
    parse_space,
    search_points,
    to_tune,
    trial_config,
    tune_point,
)
from ecmf.tune.trial import METRIC, MODE
from ecmf.workdir import Workdir, save_config, write_json

log = logging.getLogger(__name__)
EXPERIMENT = "search"  # <out>/ray/search: the Tune experiment a resume restores


class SearchError(RuntimeError):
    """A search that did not finish: a trial stalled, it was interrupted, or every trial failed."""


class Watchdog(Callback):
    """Turns a silent hang (PLATFORM_NOTES: CPU deadlocks) into an error: a running trial that
    reports nothing for `timeout_s`, or pending trials with none running for `start_timeout_s`
    (longer: a cold GPU node pulls the image before the first trial can start on it)."""

    def __init__(self, timeout_s: float, start_timeout_s: float | None = None):
        self.timeout_s = timeout_s
        self.start_timeout_s = timeout_s if start_timeout_s is None else start_timeout_s

    def setup(self, **info):
        # Also on a resume: the callback comes back from the experiment's state.
        self.seen: dict[str, float] = {}
        self.idle_since: float | None = None

    def on_trial_start(self, iteration, trials, trial, **info):
        self.seen[trial.trial_id] = time.monotonic()

    on_trial_result = on_trial_start

    def on_step_begin(self, iteration, trials, **info):
        now, limit = time.monotonic(), self.timeout_s
        running = [t for t in trials if t.status == "RUNNING"]
        for t in running:
            if now - self.seen.setdefault(t.trial_id, now) > limit:
                raise SearchError(
                    f"trial {t.trial_id} reported nothing for {limit:g} s "
                    f"(tune.no_progress_timeout_s) with resources {t.placement_group_factory}. "
                    f"A stalled Ray Data or Train stage is the usual cause: lower "
                    f"tune.max_concurrent_trials or train.cpus_per_worker, or give Ray more "
                    f"CPUs; `ecmf tune CONFIG --resume` then goes on")
        if running or not any(t.status == "PENDING" for t in trials):
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
        elif now - self.idle_since > self.start_timeout_s:
            raise SearchError(f"no trial could start for {self.start_timeout_s:g} s "
                              f"(tune.start_timeout_s): the cluster cannot place one "
                              f"(tune.cpus_per_trial, tune.gpus_per_trial, or a worker per "
                              f"fold with train.use_gpu), or its nodes never joined")


def resolve_runner(cfg: Config) -> str:
    """"auto": a trial trains in its own process unless train.num_workers > 1 asks for workers:
    then its folds run as tasks at once ("folds"), or a TorchTrainer for train.strategy ddp."""
    if cfg.tune.runner != "auto":
        return cfg.tune.runner
    if cfg.train.num_workers <= 1:
        return "process"
    return "ray_train" if cfg.train.strategy == "ddp" else "folds"


def trial_workers(cfg: Config, runner: str) -> int:
    """Workers a trial holds beside its own process: a fold task per fold ("folds": its folds
    step in lockstep, so all of them run at once, or the first report would wait for whole
    folds to end and ASHA could stop nothing early), a TorchTrainer's workers ("ray_train": 0
    means one), none ("process")."""
    if runner == "folds":
        return cfg.tune.cv_folds
    return max(1, cfg.train.num_workers) if runner == "ray_train" else 0


def plan_concurrency(cfg: Config, runner: str, n_trials: int) -> int:
    """Trials in flight that fit the cluster with CPUs left for Ray Data; fails naming the keys.

    A Tune trial, its Train workers and Ray Data's read tasks all take CPUs: if trials and
    workers hold them all, the reads wait forever and the search hangs without an error.
    """

    tc, tr = cfg.tune, cfg.train
    # What the cluster can scale to, not what is up: a GPU cluster starts from zero workers.
    capacity = cluster_capacity()
    if runner == "process":
        check_placeable({"tune.cpus_per_trial, tune.gpus_per_trial": {
            "CPU": tc.cpus_per_trial, "GPU": tc.gpus_per_trial}}, capacity)
    else:
        check_placeable({"train.cpus_per_worker with train.use_gpu": {
            "CPU": tr.cpus_per_worker, "GPU": float(tr.use_gpu)}}, capacity)
    if not capacity.known:  # Ray queues the trials until the autoscaler has room
        return min(tc.max_concurrent_trials or n_trials, n_trials)
    cpus, gpus = capacity.totals.get("CPU", 0.0), capacity.totals.get("GPU", 0.0)
    per_trial, reserve = tc.cpus_per_trial, 0.0
    keys = "tune.cpus_per_trial"
    workers = trial_workers(cfg, runner)
    if runner != "process":
        per_trial += workers * tr.cpus_per_worker
        keys += (", tune.cv_folds x train.cpus_per_worker" if runner == "folds"
                 else ", train.num_workers x train.cpus_per_worker")
    if runner == "ray_train":
        reserve = 1.0  # Ray Data's read tasks take a whole CPU each
        keys += " and 1 CPU for Ray Data"
    fits = math.floor((cpus - reserve) / per_trial + 1e-9)
    if fits < 1:
        raise ConfigError(f"a trial needs {per_trial + reserve:g} CPUs ({keys}) but the cluster "
                          f"has {cpus:g}: lower them or give Ray more CPUs (ray.num_cpus for "
                          f"the embedded one)")
    if tc.max_concurrent_trials > fits:
        raise ConfigError(f"tune.max_concurrent_trials={tc.max_concurrent_trials} trials of "
                          f"{per_trial:g} CPUs ({keys}) need more than the cluster's {cpus:g} "
                          f"CPUs; at most {fits} fit")
    need_gpus = tc.gpus_per_trial if runner == "process" else workers * tr.use_gpu
    if need_gpus > gpus:
        raise ConfigError(f"a trial needs {need_gpus:g} GPUs (tune.gpus_per_trial, or a fold "
                          f"task per tune.cv_folds, or train.num_workers DDP workers, with "
                          f"train.use_gpu) but the cluster has {gpus:g}")
    return min(tc.max_concurrent_trials or fits, n_trials)


def _trainable(cfg: Config, runner: str, out: Path, params: dict):
    """The Tune trainable with its data and resources attached."""
    from ray import tune

    store = Workdir.of(cfg).store.resolve()  # trials may run in another working directory
    dims = store_dims(store)
    sets = feature_sets(params, cfg.train)
    key = "tune.space.features" if "features" in params else "train.features"
    unknown = sorted({f for s in sets for f in s} - set(dims))
    if unknown:
        raise ConfigError(f"config {key}: features {unknown} are not in the feature store "
                          f"{store}; available: {sorted(dims)}")
    features = sorted(dims) if any(not s for s in sets) else sorted({f for s in sets for f in s})
    cfg = with_labels(cfg)
    table = stage_table(cfg, folds=cfg.tune.cv_folds)
    table = table[table["fold"] >= 0].reset_index(drop=True)
    base = asdict(cfg.train)
    if runner == "process":
        fn = tune.with_parameters(
            trial.process_trial, data=trial.trial_data(store, table, features), base=base,
            folds=cfg.tune.cv_folds, threads=max(1, int(cfg.tune.cpus_per_trial)),
            use_gpu=cfg.tune.gpus_per_trial > 0, num_classes=len(cfg.labels))
        return tune.with_resources(fn, {"cpu": cfg.tune.cpus_per_trial,
                                        "gpu": cfg.tune.gpus_per_trial})
    if runner == "folds":
        import ray
        from ray.tune import PlacementGroupFactory

        data = trial.trial_data(store, table, features)
        # Put once, read by every trial's fold tasks; a worker bundle per fold task at once.
        shared = {"ref": ray.put(data), "rows": len(data["y"])}
        fn = tune.with_parameters(trial.folds_trial, table=shared, dims=dims, base=base,
                                  folds=cfg.tune.cv_folds, num_classes=len(cfg.labels))
        worker = {"CPU": cfg.train.cpus_per_worker, "GPU": float(cfg.train.use_gpu)}
        return tune.with_resources(fn, PlacementGroupFactory(
            [{"CPU": cfg.tune.cpus_per_trial}] + [worker] * trial_workers(cfg, runner)))
    fn = tune.with_parameters(
        trial.ray_train_trial, table=table, store=str(store), base=base, folds=cfg.tune.cv_folds,
        storage=str(out / "ray" / "train_runs"),
        no_progress_timeout_s=float(cfg.ray.no_progress_timeout_s),
        num_classes=len(cfg.labels))
    return tune.with_resources(fn, {"cpu": cfg.tune.cpus_per_trial})


def _search_alg(cfg: Config, params: dict, points: list[dict] | None, concurrency: int):
    """The search algorithm and its trial count; it limits the trials in flight."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, create_searcher

    if points is not None:
        return BasicVariantGenerator(points_to_evaluate=[tune_point(p) for p in points],
                                     max_concurrent=concurrency), len(points)
    if any(p.kind == "grid" for p in params.values()):
        raise ConfigError(f"config tune.search: {cfg.tune.search!r} cannot run grid keys; "
                          f"use search: random, or choice instead of grid")
    try:
        searcher = create_searcher(cfg.tune.search, metric=METRIC, mode=MODE)
        return ConcurrencyLimiter(searcher, concurrency), cfg.tune.num_samples
    except (ImportError, AssertionError) as e:  # Ray asserts that the package is there
        raise ConfigError(f"config tune.search: {cfg.tune.search!r} needs a package that is not "
                          f"installed ({e}); search: random needs none") from None
    except ValueError as e:
        raise ConfigError(f"config tune.search: {e}") from None


def _scheduler(cfg: Config, params: dict):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "fifo":
        return FIFOScheduler()
    max_t = max_epochs(params, cfg.train)
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                         grace_period=min(cfg.tune.grace_period, max_t),
                         reduction_factor=cfg.tune.reduction_factor)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v})
    return out


# A resume may change where the search runs, nothing else: the searcher, scheduler, callbacks
# and each trial's resources come back from the saved experiment as they were.
_RESUMABLE = ("ray.",)


def _check_same_search(cfg: Config, saved: Path) -> None:
    old = _flat(yaml.safe_load(saved.read_text()))
    new = _flat(to_dict(cfg))
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and not k.startswith(_RESUMABLE))
    if changed:
        raise ConfigError(f"--resume: the config differs from the search saved in {saved} at "
                          f"{changed}; resume with that config, or delete {saved.parent} to "
                          f"start a new search")


def run_search(cfg: Config, out_dir: str | Path, *, points: list[dict] | None = None,
               resume: bool = False, callbacks: tuple = ()) -> dict:
    """Run (or resume) the search of `cfg.tune` into `out_dir`; a summary of its results.

    `points`: run exactly these configurations (e.g. to compare schedulers on the same list).
    """
    from ray.tune import FailureConfig, RunConfig, TuneConfig, Tuner

    tc = cfg.tune
    out = Path(out_dir).resolve()
    exp = out / "ray" / EXPERIMENT
    restore = Tuner.can_restore(exp)
    if restore and not resume:
        raise ConfigError(f"{exp} holds a search already: `ecmf tune CONFIG --resume` goes on "
                          f"with it; delete {out} to start a new one")
    if restore:
        _check_same_search(cfg, out / "config.yaml")
    elif resume:
        log.warning("nothing to resume in %s: starting a new search", exp)
    params = parse_space(tc.space)
    if points is None and tc.search == "random":
        points = search_points(tc, cfg.train)
    runner = resolve_runner(cfg)
    n = len(points) if points is not None else tc.num_samples
    concurrency = plan_concurrency(cfg, runner, n)
    trainable = _trainable(cfg, runner, out, params)
    if restore:
        log.info("resuming the search in %s", exp)
        tuner = Tuner.restore(str(exp), trainable=trainable, resume_unfinished=True,
                              restart_errored=True)
    else:
        save_config(cfg, out)
        search_alg, num_samples = _search_alg(cfg, params, points, concurrency)
        tuner = Tuner(
            trainable,
            param_space=to_tune(params, with_grid=points is None),
            tune_config=TuneConfig(metric=METRIC, mode=MODE, search_alg=search_alg,
                                   scheduler=_scheduler(cfg, params), num_samples=num_samples),
            run_config=RunConfig(
                name=EXPERIMENT, storage_path=str(out / "ray"), verbose=1,
                callbacks=[Watchdog(tc.no_progress_timeout_s, tc.start_timeout_s), *callbacks],
                failure_config=FailureConfig(max_failures=tc.max_failures)))
    log.info("search of %d trials, %d in flight (%s runner, %s scheduler) into %s", n,
             concurrency, runner, tc.scheduler, out)
    start = time.time()
    tuner.fit()
    return write_outputs(cfg, out, list(params), seconds=time.time() - start)


def write_outputs(cfg: Config, out: Path, keys: list[str], seconds: float = 0.0) -> dict:
    """trials.csv, val_waf.png and best.yaml from the experiment in `out`; a summary."""

    table, histories, configs = report.load_trials(out / "ray" / EXPERIMENT, keys,
                                                   cfg.train.epochs)
    table.to_csv(out / "trials.csv", index=False)
    summary = {"trials": len(table), **{s.replace(" ", "_"): int((table["status"] == s).sum())
                                        for s in ("completed", "stopped early", "error",
                                                  "unfinished")},
               "seconds": round(seconds, 2), "trials_csv": str(out / "trials.csv")}
    if histories:
        report.plot_val_waf(table, histories, out / "val_waf.png")
        summary["plot"] = str(out / "val_waf.png")
    scored = table[table["best_val_waf"].notna()]
    if len(scored):
        row = scored.loc[scored["best_val_waf"].idxmax()]
        report.write_best_yaml(cfg, row, configs[row["trial_id"]], out / "best.yaml",
                               cfg.tune.cv_folds)
        best = trial_config(cfg.train, configs[row["trial_id"]])
        summary.update(best_val_waf=round(float(row["best_val_waf"]), 4),
                       best={k: getattr(best, k) for k in keys},
                       best_yaml=str(out / "best.yaml"))
    write_json(out / "summary.json", summary)
    if summary["error"]:
        log.warning("%d trial(s) failed: see the error column of %s", summary["error"],
                    out / "trials.csv")
    if summary["unfinished"]:
        raise SearchError(f"the search stopped with {summary['unfinished']} trial(s) unfinished "
                          f"(interrupted?): `ecmf tune CONFIG --resume` goes on with it")
    if not len(scored):
        errors = [e for e in table.get("error", []) if e]
        raise SearchError(f"no trial reported a validation WAF; first error: "
                          f"{errors[0] if errors else 'none recorded'} (see {out / 'trials.csv'})")
    return summary


def tune_stage(cfg: Config, resume: bool = False) -> dict:
    """`ecmf tune`: the search of `cfg.tune` into `<workdir>/tune`."""
    return run_search(cfg, Workdir.of(cfg).root / "tune", resume=resume)

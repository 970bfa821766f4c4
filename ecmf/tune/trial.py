"""One Tune trial: `ecmf train`'s fold stepper (`fold_epochs`) over k folds in lockstep, reporting
per epoch.

ASHA compares trials epoch by epoch, so each report is the mean validation WAF over all folds at
that epoch, and a trial stopped early has still been judged on every fold. In the trial's own
process the folds take turns (one epoch each, in a fixed order, so results are reproducible);
as fold tasks they train at once, each in its own process, and a report waits for every fold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.config import TrainConfig
from ecmf.features.store import store_dataset, store_dims
from ecmf.runtime import devices
from ecmf.runtime.devices import device_for
from ecmf.train.ddp import prepare_on, training_device
from ecmf.train.fit import all_rows_data_config, attach_labels, label_lookup, torch_config
from ecmf.train.fold_tasks import task_setup
from ecmf.train.loop import _Dist, arrays_from_batches, fold_epochs
from ecmf.train.rows import table_arrays
from ecmf.tune.space import trial_config

METRIC, MODE = "val_waf", "max"


def _epoch_record(epoch: int, entries: list[dict]) -> dict:
    """A trial's report of one epoch from its folds' history entries: each fold's validation
    WAF, and val_waf, val_acc and train_loss averaged over the folds."""
    return {"epoch": epoch, "fold_val_waf": [e["val_waf"] for e in entries],
            **{k: float(np.mean([e[k] for e in entries]))
               for k in ("val_waf", "val_acc", "train_loss")}}


def lockstep_folds(cfg: TrainConfig, data: dict, features: list[str], dims: dict[str, int],
                   folds: int, prepare: Callable = lambda m: m, device="cpu",
                   num_classes: int = len(schema.LABELS)) -> Iterator[dict]:
    """Per epoch: val_waf, val_acc and train_loss averaged over `folds` folds, each fold's
    stepper (`fold_epochs`) taking one epoch in turn, always in fold order."""
    runs = [fold_epochs(cfg, data, features, dims, k, prepare=prepare, device=device,
                        num_classes=num_classes) for k in range(folds)]
    try:
        for epoch in range(cfg.epochs):
            yield _epoch_record(epoch, [next(r) for r in runs])
    finally:  # a stopped trial frees its folds' models now
        for r in runs:
            r.close()


def trial_data(store: str | Path, table: pd.DataFrame, features: list[str]) -> dict:
    """The arrays `train_one_fold` takes, as `fit` reads them (`ecmf.train.rows.table_arrays`)."""

    return table_arrays(store, table, features)


def _features(cfg: TrainConfig, dims: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    features = list(cfg.features) or list(dims)
    return features, {f: dims[f] for f in features}


def _report_epochs(records, report: Callable[[dict], None], extra: dict | None = None) -> None:
    """Each epoch's record with the best validation WAF so far (and `extra`) to `report`."""
    best = -1.0
    try:
        for rec in records:
            best = max(best, rec["val_waf"])
            report({**rec, "best_val_waf": best, **(extra or {})})
    finally:
        # Tune stops a trial by raising in `report`; end its folds' steppers now rather than
        # whenever the exception's traceback lets go of the generator.
        records.close()


def process_trial(config: dict, *, data: dict, base: dict, folds: int, threads: int = 1,
                  use_gpu: bool = False, num_classes: int = len(schema.LABELS)) -> None:
    """Tune trainable: train in the trial's own process on arrays shipped with the trial; on
    its GPU where it was given one and CUDA is there (torch is asked, not the resource)."""
    import torch
    from ray import tune

    device = device_for(use_gpu, "train.use_gpu")
    torch.set_num_threads(threads)
    cfg = trial_config(TrainConfig(**base), config)
    dims = {f: int(data[schema.feature_column(f)].shape[1])
            for f in schema.feature_names(data)}
    features, dims = _features(cfg, dims)
    _report_epochs(lockstep_folds(cfg, data, features, dims, folds, device=device,
                                  num_classes=num_classes), tune.report,
                   {"train_rows": len(data["y"])})


def fold_stepper_task(config: dict, fold: int) -> Iterator[dict]:
    """A Ray generator task: one fold of a trial, alone on the table the driver put in the
    object store, yielding each epoch's history entry as it ends (`fold_epochs`)."""

    cfg, device, data = task_setup(config)
    epochs = fold_epochs(cfg, data, config["features"], config["dims"], fold,
                         prepare=lambda m: m.to(device), device=device, distributed=False,
                         num_classes=config["num_classes"])
    for record in epochs:
        yield devices.to_host(record)  # host memory only crosses back to the trial


def fold_task_epochs(cfg: TrainConfig, table: dict, features: list[str], dims: dict[str, int],
                     folds: int, num_classes: int) -> Iterator[dict]:
    """`lockstep_folds`' records from `folds` fold tasks that train at once (as many as the
    trial's placement group holds, `train.num_workers` worker bundles): epoch e's record once
    every fold has ended epoch e. Closing it (a trial that Tune stops) cancels the tasks."""
    import ray

    task = ray.remote(fold_stepper_task).options(
        name="tune_fold", num_cpus=cfg.cpus_per_worker, num_gpus=1 if cfg.use_gpu else 0,
        max_retries=0)
    config = {"train": asdict(cfg), "table": table["ref"], "features": features, "dims": dims,
              "num_classes": num_classes}
    runs = [task.remote(config, k) for k in range(folds)]
    try:
        for epoch in range(cfg.epochs):
            yield _epoch_record(epoch, [ray.get(next(r)) for r in runs])
    finally:
        for r in runs:
            ray.cancel(r, force=True)


def folds_trial(config: dict, *, table: dict, dims: dict[str, int], base: dict, folds: int,
                num_classes: int = len(schema.LABELS)) -> None:
    """Tune trainable: the trial's folds as Ray tasks at once, `ecmf train`'s "folds" path
    (`table`: {"ref": the arrays in the object store}, shared by every trial)."""
    from ray import tune

    cfg = trial_config(TrainConfig(**base), config)
    features, dims = _features(cfg, dims)
    _report_epochs(fold_task_epochs(cfg, table, features, dims, folds, num_classes),
                   tune.report, {"train_rows": int(table["rows"])})


def ray_train_trial(config: dict, *, table: pd.DataFrame, store: str, base: dict, folds: int,
                    storage: str, no_progress_timeout_s: float,
                    num_classes: int = len(schema.LABELS)) -> None:
    """Tune trainable: a TorchTrainer of `train.num_workers` workers over the feature store.

    Workers report each epoch to Ray Train, which `TuneReportCallback` hands on to Tune.
    """
    import ray.data
    from ray import tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    # Set on the context the dataset captures, so a stalled read fails on any cluster.
    ray.data.DataContext.get_current().execution_no_progress_timeout_s = no_progress_timeout_s
    cfg = trial_config(TrainConfig(**base), config)
    features, dims = _features(cfg, store_dims(store))
    lookup = label_lookup(table)
    ds = store_dataset(store, features, ids=list(lookup)).map_batches(
        attach_labels, fn_kwargs={"lookup": lookup}, batch_format="numpy")
    trainer = TorchTrainer(
        train_loop_per_worker=tune_loop_per_worker,
        train_loop_config={"train": asdict(cfg), "features": features, "dims": dims,
                           "folds": folds, "num_classes": num_classes},
        torch_config=torch_config(cfg),
        scaling_config=ScalingConfig(num_workers=max(1, cfg.num_workers), use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        # Tune retries the trial (tune.max_failures); a retry inside would start it over anyway.
        run_config=RunConfig(name=f"trial-{tune.get_context().get_trial_id()}",
                             storage_path=storage, callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=0)),
        datasets={"train": ds},
        dataset_config=all_rows_data_config(),  # as `fit`: every row, shards uneven
    )
    trainer.fit()


def tune_loop_per_worker(config: dict) -> None:
    """Ray Train entry point of a trial: lockstep folds over this worker's shard."""
    import ray.train
    import ray.train.torch
    import torch

    cfg = TrainConfig(**config["train"])
    features, dims = config["features"], config["dims"]
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    shard = ray.train.get_dataset_shard("train")
    data = arrays_from_batches(shard.iter_batches(batch_size=4096, batch_format="numpy"),
                               features, dims)
    device = training_device()
    rows = sum(_Dist(device).gather(len(data["y"])))  # every worker's shard: the whole table
    records = lockstep_folds(cfg, data, features, dims, config["folds"],
                             prepare=prepare_on(device), device=device,
                             num_classes=config["num_classes"])
    # Every worker reports (a barrier in Ray Train); the metrics are all-reduced, so equal.
    _report_epochs(records, ray.train.report, {"train_rows": rows})

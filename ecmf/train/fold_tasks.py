"""Fold-parallel training (`train.strategy: folds`): one Ray task per fold, each training its
fold alone on the whole table, as many at once as the cluster's resources allow.

Why tasks and not a Ray Train worker group: the folds share no gradients, so a worker group
buys nothing but its start-up, which is a controller actor and a fresh process per worker each
fit (about 20 s on 2 cores, before any of our code runs; docs/benchmarks.md). Tasks run in
Ray's pooled worker processes, which a driver's later fits (pseudo-label rounds, the demo's
rows) reuse warm.

What Ray Train gave and this keeps:
- a checkpoint per fold: each finished fold is saved under `<storage>/<run name>/` as it comes
  back, so `ecmf train --resume` trains only the folds missing there;
- fault tolerance: a fold whose task fails (its worker lost, or it raised) is trained again, up
  to `train.max_failures` times in all; the folds already back are kept;
- the progress records of `ecmf.runtime.progress` (the tasks send each epoch to the driver's queue).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from pathlib import Path

from ecmf.config import TrainConfig
from ecmf.runtime import devices
from ecmf.runtime.devices import device_for
from ecmf.train.loop import (
    MODEL_FILE,
    _injected_fault,
    _progress_sender,
    fold_record,
    read_record,
    task_rows,
    train_one_fold,
)

log = logging.getLogger(__name__)


class RunStorage:
    """The fold files of one run under `<storage>/<name>/`: a local directory, or any URI
    pyarrow can open (s3://, gs://), written by the driver."""

    def __init__(self, storage: str, name: str):
        import pyarrow.fs as pafs

        if "://" in storage:
            self.fs, root = pafs.FileSystem.from_uri(storage)
        else:
            self.fs, root = pafs.LocalFileSystem(), str(Path(storage).resolve())
        self.dir = f"{root.rstrip('/')}/{name}"
        self.fs.create_dir(self.dir, recursive=True)

    def path(self, fold: int) -> str:
        return f"{self.dir}/{MODEL_FILE.format(fold)}"

    def saved(self, folds: int) -> list[int]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info([self.path(k) for k in range(folds)])
        return [k for k, i in enumerate(infos) if i.type == pafs.FileType.File]

    def write(self, fold: int, saved: dict) -> None:
        """Written to a temporary name, then moved: a fold file that exists is whole."""
        import torch

        buf = io.BytesIO()
        torch.save(saved, buf)
        tmp = f"{self.path(fold)}.tmp-{os.getpid()}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(buf.getvalue())
        self.fs.move(tmp, self.path(fold))

    def read(self, fold: int) -> dict:
        with self.fs.open_input_stream(self.path(fold)) as f:
            return read_record(io.BytesIO(f.read()), self.path(fold))

    def copy_to(self, folds: int, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for k in range(folds):
            with self.fs.open_input_stream(self.path(k)) as f:
                (directory / MODEL_FILE.format(k)).write_bytes(f.read())


def task_device(use_gpu: bool):
    """The GPU Ray gave this task (CUDA_VISIBLE_DEVICES names it as device 0); one asked for
    and not there fails naming `train.use_gpu` (`ecmf.runtime.devices.device_for`)."""
    return device_for(use_gpu, "train.use_gpu")


def task_setup(config: dict) -> tuple[TrainConfig, object, dict]:
    """A fold task's train config, device and rows (`task_rows`), its torch threads set to
    `train.cpus_per_worker`: what `ecmf train`'s fold tasks and Tune's share."""
    import torch

    cfg = TrainConfig(**config["train"])
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    return cfg, task_device(cfg.use_gpu), task_rows(config, config["features"])


def train_fold_task(config: dict, fold: int, finished: int) -> dict:
    """One fold, alone, in a Ray task: its rows (the table the driver put in the object store,
    or read from the store here when it was too big to put), `train_one_fold`, and the saved
    form of the result. `finished`: folds done when it was submitted (the fault-test hook)."""

    began = time.time()
    cfg, device, data = task_setup(config)
    features, dims = config["features"], config["dims"]
    _injected_fault(finished, 0, settle_s=0.0)
    send = _progress_sender(config, True)

    result = train_one_fold(cfg, data, features, dims, fold,
                            prepare=lambda m: m.to(device), device=device,
                            on_epoch=(lambda h: send({"kind": "epoch", **h})) if send else None,
                            distributed=False, num_classes=config["num_classes"])
    if send:
        send({"kind": "fold", "fold": fold, "best_epoch": result["best_epoch"],
              "val_waf": result["val_waf"], "val_acc": result["val_acc"]})
    saved = fold_record(result, cfg, features, dims)
    saved["rows"] = len(data["y"])
    saved["task_began"] = began  # unix time: with trained_at, where a fold's time went
    saved["task_seconds"] = time.time() - began
    return devices.to_host(saved)  # the driver may have no CUDA: host memory only crosses back


def run_fold_tasks(tc: TrainConfig, loop_config: dict, storage: str, name: str,
                   resume: bool, models: Path) -> dict:
    """Train the folds not saved under `<storage>/<name>/` (all of them unless `resume`) as
    Ray tasks, `tc.num_workers` at once (0: as many as the cluster's resources allow); the
    fold models then go to `models`.

    Returns a summary: resumed_folds (kept from the interrupted run), retried_folds (trained
    again after a failure), fold_rows (the rows each fold's task held).
    """
    import ray
    from ray.exceptions import RayError

    store = RunStorage(storage, name)
    resumed = store.saved(tc.folds) if resume else []
    todo = [k for k in range(tc.folds) if k not in resumed]
    queue = loop_config.get("progress")
    if queue is not None:
        queue.put({"kind": "start", "folds": todo, "resumed": resumed})
    task = ray.remote(train_fold_task).options(
        name="train_fold", num_cpus=tc.cpus_per_worker, num_gpus=1 if tc.use_gpu else 0,
        max_retries=0, runtime_env=fault_env())
    at_once = tc.num_workers or len(todo)
    rows: dict[int, int] = {}
    retried: list[int] = []
    failures = 0
    pending: dict = {}

    def submit(k: int) -> None:
        pending[task.remote(loop_config, k, len(resumed) + len(rows))] = k

    waiting = list(todo)
    while waiting and len(pending) < at_once:
        submit(waiting.pop(0))
    try:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(ref)
            try:
                saved = ray.get(ref)
            except RayError as e:
                failures += 1
                if failures > tc.max_failures:
                    raise
                log.warning("%s: fold %d/%d failed (%s); training it again (failure %d of "
                            "train.max_failures %d)", name, k + 1, tc.folds,
                            str(e).strip().splitlines()[-1][:300], failures, tc.max_failures)
                retried.append(k)
                submit(k)
                continue
            rows[k] = saved.pop("rows")
            store.write(k, saved)
            if waiting:
                submit(waiting.pop(0))
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    if models.exists():
        shutil.rmtree(models)
    store.copy_to(tc.folds, models)
    return {"resumed_folds": resumed, "retried_folds": retried,
            "fold_rows": [rows[k] for k in sorted(rows)], "strategy": "folds"}


def fault_env() -> dict | None:
    """The driver's ECMF_FAULT_* variables (the loop's failure-injection test hook), handed to
    the workers, whose processes do not inherit the driver's environment."""
    env = {k: v for k, v in os.environ.items() if k.startswith("ECMF_FAULT_")}
    return {"env_vars": env} if env else None


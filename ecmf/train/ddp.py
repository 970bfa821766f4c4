"""The Ray Train side of `train.strategy: ddp`: the entry point every worker runs, its device,
its rows and its per-fold checkpoint reports. (The default, "folds", runs a Ray task per fold:
`ecmf.train.fold_tasks`.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ecmf.config import TrainConfig
from ecmf.runtime.devices import device_for
from ecmf.train.loop import (
    MODEL_FILE,
    _Dist,
    _injected_fault,
    _progress_sender,
    arrays_from_batches,
    load_fold,
    save_fold,
    task_rows,
    train_one_fold,
)


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point of `train.strategy: ddp`: every worker trains every fold on its
    shard, the gradients all-reduced, and reports after each fold (rank 0 saving it into the
    checkpoint). A restarted worker group (FailureConfig) or a resumed run (`ecmf train
    --resume`, the same run name under the same storage) gets the last checkpoint and trains
    only the missing folds. (The default strategy, "folds", runs a Ray task per fold:
    `ecmf.train.fold_tasks`.)
    With a progress queue in `config["progress"]`, rank 0 sends it records (dicts with a
    "kind"): "start" (the folds to train, those kept from a checkpoint), "epoch" (each epoch's
    `train_one_fold` history entry) and "fold" (a fold's best epoch and validation WAF). They
    travel outside `ray.train.report`, which would hold the workers up to a controller poll
    (about 2 s) per report.
    """
    import ray.train
    import ray.train.torch
    import torch

    cfg = TrainConfig(**config["train"])
    features, dims = config["features"], config["dims"]
    device = training_device()
    data = worker_data(config, features, dims)
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    done: dict[int, dict] = {}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # a restarted run: keep the folds that already finished
        with ckpt.as_directory() as d:
            for p in sorted(Path(d).glob("fold_*.pt")):
                saved = load_fold(p)
                done[saved["fold"]] = saved
    todo = [k for k in range(cfg.folds) if k not in done]
    # DDP shards may be uneven (every row is kept); the metrics show how the rows were dealt.
    rows = _Dist(device).gather(len(data["y"]))
    base = {"resumed_folds": sorted(done), "shard_rows": rows, "strategy": cfg.strategy}
    summary = {"fold": -1, **base}
    send = _progress_sender(config, rank == 0)
    on_epoch = (lambda h: send({"kind": "epoch", **h})) if send else None
    if send:
        send({"kind": "start", "folds": todo, "resumed": sorted(done)})
    for fold in todo:
        _injected_fault(len(done), rank)
        result = train_one_fold(cfg, data, features, dims, fold, prepare=prepare_on(device),
                                device=device, on_epoch=on_epoch,
                                num_classes=config["num_classes"])
        done[fold] = result
        summary = {"fold": fold, "val_waf": result["val_waf"],
                   "best_epoch": result["best_epoch"], **base}
        if send:
            send({"kind": "fold", "fold": fold, "best_epoch": result["best_epoch"],
                  "val_waf": result["val_waf"], "val_acc": result["val_acc"]})
        _report_folds(done, summary, cfg, features, dims, saves=rank == 0)
    if not todo:  # every fold came from the checkpoint: hand it on as this run's result
        _report_folds(done, summary, cfg, features, dims, saves=rank == 0)
    return summary


def _report_folds(done: dict[int, dict], summary: dict, cfg: TrainConfig, features: list[str],
                  dims: dict[str, int], saves: bool) -> None:
    """Every worker reports (a barrier in Ray Train); the one that `saves` (rank 0: the ranks'
    models are the same) puts the finished folds into the checkpoint."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        owned = list(done.values()) if saves else []
        for r in owned:
            if "state" in r:
                save_fold(r, cfg, features, dims, Path(tmp))
            else:  # loaded from a checkpoint: already in saved form
                torch.save(r, Path(tmp) / MODEL_FILE.format(r["fold"]))
        ckpt = ray.train.Checkpoint.from_directory(tmp) if owned else None
        ray.train.report(summary, checkpoint=ckpt)


def training_device():
    """This worker's device: the GPU Ray gave it, or the CPU where it holds none.

    Ray Train names a CUDA device whenever the worker holds a GPU resource; on a node whose
    GPU resource has no CUDA behind it (an old driver, a CPU wheel) that device does not exist:
    `device_for` then fails naming `train.use_gpu` (the simulated cluster runs it on the CPU).
    """
    import ray.train.torch

    device = ray.train.torch.get_device()
    if isinstance(device, list):
        device = device[0]
    return device_for(True, "train.use_gpu") if device.type == "cuda" else device


def prepare_on(device):
    """Ray Train's `prepare_model` (DDP where there are several workers) on `device`."""
    import functools

    import ray.train.torch

    return functools.partial(ray.train.torch.prepare_model, move_to_device=device)


def worker_data(config: dict, features: list[str], dims: dict[str, int]) -> dict:
    """A DDP worker's rows as `train_one_fold` takes them, sorted by sample_id: every world-th
    row of the table handed over (`task_rows`), else the shard Ray Train streams to it."""
    import ray.train

    if config.get("table") is None and not config.get("read"):
        shard = ray.train.get_dataset_shard("train")
        return arrays_from_batches(shard.iter_batches(batch_size=4096, batch_format="numpy"),
                                   features, dims)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    return {k: v[rank::world] for k, v in task_rows(config, features).items()}

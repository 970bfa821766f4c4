"""The training loop: the fold stepper (`fold_epochs`, an epoch per step) and what a fold needs
around it. Each fold's epoch is chosen on an inner split of its training rows, never on the
fold it is scored on. Plain PyTorch on NumPy arrays, usable without Ray; under DDP its
collectives run through `_Dist`. Fold tasks (`ecmf.train.fold_tasks`), Ray Train's DDP workers
(`ecmf.train.ddp`) and Tune's trials (`ecmf.tune.trial`) drive it.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Generator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ecmf import schema
from ecmf.config import TrainConfig
from ecmf.errors import InputError
from ecmf.models.losses import balanced_from_counts, weighted_cross_entropy
from ecmf.runtime import devices
from ecmf.runtime.progress import send
from ecmf.train.metrics import confusion, weighted_f1_from_confusion
from ecmf.train.rows import table_arrays

MODEL_FILE = "fold_{}.pt"


def model_kwargs(cfg: TrainConfig, dims: dict[str, int],
                 num_classes: int = len(schema.LABELS)) -> dict:
    """The fusion model's constructor arguments for a training config."""
    return {"dims": dims, "num_classes": num_classes, "hidden": cfg.hidden, "heads": cfg.heads,
            "layers": cfg.layers, "dropout": cfg.dropout,
            "modality_dropout": cfg.modality_dropout}


def arrays_from_batches(batches, features: list[str],
                        dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Concatenate numpy batches of a shard, sorted by sample_id so that order is reproducible.

    An empty shard (a worker that got no rows) gives empty arrays of the right shapes when
    `dims` is given.
    """
    keys = [schema.SAMPLE_ID, "y", "weight", "fold", "train_fold"]
    keys += [c for f in features for c in (schema.feature_column(f), schema.mask_column(f))]
    parts: dict[str, list] = {k: [] for k in keys}
    for b in batches:
        n = len(b[schema.SAMPLE_ID])
        if n == 0:
            continue
        if "train_fold" not in b:  # arrays built without it: every row serves every fold
            b = {**b, "train_fold": np.full(n, -1, dtype=np.int64)}
        for k in keys:
            parts[k].append(np.asarray(b[k]))
    if not parts[schema.SAMPLE_ID]:
        empty = {schema.SAMPLE_ID: np.zeros(0, dtype=object), "y": np.zeros(0, np.int64),
                 "weight": np.zeros(0, np.float32), "fold": np.zeros(0, np.int64),
                 "train_fold": np.zeros(0, np.int64)}
        for f in features:
            empty[schema.feature_column(f)] = np.zeros((0, (dims or {}).get(f, 0)), np.float32)
            empty[schema.mask_column(f)] = np.zeros(0, dtype=bool)
        return empty
    data = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(data[schema.SAMPLE_ID].astype(str), kind="stable")
    return {k: v[order] for k, v in data.items()}


class _Dist:
    """All-reduce helpers that are no-ops in a single process.

    The tensors of a collective lie on `device`, the worker's training device: NCCL takes CUDA
    tensors only, gloo takes both; results come back to the host.
    """

    def __init__(self, device="cpu", distributed: bool = True):
        import torch
        import torch.distributed as dist

        self.device = torch.device(device)
        # Off for a worker that trains its folds alone ("folds" strategy), in a process group.
        self.on = distributed and dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def sum(self, x: np.ndarray) -> np.ndarray:
        if not self.on:
            return x
        import torch
        import torch.distributed as dist

        t = torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()

    def max(self, n: int) -> int:
        if not self.on:
            return n
        import torch
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, n: int) -> list[int]:
        """`n` of every rank, in rank order."""
        if not self.on:
            return [n]
        import torch.distributed as dist

        out: list = [None] * self.world
        # Torch picks the device: CPU under gloo or cpu:gloo,cuda:nccl, the current CUDA device
        # (Ray Train sets it per worker) under plain NCCL.
        dist.all_gather_object(out, n)
        return [int(v) for v in out]

    def total(self, w):
        """The denominator of a distributed weighted mean: sum of `w` over ranks / world size.

        A tensor on `device` (it scales a loss that is back-propagated there)."""
        if not self.on:
            return w.sum()
        import torch.distributed as dist

        t = w.sum().detach().reshape(1).to(self.device, copy=True)
        dist.all_reduce(t)
        return t[0] / self.world


def _tensors(data: dict, features: list[str], idx: np.ndarray, device):
    import torch

    feats = {f: torch.as_tensor(data[schema.feature_column(f)][idx], device=device)
             for f in features}
    masks = {f: torch.as_tensor(data[schema.mask_column(f)][idx], device=device)
             for f in features}
    return feats, masks


def evaluate_confusion(model, data, features, idx, device, batch_size=512,
                       num_classes: int = len(schema.LABELS)) -> np.ndarray:
    """Confusion counts [C, C] of `model` on rows `idx` (rows = true class)."""
    import torch

    c = num_classes
    if len(idx) == 0:
        return np.zeros((c, c))
    model = getattr(model, "module", model)  # no DDP wrapper: ranks evaluate different counts
    model.eval()
    preds = []
    with torch.inference_mode():
        for s in range(0, len(idx), batch_size):
            f, m = _tensors(data, features, idx[s:s + batch_size], device)
            preds.append(model(f, m).argmax(-1).cpu().numpy())
    return confusion(data["y"][idx], np.concatenate(preds), c).astype(np.float64)


def _placeholder_batch(features: list[str], dims: dict[str, int], device):
    """One zero row for a rank with no training rows: it runs the step with weight 0, so that
    DDP's gradient all-reduce has every rank's part."""
    import torch

    feats = {f: torch.zeros(1, dims[f], device=device) for f in features}
    masks = {f: torch.ones(1, dtype=torch.bool, device=device) for f in features}
    y = torch.zeros(1, dtype=torch.long, device=device)
    return feats, masks, y, torch.zeros(1, device=device)


def train_one_fold(cfg: TrainConfig, data: dict, features: list[str], dims: dict[str, int],
                   fold: int, prepare: Callable = lambda m: m, device="cpu",
                   on_epoch: Callable[[dict], None] | None = None,
                   distributed: bool = True, num_classes: int = len(schema.LABELS)) -> dict:
    """A whole fold (`fold_epochs` run to its end); `on_epoch`, if given, is called with each
    epoch's history entry (progress lines)."""
    epochs = fold_epochs(cfg, data, features, dims, fold, prepare=prepare, device=device,
                         distributed=distributed, num_classes=num_classes)
    while True:
        try:
            entry = next(epochs)
        except StopIteration as done:
            return done.value
        if on_epoch is not None:
            on_epoch(entry)


def fold_epochs(cfg: TrainConfig, data: dict, features: list[str], dims: dict[str, int],
                fold: int, prepare: Callable = lambda m: m, device="cpu",
                distributed: bool = True,
                num_classes: int = len(schema.LABELS)) -> Generator[dict, None, dict]:
    """The fold stepper: train on rows whose fold != `fold`, validate on rows whose fold ==
    `fold`, one epoch per step. Yields each epoch's history entry; returns (StopIteration's
    value) the fold's result. `ecmf train` runs it to the end (`train_one_fold`); a Tune trial
    steps its folds in turn, or each in a fold task (`ecmf.tune.trial`).

    The epoch kept is chosen without the validation rows (`cfg.select_epoch`): by WAF on an
    inner split of the labeled training rows (`inner_split`), which are then not trained on,
    or the last epoch. The validation WAF returned is the kept epoch's, so it is an honest
    out-of-fold estimate; every epoch's is in the history (progress, Tune's schedulers). What
    is evaluated, chosen and kept is a running average of the weights over about
    `cfg.average_epochs` epochs of steps (`average_decay`), or the weights as trained when it
    is 0.

    Rows with a `train_fold` (`data["train_fold"]`, optional) of another fold than `fold` are
    left out of both: pseudo-labels made by another fold's model of an earlier run, another
    fold model's fold-blind refined labels (`ecmf.semi.refine`).

    Under DDP every rank takes the same number of steps (the most any rank needs); a rank whose
    shard is shorter or empty fills its last steps with zero-weight rows, and the loss is the
    global weighted mean, so those rows change nothing. `distributed=False` trains the fold in
    this process alone, whatever process group it is in (the "folds" strategy).
    """
    import torch

    from ecmf.models.fusion import MODELS

    dist = _Dist(device, distributed)
    torch.manual_seed(cfg.seed * 1000 + fold)  # identical initial weights on every rank
    model = prepare(MODELS.get(cfg.model)(**model_kwargs(cfg, dims, num_classes)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_rows = np.asarray(data["fold"]) != fold
    val_rows = np.asarray(data["fold"]) == fold
    if "train_fold" in data:
        mine = np.asarray(data["train_fold"])
        mine = (mine < 0) | (mine == fold)
        train_rows &= mine
        val_rows &= mine
    inner_idx = np.zeros(0, dtype=np.int64)
    if cfg.select_epoch == "inner":
        inner_idx = inner_split(data, train_rows, cfg.inner_fraction, cfg.seed, fold)
        train_rows = train_rows.copy()
        train_rows[inner_idx] = False
    train_idx = np.flatnonzero(train_rows)
    val_idx = np.flatnonzero(val_rows)
    # No inner rows on any rank (a tiny table): the last epoch is kept.
    use_inner = dist.sum(np.array([len(inner_idx)]))[0] > 0
    rng = np.random.default_rng([cfg.seed, fold, dist.rank])
    class_weight = None
    if cfg.class_weights == "balanced":  # from the fold's training rows over every rank
        counts = dist.sum(np.bincount(np.asarray(data["y"])[train_idx].astype(np.int64),
                                      minlength=num_classes))
        class_weight = torch.tensor(balanced_from_counts(counts), device=device)
    steps = dist.max(int(np.ceil(len(train_idx) / cfg.batch_size)))
    schedule = lr_schedule(opt, cfg.lr_schedule, steps * cfg.epochs)
    # Copies: arrays from Ray Data batches are read-only, which torch warns about.
    y_all = torch.tensor(np.array(data["y"], dtype=np.int64))
    w_all = torch.tensor(np.array(data["weight"], dtype=np.float32))
    # The weights evaluated, chosen and kept: the trained ones, or their running average.
    trained = getattr(model, "module", model)  # without a DDP wrapper
    kept, average = trained, None
    if cfg.average_epochs > 0:
        kept = average = copy.deepcopy(trained)
    step = 0
    best = {"score": -1.0, "val_waf": -1.0, "epoch": -1, "state": None}
    history, epoch_seconds = [], []
    for epoch in range(cfg.epochs):
        began = time.perf_counter()
        model.train()
        perm = rng.permutation(train_idx) if len(train_idx) else train_idx
        total, weight = 0.0, 0.0
        for s in range(steps):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            if len(idx):
                f, m = _tensors(data, features, idx, device)
                y, w = y_all[idx].to(device), w_all[idx].to(device)
            elif len(perm):  # this rank's rows ran out: a real row, weighing nothing
                f, m = _tensors(data, features, perm[:1], device)
                y, w = y_all[perm[:1]].to(device), torch.zeros(1, device=device)
            else:
                f, m, y, w = _placeholder_batch(features, dims, device)
            if class_weight is not None:
                w = w * class_weight[y]
            denom = dist.total(w)
            loss = weighted_cross_entropy(model(f, m), y, w, cfg.label_smoothing,
                                          total=denom)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
            if average is not None:
                _average_into(average, trained, average_decay(step, cfg.average_epochs * steps))
            step += 1
            # The weighted loss sum and weight of this rank's rows; all-reduced per epoch below.
            total += loss.item() * float(denom.clamp(min=1e-8))
            weight += float(w.sum())
        cm = dist.sum(evaluate_confusion(kept, data, features, val_idx, device,
                                         num_classes=num_classes))
        waf = weighted_f1_from_confusion(cm)
        acc = float(np.trace(cm) / max(cm.sum(), 1))
        loss_sum = dist.sum(np.array([total, weight]))
        entry = {"fold": fold, "epoch": epoch, "val_waf": waf, "val_acc": acc,
                 "train_loss": float(loss_sum[0] / max(loss_sum[1], 1e-8))}
        if use_inner:
            entry["inner_waf"] = weighted_f1_from_confusion(dist.sum(evaluate_confusion(
                kept, data, features, inner_idx, device, num_classes=num_classes)))
        history.append(entry)
        # Kept beside the history, which stays a function of the seed alone.
        epoch_seconds.append(time.perf_counter() - began)
        # The choice sees the inner rows (or nothing), never the validation fold. A tie goes to
        # the later epoch: a small inner split's WAF moves in steps, and along a flat stretch
        # the later model has trained longer with no sign of over-fitting.
        chosen = entry["inner_waf"] >= best["score"] if use_inner else epoch == cfg.epochs - 1
        if chosen:
            best = {"score": entry.get("inner_waf", 0.0), "val_waf": waf, "val_acc": acc,
                    "epoch": epoch, "state": copy.deepcopy(kept.state_dict())}
        yield history[-1]
    return {"fold": fold, "best_epoch": best["epoch"], "val_waf": best["val_waf"],
            "val_acc": best.get("val_acc", 0.0), "state": best["state"], "history": history,
            "epoch_seconds": epoch_seconds, "trained_at": time.time(),
            "num_classes": num_classes}


def average_decay(step: int, horizon_steps: float) -> float:
    """The weight of the running average at optimiser step `step` (0-based): a plain mean of
    the weights after every step so far until `horizon_steps` are in it, then an exponential
    moving average over about that many steps."""
    return min(1.0 - 1.0 / max(1.0, horizon_steps), step / (step + 1))


def _average_into(average, model, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, parameters and buffers alike."""
    import torch

    with torch.no_grad():
        for a, p in zip(average.parameters(), model.parameters()):
            a.lerp_(p.detach(), 1.0 - decay)
        for a, b in zip(average.buffers(), model.buffers()):
            a.copy_(b)


def lr_schedule(opt, name: str, total_steps: int):
    """The learning-rate schedule stepped after each optimiser step: None for "constant";
    "cosine" decays the rate from `train.lr` to 0 along a half cosine over `total_steps`."""
    if name == "constant":
        return None
    import math

    import torch

    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))


def inner_split(data: dict, train_rows: np.ndarray, fraction: float, seed: int,
                fold: int) -> np.ndarray:
    """Indices of the inner validation rows of a fold: `fraction` of each class among its
    labeled training rows (fold >= 0; pseudo-labels stay trained on), at least one per class
    with two or more rows. Chosen by a hash of (seed, fold, sample_id), so the split is the
    same on every rank, in every process, and for a clip in every run of one seed."""
    import zlib

    y = np.asarray(data["y"])
    ids = np.asarray(data[schema.SAMPLE_ID]).astype(str)
    labeled = train_rows & (np.asarray(data["fold"]) >= 0)
    picked = []
    for c in np.unique(y[labeled]):
        rows = np.flatnonzero(labeled & (y == c))
        if len(rows) < 2:
            continue
        rank = np.array([zlib.crc32(f"{seed}:{fold}:{s}".encode()) for s in ids[rows]])
        take = max(1, round(fraction * len(rows)))
        picked.append(rows[np.argsort(rank, kind="stable")[:take]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def fold_record(result: dict, cfg: TrainConfig, features: list[str],
                dims: dict[str, int]) -> dict:
    """What a fold file holds: the model (name, kwargs, weights) and how it was trained."""
    kwargs = model_kwargs(cfg, dims, result.get("num_classes", len(schema.LABELS)))
    return plain({"model": cfg.model, "kwargs": kwargs, "features": features,
                  "state_dict": result["state"], "fold": result["fold"],
                  "best_epoch": result["best_epoch"], "val_waf": result["val_waf"],
                  "history": result["history"], "trained_at": result.get("trained_at"),
                  "epoch_seconds": result.get("epoch_seconds", []),
                  "train_config": asdict(cfg)})


def plain(obj):
    """`obj` with NumPy scalars as Python numbers and tuples as lists, tensors as they are:
    what `torch.load(weights_only=True)` reads back."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_fold(result: dict, cfg: TrainConfig, features: list[str], dims: dict[str, int],
              directory: Path) -> Path:
    import torch

    path = Path(directory) / MODEL_FILE.format(result["fold"])
    torch.save(devices.to_host(fold_record(result, cfg, features, dims)), path)
    return path


def load_fold(path: Path) -> dict:
    """A fold file's record, read as data only: a file that holds anything but tensors and
    plain values (a pickled object, which could run code as it loads) is refused."""
    with open(path, "rb") as f:
        return read_record(f, path)


def read_record(stream, where) -> dict:
    """`torch.load` with `weights_only=True` (the loader that never runs code), on the CPU."""
    import pickle

    import torch

    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:300]
        raise InputError(f"{where}: refused: a fold file holds model weights and plain values "
                         f"only, and this one holds more ({first}). Train the run again, or "
                         f"use a run directory you trust") from None


def _injected_fault(finished: int, rank: int, settle_s: float = 5.0) -> None:
    """Test hook: with ECMF_FAULT_AFTER_FOLDS=n and ECMF_FAULT_MARKER=path, rank 0 fails once
    when n folds are finished (ECMF_FAULT_MODE "exit": the process dies, as a lost node would;
    "raise": the training function raises). The marker file records the time and stops it
    firing again after the restart."""
    after, marker = os.environ.get("ECMF_FAULT_AFTER_FOLDS"), os.environ.get("ECMF_FAULT_MARKER")
    if rank != 0 or not after or not marker or finished != int(after) or Path(marker).exists():
        return
    # Under Ray Train (DDP), a failure right after a report could beat the controller's poll of
    # that checkpoint (every 2 s, later on a loaded machine); a real failure mid-fold comes polls
    # later. A fold task's result is back before the next is submitted: no wait.
    time.sleep(settle_s)
    Path(marker).write_text(f"{time.time()}\n")
    if os.environ.get("ECMF_FAULT_MODE", "exit") == "exit":
        os._exit(1)
    raise RuntimeError(f"injected failure after {finished} fold(s) (ECMF_FAULT_AFTER_FOLDS)")


def _progress_sender(config: dict, sends: bool) -> Callable[[dict], None] | None:
    """Where this worker sends its progress records: the queue in `config["progress"]` (a
    `ecmf.runtime.progress.Relay`'s) if it `sends`, or nowhere. Under DDP every rank computes
    the same all-reduced metrics, so rank 0 alone sends; each fold task sends its own fold's."""
    queue = config.get("progress")
    if queue is None or not sends:
        return None

    return lambda record: send(queue, record)


def task_rows(config: dict, features: list[str]) -> dict:
    """A fold task's rows (`ecmf.train.fold_tasks`), the whole table: the one the driver put in
    the object store (`config["table"]`), else read from the store here (`config["read"]`)."""
    import ray

    if config.get("table") is not None:
        return ray.get(config["table"])

    read = config["read"]
    return table_arrays(read["store"], ray.get(read["rows"]), features)

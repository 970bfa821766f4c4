"""The training loop: k folds over one worker's data, best epoch of each fold by validation WAF.

`train_folds` is plain PyTorch on NumPy arrays (usable without Ray); `train_loop_per_worker`
feeds it a Ray Data shard and reports a checkpoint of the finished folds after each fold, so
a restarted worker resumes from the last finished fold.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from ecmf import schema
from ecmf.config import TrainConfig

MODEL_FILE = "fold_{}.pt"


def model_kwargs(cfg: TrainConfig, dims: dict[str, int]) -> dict:
    return dict(dims=dims, num_classes=len(schema.LABELS), hidden=cfg.hidden, heads=cfg.heads,
                layers=cfg.layers, dropout=cfg.dropout, modality_dropout=cfg.modality_dropout)


def arrays_from_batches(batches, features: list[str]) -> dict[str, np.ndarray]:
    """Concatenate numpy batches of a shard, sorted by sample_id so that order is reproducible."""
    keys = [schema.SAMPLE_ID, "y", "weight", "fold"]
    keys += [c for f in features for c in (schema.feature_column(f), schema.mask_column(f))]
    parts: dict[str, list] = {k: [] for k in keys}
    for b in batches:
        for k in keys:
            parts[k].append(np.asarray(b[k]))
    if not parts[schema.SAMPLE_ID]:
        return {k: np.zeros(0) for k in keys}
    data = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(data[schema.SAMPLE_ID].astype(str), kind="stable")
    return {k: v[order] for k, v in data.items()}


class _Dist:
    """All-reduce helpers that are no-ops in a single process."""

    def __init__(self):
        import torch.distributed as dist

        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0

    def sum(self, x: np.ndarray) -> np.ndarray:
        if not self.on:
            return x
        import torch
        import torch.distributed as dist

        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        dist.all_reduce(t)
        return t.numpy()

    def max(self, n: int) -> int:
        if not self.on:
            return n
        import torch
        import torch.distributed as dist

        t = torch.tensor([n])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())


def _tensors(data: dict, features: list[str], idx: np.ndarray, device):
    import torch

    feats = {f: torch.as_tensor(data[schema.feature_column(f)][idx], device=device)
             for f in features}
    masks = {f: torch.as_tensor(data[schema.mask_column(f)][idx], device=device)
             for f in features}
    return feats, masks


def evaluate_confusion(model, data, features, idx, device, batch_size=512) -> np.ndarray:
    """Confusion counts [C, C] of `model` on rows `idx` (rows = true class)."""
    import torch

    from ecmf.train.metrics import confusion

    c = len(schema.LABELS)
    if len(idx) == 0:
        return np.zeros((c, c))
    model.eval()
    preds = []
    with torch.inference_mode():
        for s in range(0, len(idx), batch_size):
            f, m = _tensors(data, features, idx[s:s + batch_size], device)
            preds.append(model(f, m).argmax(-1).cpu().numpy())
    return confusion(data["y"][idx], np.concatenate(preds), c).astype(np.float64)


def train_one_fold(cfg: TrainConfig, data: dict, features: list[str], dims: dict[str, int],
                   fold: int, prepare: Callable = lambda m: m, device="cpu",
                   on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train on rows whose fold != `fold`, validate on rows whose fold == `fold`.

    `on_epoch`, if given, is called with each epoch's history entry (a search reports it).
    """
    import torch
    import torch.nn.functional as F

    from ecmf.models.fusion import MODELS
    from ecmf.train.metrics import weighted_f1_from_confusion

    dist = _Dist()
    torch.manual_seed(cfg.seed * 1000 + fold)  # identical initial weights on every rank
    model = prepare(MODELS.get(cfg.model)(**model_kwargs(cfg, dims)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx = np.flatnonzero(data["fold"] != fold)
    val_idx = np.flatnonzero(data["fold"] == fold)
    rng = np.random.default_rng([cfg.seed, fold, dist.rank])
    # Every rank must take the same number of steps or DDP's all-reduce would wait forever.
    steps = dist.max(int(np.ceil(len(train_idx) / cfg.batch_size)))
    # Copies: arrays from Ray Data batches are read-only, which torch warns about.
    y_all = torch.tensor(np.array(data["y"], dtype=np.int64))
    w_all = torch.tensor(np.array(data["weight"], dtype=np.float32))
    best = {"val_waf": -1.0, "epoch": -1, "state": None}
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = rng.permutation(train_idx) if len(train_idx) else train_idx
        total, count = 0.0, 0
        for s in range(steps):
            if len(perm) == 0:
                break
            # Wrap around: ranks with fewer rows revisit some rather than idle.
            idx = perm[(s * cfg.batch_size + np.arange(min(cfg.batch_size, len(perm))))
                       % len(perm)]
            f, m = _tensors(data, features, idx, device)
            y, w = y_all[idx].to(device), w_all[idx].to(device)
            loss_each = F.cross_entropy(model(f, m), y, reduction="none",
                                        label_smoothing=cfg.label_smoothing)
            loss = (loss_each * w).sum() / w.sum().clamp(min=1e-8)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        cm = dist.sum(evaluate_confusion(model, data, features, val_idx, device))
        waf = weighted_f1_from_confusion(cm)
        acc = float(np.trace(cm) / max(cm.sum(), 1))
        loss_sum = dist.sum(np.array([total, count]))
        history.append({"fold": fold, "epoch": epoch, "val_waf": waf, "val_acc": acc,
                        "train_loss": float(loss_sum[0] / max(loss_sum[1], 1))})
        if waf > best["val_waf"]:
            inner = getattr(model, "module", model)
            best = {"val_waf": waf, "val_acc": acc, "epoch": epoch,
                    "state": copy.deepcopy(inner.state_dict())}
        if on_epoch is not None:
            on_epoch(history[-1])
    return {"fold": fold, "best_epoch": best["epoch"], "val_waf": best["val_waf"],
            "val_acc": best.get("val_acc", 0.0), "state": best["state"], "history": history}


def save_fold(result: dict, cfg: TrainConfig, features: list[str], dims: dict[str, int],
              directory: Path) -> Path:
    import torch

    path = Path(directory) / MODEL_FILE.format(result["fold"])
    torch.save({"model": cfg.model, "kwargs": model_kwargs(cfg, dims), "features": features,
                "state_dict": result["state"], "fold": result["fold"],
                "best_epoch": result["best_epoch"], "val_waf": result["val_waf"],
                "history": result["history"], "train_config": asdict(cfg)}, path)
    return path


def load_fold(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point: k folds over this worker's shard, a checkpoint after each fold."""
    import torch
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["train"])
    features, dims = config["features"], config["dims"]
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    data = arrays_from_batches(shard.iter_batches(batch_size=4096, batch_format="numpy"), features)
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    done: dict[int, dict] = {}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # a restarted run: keep the folds that already finished
        with ckpt.as_directory() as d:
            for p in sorted(Path(d).glob("fold_*.pt")):
                saved = load_fold(p)
                done[saved["fold"]] = saved
    summary = {}
    for fold in range(cfg.folds):
        if fold in done:
            continue
        result = train_one_fold(cfg, data, features, dims, fold,
                                prepare=ray.train.torch.prepare_model, device=device)
        done[fold] = result
        summary = {"fold": fold, "val_waf": result["val_waf"], "best_epoch": result["best_epoch"]}
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                for r in done.values():
                    if "state" in r:
                        save_fold(r, cfg, features, dims, Path(tmp))
                    else:  # loaded from a checkpoint: already in saved form
                        torch.save(r, Path(tmp) / MODEL_FILE.format(r["fold"]))
                ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(summary)
    return summary

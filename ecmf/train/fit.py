"""Fitting with Ray Train: a `TorchTrainer` over the feature store, fold models and OOF metrics out."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.config import Config, save_config
from ecmf.train.loop import train_loop_per_worker
from ecmf.workdir import Workdir, write_json

log = logging.getLogger(__name__)


def assign_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per sample, reproducible for a seed."""
    from sklearn.model_selection import StratifiedKFold

    if len(y) < folds:
        raise ValueError(f"{len(y)} labeled samples cannot make {folds} folds")
    counts = np.bincount(y, minlength=len(schema.LABELS))
    present = counts[counts > 0]
    # StratifiedKFold needs every class to reach the fold count; tiny corpora may not.
    if present.min() < folds:
        rng = np.random.default_rng(seed)
        return rng.permutation(np.arange(len(y)) % folds)
    out = np.empty(len(y), dtype=np.int64)
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(skf.split(np.zeros(len(y)), y)):
        out[val] = k
    return out


def training_table(manifest: pd.DataFrame, folds: int, seed: int,
                   pseudo: pd.DataFrame | None = None) -> pd.DataFrame:
    """sample_id, y, weight, fold: labeled clips in k folds; pseudo-labels (fold -1) train only."""
    lab = manifest[manifest[schema.SPLIT] == "train"].sort_values(schema.SAMPLE_ID)
    y = np.array([schema.label_index(v, "the manifest") for v in lab[schema.LABEL]])
    table = pd.DataFrame({schema.SAMPLE_ID: lab[schema.SAMPLE_ID].values, "y": y,
                          "weight": 1.0, "fold": assign_folds(y, folds, seed)})
    if pseudo is not None and len(pseudo):
        extra = pd.DataFrame({
            schema.SAMPLE_ID: pseudo[schema.SAMPLE_ID].values,
            "y": [schema.label_index(v, "pseudo-labels") for v in pseudo[schema.LABEL]],
            "weight": pseudo["weight"].astype(float).values, "fold": -1})
        table = pd.concat([table, extra], ignore_index=True)
    return table


def attach_labels(batch: dict[str, np.ndarray], lookup: dict[str, tuple]) -> dict:
    """Keep the rows of the training table and add y, weight and fold to them."""
    ids = batch[schema.SAMPLE_ID].astype(str)
    keep = np.array([i in lookup for i in ids], dtype=bool)
    out = {k: v[keep] for k, v in batch.items()}
    rows = [lookup[i] for i in ids[keep]]
    out["y"] = np.array([r[0] for r in rows], dtype=np.int64)
    out["weight"] = np.array([r[1] for r in rows], dtype=np.float32)
    out["fold"] = np.array([r[2] for r in rows], dtype=np.int64)
    return out


def resolve_features(cfg: Config) -> tuple[list[str], dict[str, int]]:
    from ecmf.features.store import store_dims

    dims = store_dims(Workdir.of(cfg).store)
    features = list(cfg.train.features) or list(dims)
    unknown = [f for f in features if f not in dims]
    if unknown:
        raise KeyError(f"train.features {unknown} not in the feature store; available: "
                       f"{sorted(dims)}")
    return features, {f: dims[f] for f in features}


def fit(cfg: Config, table: pd.DataFrame, out_dir: str | Path) -> dict:
    """Train the configured fusion model on `table` with Ray Train; write models and metrics."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ecmf.features.store import store_dataset
    from ecmf.train.metrics import classification_report
    from ecmf.train.predict import oof_predictions

    out = Path(out_dir)
    wd = Workdir.of(cfg)
    features, dims = resolve_features(cfg)
    save_config(cfg, out)
    table.to_parquet(out / "training_table.parquet", index=False)
    ds = store_dataset(wd.store, features)
    lookup = {s: (int(y), float(w), int(k)) for s, y, w, k in
              zip(table[schema.SAMPLE_ID], table["y"], table["weight"], table["fold"])}
    ds = ds.map_batches(attach_labels, fn_kwargs={"lookup": lookup}, batch_format="numpy")

    tc = cfg.train
    storage = Path(tc.storage_path or wd.root / "ray_results").resolve()
    name = f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={"train": asdict(tc), "features": features, "dims": dims},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=2),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
        datasets={"train": ds},
    )
    start = time.time()
    result = trainer.fit()
    seconds = time.time() - start
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} reported no checkpoint: {result.error}")
    models = out / "models"
    if models.exists():
        shutil.rmtree(models)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, models)

    oof = oof_predictions(out, wd.store, table)
    oof.to_parquet(out / "oof.parquet", index=False)
    y_true = np.array([schema.label_index(v) for v in oof["label"]])
    y_pred = np.array([schema.label_index(v) for v in oof[schema.PRED]])
    report = classification_report(y_true, y_pred)
    metrics = {"model": tc.model, "features": features, "dims": dims,
               "n_labeled": int((table["fold"] >= 0).sum()),
               "n_pseudo": int((table["fold"] < 0).sum()), "folds": tc.folds,
               "cv": report, "fit_seconds": round(seconds, 2), "ray_run": str(storage / name)}
    write_json(out / "metrics.json", metrics)
    log.info("%s: out-of-fold WAF %.4f, accuracy %.4f over %d labeled samples", out.name,
             report["waf"], report["accuracy"], metrics["n_labeled"])
    return metrics


def train_stage(cfg: Config) -> dict:
    """`ecmf train`: k-fold fit on the labeled clips into `<workdir>/train`."""
    from ecmf.workdir import load_manifest

    table = training_table(load_manifest(cfg), cfg.train.folds, cfg.train.seed)
    return fit(cfg, table, Workdir.of(cfg).train)

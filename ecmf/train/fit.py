"""Fitting: the folds as Ray tasks (`ecmf.train.fold_tasks`, the default) or a Ray Train DDP run
(`train.strategy: ddp`) over the feature store; fold models, OOF metrics."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.config import Config, ConfigError, TrainConfig
from ecmf.data.manifest import load_manifest, with_labels
from ecmf.errors import InputError, MissingInput, UnknownName
from ecmf.features.store import store_dataset, store_dims, usage_counts
from ecmf.keys import Stamp, diff
from ecmf.runtime.capacity import check_placeable, cluster_capacity
from ecmf.runtime.progress import EpochLines, epoch_relay
from ecmf.train.ddp import train_loop_per_worker
from ecmf.train.fold_tasks import fault_env, run_fold_tasks
from ecmf.train.metrics import classification_report
from ecmf.train.predict import oof_predictions
from ecmf.train.rows import table_arrays, table_bytes
from ecmf.workdir import Workdir, save_config, write_json

log = logging.getLogger(__name__)
RUN_FILE = "ray_run.json"  # the Ray Train run behind a training directory, for --resume
# Keys that say where and on what a run trains, not what it learns: a resume may change them.
RESOURCE_KEYS = ("num_workers", "use_gpu", "cpus_per_worker", "storage_path", "max_failures",
                 "backend")
# NCCL for CUDA tensors with gloo beside it for CPU ones: a stray CPU collective (a library's, or
# all_gather_object) still works. Ray Train reads it as NCCL (ray.train.torch.config).
NCCL_WITH_GLOO = "cpu:gloo,cuda:nccl"


def assign_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per sample, reproducible for a seed."""
    from sklearn.model_selection import StratifiedKFold

    if len(y) < folds:
        raise InputError(f"{len(y)} labeled samples cannot make {folds} folds")
    counts = np.bincount(y)
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


def fold_split(cfg: Config, manifest: pd.DataFrame, folds: int | None = None,
               write: bool = False) -> np.ndarray:
    """The fold of each labeled clip (manifest train rows sorted by sample_id), read from
    `<workdir>/folds.parquet`: every stage's split comes from that one file, a column
    `fold_k<folds>_seed<seed>` (`assign_folds`). A split a user writes there (values in
    [0, folds)) is used as is.

    Only `ecmf train` writes it (`write`): the first time its split is asked for, or anew when
    the labeled set changed since (other clips or labels). Another stage reads it; where the
    file or its column is missing (a search before the first train, a search's own fold count)
    it makes the same split in memory (`assign_folds` is a function of the labels and the
    seed), and where the file is for another labeled set it stops naming `ecmf train`."""
    folds = folds or cfg.train.folds
    seed = cfg.train.seed
    lab = manifest[manifest[schema.SPLIT] == "train"].sort_values(schema.SAMPLE_ID)
    now = pd.DataFrame({schema.SAMPLE_ID: lab[schema.SAMPLE_ID].astype(str).to_numpy(),
                        schema.LABEL: lab[schema.LABEL].astype(str).to_numpy()})
    path = Workdir.of(cfg).folds
    column = f"fold_k{folds}_seed{seed}"
    table = pd.read_parquet(path) if path.is_file() else None
    stale = table is not None and not table[[schema.SAMPLE_ID, schema.LABEL]].equals(now)
    if table is not None and not stale and column in table:
        split = table[column].to_numpy(dtype=np.int64)
        bad = (split < 0) | (split >= folds)
        if bad.any():
            raise InputError(f"{path}: column {column} has fold(s) outside [0, {folds}), e.g. "
                             f"sample {table[schema.SAMPLE_ID].iloc[np.flatnonzero(bad)[0]]!r}")
        return split
    y = schema.label_indices(now[schema.LABEL].to_numpy(), "the manifest", cfg.labels
                             or sorted(set(now[schema.LABEL])))
    if not write:
        if stale:
            raise MissingInput(f"{path} was written for another labeled set (other clips or "
                               f"labels): run `ecmf train` again, which writes the folds "
                               f"every stage uses")
        return assign_folds(y, folds, seed)
    if stale:
        log.warning("%s: the labeled set changed since it was written (other clips or labels); "
                    "its folds are made again", path)
        table = None
    table = now if table is None else table
    table[column] = assign_folds(y, folds, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return table[column].to_numpy(dtype=np.int64)


def stage_table(cfg: Config, manifest: pd.DataFrame | None = None, folds: int | None = None,
                write_folds: bool = False, **kw) -> pd.DataFrame:
    """`training_table` of a stage: the config's label set and the workdir's folds
    (`fold_split`, which `ecmf train` alone writes: `write_folds`); `kw`: pseudo, refined."""

    manifest = load_manifest(cfg) if manifest is None else manifest
    cfg = with_labels(cfg, manifest)
    folds = folds or cfg.train.folds
    return training_table(manifest, folds, cfg.train.seed, labels=cfg.labels,
                          split=fold_split(cfg, manifest, folds, write_folds), **kw)


def training_table(manifest: pd.DataFrame, folds: int, seed: int,
                   pseudo: pd.DataFrame | None = None,
                   refined: pd.DataFrame | None = None,
                   labels=schema.LABELS, split: np.ndarray | None = None) -> pd.DataFrame:
    """sample_id, y, weight, fold, train_fold: labeled clips in k folds; pseudo-labels (fold -1)
    train only. `y` indexes `labels` (the run's label set, `Config.labels`); `split`: the
    labeled clips' folds in sample_id order (`fold_split`), else `assign_folds(y, folds, seed)`.

    `train_fold` says which fold models train on a row: -1 every one whose validation fold the
    row is not in; k >= 0 only fold k's. Pseudo-labels made by fold k's model of an earlier run
    carry k (a `train_fold` column in `pseudo`), so that no fold model learns, through them, the
    labels it is validated on; a clip may then appear once per fold, with that fold's label.
    `refined` (sample_id, refined, weight: ecmf.semi.refine) replaces the labeled clips' labels
    and weights; folds stay those of the original labels, so every source shares them. With a
    `train_fold` column (fold-blind refinement: a label per fold model, voted by sources that
    never saw that model's validation fold), a clip of fold m gets a row for each fold model
    j != m with the label refined for j (`train_fold` j), and a validation row for model m with
    its original label (`train_fold` m).
    """
    lab = manifest[manifest[schema.SPLIT] == "train"].sort_values(schema.SAMPLE_ID)
    y = schema.label_indices(lab[schema.LABEL].to_numpy(), "the manifest", labels)
    table = pd.DataFrame({schema.SAMPLE_ID: lab[schema.SAMPLE_ID].values, "y": y,
                          "weight": 1.0,
                          "fold": assign_folds(y, folds, seed) if split is None else split,
                          "train_fold": -1})
    if refined is not None and "train_fold" in refined:
        table = _fold_blind_rows(table, refined, folds, labels)
    elif refined is not None:
        r = refined.set_index(schema.SAMPLE_ID).reindex(table[schema.SAMPLE_ID])
        absent = table.loc[r["refined"].isna().to_numpy(), schema.SAMPLE_ID].tolist()
        if absent:
            raise InputError(f"refined labels miss {len(absent)} labeled sample(s), e.g. "
                             f"{absent[:5]}; run `ecmf refine` again")
        table["y"] = schema.label_indices(r["refined"].to_numpy(), "refined labels", labels)
        table["weight"] = r["weight"].astype(float).to_numpy()
    if pseudo is not None and len(pseudo):
        train_fold = (pseudo["train_fold"].astype(int).to_numpy() if "train_fold" in pseudo
                      else np.full(len(pseudo), -1))
        bad = (train_fold < -1) | (train_fold >= folds)
        if bad.any():
            wrong = sorted(set(train_fold[bad].tolist()))[:5]
            raise InputError(f"pseudo-labels for fold(s) {wrong} of a {folds}-fold run (rows of "
                             f"e.g. {pseudo[schema.SAMPLE_ID].to_numpy()[bad][:3].tolist()})")
        extra = pd.DataFrame({
            schema.SAMPLE_ID: pseudo[schema.SAMPLE_ID].values,
            "y": schema.label_indices(pseudo[schema.LABEL].to_numpy(), "pseudo-labels", labels),
            "weight": pseudo["weight"].astype(float).values, "fold": -1,
            "train_fold": train_fold})
        table = pd.concat([table, extra], ignore_index=True)
    return table


def _fold_blind_rows(table: pd.DataFrame, refined: pd.DataFrame, folds: int,
                     labels) -> pd.DataFrame:
    """The labeled rows of `training_table` with fold-blind refined labels (see there)."""
    want = table[[schema.SAMPLE_ID, "fold"]].merge(
        pd.DataFrame({"train_fold": np.arange(folds)}), how="cross")
    want = want[want["fold"] != want["train_fold"]]
    got = refined[[schema.SAMPLE_ID, "train_fold", "refined", "weight"]].astype(
        {schema.SAMPLE_ID: str, "train_fold": int})
    rows = want.astype({schema.SAMPLE_ID: str}).merge(
        got, on=[schema.SAMPLE_ID, "train_fold"], how="left")
    absent = rows[rows["refined"].isna()]
    if len(absent) or len(got) != len(rows):
        example = (absent[[schema.SAMPLE_ID, "train_fold"]].head(3).to_dict("records")
                   if len(absent) else "rows for a clip's own fold, or repeated rows")
        raise InputError(f"fold-blind refined labels do not match a {folds}-fold split of the "
                         f"labeled set (each clip needs a label for every other fold's model): "
                         f"{len(absent)} missing, e.g. {example}, {len(got)} given for "
                         f"{len(rows)} expected; run `ecmf refine` again")
    train = pd.DataFrame({
        schema.SAMPLE_ID: rows[schema.SAMPLE_ID].to_numpy(),
        "y": schema.label_indices(rows["refined"].to_numpy(), "refined labels", labels),
        "weight": rows["weight"].astype(float).to_numpy(), "fold": rows["fold"].to_numpy(),
        "train_fold": rows["train_fold"].to_numpy()})
    val = table.assign(train_fold=table["fold"])
    return (pd.concat([val, train], ignore_index=True)
            .sort_values([schema.SAMPLE_ID, "train_fold"], kind="stable")
            .reset_index(drop=True))


def label_lookup(table: pd.DataFrame) -> dict[str, list[tuple]]:
    """sample_id -> its rows of the training table as (y, weight, fold, train_fold) tuples."""
    train_fold = table["train_fold"] if "train_fold" in table else np.full(len(table), -1)
    lookup: dict[str, list[tuple]] = {}
    for s, y, w, k, t in zip(table[schema.SAMPLE_ID], table["y"], table["weight"],
                             table["fold"], train_fold):
        lookup.setdefault(str(s), []).append((int(y), float(w), int(k), int(t)))
    return lookup


def attach_labels(batch: dict[str, np.ndarray], lookup: dict[str, list[tuple]]) -> dict:
    """Keep the rows of the training table (`label_lookup`) and add y, weight, fold and
    train_fold to them; a clip with several rows (a pseudo-label per fold) is repeated."""
    ids = batch[schema.SAMPLE_ID].astype(str)
    take = [(j, r) for j, i in enumerate(ids) for r in lookup.get(i, ())]
    src = np.array([j for j, _ in take], dtype=np.int64)
    out = {k: v[src] for k, v in batch.items()}
    out["y"] = np.array([r[0] for _, r in take], dtype=np.int64)
    out["weight"] = np.array([r[1] for _, r in take], dtype=np.float32)
    out["fold"] = np.array([r[2] for _, r in take], dtype=np.int64)
    out["train_fold"] = np.array([r[3] for _, r in take], dtype=np.int64)
    return out


def resolve_features(cfg: Config) -> tuple[list[str], dict[str, int]]:
    dims = store_dims(Workdir.of(cfg).store)
    features = list(cfg.train.features) or list(dims)
    unknown = [f for f in features if f not in dims]
    if unknown:
        raise UnknownName(f"train.features {unknown} not in the feature store; available: "
                          f"{sorted(dims)}")
    return features, {f: dims[f] for f in features}


def torch_backend(tc: TrainConfig, cuda_available: bool) -> str:
    """The process group backend of a fit's workers (`TorchConfig.backend`), from `train.backend`.

    Ray Train sets up the group in the workers, but the backend must be fixed here, where the
    TorchTrainer is built (the driver, or a Tune trial); left unset, Ray picks NCCL whenever
    workers request GPUs, which fails on CPU wheels and fake GPU nodes (no NCCL there). The
    driver cannot see the workers' CUDA, so `auto` asks for NCCL only when `use_gpu` is set and
    the driver itself sees CUDA (`cuda_available`), else gloo, which takes CUDA tensors too, only
    slower; a CPU-only head driving CUDA workers sets `nccl`. NCCL comes with gloo beside it
    (NCCL_WITH_GLOO). The loop's collectives use tensors on the worker's device, so they work
    under either.
    """
    if not tc.use_gpu or tc.backend == "gloo":
        return "gloo"
    if tc.backend == "nccl" or cuda_available:
        return NCCL_WITH_GLOO
    return "gloo"


def torch_config(tc: TrainConfig):
    """`TorchConfig` of a TorchTrainer for `tc`, with `torch_backend` on this process's CUDA."""
    import torch
    from ray.train.torch import TorchConfig

    backend = torch_backend(tc, torch.cuda.is_available())
    if tc.use_gpu and tc.backend == "auto" and backend == "gloo":
        log.warning("train.use_gpu on a driver without CUDA: the workers all-reduce with gloo; "
                    "set train.backend: nccl if they have CUDA (faster)")
    return TorchConfig(backend=backend)


def make_trainer(tc: TrainConfig, loop_config: dict, name: str, storage: str, datasets: dict):
    """The TorchTrainer of `fit` (built, not run): `tc`'s workers, backend and fault handling."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=torch_config(tc),
        scaling_config=ScalingConfig(num_workers=max(1, tc.num_workers), use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=tc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             worker_runtime_env=fault_env()),
        datasets=datasets,
        # Only DDP streams a dataset: a shard each, every row kept.
        dataset_config=all_rows_data_config(),
    )


def all_rows_data_config():
    """Ray Train's DataConfig, but shards keep every row: the default `equal=True` split drops
    rows to even out the shards, and the loop copes with uneven ones (see `train_one_fold`)."""
    from ray.train import DataConfig

    class AllRowsDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                    out[i][name] = split
            return out

    return AllRowsDataConfig()


def run_record(cfg: Config, features: list[str], dims: dict[str, int],
               table: pd.DataFrame) -> dict:
    """What a training run's results depend on: train keys (not resources), features, table."""
    cols = table[[schema.SAMPLE_ID, "y", "weight", "fold"]].reset_index(drop=True)
    if "train_fold" in table:
        cols["train_fold"] = table["train_fold"].to_numpy()
    digest = hashlib.sha256(cols.to_csv(index=False).encode()).hexdigest()
    train = {k: v for k, v in asdict(cfg.train).items() if k not in RESOURCE_KEYS}
    return {"train": train, "features": list(features), "dims": dict(dims),
            "training_table_sha256": digest}


def run_changes(out: Path, record: dict) -> list[str] | None:
    """What differs between the run recorded in `<out>/ray_run.json` and `record` (`keys.diff`:
    train keys, features, the training table's digest); None when no run is recorded."""

    saved = Stamp(out / RUN_FILE).read()
    return None if saved is None else diff(saved["record"], record)


def _resume_target(out: Path, record: dict) -> tuple[str, str]:
    """The interrupted run to go on with; refuses, naming them, settings that changed since."""

    path = out / RUN_FILE
    changed = run_changes(out, record)
    if changed is None:
        raise MissingInput(f"{path} does not exist: {out} has no run to resume; train "
                           f"without --resume")
    saved = Stamp(path).read()
    if changed:
        raise ConfigError(f"cannot resume {saved['name']} ({path}): the config differs from the "
                          f"interrupted run's in {'; '.join(changed)}; restore those values or "
                          f"train without --resume")
    return saved["name"], saved["storage"]


def fit(cfg: Config, table: pd.DataFrame, out_dir: str | Path, resume: bool = False) -> dict:
    """Train the configured fusion model on `table` with Ray Train; write models and metrics.

    `resume`: go on with the run recorded in `<out_dir>/ray_run.json` (same Ray Train name and
    storage, so Ray hands the workers its last checkpoint and finished folds are kept).
    While it trains, the `ecmf.progress` logger shows each epoch of each fold (`EpochLines`).
    """

    out = Path(out_dir)
    wd = Workdir.of(cfg)
    cfg = with_labels(cfg)
    features, dims = resolve_features(cfg)
    record = run_record(cfg, features, dims, table)
    tc = cfg.train
    # A worker no node can hold would leave Ray Train waiting for it forever.
    check_placeable({"train.cpus_per_worker with train.use_gpu": {
        "CPU": tc.cpus_per_worker, "GPU": float(tc.use_gpu)}}, cluster_capacity())
    if resume:
        name, storage = _resume_target(out, record)
        log.info("resuming %s from its last checkpoint under %s", name, storage)
    else:
        # A URI (s3://, gs://) stays a string: Path would fold its "//".
        storage = tc.storage_path or str(wd.root / "ray_results")
        storage = storage if "://" in storage else str(Path(storage).resolve())
        name = f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    save_config(cfg, out)
    table.to_parquet(out / "training_table.parquet", index=False)
    Stamp(out / RUN_FILE).write({"name": name, "storage": storage, "record": record})
    loop_config = {"train": asdict(tc), "features": features, "dims": dims,
                   "num_classes": len(cfg.labels)}
    start = time.time()
    datasets = {}
    if table_bytes(table, dims) <= tc.in_memory_mb * 2**20:
        import ray

        # Read once here and shared through the object store: no streaming read per fit.
        loop_config["table"] = ray.put(table_arrays(wd.store, table, features))
    elif tc.strategy == "folds":
        import ray

        # Each fold trains over every row and so holds the whole table: its task reads the
        # store itself, without a Ray Data execution (and its CPU demand) per fold.
        loop_config["read"] = {"store": str(wd.store), "rows": ray.put(table)}
    else:  # DDP over a table too big to put: a streaming split, a shard per worker
        ds = store_dataset(wd.store, features)
        datasets["train"] = ds.map_batches(attach_labels, batch_format="numpy",
                                           fn_kwargs={"lookup": label_lookup(table)})
    models = out / "models"
    with epoch_relay(EpochLines(out.name, tc.folds, tc.epochs)) as queue:
        loop_config["progress"] = queue
        if tc.strategy == "folds":
            summary = run_fold_tasks(tc, loop_config, storage, name, resume, models)
        else:
            summary = _ddp_fit(tc, loop_config, name, storage, datasets, models)
    seconds = time.time() - start

    oof = oof_predictions(out, wd.store, table)
    oof.to_parquet(out / "oof.parquet", index=False)
    y_true = schema.label_indices(oof["label"].to_numpy(), labels=cfg.labels)
    y_pred = schema.label_indices(oof[schema.PRED].to_numpy(), labels=cfg.labels)
    report = classification_report(y_true, y_pred, cfg.labels)
    labeled = table.loc[table["fold"] >= 0, schema.SAMPLE_ID].unique()
    used = usage_counts(wd.store, labeled)
    if used["without_features"]:
        log.warning("%s: %d of %d labeled clip(s) have no features (see %s) and were not "
                    "trained on", out.name, used["without_features"], len(labeled), wd.errors)
    metrics = {"model": tc.model, "labels": list(cfg.labels), "features": features, "dims": dims,
               "n_labeled": used["with_features"],
               "n_labeled_without_features": used["without_features"],
               "labeled_modalities": {f: used["modalities"][f] for f in features
                                      if f in used["modalities"]},
               "n_pseudo": int(table.loc[table["fold"] < 0, schema.SAMPLE_ID].nunique()),
               "pseudo_rows": int((table["fold"] < 0).sum()), "folds": tc.folds,
               "cv": report, "fit_seconds": round(seconds, 2), "ray_run": f"{storage}/{name}",
               "strategy": tc.strategy,
               "resumed_folds": summary.get("resumed_folds", []),
               "retried_folds": summary.get("retried_folds", []),
               # rows each worker held (DDP: its shard), or each fold's task ("folds": all)
               "shard_rows": summary.get("shard_rows", summary.get("fold_rows"))}
    write_json(out / "metrics.json", metrics)
    log.info("%s: out-of-fold WAF %.4f, accuracy %.4f over %d labeled samples", out.name,
             report["waf"], report["accuracy"], metrics["n_labeled"])
    return metrics


def _ddp_fit(tc: TrainConfig, loop_config: dict, name: str, storage: str, datasets: dict,
             models: Path) -> dict:
    """`train.strategy: ddp`: one Ray Train run, every worker on every fold (its gradients
    all-reduced); the fold models of its last checkpoint go to `models`."""
    result = make_trainer(tc, loop_config, name, storage, datasets).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} reported no checkpoint: {result.error}")
    if models.exists():
        shutil.rmtree(models)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, models)
    return getattr(result, "return_value", None) or {}


def train_stage(cfg: Config, resume: bool = False) -> dict:
    """`ecmf train [--resume]`: k-fold fit on the labeled clips into `<workdir>/train`."""
    return fit(cfg, stage_table(cfg, write_folds=True), Workdir.of(cfg).train, resume=resume)

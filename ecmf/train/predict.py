"""Fold-ensemble prediction: in process for small sets, Ray Data batch inference for the pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.errors import MissingInput
from ecmf.features.store import ok_ids, read_features, store_dataset
from ecmf.runtime import devices
from ecmf.runtime.capacity import check_placeable, cluster_capacity
from ecmf.runtime.devices import device_for
from ecmf.train.loop import load_fold


class FoldEnsemble:
    """The fold models of one training run, loaded from `<run>/models/fold_*.pt`."""

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        import torch

        from ecmf.models.fusion import MODELS

        paths = sorted(Path(run_dir, "models").glob("fold_*.pt"))
        if not paths:
            raise MissingInput(f"{run_dir}/models holds no fold_*.pt; run `ecmf train` first")
        self.models, self.folds = [], []
        for p in paths:
            saved = load_fold(p)
            model = MODELS.get(saved["model"])(**saved["kwargs"])
            model.load_state_dict(saved["state_dict"])
            self.models.append(model.to(device).eval())
            self.folds.append(int(saved["fold"]))
        self.features: list[str] = list(saved["features"])
        self.dims: dict[str, int] = dict(saved["kwargs"]["dims"])
        self.labels: list[str] = run_labels(run_dir, saved["kwargs"]["num_classes"])
        self._torch = torch
        self.device = device

    def fold_probs(self, feats: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                   models: list[int] | None = None) -> np.ndarray:
        """Class probabilities of every fold model (or the `models`-th ones), [K, N, C]."""
        torch = self._torch
        # Copies: arrays from Ray Data batches are read-only, which torch warns about.
        f = {k: torch.tensor(np.array(feats[k], dtype=np.float32), device=self.device)
             for k in self.features}
        m = {k: torch.tensor(np.array(masks[k], dtype=bool), device=self.device)
             for k in self.features}
        chosen = [self.models[i] for i in (range(len(self.models)) if models is None else models)]
        with torch.inference_mode():
            return np.stack([torch.softmax(mod(f, m), -1).cpu().numpy() for mod in chosen])

    def predict(self, feats, masks) -> np.ndarray:
        """Ensemble probabilities, the mean over folds, [N, C]."""
        return self.fold_probs(feats, masks).mean(axis=0)


def run_labels(run_dir: str | Path, num_classes: int | None = None) -> list[str]:
    """The class names a training run's models predict, in order: the `labels` of the resolved
    config it saved (MER2025's six for a run of an ecmf that did not save them)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    saved = (yaml.safe_load(path.read_text()) or {}).get("labels") if path.is_file() else None
    labels = list(saved) if saved else list(schema.LABELS)
    if num_classes is not None and num_classes != len(labels):
        raise MissingInput(f"{run_dir}: its models predict {num_classes} classes but its "
                           f"config.yaml names {len(labels)} labels {labels}; train it again")
    return labels


def fold_prob_columns(fold: int, labels=schema.LABELS) -> list[str]:
    """Columns of fold `fold`'s own probabilities in per-fold predictions: f<k>_prob_<class>."""
    return [f"f{fold}_{c}" for c in schema.prob_columns(labels)]


def prob_frame(ids, probs: np.ndarray, labels=schema.LABELS) -> pd.DataFrame:
    """sample_id, prob_<class>..., pred (class name), confidence."""
    df = pd.DataFrame(probs, columns=schema.prob_columns(labels))
    df.insert(0, schema.SAMPLE_ID, np.asarray(ids).astype(str))
    df[schema.PRED] = np.array(labels)[probs.argmax(axis=1)]
    df[schema.CONFIDENCE] = probs.max(axis=1)
    return df


class Predictor:
    """Callable class for `map_batches`: ensemble probabilities of a batch of store rows."""

    def __init__(self, run_dir: str, threads: int = 1, use_gpu: bool = False,
                 per_fold: bool = False):
        import torch

        torch.set_num_threads(max(1, threads))
        self.ensemble = FoldEnsemble(run_dir, device=device_for(use_gpu, "predict.num_gpus"))
        self.per_fold = per_fold

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        feats = {f: np.stack(batch[schema.feature_column(f)]) for f in self.ensemble.features}
        masks = {f: batch[schema.mask_column(f)] for f in self.ensemble.features}
        probs = self.ensemble.fold_probs(feats, masks)
        labels = self.ensemble.labels
        df = prob_frame(batch[schema.SAMPLE_ID], probs.mean(axis=0), labels)
        if self.per_fold:  # [K, N, C] -> N rows of K * C columns, fold by fold
            cols = [c for k in self.ensemble.folds for c in fold_prob_columns(k, labels)]
            wide = probs.transpose(1, 0, 2).reshape(len(df), -1).astype(np.float32)
            df = pd.concat([df, pd.DataFrame(wide, columns=cols, index=df.index)], axis=1)
        return devices.to_host(df)


def predict_store(store: str | Path, run_dir: str | Path, out: str | Path,
                  ids: list[str] | None = None, batch_size: int = 1024,
                  pool_size: int = 1, num_cpus: float = 1.0,
                  num_gpus: float = 0.0, per_fold: bool = False) -> pd.DataFrame:
    """Stream the store through the fold ensemble with Ray Data; write and return predictions.

    `batch_size` rows per call, `pool_size` predictor actors of `num_cpus`/`num_gpus` each (the
    `predict:` section of the config). `per_fold`: also each fold model's own probabilities
    (`fold_prob_columns`), which fold-consistent pseudo-labels are chosen from.
    """
    import ray

    check_placeable({"predict.num_cpus, predict.num_gpus": {"CPU": num_cpus, "GPU": num_gpus}},
                    cluster_capacity())

    ds = store_dataset(store, FoldEnsemble(run_dir).features, ids)
    ds = ds.map_batches(Predictor, fn_constructor_kwargs={
                            "run_dir": str(run_dir), "threads": int(num_cpus),
                            "use_gpu": num_gpus > 0, "per_fold": per_fold},
                        batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=pool_size), num_cpus=num_cpus,
                        num_gpus=num_gpus)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.parquet"):  # predictions are a function of the model: replace
        old.unlink()
    ds.write_parquet(str(out))
    df = pd.read_parquet(out)
    return df.sort_values(schema.SAMPLE_ID).reset_index(drop=True)


def oof_predictions(run_dir: str | Path, store: str | Path, table: pd.DataFrame) -> pd.DataFrame:
    """Out-of-fold probabilities: each labeled sample predicted by the model that never saw it.

    The rows are the table's validation rows (fold k >= 0, `train_fold` -1 or k) with features
    in the store, sorted by sample_id then fold: one per labeled clip, or one per fold model
    that holds a clip out where a table gives it to several (the pair run of fold-blind
    refinement)."""

    ens = FoldEnsemble(run_dir)
    labels = ens.labels
    # A labeled clip whose extraction failed never reached the models (it is in the store's
    # errors table): it has no out-of-fold prediction either.
    held = table[(table["fold"] >= 0) & table[schema.SAMPLE_ID].isin(ok_ids(store))]
    if "train_fold" in held:
        held = held[(held["train_fold"] < 0) | (held["train_fold"] == held["fold"])]
    held = held.sort_values([schema.SAMPLE_ID, "fold"], kind="stable")
    ids = held[schema.SAMPLE_ID].astype(str).to_numpy()
    unique, rows = np.unique(ids, return_inverse=True)
    ft = read_features(store, ens.features, unique.tolist())
    probs = np.zeros((len(held), len(labels)), dtype=np.float32)
    folds = held["fold"].to_numpy()
    for i, k in enumerate(ens.folds):  # each model on the rows it held out, no more
        sel = rows[folds == k]
        if len(sel):
            sub = {f: ft.feats[f][sel] for f in ens.features}
            probs[folds == k] = ens.fold_probs(sub, {f: ft.masks[f][sel] for f in ens.features},
                                               models=[i])[0]
    df = prob_frame(ids, probs, labels)
    df["label"] = np.array(labels)[held["y"].to_numpy()]
    df["fold"] = folds
    return df

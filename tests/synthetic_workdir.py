"""A synthetic workdir for training tests: a feature store with class-dependent features (some
modalities missing), and a manifest with labeled clips and candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ecmf import schema

DIMS = {"face": 16, "voice": 12, "words": 8}  # any names: training reads whatever the store has


def write_store(store: Path, ids, feats: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                parts: int = 2) -> Path:
    """Parquet files in the store's layout (sample_id, error, feat_<name>, mask_<name>)."""
    store.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids)
    for p, rows in enumerate(np.array_split(np.arange(len(ids)), parts)):
        cols = {schema.SAMPLE_ID: pa.array(ids[rows].tolist(), pa.string()),
                "error": pa.array([""] * len(rows), pa.string())}
        for name, x in feats.items():
            flat = pa.array(x[rows].astype(np.float32).ravel(), pa.float32())
            cols[schema.feature_column(name)] = pa.FixedSizeListArray.from_arrays(flat,
                                                                                 x.shape[1])
            cols[schema.mask_column(name)] = pa.array(masks[name][rows], pa.bool_())
        pq.write_table(pa.table(cols), store / f"part-{p}.parquet")
    return store


def synthetic_features(n: int, seed: int = 0, dims: dict[str, int] = DIMS):
    """Labels 0..5 in equal shares, each modality a noisy class centroid, ~15% missing."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(schema.LABELS)
    rng.shuffle(y)
    feats, masks = {}, {}
    for j, (name, d) in enumerate(dims.items()):
        centres = rng.normal(size=(len(schema.LABELS), d))
        x = centres[y] + rng.normal(scale=1.3, size=(n, d))
        present = rng.random(n) > 0.15
        if j == 0:
            present[:] = True  # every sample keeps at least one modality
        x[~present] = 0.0
        feats[name], masks[name] = x.astype(np.float32), present
    return y, feats, masks


def make_workdir(root: Path, n_train: int = 120, n_cand: int = 10, seed: int = 0) -> Path:
    """`root` as an ecmf workdir: manifest.parquet and features/store (the last candidate has no
    features, as a clip that failed extraction)."""
    n = n_train + n_cand
    y, feats, masks = synthetic_features(n, seed)
    ids = [f"clip_{i:04d}" for i in range(n)]
    keep = np.arange(n - 1)
    write_store(root / "features" / "store", np.array(ids)[keep],
                {k: v[keep] for k, v in feats.items()}, {k: v[keep] for k, v in masks.items()})
    manifest = pd.DataFrame({
        schema.SAMPLE_ID: ids,
        schema.SPLIT: ["train"] * n_train + ["candidate"] * n_cand,
        schema.LABEL: [schema.LABELS[k] for k in y[:n_train]] + [None] * n_cand,
    })
    manifest.to_parquet(root / "manifest.parquet", index=False)
    pd.DataFrame({"name": ids[n_train:], "discrete": [schema.LABELS[k] for k in y[n_train:]]}
                 ).to_csv(root / "candidate_truth.csv", index=False)
    return root


SMALL = ["train.epochs=6", "train.folds=3", "train.hidden=16", "train.heads=2",
         "train.batch_size=16", "ray.object_store_mb=128"]


def small_config(workdir: Path, *sets: str):
    from ecmf.stages.common import load_config

    return load_config(None, [f"workdir={workdir}", f"corpus.root={workdir}", *SMALL, *sets])

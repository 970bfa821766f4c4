"""The training table as arrays: the rows `train_one_fold` takes, read from the feature store
on the driver (to share through the object store) or in a worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.features.store import ok_ids, read_features


def table_bytes(table: pd.DataFrame, dims: dict[str, int]) -> int:
    """About how much memory the training table's arrays take (float32 features, masks, ids)."""
    return len(table) * (4 * sum(dims.values()) + len(dims) + 64)


def table_arrays(store: str | Path, table: pd.DataFrame, features: list[str]) -> dict:
    """The training table's rows with their features, as `train_one_fold` takes them, in the
    order a worker's streamed rows come in (sorted by sample_id, a clip's rows in table order).
    Rows whose clip has no error-free features are left out, as the streamed read leaves them."""

    have = ok_ids(store)
    rows = table[table[schema.SAMPLE_ID].astype(str).isin(have)]
    rows = rows.iloc[np.argsort(rows[schema.SAMPLE_ID].astype(str).to_numpy(), kind="stable")]
    ft = read_features(store, features, ids=rows[schema.SAMPLE_ID].astype(str).tolist())
    train_fold = rows["train_fold"] if "train_fold" in rows else np.full(len(rows), -1)
    data = {schema.SAMPLE_ID: np.asarray(ft.ids, dtype=object),
            "y": rows["y"].to_numpy(np.int64), "weight": rows["weight"].to_numpy(np.float32),
            "fold": rows["fold"].to_numpy(np.int64),
            "train_fold": np.asarray(train_fold, dtype=np.int64)}
    for f in features:
        data[schema.feature_column(f)] = ft.feats[f]
        data[schema.mask_column(f)] = ft.masks[f]
    return data

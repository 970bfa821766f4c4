"""A tiny workdir for search tests: a manifest and a feature store written directly (no media)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecmf.schema import LABELS


def _column(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1)),
                                             x.shape[1])


def write_workdir(root, n_train: int = 72, n_pool: int = 12, seed: int = 0):
    """`root/manifest.parquet` and `root/features/store`: "text" carries the label, "audio"
    a weaker copy of it, so a search has something to find."""
    rng = np.random.default_rng(seed)
    n = n_train + n_pool
    ids = [f"s{i:04d}" for i in range(n)]
    y = rng.integers(len(LABELS), size=n)
    onehot = np.eye(len(LABELS))[y]
    text = np.hstack([2.0 * onehot, np.zeros((n, 2))]) + rng.normal(0, 1.0, (n, 8))
    audio = onehot[:, :4] + rng.normal(0, 1.5, (n, 4))
    audio_ok = rng.random(n) > 0.1
    audio[~audio_ok] = 0.0
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "sample_id": ids, "video_path": "", "audio_path": "", "text": "",
        "label": [LABELS[k] if i < n_train else None for i, k in enumerate(y)],
        "split": ["train"] * n_train + ["pool"] * n_pool,
    }).to_parquet(root / "manifest.parquet", index=False)
    store = root / "features" / "store"
    store.mkdir(parents=True)
    pq.write_table(pa.table({
        "sample_id": ids, "feat_text": _column(text), "mask_text": [True] * n,
        "feat_audio": _column(audio), "mask_audio": audio_ok.tolist(), "error": [""] * n,
    }), store / "part-0.parquet")
    return root


@pytest.fixture
def workdir(tmp_path):
    return write_workdir(tmp_path / "wd")


@pytest.fixture
def odd_workdir(tmp_path):
    """73 labeled rows: a split into two even shards would have to drop one."""
    return write_workdir(tmp_path / "odd", n_train=73)

"""Checkpoints hold data only: a fold file carrying a pickled object is refused, and the object
never runs (`torch.load(weights_only=True)` in `ecmf.train.loop.load_fold` and the fold tasks'
run storage)."""

from __future__ import annotations

import os

import pytest
import torch

from ecmf.errors import InputError
from ecmf.train.fold_tasks import RunStorage
from ecmf.train.loop import load_fold
from ecmf.train.predict import FoldEnsemble


class Payload:
    """What a planted fold_0.pt could carry: unpickling it would call os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path, marker):
    torch.save({"model": "ecmf", "state_dict": {"w": torch.zeros(2)}, "extra": Payload(marker)},
               path)


def test_a_fold_file_with_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    _plant(models / "fold_0.pt", marker)
    with pytest.raises(InputError, match=r"fold_0\.pt: refused: a fold file holds model "
                                         r"weights and plain values only"):
        load_fold(models / "fold_0.pt")
    with pytest.raises(InputError, match="refused"):
        FoldEnsemble(tmp_path / "run")  # `ecmf predict --run DIR` loads through it
    storage = RunStorage(str(tmp_path / "ray_results"), "fit")
    _plant(storage.path(0), marker)
    with pytest.raises(InputError, match="refused"):
        storage.read(0)  # a resumed fit reads its finished folds through it
    assert not marker.exists()


def test_a_saved_fold_loads_back_as_data(tmp_path):
    import numpy as np
    from synthetic_workdir import DIMS, synthetic_features

    from ecmf import schema
    from ecmf.config import TrainConfig
    from ecmf.train.loop import save_fold, train_one_fold

    y, feats, masks = synthetic_features(60, 0)
    data = {schema.SAMPLE_ID: np.array([f"s{i}" for i in range(60)]), "y": y.astype(np.int64),
            "weight": np.ones(60, np.float32), "fold": np.arange(60) % 3}
    for f in DIMS:
        data[schema.feature_column(f)] = feats[f]
        data[schema.mask_column(f)] = masks[f]
    tc = TrainConfig(epochs=1, folds=3, hidden=16, heads=2, batch_size=16)
    path = save_fold(train_one_fold(tc, data, list(DIMS), DIMS, 0), tc, list(DIMS), DIMS,
                     tmp_path)
    record = load_fold(path)
    assert record["fold"] == 0 and isinstance(record["val_waf"], float)
    assert record["train_config"]["epochs"] == 1 and record["state_dict"]

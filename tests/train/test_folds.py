"""One split for every stage: `folds.parquet` is written by train alone, once per (folds, seed),
and read after; a split a user writes there is used, and a changed labeled set gets new folds
(from train; the other stages stop naming it)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from ecmf import schema
from ecmf.errors import InputError, MissingInput
from ecmf.stages.common import load_config
from ecmf.train.fit import assign_folds, fold_split, stage_table


def manifest(n=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(["joy", "anger", "fear"], size=n)
    return pd.DataFrame({schema.SAMPLE_ID: [f"c{i:03d}" for i in range(n)][::-1],
                         schema.LABEL: [*labels[:-5], None, None, None, None, None],
                         schema.SPLIT: ["train"] * (n - 5) + ["pool"] * 5})


def test_written_once_then_read_and_shared_by_the_stages(tmp_path):
    cfg = load_config(None, [f"workdir={tmp_path}", "train.folds=4", "train.seed=3"])
    m = manifest()
    ahead = fold_split(cfg, m)  # a stage before train (a search): the same split, unwritten
    assert not (tmp_path / "folds.parquet").exists()
    first = fold_split(cfg, m, write=True)
    assert np.array_equal(ahead, first)
    path = tmp_path / "folds.parquet"
    stamp = path.stat().st_mtime_ns
    saved = pd.read_parquet(path)
    assert list(saved.columns) == [schema.SAMPLE_ID, schema.LABEL, "fold_k4_seed3"]
    assert saved[schema.SAMPLE_ID].tolist() == sorted(m[schema.SAMPLE_ID][:35])
    y = schema.label_indices(saved[schema.LABEL].to_numpy(), labels=["anger", "fear", "joy"])
    assert np.array_equal(first, assign_folds(y, 4, 3))
    assert np.array_equal(fold_split(cfg, m), first) and path.stat().st_mtime_ns == stamp
    assert np.array_equal(fold_split(cfg, m, write=True), first)
    assert path.stat().st_mtime_ns == stamp
    # The training table of any stage takes them; another fold count (a search's) is made in
    # memory, the same every time, and never written.
    table = stage_table(cfg, m)
    assert table["fold"].tolist() == first.tolist()
    three = stage_table(cfg, m, folds=3)["fold"]
    assert three.max() == 2 and three.tolist() == stage_table(cfg, m, folds=3)["fold"].tolist()
    assert "fold_k3_seed3" not in pd.read_parquet(path)


def test_a_split_written_by_hand_is_used_and_checked(tmp_path):
    cfg = load_config(None, [f"workdir={tmp_path}", "train.folds=2"])
    m = manifest()
    fold_split(cfg, m, write=True)
    path = tmp_path / "folds.parquet"
    saved = pd.read_parquet(path)
    saved["fold_k2_seed0"] = np.arange(len(saved)) % 2  # e.g. by speaker
    saved.to_parquet(path, index=False)
    assert fold_split(cfg, m).tolist() == (np.arange(len(saved)) % 2).tolist()
    saved["fold_k2_seed0"] = 2
    saved.to_parquet(path, index=False)
    with pytest.raises(InputError, match=r"fold_k2_seed0 has fold\(s\) outside \[0, 2\)"):
        fold_split(cfg, m)


def test_a_changed_labeled_set_gets_new_folds(tmp_path, caplog):
    cfg = load_config(None, [f"workdir={tmp_path}", "train.folds=3"])
    m = manifest()
    fold_split(cfg, m, write=True)
    m.loc[m[schema.SAMPLE_ID] == "c039", schema.LABEL] = "fear" if m[schema.LABEL].iloc[0] \
        != "fear" else "joy"
    with pytest.raises(MissingInput, match="another labeled set.*`ecmf train` again"):
        fold_split(cfg, m)
    with caplog.at_level(logging.WARNING):
        fold_split(cfg, m, write=True)
    assert "labeled set changed" in caplog.text
    saved = pd.read_parquet(tmp_path / "folds.parquet")
    assert saved.set_index(schema.SAMPLE_ID).loc["c039", schema.LABEL] == \
        m.set_index(schema.SAMPLE_ID).loc["c039", schema.LABEL]

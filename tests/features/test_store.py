"""Feature store reading: dimensions from the schema, error rows skipped, order by requested ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecmf.features.store import ok_ids, read_features, store_dims


def _write(path, ids, errors, dim=3, offset=0.0):
    x = np.arange(len(ids) * dim, dtype=np.float32).reshape(len(ids), dim) + offset
    pq.write_table(pa.table({
        "sample_id": ids,
        "feat_a": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
        "mask_a": [True] * len(ids),
        "error": errors,
    }), path)


def test_store_reads_ok_rows_in_requested_order(tmp_path):
    _write(tmp_path / "p0.parquet", ["s1", "s2", "s3"], ["", "decode: broken", ""])
    _write(tmp_path / "p1.parquet", ["s2"], [""], offset=100.0)  # a resumed run retried s2
    assert store_dims(tmp_path) == {"a": 3}
    assert ok_ids(tmp_path) == {"s1", "s2", "s3"}
    ft = read_features(tmp_path, ids=["s3", "s2"])
    assert ft.ids.tolist() == ["s3", "s2"]
    assert ft.feats["a"][1].tolist() == [100.0, 101.0, 102.0]
    assert ft.feats["a"].dtype == np.float32 and ft.masks["a"].all()


def test_store_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="ecmf extract"):
        read_features(tmp_path)
    _write(tmp_path / "p0.parquet", ["s1"], ["decode: broken"])
    with pytest.raises(KeyError, match="s1"):
        read_features(tmp_path, ids=["s1"])
    with pytest.raises(KeyError, match="available"):
        read_features(tmp_path, features=["b"])


def test_extraction_refuses_a_store_written_with_other_columns(tmp_path):
    from ecmf.config import ConfigError, EncoderConfig
    from ecmf.features.extract import check_store_matches
    from ecmf.features.store import store_columns

    store = tmp_path / "store"
    check_store_matches(store, {"a": EncoderConfig()})  # no store yet: nothing to match
    store.mkdir()
    _write(store / "part-0.parquet", ["s1", "s2"], ["", ""])
    assert store_columns(store) == {"features": {"a"}, "sequences": set()}
    check_store_matches(store, {"a": EncoderConfig()})  # a resume with the same encoders
    with pytest.raises(ConfigError, match=r"holds features \['a'\].*would write features "
                                          r"\['a', 'b'\].*another workdir"):
        check_store_matches(store, {"a": EncoderConfig(), "b": EncoderConfig()})
    with pytest.raises(ConfigError, match=r"sequences \[\].*sequences \['a'\]"):
        check_store_matches(store, {"a": EncoderConfig(sequence_steps=4)})


def test_iter_features_streams_batches_and_the_last_row_of_a_sample_wins(tmp_path):
    """What the weak classifiers read the pool with: never more than a batch at once, and,
    kept by sample, the same features as read_features."""
    from ecmf.features.store import iter_features

    _write(tmp_path / "p0.parquet", ["s1", "s2", "s3", "s4", "s5"], ["", "", "", "bad", ""])
    _write(tmp_path / "p1.parquet", ["s2"], [""], offset=100.0)  # a resumed run retried s2
    batches = list(iter_features(tmp_path, ["a"], ["s2", "s3", "s4", "s5"], batch_rows=2))
    assert max(len(b.ids) for b in batches) <= 2 and len(batches) >= 2
    kept = {}
    for b in batches:
        kept.update(zip(b.ids.tolist(), b.feats["a"].tolist()))
    assert sorted(kept) == ["s2", "s3", "s5"]  # s4's row is an error, s1 not asked for
    whole = read_features(tmp_path, ["a"], ["s2", "s3", "s5"])
    assert [kept[s] for s in whole.ids] == whole.feats["a"].tolist()
    assert kept["s2"] == [100.0, 101.0, 102.0]


def _write_statuses(path, ids, statuses, error=None):
    x = np.zeros((len(ids), 2), np.float32)
    pq.write_table(pa.table({
        "sample_id": ids,
        "feat_a": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 2),
        "mask_a": [not s for s in statuses], "status_a": statuses,
        "error": error or [""] * len(ids)}), path)


def test_a_retry_that_reads_nothing_more_changes_no_file(tmp_path):
    """A clip retried by a re-run: its new row replaces the old only where it reads more."""
    from ecmf.features.store import compact_store, store_fingerprint

    _write_statuses(tmp_path / "part-0.parquet", ["s1", "s2", "s3"],
                    ["", "decode: cut", "decode: cut"])
    before = store_fingerprint(tmp_path)
    # The retry of s2 fails the same way: dropped, with its new file; nothing else changes.
    _write_statuses(tmp_path / "part-1.parquet", ["s2"], ["decode: cut"])
    assert compact_store(tmp_path) == 1
    assert store_fingerprint(tmp_path) == before and not (tmp_path / "part-1.parquet").exists()
    # A retry that fails whole where a modality had been read keeps the old row too.
    _write_statuses(tmp_path / "part-1.parquet", ["s1"], ["decode: gone"], error=["no media"])
    assert compact_store(tmp_path) == 1 and store_fingerprint(tmp_path) == before
    # The retry of s3 reads it: the new row wins and the old one leaves its file.
    _write_statuses(tmp_path / "part-1.parquet", ["s3"], [""])
    assert compact_store(tmp_path) == 1
    rows = pq.read_table(tmp_path).to_pandas().set_index("sample_id")
    assert sorted(rows.index) == ["s1", "s2", "s3"] and rows.loc["s3", "status_a"] == ""

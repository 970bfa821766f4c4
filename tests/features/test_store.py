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

"""Frame-level sequences: pooling to fixed steps, their Parquet layout and the store reader."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stored_sequences import read_sequences

from ecmf.features.sequence import (
    pool_steps,
    sequence_array,
    sequence_field,
    sequence_shape,
    sequence_to_numpy,
)
from ecmf.features.store import read_features


def test_pool_steps_means_equal_segments():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)  # rows [0,1], [2,3], ... [10,11]
    out = pool_steps(x, 3)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    assert out.tolist() == [[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]
    # Uneven split: 5 rows into 2 steps -> rows [0, 1] and [2, 3, 4].
    y = np.arange(5, dtype=np.float64)[:, None]
    assert pool_steps(y, 2)[:, 0].tolist() == [0.5, 3.0]
    assert np.allclose(pool_steps(x, 1), x.mean(axis=0, keepdims=True))
    assert np.array_equal(pool_steps(x, 6), x)


def test_pool_steps_repeats_short_sequences_in_order():
    x = np.array([[1.0], [2.0]], dtype=np.float32)
    assert pool_steps(x, 4)[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert pool_steps(x[:1], 3)[:, 0].tolist() == [1.0, 1.0, 1.0]
    z = np.arange(3, dtype=np.float32)[:, None]
    assert pool_steps(z, 5)[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0]


@pytest.mark.parametrize("x,steps,match", [
    (np.zeros((0, 4)), 2, "empty"),
    (np.zeros(4), 2, r"\[time, dim\]"),
    (np.zeros((3, 4)), 0, "steps must be >= 1"),
])
def test_pool_steps_rejects_bad_input(x, steps, match):
    with pytest.raises(ValueError, match=match):
        pool_steps(x, steps)


def test_sequence_field_round_trip_through_parquet(tmp_path):
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(3, 4, 2)).astype(np.float32)
    field = sequence_field("faces", 4, 2)
    assert field.name == "seq_faces" and field.type.list_size == 8
    table = pa.Table.from_arrays([pa.array(["a", "b", "c"]), sequence_array(seq),
                                  pa.array(["", "", ""])],
                                 schema=pa.schema([pa.field("sample_id", pa.string()), field,
                                                   pa.field("error", pa.string())]))
    pq.write_table(table, tmp_path / "part.parquet")
    back = pq.read_table(tmp_path / "part.parquet")
    assert sequence_shape(back.schema.field("seq_faces")) == (4, 2)
    assert np.array_equal(sequence_to_numpy(back.column("seq_faces"), 4, 2), seq)


def test_sequence_shape_needs_consistent_metadata():
    with pytest.raises(ValueError, match="steps"):
        sequence_shape(pa.field("seq_x", pa.list_(pa.float32(), 6)))
    bad = pa.field("seq_x", pa.list_(pa.float32(), 6), metadata={b"steps": b"4", b"dim": b"2"})
    with pytest.raises(ValueError, match="list size 6"):
        sequence_shape(bad)


def _store(path, ids, errors, seq, offset=0.0):
    n, steps, dim = seq.shape
    feat = seq.mean(axis=1)
    sch = pa.schema([pa.field("sample_id", pa.string()),
                     pa.field("feat_v", pa.list_(pa.float32(), dim)),
                     pa.field("mask_v", pa.bool_()), sequence_field("v", steps, dim),
                     pa.field("error", pa.string())])
    pq.write_table(pa.Table.from_arrays([
        pa.array(ids), pa.FixedSizeListArray.from_arrays(pa.array(feat.reshape(-1)), dim),
        pa.array([True] * n), sequence_array(seq + offset), pa.array(errors)], schema=sch), path)


def test_read_sequences_skips_errors_keeps_last_and_orders_by_ids(tmp_path):
    seq = np.arange(3 * 2 * 3, dtype=np.float32).reshape(3, 2, 3)
    _store(tmp_path / "p0.parquet", ["s1", "s2", "s3"], ["", "decode: broken", ""], seq)
    _store(tmp_path / "p1.parquet", ["s3"], [""], seq[2:], offset=100.0)  # s3 retried
    ids, got = read_sequences(tmp_path, "v")
    assert ids.tolist() == ["s1", "s3"] and got.shape == (2, 2, 3)
    assert np.array_equal(got[0], seq[0]) and np.array_equal(got[1], seq[2] + 100.0)
    ids, got = read_sequences(tmp_path, "v", ids=["s3", "s1"])
    assert ids.tolist() == ["s3", "s1"] and np.array_equal(got[1], seq[0])
    # The utterance features beside it read as before: seq columns are not features.
    assert list(read_features(tmp_path).feats) == ["v"]
    with pytest.raises(KeyError, match="s2"):
        read_sequences(tmp_path, "v", ids=["s2"])
    with pytest.raises(KeyError, match=r"sequence_steps.*available: \['v'\]"):
        read_sequences(tmp_path, "faces")


def _batch(n, **cols):
    return {"sample_id": np.array([f"s{i}" for i in range(n)], dtype=object),
            "error": np.array([""] * n, dtype=object), **cols}


def test_encoders_emit_pooled_sequences_beside_unchanged_features(tiny):
    from ecmf.config import PACKAGED_MINILM, EncoderConfig
    from ecmf.features.encoders import ENCODERS

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(2, 6, 40, 40, 3), dtype=np.uint8)
    t = np.arange(16000) / 16000
    audio = np.stack([(0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32),
                      np.zeros(16000, np.float32)])  # the second is silent: masked
    text = np.array(["I am so happy today!", ""], dtype=object)
    cases = [("clip", tiny["clip"], "frames", frames), ("hubert", tiny["hubert"], "audio", audio),
             ("text", PACKAGED_MINILM, "text", text)]
    for name, model, col, values in cases:
        plain = ENCODERS.get(name)(col, EncoderConfig(name, model))(_batch(2, **{col: values}))
        enc = ENCODERS.get(name)(col, EncoderConfig(name, model, sequence_steps=3))
        out = enc(_batch(2, **{col: values}))
        seq = out[f"seq_{col}"]
        assert seq.shape == (2, 3, enc.dim) and seq.dtype == np.float32, name
        assert np.allclose(out[f"feat_{col}"], plain[f"feat_{col}"], atol=1e-5), name
        assert "seq_" + col not in plain, name
        if name == "clip":
            # 6 frames in 3 steps of 2: the steps' mean is the clip's mean over frames.
            assert np.allclose(seq.mean(axis=1), out["feat_frames"], atol=1e-5)
            assert not np.allclose(seq[0, 0], seq[0, 2])
        else:
            assert np.abs(seq[1]).sum() == 0 and not out[f"mask_{col}"][1], name
            assert np.abs(seq[0]).sum() > 0, name

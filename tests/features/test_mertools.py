"""MERTools feature folders: import into the store (missing, corrupt and mis-shaped files), export,
the round trip, and a MERTools user's path through the CLI: import-features, then train."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from ecmf import schema
from ecmf.cli import main
from ecmf.features.mertools import export_mertools, import_mertools
from ecmf.features.sequence import pool_steps, sequence_shape
from ecmf.features.store import read_features, read_sequences, store_dims


def _folder(path, arrays: dict[str, np.ndarray]):
    path.mkdir(parents=True, exist_ok=True)
    for name, x in arrays.items():
        np.save(path / f"{name}.npy", x)
    return path


def _rng_arrays(names, shape_of, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=shape_of(n)).astype(np.float32) for n in names}


def test_import_masks_missing_and_lists_bad_files(tmp_path):
    names = [f"s{i}" for i in range(7)]
    utt = _rng_arrays(names, lambda n: (5,))
    utt["s1"] = utt["s1"][None, :]  # MERTools also writes [1, D]
    del utt["s2"]  # missing from the audio folder only
    a = _folder(tmp_path / "features" / "hubert-UTT", utt)
    (a / "s3.npy").write_bytes(b"\x93NUMPY garbage")  # corrupt
    np.save(a / "s4.npy", np.zeros(7, np.float32))  # another dimension
    fra = _rng_arrays(names, lambda n: (3 + int(n[1:]), 4), seed=1)
    del fra["s5"]
    v = _folder(tmp_path / "features" / "clip-FRA", fra)

    store = tmp_path / "store"
    res = import_mertools({"audio": a, "frames": v}, store, steps=3, chunk_rows=2)
    s = res["summary"]
    # A bad audio file masks audio alone: the clip keeps its frames and is imported.
    assert s["samples"] == 7 and s["failed"] == 0 and s["imported"] == 7
    assert s["features"]["audio"]["bad_files"] == 2 and s["features"]["audio"]["missing"] == 1
    assert s["features"]["frames"]["missing"] == 1 and s["features"]["frames"]["steps"] == 3
    errors = res["errors"].set_index(schema.SAMPLE_ID)
    assert sorted(errors.index) == ["s3", "s4"] and (errors["stage"] == "import").all()
    assert (errors["feature"] == "audio").all()
    assert "s3.npy: unreadable" in errors.loc["s3", "reason"]
    assert "s4.npy: shape (7,)" in errors.loc["s4", "reason"]
    assert "expected shape (5,) or (1, 5)" in errors.loc["s4", "reason"]
    assert len(list(store.glob("*.parquet"))) == 4  # streamed in chunks of 2 rows

    assert store_dims(store) == {"audio": 5, "frames": 4}
    sch = pads.dataset(str(store), format="parquet").schema
    assert sequence_shape(sch.field("seq_frames")) == (3, 4)
    ft = read_features(store)
    assert ft.ids.tolist() == names
    m = dict(zip(ft.ids, range(len(ft))))
    for bad in ("s3", "s4"):
        assert not ft.masks["audio"][m[bad]] and not ft.feats["audio"][m[bad]].any()
        assert ft.masks["frames"][m[bad]]
    status = pads.dataset(str(store), format="parquet").to_table(
        columns=["sample_id", "status_audio", "status_frames"]).to_pandas().set_index("sample_id")
    assert status.loc["s3", "status_audio"].startswith("import: ") and not status.loc["s3",
                                                                                    "status_frames"]
    assert status.loc["s2", "status_audio"] == ""  # missing is not broken
    assert np.array_equal(ft.feats["audio"][m["s1"]], utt["s1"][0])
    assert not ft.masks["audio"][m["s2"]] and not ft.feats["audio"][m["s2"]].any()
    assert ft.masks["audio"][m["s5"]] and not ft.masks["frames"][m["s5"]]
    # Only a FRA folder: the utterance feature is its mean over time, the sequence is pooled.
    assert np.allclose(ft.feats["frames"][m["s6"]], fra["s6"].mean(axis=0), atol=1e-6)
    ids, seq = read_sequences(store, "frames", ids=["s6", "s0", "s5"])
    assert np.array_equal(seq[0], pool_steps(fra["s6"], 3))
    assert np.array_equal(seq[1], pool_steps(fra["s0"], 3))
    assert not seq[2].any()  # missing from the FRA folder: zeros, mask False


def test_import_by_ids_and_refusals(tmp_path):
    a = _folder(tmp_path / "x-UTT", _rng_arrays(["a", "b"], lambda n: (3,)))
    res = import_mertools({"x": a}, tmp_path / "store", ids=["b", "zz"])
    assert res["summary"]["not_in_ids"] == 1
    assert res["errors"][schema.SAMPLE_ID].tolist() == ["zz"]
    assert "no .npy file" in res["errors"]["reason"].iloc[0]
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        import_mertools({"x": a}, tmp_path / "store")
    import_mertools({"x": a}, tmp_path / "store", overwrite=True)
    assert sorted(read_features(tmp_path / "store").ids) == ["a", "b"]
    with pytest.raises(ValueError, match="two UTT folders"):
        import_mertools({"x": [a, a]}, tmp_path / "s2")
    with pytest.raises(FileNotFoundError, match="no .npy files"):
        import_mertools({"x": (tmp_path / "empty").mkdir() or tmp_path / "empty"}, tmp_path / "s3")


def test_export_then_import_gives_identical_arrays(tmp_path):
    names = [f"c{i:02d}" for i in range(9)]
    utt = _rng_arrays(names, lambda n: (6,))
    del utt["c04"]
    fra = _rng_arrays(names, lambda n: (2 + int(n[1:]), 3), seed=2)
    src = tmp_path / "src"
    store1 = tmp_path / "store1"
    import_mertools({"audio": _folder(src / "a-UTT", utt),
                     "video": [_folder(src / "v-UTT", _rng_arrays(names, lambda n: (3,), 3)),
                               _folder(src / "v-FRA", fra)]}, store1, steps=4, chunk_rows=4)
    out = tmp_path / "exported"
    got = export_mertools(store1, out)
    assert got["files"] == {"audio-UTT": 8, "video-UTT": 9, "video-FRA": 9}
    assert np.load(out / "video-FRA" / "c05.npy").shape == (4, 3)
    assert not (out / "audio-UTT" / "c04.npy").exists()  # masked: no file, as in MERTools
    with pytest.raises(ValueError, match="not empty"):
        export_mertools(store1, out)
    store2 = tmp_path / "store2"
    import_mertools({"audio": out / "audio-UTT", "video": [out / "video-UTT", out / "video-FRA"]},
                    store2, steps=4)
    a, b = read_features(store1), read_features(store2, ids=list(read_features(store1).ids))
    for f in ("audio", "video"):
        assert np.array_equal(a.feats[f], b.feats[f]) and np.array_equal(a.masks[f], b.masks[f])
    assert np.array_equal(read_sequences(store1, "video")[1],
                          read_sequences(store2, "video", ids=list(a.ids))[1])
    with pytest.raises(KeyError, match="available"):
        export_mertools(store1, tmp_path / "o2", features=["nope"])


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def test_mertools_user_imports_then_trains_through_the_cli(tmp_path, ray_local, capsys):
    """Features that carry the class, a CSV manifest, `ecmf import-features`, `ecmf train`."""
    rng = np.random.default_rng(0)
    n = 48
    names = [f"clip{i:03d}" for i in range(n)]
    y = np.arange(n) % len(schema.LABELS)
    centers = rng.normal(size=(len(schema.LABELS), 16)) * 3
    media = tmp_path / "media"
    media.mkdir()
    for nm in names:
        (media / f"{nm}.mp4").write_bytes(b"x")
    manifest = pd.DataFrame({"path": [f"media/{nm}.mp4" for nm in names],
                             "label": [schema.LABELS[k] if i < 36 else ""
                                       for i, k in enumerate(y)]})
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    utt = {nm: (centers[k] + rng.normal(size=16)).astype(np.float32) for nm, k in zip(names, y)}
    fra = {nm: rng.normal(size=(5, 8)).astype(np.float32) for nm in names}
    feats = tmp_path / "features"
    _folder(feats / "hubert-UTT", utt)
    _folder(feats / "hubert-FRA", fra)
    _folder(feats / "text-UTT", {nm: rng.normal(size=(1, 4)).astype(np.float32)
                                 for nm in names[:40]})
    sets = _sets([f"workdir={tmp_path / 'run'}", "corpus.layout=csv",
                  f"corpus.manifest={tmp_path / 'manifest.csv'}", "train.epochs=3",
                  "train.folds=3", "train.cpus_per_worker=1"])
    assert main(["import-features", *sets, "--from", f"audio={feats / 'hubert-UTT'}",
                 "--from", f"audio={feats / 'hubert-FRA'}", "--from",
                 f"text={feats / 'text-UTT'}", "--steps", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["imported"] == n and summary["features"]["text"]["missing"] == 8
    store = tmp_path / "run" / "features" / "store"
    assert store_dims(store) == {"audio": 16, "text": 4}
    assert main(["train", *sets]) == 0
    metrics = json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())
    assert metrics["features"] == ["audio", "text"] and metrics["n_labeled"] == 36
    assert len(list((tmp_path / "run" / "train" / "models").glob("fold_*.pt"))) == 3
    # The classes are well apart in the audio vectors: a model that learned anything beats chance.
    assert metrics["cv"]["accuracy"] > 0.5

    capsys.readouterr()
    assert main(["export-features", *sets, "--out", str(tmp_path / "back"),
                 "--features", "audio"]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == {"audio-UTT": n, "audio-FRA": n}
    assert np.array_equal(np.load(tmp_path / "back" / "audio-UTT" / "clip007.npy"),
                          utt["clip007"])


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    sets = _sets([f"workdir={tmp_path / 'run'}"])
    assert main(["import-features", *sets]) == 2
    assert "--from FEATURE=FOLDER" in capsys.readouterr().err
    assert main(["import-features", *sets, "--from", "audio"]) == 2
    assert "expected FEATURE=FOLDER" in capsys.readouterr().err
    assert main(["import-features", *sets, "--from", f"audio={tmp_path / 'nope'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export-features", *sets, "--out", str(tmp_path / "o")]) == 2
    assert "holds no Parquet files" in capsys.readouterr().err


def test_a_text_file_named_npy_is_called_what_it_is(tmp_path):
    arrays = _rng_arrays(["a", "b"], lambda n: (3,))
    folder = _folder(tmp_path / "x-UTT", arrays)
    (folder / "b.npy").write_text("this is not an array\n")
    res = import_mertools({"x": folder}, tmp_path / "store")
    reason = res["errors"].set_index(schema.SAMPLE_ID).loc["b", "reason"]
    assert "b.npy: not a NumPy .npy file" in reason and "pickle" not in reason
    assert "this i" in reason  # shows what the file starts with

"""Nothing lost under faults: a truncated store file, a killed encoder actor, a killed extract
driver; and corpus files that cannot be read fail before Ray with the file, line and way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bad_corpus import extract_sets

from ecmf import schema
from ecmf.cli import main


def _rows(workdir: Path) -> pd.Series:
    from ecmf.features.store import status_table

    return status_table(workdir / "features" / "store")[schema.SAMPLE_ID]


def _manifest_ids(workdir: Path) -> list[str]:
    return sorted(pd.read_parquet(workdir / "manifest.parquet")[schema.SAMPLE_ID])


@pytest.mark.ray
def test_truncated_store_file_is_named_set_aside_and_redone(bad_corpus, tiny_encoders,
                                                            tmp_path, ray_local, caplog):
    from ecmf.features.store import StoreFileError, read_features

    workdir = tmp_path / "w"
    sets = [*extract_sets(workdir, bad_corpus["root"], tiny_encoders),
            "--set", "extract.rows_per_file=8"]
    assert main(["extract", *sets]) == 0
    store = workdir / "features" / "store"
    files = sorted(store.glob("*.parquet"))
    assert len(files) > 1
    victim = files[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[:100])  # a writer killed mid-file, before renames
    with pytest.raises(StoreFileError, match=f"{victim}.*ecmf extract"):
        read_features(store)
    caplog.clear()
    assert main(["extract", *sets]) == 0
    assert str(victim) in caplog.text and "cannot be read" in caplog.text
    assert (store.with_name("store-quarantine") / victim.name).is_file()
    rows = _rows(workdir)
    assert rows.is_unique and sorted(rows) == _manifest_ids(workdir)
    summary = json.loads((workdir / "features" / "summary.json").read_text())
    assert 0 < summary["attempted"] < len(rows)  # only the lost file's clips (and retries)


def _encoder_actors() -> list:
    import psutil

    me = psutil.Process()
    return [p for p in me.children(recursive=True)
            if "MapBatches(EncoderGroup)" in " ".join(_cmdline(p))]


def _cmdline(p) -> list[str]:
    import psutil

    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


@pytest.mark.ray
def test_a_killed_encoder_actor_is_restarted_and_no_row_is_lost(bad_corpus, tiny_encoders,
                                                                 tmp_path, ray_local):
    workdir = tmp_path / "w"
    killed: list[int] = []

    def kill_one_actor():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            alive = [p for p in _encoder_actors() if time.time() - p.create_time() > 3]
            if alive:
                os.kill(alive[0].pid, signal.SIGKILL)  # an actor of this test's own Ray
                killed.append(alive[0].pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    assert main(["extract", *extract_sets(workdir, bad_corpus["root"], tiny_encoders)]) == 0
    killer.join()
    assert killed, "no encoder actor was seen to kill"
    rows = _rows(workdir)
    assert rows.is_unique and sorted(rows) == _manifest_ids(workdir)
    summary = json.loads((workdir / "features" / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["not_stored"] == 0


@pytest.mark.ray
def test_a_killed_extract_driver_resumes_where_it_stopped(bad_corpus, tiny_encoders, tmp_path,
                                                          ray_local):
    workdir = tmp_path / "w"
    # One clip per encoder call and a file per 4 rows: the store grows over seconds, so the
    # driver is stopped with some of it written and the rest to do.
    sets = [*extract_sets(workdir, bad_corpus["root"], tiny_encoders),
            "--set", "extract.rows_per_file=4", "--set", "ray.num_cpus=3",
            "--set", "extract.decode_batch_size=1",
            *[a for name in ("frames", "audio", "text")
              for a in ("--set", f"extract.encoders.{name}.batch_size=1")]]
    store = workdir / "features" / "store"
    driver = subprocess.Popen([sys.executable, "-m", "ecmf.cli", "extract", *sets],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None and not any(
                store.glob("*.parquet")):
            time.sleep(0.02)
        assert driver.poll() is None, "the driver ended before it could be killed"
        assert any(store.glob("*.parquet")), "no store file within 240 s"
    finally:
        _freeze_and_kill(driver)
    partial = _rows(workdir)
    assert 0 < len(partial) < len(_manifest_ids(workdir))
    assert main(["extract", *sets]) == 0
    rows = _rows(workdir)
    assert rows.is_unique and sorted(rows) == _manifest_ids(workdir)
    summary = json.loads((workdir / "features" / "summary.json").read_text())
    assert summary["skipped"] > 0 and summary["not_stored"] == 0


def _freeze_and_kill(driver: subprocess.Popen) -> None:
    """Stop the driver and the embedded Ray it started (ours to end) at once, then end them.

    Every process is frozen first, so no worker finishes a write between the driver's death and
    its own: what is on disk is what a crash at that instant leaves.
    """
    import psutil

    if driver.poll() is not None:
        return
    root = psutil.Process(driver.pid)
    frozen: dict[int, psutil.Process] = {}
    for _ in range(3):  # a process started while the others were being frozen
        for p in [root, *root.children(recursive=True)]:
            if p.pid not in frozen:
                try:
                    p.suspend()
                    frozen[p.pid] = p
                except psutil.NoSuchProcess:
                    pass
    for p in frozen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    driver.wait()


def _csv_only_copy(root: Path, dest: Path) -> Path:
    """The corpus' CSVs copied, its media folders linked: files to break, media shared."""
    dest.mkdir()
    for sub in ("video", "audio"):
        (dest / sub).symlink_to(root / sub)
    for csv in root.glob("*.csv"):
        shutil.copy(csv, dest / csv.name)
    return dest



def _extract_error(root: Path, tmp_path: Path, capsys, *extra: str) -> str:
    capsys.readouterr()
    sets = ["--set", f"corpus.root={root}", "--set", f"workdir={tmp_path / 'w'}", *extra]
    assert main(["extract", *sets]) == 2
    return capsys.readouterr().err


def test_a_gbk_subtitle_file_names_file_line_and_encoding(bad_corpus, tmp_path, capsys, no_ray):
    root = _csv_only_copy(bad_corpus["root"], tmp_path / "c")
    subs = pd.read_csv(root / "subtitle_chieng.csv", dtype=str, keep_default_na=False)
    subs.to_csv(root / "subtitle_chieng.csv", index=False, encoding="gbk")
    err = _extract_error(root, tmp_path, capsys)
    first = 2 + int(np.flatnonzero(subs["chinese"].map(lambda t: not t.isascii()))[0])
    assert str(root / "subtitle_chieng.csv") in err and f"line {first}:" in err
    assert "--set corpus.encoding=gbk" in err
    from ecmf.data.manifest import build_manifest
    from ecmf.stages.common import load_config

    cfg = load_config(None, [f"corpus.root={root}", f"workdir={tmp_path / 'w'}",
                             "corpus.encoding=gbk"])
    text = build_manifest(cfg).set_index(schema.SAMPLE_ID)[schema.TEXT]
    assert text.loc[subs["name"].iloc[0]] == subs["english"].iloc[0]


def test_an_off_label_row_and_a_duplicated_name_fail_before_ray(bad_corpus, tmp_path, capsys,
                                                                no_ray):
    root = _csv_only_copy(bad_corpus["root"], tmp_path / "c")
    labels = pd.read_csv(root / "track1_train_disdim.csv", dtype=str)
    bad = labels.copy()
    bad.loc[3, "discrete"] = "joyful"
    bad.to_csv(root / "track1_train_disdim.csv", index=False)
    err = _extract_error(root, tmp_path, capsys)
    assert "track1_train_disdim.csv line 5" in err and repr(labels.loc[3, "name"]) in err
    assert "joyful" in err and "expected one of" in err
    pd.concat([labels, labels.iloc[[0]]]).to_csv(root / "track1_train_disdim.csv", index=False)
    err = _extract_error(root, tmp_path / "x", capsys)
    assert "duplicated name" in err and labels.loc[0, "name"] in err


def test_bad_feature_files_mask_their_feature_only(tmp_path, capsys):
    """MERTools folders with a NaN, a wrong-shape and a non-.npy file: each masks its feature
    of its clip, with the file in the reason; the store holds one row per sample."""
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(6)]
    folders = {}
    for feature, dim in (("audio", 5), ("text", 3)):
        folder = tmp_path / f"{feature}-UTT"
        folder.mkdir()
        for n in names:
            np.save(folder / f"{n}.npy", rng.normal(size=dim).astype(np.float32))
        folders[feature] = folder
    np.save(folders["audio"] / "c1.npy", np.full(5, np.nan, np.float32))
    np.save(folders["audio"] / "c2.npy", np.zeros((2, 7), np.float32))
    (folders["text"] / "c3.npy").write_text("name,text\n")
    capsys.readouterr()
    assert main(["import-features", "--set", f"workdir={tmp_path / 'w'}",
                 "--from", f"audio={folders['audio']}", "--from", f"text={folders['text']}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 6 and summary["failed"] == 0 and summary["imported"] == 6
    errors = pd.read_parquet(tmp_path / "w" / "features" / "errors.parquet")
    got = {(r.sample_id, r.feature): r.reason for r in errors.itertuples()}
    assert sorted(got) == [("c1", "audio"), ("c2", "audio"), ("c3", "text")]
    assert "NaN" in got[("c1", "audio")] and "shape (2, 7)" in got[("c2", "audio")]
    assert "not a NumPy .npy file" in got[("c3", "text")]
    from ecmf.features.store import read_features

    ft = read_features(tmp_path / "w" / "features" / "store")
    assert sorted(ft.ids) == names
    m = dict(zip(ft.ids, range(len(ft))))
    assert not ft.masks["audio"][m["c1"]] and ft.masks["text"][m["c1"]]
    assert not ft.masks["text"][m["c3"]] and ft.masks["audio"][m["c3"]]

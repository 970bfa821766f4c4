"""Nothing lost: every bad input of `CASES` through `ecmf extract`, `train` and `predict`.

A broken modality is masked with its own reason and the clip keeps the rest; only a clip with
nothing read fails; re-runs replace rows instead of appending them; counts are exact.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.dataset as pads
import pytest
from bad_corpus import BROKEN_MODALITY, CASES, extract_sets

from ecmf import schema
from ecmf.cli import main

pytestmark = pytest.mark.ray  # every test here starts Ray

MODALITIES = ("frames", "audio", "text")


def _store(workdir) -> pd.DataFrame:
    return pads.dataset(str(workdir / "features" / "store"), format="parquet").to_table(
    ).to_pandas().set_index(schema.SAMPLE_ID)


@pytest.fixture(scope="module")
def extracted(bad_corpus, tiny_encoders, tmp_path_factory, ray_local):
    """One extraction of the bad corpus, in store files of 8 rows (several files to heal)."""
    workdir = tmp_path_factory.mktemp("run") / "w"
    sets = extract_sets(workdir, bad_corpus["root"], tiny_encoders)
    sets += ["--set", "extract.rows_per_file=8"]
    assert main(["extract", *sets]) == 0
    return {"workdir": workdir, "sets": sets, **bad_corpus,
            "summary": json.loads((workdir / "features" / "summary.json").read_text())}


def test_each_broken_modality_is_masked_with_its_reason_and_the_clip_kept(extracted):
    store = _store(extracted["workdir"])
    manifest = pd.read_parquet(extracted["workdir"] / "manifest.parquet")
    assert store.index.is_unique and sorted(store.index) == sorted(manifest[schema.SAMPLE_ID])
    for case, name in extracted["cases"].items():
        row = store.loc[name]
        read = {m for m in MODALITIES if row[schema.mask_column(m)]}
        assert read == CASES[case][1], case
        failed = {m for m in MODALITIES if row[schema.status_column(m)]}
        assert failed == BROKEN_MODALITY.get(case, set()), case
        assert (row[schema.ERROR] != "") == (case == "nothing"), case
    good = store.drop(index=list(extracted["cases"].values()))
    for m in MODALITIES:
        assert good[schema.mask_column(m)].all() and (good[schema.status_column(m)] == "").all()


def test_zero_byte_wav_and_no_audio_track_keep_frames_and_text(extracted):
    """The issue's bar: both clips stored with frames and text, mask_audio False."""
    store = _store(extracted["workdir"])
    for case in ("zero_wav_no_track", "no_track"):
        row = store.loc[extracted["cases"][case]]
        assert row["mask_frames"] and row["mask_text"] and not row["mask_audio"], case
        assert row[schema.ERROR] == "", case
    assert "no audio track" in store.loc[extracted["cases"]["no_track"], "status_audio"]
    # A zero-byte wav beside an mp4 that has a track: audio comes from the video.
    zero = store.loc[extracted["cases"]["zero_wav"]]
    assert zero["mask_audio"] and "audio from the video's track" in zero[schema.NOTES]


def test_errors_table_lists_each_failed_modality_once(extracted):
    errors = pd.read_parquet(extracted["workdir"] / "features" / "errors.parquet")
    cases = extracted["cases"]
    want = sorted((cases[c], m) for c, ms in BROKEN_MODALITY.items() for m in ms)
    assert sorted(zip(errors[schema.SAMPLE_ID], errors["feature"])) == want
    assert (errors["stage"] == "decode").all()
    by = errors.set_index([schema.SAMPLE_ID, "feature"])
    assert f"{cases['truncated_mp4']}.mp4" in by.loc[(cases["truncated_mp4"], "frames"), "reason"]
    assert "0 bytes" in by.loc[(cases["zero_wav_no_track"], "audio"), "reason"]


def test_summary_counts_what_was_stored(extracted):
    s = extracted["summary"]
    n = len(pd.read_parquet(extracted["workdir"] / "manifest.parquet"))
    partial = [c for c in BROKEN_MODALITY if c != "nothing"]
    assert s["clips"] == n and s["failed"] == 1 and s["done"] == n - 1
    assert s["with_failed_modality"] == len(partial) and s["not_stored"] == 0
    # Over the clips kept (`nothing` failed as a whole and is counted there).
    assert s["features"]["frames"]["failed"] == 2  # truncated_mp4, no_media
    assert s["features"]["audio"]["failed"] == 3  # zero_wav_no_track, no_track, no_media
    assert s["features"]["text"] == {"present": n - 1 - 2, "absent": 2, "failed": 0}
    # A bad wav replaced by the video's track (zero_wav); with no wav at all (absent_wav) the
    # video's track is simply the clip's audio, as in a release without audio/.
    assert s["audio_cut"] == 1 and s["audio_from_video"] == 1
    long = _store(extracted["workdir"]).loc[extracted["cases"]["long_120s"]]
    assert "audio cut at 60 s of 120.0 s" in long[schema.NOTES]


def test_rerun_retries_failed_modalities_and_replaces_their_rows(extracted, capsys):
    before = _store(extracted["workdir"])
    assert main(["extract", *extracted["sets"]]) == 0
    s = json.loads((extracted["workdir"] / "features" / "summary.json").read_text())
    assert s["attempted"] == len(BROKEN_MODALITY)  # the clips with a failed modality
    assert s["skipped"] == len(before) - len(BROKEN_MODALITY)
    after = _store(extracted["workdir"])
    assert after.index.is_unique and sorted(after.index) == sorted(before.index)
    errors = pd.read_parquet(extracted["workdir"] / "features" / "errors.parquet")
    assert not errors.duplicated([schema.SAMPLE_ID, "feature"]).any()


def test_train_and_predict_use_every_clip_with_a_modality(extracted, capsys):
    workdir, cases = extracted["workdir"], extracted["cases"]
    assert main(["train", *extracted["sets"]]) == 0
    metrics = json.loads((workdir / "train" / "metrics.json").read_text())
    n_train = int((extracted["truth"]["split"] == "train").sum())
    assert metrics["n_labeled"] == n_train and metrics["n_labeled_without_features"] == 0
    assert metrics["labeled_modalities"]["frames"]["failed"] == 1  # truncated_mp4
    assert metrics["labeled_modalities"]["audio"]["failed"] == 2  # zero_wav_no_track, no_track
    capsys.readouterr()
    assert main(["predict", *extracted["sets"]]) == 0
    printed = capsys.readouterr().out
    # The summary is the JSON object at the end; a Ray warning relayed to stdout may precede it.
    summary = json.loads(printed[printed.find("{\n"):])
    sub = pd.read_csv(workdir / "predict" / "submission.csv")
    cands = pd.read_csv(extracted["root"] / "track_all_candidates.csv")["name"]
    assert sorted(sub["name"]) == sorted(cands) and sub["name"].is_unique
    fallbacks = pd.read_csv(workdir / "predict" / "fallbacks.csv")["name"].tolist()
    assert fallbacks == [cases["nothing"]]  # no_media has its text: predicted, no fallback
    assert summary["predicted"] == len(cands) - 1 and summary["fallbacks"] == 1
    assert summary["candidate_modalities"]["text"]["present"] == len(cands) - 1

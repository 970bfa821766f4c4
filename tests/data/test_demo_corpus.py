"""The demo corpus generator: MER2025 layout, decodable media, noise, hard cases, determinism."""

from __future__ import annotations

import dataclasses
import wave

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.config import DemoConfig
from ecmf.data.demo import CONFUSABLE, plan_corpus
from ecmf.data.mer2025 import read_mer2025


def _csv(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_layout_and_columns_are_mer2025s(tiny_corpus):
    assert list(_csv(tiny_corpus / "subtitle_chieng.csv").columns) == ["name", "chinese", "english"]
    assert list(_csv(tiny_corpus / "track1_train_disdim.csv").columns) == [
        "name", "discrete", "valence"]
    assert list(_csv(tiny_corpus / "track_all_candidates.csv").columns) == ["name"]
    truth = _csv(tiny_corpus / "hidden_truth.csv")
    assert len(truth) == 12 + 6 + 6 and truth["name"].is_unique
    assert (truth["test"] == "True").sum() == 4
    for name in truth["name"]:
        assert (tiny_corpus / "video" / f"{name}.mp4").is_file()
        assert (tiny_corpus / "audio" / f"{name}.wav").is_file()
    m = read_mer2025(tiny_corpus)  # the reader that serves real MER2025 serves the demo
    assert m[schema.SPLIT].value_counts().to_dict() == {"train": 12, "pool": 6, "candidate": 6}


def test_video_has_frames_and_an_audio_track(tiny_corpus):
    import decord

    name = _csv(tiny_corpus / "hidden_truth.csv")["name"].iloc[0]
    vr = decord.VideoReader(str(tiny_corpus / "video" / f"{name}.mp4"))
    assert vr[0].shape == (96, 96, 3)
    assert abs(len(vr) - 8) <= 1  # 1 s at 8 fps
    ar = decord.AudioReader(str(tiny_corpus / "video" / f"{name}.mp4"), sample_rate=16000,
                            mono=True)
    assert abs(ar.shape[1] - 16000) < 2048
    with wave.open(str(tiny_corpus / "audio" / f"{name}.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)


def test_silent_clips_are_silent_and_voiced_ones_are_not(tiny_corpus):
    from ecmf.data.media import is_silent, read_audio

    truth = _csv(tiny_corpus / "hidden_truth.csv")
    for name, silent in zip(truth["name"], truth["silent"] == "True"):
        assert is_silent(read_audio(str(tiny_corpus / "audio" / f"{name}.wav"))) == silent, name


def test_label_noise_rate_and_direction():
    cfg = DemoConfig(n_train=2000, n_pool=10, n_candidates=10, n_test=5, noise_rate=0.2)
    plan = plan_corpus(cfg)
    train = plan[plan["split"] == "train"]
    flipped = train[train["noisy_label"] != train["discrete"]]
    assert len(flipped) == 400 == int(train["is_noisy"].sum())
    for true, noisy in zip(flipped["discrete"], flipped["noisy_label"]):
        assert noisy in CONFUSABLE[true]
    assert (plan.loc[plan["split"] != "train", "noisy_label"] == "").all()


def test_hard_cases_and_class_balance():
    plan = plan_corpus(DemoConfig(n_train=1000, n_pool=500, n_candidates=500, n_test=300))
    n = len(plan)
    assert plan["no_face"].sum() == round(0.06 * n) and plan["silent"].sum() == round(0.06 * n)
    assert (plan.loc[plan["empty_text"], "english"] == "").all()
    assert plan["contradicts"].mean() > 0.04
    freq = plan["discrete"].value_counts(normalize=True)
    assert freq.idxmax() == "neutral" and freq.idxmin() == "surprise"


def test_same_seed_same_plan_other_seed_other_plan():
    cfg = DemoConfig(n_train=50, n_pool=20, n_candidates=20, n_test=10)
    a, b = plan_corpus(cfg), plan_corpus(cfg)
    pd.testing.assert_frame_equal(a, b)
    c = plan_corpus(dataclasses.replace(cfg, seed=1))
    assert not a["discrete"].equals(c["discrete"])


def test_rendering_does_not_depend_on_worker_count(tmp_path):
    from ecmf.data.demo import write_demo_corpus

    cfg = DemoConfig(n_train=3, n_pool=2, n_candidates=2, n_test=1, seconds=0.5)
    write_demo_corpus(dataclasses.replace(cfg, workers=1), tmp_path / "a")
    write_demo_corpus(dataclasses.replace(cfg, workers=2), tmp_path / "b")
    for name in _csv(tmp_path / "a" / "hidden_truth.csv")["name"]:
        wa = (tmp_path / "a" / "audio" / f"{name}.wav").read_bytes()
        assert wa == (tmp_path / "b" / "audio" / f"{name}.wav").read_bytes()
    assert np.array_equal(_csv(tmp_path / "a" / "subtitle_chieng.csv").values,
                          _csv(tmp_path / "b" / "subtitle_chieng.csv").values)

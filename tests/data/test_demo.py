"""The demo corpus generator: MER2025 layout, decodable media, label noise, determinism."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecmf.config import DemoConfig
from ecmf.data import synth
from ecmf.data.demo import CONFUSABLE, HIDDEN_TRUTH, TRUTH_COLUMNS, plan_corpus, write_demo_corpus
from ecmf.schema import LABELS

TINY = dict(n_train=12, n_pool=6, n_candidates=6, n_test=4, seconds=1.0, no_face_rate=0.25,
            silent_rate=0.25, empty_text_rate=0.25)
COLUMNS = {
    "subtitle_chieng.csv": ["name", "chinese", "english"],
    "track1_train_disdim.csv": ["name", "discrete", "valence"],
    "track_all_candidates.csv": ["name"],
    HIDDEN_TRUTH: TRUTH_COLUMNS,
}


def _csv(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name, dtype=str, keep_default_na=False)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, write_demo_corpus(DemoConfig(**TINY, workers=2), root)


def test_layout_columns_and_splits(corpus):
    root, summary = corpus
    for name, cols in COLUMNS.items():
        assert list(_csv(root, name).columns) == cols, name
    truth = _csv(root, HIDDEN_TRUTH)
    assert len(truth) == 24 and truth["name"].is_unique
    assert truth["name"].str.fullmatch(r"sample_\d{8}").all()
    train, cands = _csv(root, "track1_train_disdim.csv"), _csv(root, "track_all_candidates.csv")
    assert set(train["name"]) == set(truth.loc[truth.split == "train", "name"])
    assert set(cands["name"]) == set(truth.loc[truth.split == "candidate", "name"])
    assert (truth.split == "pool").sum() == 6
    test = truth[truth.test == "True"]
    assert len(test) == 4 and (test.split == "candidate").all()
    assert set(train["discrete"]) <= set(LABELS) and set(truth["discrete"]) <= set(LABELS)
    assert train["valence"].astype(float).between(-5, 5).all()
    # Names are shuffled: in name order the splits are interleaved, not in blocks.
    assert (truth.split != truth.split.shift()).sum() > 3
    assert summary["splits"] == {"train": 12, "pool": 6, "candidate": 6} and summary["clips"] == 24
    for name in set(truth["name"]) | set(_csv(root, "subtitle_chieng.csv")["name"]):
        assert (root / "video" / f"{name}.mp4").is_file(), name
        assert (root / "audio" / f"{name}.wav").is_file(), name
    assert len(list((root / "video").iterdir())) == len(list((root / "audio").iterdir())) == 24


def test_media_decodes_with_decord(corpus):
    decord = pytest.importorskip("decord")
    root, _ = corpus
    name = _csv(root, HIDDEN_TRUTH)["name"].iloc[0]
    vr = decord.VideoReader(str(root / "video" / f"{name}.mp4"))
    assert abs(len(vr) - 8) <= 1 and abs(vr.get_avg_fps() - 8) < 0.5
    assert vr[0].asnumpy().shape == (96, 96, 3)
    ar = decord.AudioReader(str(root / "video" / f"{name}.mp4"), sample_rate=16000, mono=True)
    samples = ar[:].asnumpy()
    assert samples.shape[0] == 1 and abs(samples.shape[1] - 16000) < 2048  # AAC priming
    with wave.open(str(root / "audio" / f"{name}.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.getnframes() == 16000


def test_video_frames_and_audio_formats(corpus):
    decord = pytest.importorskip("decord")
    root, _ = corpus
    name = _csv(root, HIDDEN_TRUTH)["name"].iloc[0]
    vr = decord.VideoReader(str(root / "video" / f"{name}.mp4"))
    assert vr[0].shape == (96, 96, 3)
    assert abs(len(vr) - 8) <= 1  # 1 s at 8 fps
    ar = decord.AudioReader(str(root / "video" / f"{name}.mp4"), sample_rate=16000, mono=True)
    assert abs(ar.shape[1] - 16000) < 2048
    with wave.open(str(root / "audio" / f"{name}.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)


def test_silent_clips_are_silent_in_wav_and_mp4(corpus):
    decord = pytest.importorskip("decord")
    root, _ = corpus
    truth = _csv(root, HIDDEN_TRUTH)
    assert truth.silent.eq("True").sum() == 6  # 25% of 24, exactly
    for name, silent in zip(truth["name"], truth["silent"] == "True"):
        with wave.open(str(root / "audio" / f"{name}.wav")) as w:
            wav = np.frombuffer(w.readframes(w.getnframes()), np.int16) / 32768.0
        mp4 = decord.AudioReader(str(root / "video" / f"{name}.mp4"), sample_rate=16000,
                                 mono=True)[:].asnumpy()
        if silent:  # below the -60 dBFS floor that marks audio as missing
            assert _rms(wav) < 1e-3 and _rms(mp4) < 1e-3, name
        else:
            assert _rms(wav) > 1e-2 and _rms(mp4) > 1e-2, name


def test_no_face_clips_show_background_only(corpus):
    decord = pytest.importorskip("decord")
    root, _ = corpus
    truth = _csv(root, HIDDEN_TRUTH)
    plan = plan_corpus(DemoConfig(**TINY))
    index = {n: i for i, n in enumerate(plan["name"])}
    assert truth.no_face.eq("True").sum() == 6
    for name, label, no_face in zip(truth["name"], truth["discrete"], truth["no_face"] == "True"):
        i = index[name]
        # The same clip rendered without a face: its background, frame for frame.
        empty, _ = synth.render_clip(label, True, True, 0, i, 96, 8, 1.0)
        face, _ = synth.render_clip(label, False, True, 0, i, 96, 8, 1.0)
        changed = (np.abs(face.astype(int) - empty).max(-1) > 30).mean()
        assert changed > 0.1, name  # a drawn face covers a good part of the frame
        decoded = decord.VideoReader(str(root / "video" / f"{name}.mp4")).get_batch(
            list(range(8))).asnumpy().astype(float)
        diff_empty = np.abs(decoded - empty).mean()
        diff_face = np.abs(decoded - face).mean()
        if no_face:
            assert diff_empty < 6 and diff_face > diff_empty + 5, name
        else:
            assert diff_face < 6 and diff_empty > diff_face + 5, name


def test_label_noise_and_flags_on_a_large_plan():
    cfg = DemoConfig(n_train=3000, n_pool=1000, n_candidates=1000, n_test=400, noise_rate=0.2)
    plan = plan_corpus(cfg)
    train = plan[plan.split == "train"]
    assert train.is_noisy.sum() == 600
    flipped = train[train.is_noisy]
    assert (flipped.noisy_label != flipped.discrete).all()
    assert all(n in CONFUSABLE[c] for n, c in zip(flipped.noisy_label, flipped.discrete))
    assert (train[~train.is_noisy].noisy_label == train[~train.is_noisy].discrete).all()
    assert (plan[plan.split != "train"].noisy_label == "").all() and not plan.is_noisy[
        plan.split != "train"].any()
    freq = plan.discrete.value_counts(normalize=True)
    assert freq.idxmax() == "neutral" and freq.idxmin() == "surprise"
    test = plan[plan.test]
    assert len(test) == 400 and (test.split == "candidate").all()
    n = len(plan)
    assert plan.no_face.sum() == round(0.06 * n) and plan.silent.sum() == round(0.06 * n)
    assert plan.empty_text.sum() == round(0.08 * n) and 0.08 < plan.contradicts.mean() < 0.1
    empty = plan.empty_text
    assert (plan.english[empty] == "").all() and (plan.chinese[empty] == "").all()
    assert (plan.english[~empty] != "").all() and (plan.chinese[~empty] != "").all()
    assert not (plan.contradicts & empty).any()
    # Valence follows the (noisy) training label.
    mean_valence = train.groupby("noisy_label").valence.mean()
    assert mean_valence["happy"] > 2 and mean_valence["angry"] < -2
    assert abs(mean_valence["neutral"]) < 0.5
    assert plan_corpus(DemoConfig(n_train=50, noise_rate=0.0)).is_noisy.sum() == 0


def test_same_seed_same_corpus_different_seed_different(corpus, tmp_path):
    root, _ = corpus
    again = tmp_path / "again"
    write_demo_corpus(DemoConfig(**TINY, workers=1), again)  # other worker count, same seed
    for name in COLUMNS:
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    for sub in ("audio", "video"):
        for f in sorted((root / sub).iterdir()):
            assert f.read_bytes() == (again / sub / f.name).read_bytes(), f.name
    a, b = plan_corpus(DemoConfig(**TINY)), plan_corpus(DemoConfig(**TINY, seed=1))
    assert not a.discrete.equals(b.discrete) and not a.english.equals(b.english)
    fa, aa = synth.render_clip("happy", False, False, 0, 3, 96, 8, 1.0)
    fb, ab = synth.render_clip("happy", False, False, 1, 3, 96, 8, 1.0)
    assert not np.array_equal(fa, fb) and not np.array_equal(aa, ab)


def test_rewrites_a_demo_corpus_but_not_a_foreign_directory(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo corpus"):
        write_demo_corpus(DemoConfig(**TINY, workers=1), foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

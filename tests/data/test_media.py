"""Media decoding on real mp4/wav files: frames, audio from wav or the video track, bad files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecmf.data.media import MediaError, is_silent, read_audio, sample_frames


def _voiced(root):
    truth = pd.read_csv(root / "hidden_truth.csv", dtype=str)
    return truth[truth["silent"].str.lower() != "true"]["name"].iloc[0]


def test_frames_are_sampled_uniformly_and_scaled(tiny_corpus):
    name = _voiced(tiny_corpus)
    frames = sample_frames(str(tiny_corpus / "video" / f"{name}.mp4"), 5)
    assert frames.shape == (5, 96, 96, 3) and frames.dtype == np.uint8
    small = sample_frames(str(tiny_corpus / "video" / f"{name}.mp4"), 3, short_side=48)
    assert small.shape == (3, 48, 48, 3)


def test_audio_from_wav_matches_the_video_track(tiny_corpus):
    name = _voiced(tiny_corpus)
    wav = read_audio(str(tiny_corpus / "audio" / f"{name}.wav"))
    track = read_audio("", str(tiny_corpus / "video" / f"{name}.mp4"))
    assert abs(len(wav) - 16000) < 1600 and abs(len(track) - len(wav)) < 2048
    assert not is_silent(wav) and not is_silent(track)
    n = min(len(wav), len(track)) // 2
    # AAC is lossy and may shift by a frame: compare energy, not samples.
    assert np.std(track[:n]) == pytest.approx(np.std(wav[:n]), rel=0.3)


def test_missing_and_corrupt_files_raise_media_error_naming_the_file(tmp_path, tiny_corpus):
    with pytest.raises(MediaError, match="not found"):
        sample_frames(str(tmp_path / "nope.mp4"), 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes((tiny_corpus / "video").glob("*.mp4").__next__().read_bytes()[:200])
    with pytest.raises(MediaError, match="bad.mp4"):
        sample_frames(str(bad), 4)
    with pytest.raises(MediaError, match="bad.mp4"):
        read_audio("", str(bad))
    empty = tmp_path / "empty.wav"
    import wave

    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    with pytest.raises(MediaError, match="zero-length"):
        read_audio(str(empty))


def test_max_seconds_cuts_long_audio(tiny_corpus):
    name = _voiced(tiny_corpus)
    x = read_audio(str(tiny_corpus / "audio" / f"{name}.wav"), max_seconds=0.25)
    assert len(x) == 4000

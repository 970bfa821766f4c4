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


# Damaged and missing media, built here: a wav cut mid-sample, a header that claims more than
# the file holds, an mp4 whose tail is gone, an mp4 without an audio track.

SR = 16000


def _write_wav(path, samples: np.ndarray, channels: int = 1) -> bytes:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels), w.setsampwidth(2), w.setframerate(SR)
        w.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return path.read_bytes()


def _write_mp4(path, n_frames: int = 48, fps: int = 24, audio: bool = True,
               faststart: bool = True) -> None:
    """Frame k shows a white bar k + 1 columns wide, so a frame tells its index."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as box:
        v = box.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        v.options = {"preset": "ultrafast", "crf": "18", "threads": "1"}
        if audio:
            a = box.add_stream("aac", rate=SR)
            a.layout = "mono"
        for k in range(n_frames):
            f = np.full((48, 64, 3), 40, np.uint8)
            f[:, : k + 1] = 255
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = k
            box.mux(v.encode(vf))
        box.mux(v.encode())
        if audio:
            t = np.arange(SR * n_frames // fps) / SR
            x = (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)
            af = av.AudioFrame.from_ndarray(x[None], format="s16", layout="mono")
            af.sample_rate, af.pts = SR, 0
            box.mux(a.encode(af))
            box.mux(a.encode())


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 2 s mp4 with audio (faststart), one without audio, one with its moov at the end."""
    root = tmp_path_factory.mktemp("clips")
    _write_mp4(root / "av.mp4")
    _write_mp4(root / "mute.mp4", audio=False)
    _write_mp4(root / "moov_last.mp4", faststart=False)
    return root


def _cut(src, dst, keep: float):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.mark.parametrize("channels", [1, 2])
def test_a_wav_cut_mid_sample_decodes_up_to_the_cut(tmp_path, channels):
    ramp = (np.arange(8000 * channels) % 20000 - 10000).astype(np.int16)
    data = _write_wav(tmp_path / "a.wav", ramp, channels)
    header = len(data) - ramp.nbytes
    cut = data[: header + 5000 * 2 * channels + 2 * channels - 1]  # a frame short of 5001
    assert len(cut) % 2 == 1
    (tmp_path / "a.wav").write_bytes(cut)
    x = read_audio(str(tmp_path / "a.wav"))
    expected = ramp[: 5000 * channels].reshape(-1, channels).mean(axis=1) / 32768.0
    assert len(x) == 5000 and np.allclose(x, expected)


def test_a_wav_whose_header_claims_more_than_it_holds_gives_what_is_there(tmp_path):
    data = bytearray(_write_wav(tmp_path / "a.wav", np.full(4000, 1000, np.int16)))
    at = data.index(b"data") + 4
    data[at: at + 4] = (0xFFFFFFF0).to_bytes(4, "little")  # a writer that never finished
    (tmp_path / "a.wav").write_bytes(bytes(data))
    x = read_audio(str(tmp_path / "a.wav"))
    assert len(x) == 4000 and np.allclose(x, 1000 / 32768.0)


@pytest.mark.parametrize("wav", ["zero bytes", "no samples", "absent"])
def test_a_wav_without_samples_falls_back_to_the_video_track(tmp_path, clips, wav):
    path = tmp_path / "a.wav"
    if wav == "zero bytes":
        path.write_bytes(b"")
    elif wav == "no samples":
        _write_wav(path, np.zeros(0, np.int16))
    notes = []
    x = read_audio(str(path), str(clips / "av.mp4"), notes=notes)
    assert abs(len(x) - 2 * SR) < 2048 and not is_silent(x)
    reason = {"zero bytes": "0 bytes", "no samples": "zero-length", "absent": "not found"}[wav]
    assert len(notes) == 1 and str(path) in notes[0] and reason in notes[0]
    assert "video's track" in notes[0]


def test_no_wav_and_no_audio_track_names_both_files(tmp_path, clips):
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(MediaError) as err:
        read_audio(str(tmp_path / "a.wav"), str(clips / "mute.mp4"))
    msg = str(err.value)
    assert "a.wav" in msg and "0 bytes" in msg and "mute.mp4" in msg and "no audio track" in msg


def test_a_video_with_a_damaged_tail_gives_frames_up_to_the_damage(tmp_path, clips):
    whole = sample_frames(str(clips / "av.mp4"), 48)  # every frame, frame i at index i
    bad = _cut(clips / "av.mp4", tmp_path / "cut.mp4", 0.65)
    notes = []
    frames = sample_frames(str(bad), 6, notes=notes)
    assert frames.shape == (6, 48, 64, 3)
    # Which frame of the whole clip each sampled frame is: spread over the part before the cut.
    err = ((frames[:, None].astype(float) - whole[None].astype(float)) ** 2).mean(axis=(2, 3, 4))
    idx = err.argmin(axis=1)
    assert err.min(axis=1).max() < 20 and (np.diff(idx) > 0).all()
    assert idx[0] < 5 and 20 < idx[-1] < 34
    assert len(notes) == 1 and "cut.mp4" in notes[0] and "of 48" in notes[0]


def test_a_cut_video_without_its_index_is_a_media_error(tmp_path, clips):
    bad = _cut(clips / "moov_last.mp4", tmp_path / "moov_last.mp4", 0.65)
    with pytest.raises(MediaError, match=r"moov_last\.mp4.*moov atom"):
        sample_frames(str(bad), 4)


def test_a_long_audio_is_cut_with_a_note_and_a_log_line(tmp_path, caplog):
    _write_wav(tmp_path / "long.wav", np.full(SR, 1000, np.int16))
    notes = []
    with caplog.at_level("WARNING", logger="ecmf.data.media"):
        x = read_audio(str(tmp_path / "long.wav"), max_seconds=0.5, notes=notes)
    assert len(x) == SR // 2
    assert notes == ["audio cut at 0.5 s of 1.0 s"]
    line = " ".join(r.getMessage() for r in caplog.records)
    assert "long.wav" in line and "1.0 s" in line and "0.5 s" in line

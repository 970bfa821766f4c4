"""Media decoding: uniformly sampled video frames with decord, 16 kHz mono audio from wav or video."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


class MediaError(RuntimeError):
    """A clip that cannot be decoded; the message names the file and what went wrong."""


def sample_frames(path: str, num_frames: int, short_side: int = 256) -> np.ndarray:
    """`num_frames` RGB frames sampled uniformly over the clip, uint8 [T, H, W, 3].

    Frames are scaled so that their short side is at most `short_side`: encoders resize to
    224 px or less anyway, and full-size frames would multiply the pipeline's memory.
    """
    import decord

    if not path or not Path(path).is_file():
        raise MediaError(f"{path or '<no video>'}: video file not found")
    try:
        vr = decord.VideoReader(path, num_threads=1)
        n = len(vr)
        if n == 0:
            raise MediaError(f"{path}: video has no frames")
        # Centre of each of num_frames equal segments, as MERTools samples.
        idx = ((np.arange(num_frames) + 0.5) * n / num_frames).astype(int).clip(0, n - 1)
        frames = vr.get_batch(idx.tolist()).asnumpy()
    except MediaError:
        raise
    except Exception as e:  # decord raises plain RuntimeError/DECORDError on corrupt streams
        raise MediaError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
    h, w = frames.shape[1:3]
    scale = short_side / min(h, w)
    if scale < 1.0:
        # Resized here, not by decord: its own resize fails on some sizes.
        from PIL import Image

        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR))
                           for f in frames])
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _read_pcm_wav(path: str, sample_rate: int) -> np.ndarray | None:
    """Fast path for 16-bit PCM wavs at the target rate; None when another reader is needed."""
    try:
        with wave.open(path, "rb") as w:
            if w.getsampwidth() != 2 or w.getframerate() != sample_rate:
                return None
            channels = w.getnchannels()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError):
        return None
    x = data.astype(np.float32) / 32768.0
    if channels > 1:
        x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    return x


def _read_with_decord(path: str, sample_rate: int) -> np.ndarray:
    import decord

    ar = decord.AudioReader(path, sample_rate=sample_rate, mono=True)
    return np.asarray(ar[:].asnumpy(), dtype=np.float32).reshape(-1)


def read_audio(audio_path: str, video_path: str = "", sample_rate: int = 16000,
               max_seconds: float = 60.0) -> np.ndarray:
    """Mono float32 audio at `sample_rate`: from the wav when present, else the video's track."""
    source = audio_path if audio_path and Path(audio_path).is_file() else video_path
    if not source or not Path(source).is_file():
        raise MediaError(f"{audio_path or video_path or '<no audio>'}: no audio file and no video")
    try:
        x = _read_pcm_wav(source, sample_rate) if source.endswith(".wav") else None
        if x is None:
            x = _read_with_decord(source, sample_rate)
    except Exception as e:
        raise MediaError(f"{source}: cannot decode audio ({type(e).__name__}: {e})") from None
    if x.size == 0:
        raise MediaError(f"{source}: zero-length audio")
    if not np.isfinite(x).all():
        raise MediaError(f"{source}: audio holds non-finite samples")
    return x[: int(max_seconds * sample_rate)]


def is_silent(audio: np.ndarray, rms_floor: float = 1e-3) -> bool:
    """True for audio whose RMS is below `rms_floor` (about -60 dBFS): nothing to encode."""
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < rms_floor

"""Media decoding: uniformly sampled video frames with decord, 16 kHz mono audio from wav or video.

Damaged files give what they hold: a cut wav up to the cut, a video with a damaged tail up to its
last good frame, a missing or empty wav the video's own track.
"""

from __future__ import annotations

import logging
import re
import struct
import wave
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class MediaError(RuntimeError):
    """A clip that cannot be decoded; the message names the file and what went wrong."""


# decord's "[07:35:42] file.cc:486: ", FFmpeg's "[mov,mp4 @ 0x55d2b5011980] ", "[Errno 22] "
_LOG_PREFIX = re.compile(r"^(\[[\d:]+\] \S+:\d+: |\[[^\]]* @ 0x[0-9a-f]+\] |\[Errno -?\d+\] )+")


def _why(e: Exception) -> str:
    """One line from a decoder's exception, without decord's and FFmpeg's log prefixes."""
    lines: list[str] = []
    for line in str(e).splitlines():
        line = _LOG_PREFIX.sub("", line.strip())
        if line and line not in lines:
            lines.append(line)
    return f"{type(e).__name__}: {'; '.join(lines)[:300]}"


def _uniform(n: int, k: int) -> np.ndarray:
    """Centre of each of k equal segments of n frames, as MERTools samples."""
    return ((np.arange(k) + 0.5) * n / k).astype(int).clip(0, n - 1)


def _mp4_boxes(path: str) -> list[bytes]:
    """Types of an mp4's top-level boxes, walked by their sizes until the file ends."""
    types = []
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        pos = 0
        while pos + 8 <= end and len(types) < 64:
            f.seek(pos)
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
            types.append(kind)
            if size < 8:  # 0: the box runs to the end of the file
                break
            pos += size
    return types


def _decode_until_damage(path: str, keep: np.ndarray | None = None):
    """PyAV's frames of `path` in order, up to the first one that fails to decode.

    Returns (frames decoded, RGB arrays of the frames at the sorted indices `keep`, frames the
    container declares, why decoding stopped early or "").
    """
    import av

    n, kept, why = 0, [], ""
    with av.open(path) as box:
        if not box.streams.video:
            raise MediaError("no video stream")
        stream = box.streams.video[0]
        stream.codec_context.thread_count = 1
        want = set() if keep is None else set(keep.tolist())
        try:
            for packet in box.demux(stream):
                for frame in packet.decode():
                    if n in want:
                        image = frame.to_ndarray(format="rgb24")
                        kept.extend(image for i in keep if i == n)  # an index may repeat
                    n += 1
                if keep is not None and n > keep[-1]:
                    break
        except Exception as e:  # FFmpegError on a cut or corrupt packet: keep what came before
            why = _why(e)
        return n, kept, stream.frames, why


def _sample_until_damage(path: str, num_frames: int, decord_why: str,
                         notes: list[str] | None) -> np.ndarray:
    """`num_frames` frames sampled uniformly over the frames that decode, for a damaged clip."""
    try:
        good, _, declared, why = _decode_until_damage(path)
    except Exception as e:
        reason = str(e) if isinstance(e, MediaError) else _why(e)
        try:
            boxes = _mp4_boxes(path)
        except (OSError, struct.error):
            boxes = []
        if b"ftyp" in boxes and b"moov" not in boxes:
            reason = "an mp4 without its moov atom: cut before its index was written"
        raise MediaError(f"{path}: cannot open video ({reason}; decord: {decord_why})") from None
    if good == 0:
        raise MediaError(f"{path}: no frame decodes ({why or 'video has no frames'}; "
                         f"decord: {decord_why})")
    _, frames, _, _ = _decode_until_damage(path, _uniform(good, num_frames))
    if len(frames) != num_frames:  # the second pass decodes the same prefix; never expected
        raise MediaError(f"{path}: {len(frames)} of {num_frames} frames decode on a second pass")
    if why or declared > good:
        of = f" of {declared}" if declared > good else ""
        log.warning("%s: only %d%s frames decode (%s); sampled within those", path, good, of,
                    why or decord_why)
        if notes is not None:
            notes.append(f"video {path} damaged: frames sampled from the {good}{of} that decode")
    else:  # whole, but not to decord's taste
        log.info("%s: decoded with PyAV (decord: %s)", path, decord_why)
    return np.stack(frames)


def sample_frames(path: str, num_frames: int, short_side: int = 256,
                  notes: list[str] | None = None) -> np.ndarray:
    """`num_frames` RGB frames sampled uniformly over the clip, uint8 [T, H, W, 3].

    Frames are scaled so that their short side is at most `short_side`: encoders resize to
    224 px or less anyway, and full-size frames would multiply the pipeline's memory. A clip
    whose tail is damaged is sampled over the frames before the damage (a line goes to `notes`).
    """
    return sample_frames_at(path, num_frames, (short_side,), notes)[0]


def sample_frames_at(path: str, num_frames: int, short_sides: tuple[int, ...],
                     notes: list[str] | None = None) -> list[np.ndarray]:
    """`sample_frames` at each of `short_sides`, from one decode of the clip: the vision
    towers' small frames and a face detector's larger ones cost one pass over the video."""
    frames = _decode_frames(path, num_frames, notes)
    return [_shrink(frames, side) for side in short_sides]


def _decode_frames(path: str, num_frames: int, notes: list[str] | None) -> np.ndarray:
    import decord

    if not path or not Path(path).is_file():
        raise MediaError(f"{path or '<no video>'}: video file not found")
    try:
        vr = decord.VideoReader(path, num_threads=1)
        n = len(vr)
        if n == 0:
            raise ValueError("video has no frames")
        frames = vr.get_batch(_uniform(n, num_frames).tolist()).asnumpy()
    except Exception as e:
        # decord indexes every packet on open, so a cut file does not even open, and it raises
        # on the first bad packet of a batch: PyAV decodes in order and stops at the damage.
        frames = _sample_until_damage(path, num_frames, _why(e), notes)
    return frames


def _shrink(frames: np.ndarray, short_side: int) -> np.ndarray:
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
    """Fast path for 16-bit PCM wavs at the target rate; None when another reader is needed.

    A wav cut short, or whose header claims more frames than follow, gives the whole frames
    that are there.
    """
    try:
        with wave.open(path, "rb") as w:
            if w.getsampwidth() != 2 or w.getframerate() != sample_rate:
                return None
            channels = w.getnchannels()
            frame = 2 * channels
            # Bounded by the file's size: a header may claim up to 4 GB.
            raw = w.readframes(min(w.getnframes(), Path(path).stat().st_size // frame))
    except (wave.Error, EOFError):
        return None
    data = np.frombuffer(raw[: len(raw) // frame * frame], dtype="<i2")
    x = data.astype(np.float32) / 32768.0
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x


def _read_with_decord(path: str, sample_rate: int) -> np.ndarray:
    import decord

    ar = decord.AudioReader(path, sample_rate=sample_rate, mono=True)
    return np.asarray(ar[:].asnumpy(), dtype=np.float32).reshape(-1)


def _lacks_audio_track(path: str) -> bool:
    """True for a video without an audio stream (a cut file may show no stream at all)."""
    import av

    try:
        with av.open(path) as box:
            return bool(box.streams.video) and not box.streams.audio
    except Exception:  # not openable: the decoder's own error says more
        return False


def _audio_from(path: str, sample_rate: int) -> tuple[np.ndarray | None, str]:
    """(samples, "") from one wav or video, or (None, why it gives none)."""
    p = Path(path)
    if not p.is_file():
        return None, "file not found"
    if p.stat().st_size == 0:
        return None, "empty file (0 bytes)"
    try:
        x = _read_pcm_wav(path, sample_rate) if p.suffix.lower() == ".wav" else None
        if x is None:
            x = _read_with_decord(path, sample_rate)
    except Exception as e:
        if _lacks_audio_track(path):
            return None, "no audio track"
        return None, f"cannot decode audio ({_why(e)})"
    if x.size == 0:
        return None, "zero-length audio"
    if not np.isfinite(x).all():
        return None, "audio holds non-finite samples"
    return x, ""


def read_audio(audio_path: str, video_path: str = "", sample_rate: int = 16000,
               max_seconds: float = 60.0, notes: list[str] | None = None) -> np.ndarray:
    """Mono float32 audio at `sample_rate`, at most `max_seconds` long.

    From the wav when it gives samples, else from the video's own track; a MediaError names both
    files and why each failed. Falling back and cutting add a line to `notes` when given.
    """
    x, source, wav_why = None, audio_path, ""
    if audio_path:
        x, wav_why = _audio_from(audio_path, sample_rate)
    if x is None:
        video_why = "not given"
        if video_path:
            x, video_why = _audio_from(video_path, sample_rate)
        if x is None:
            tried = [f"wav {audio_path}: {wav_why}"] if audio_path else []
            tried.append(f"video {video_path or '<none>'}: {video_why}")
            raise MediaError("no audio: " + "; ".join(tried))
        source = video_path
        if audio_path:
            log.info("%s: %s; audio from %s", audio_path, wav_why, video_path)
            if notes is not None:
                notes.append(f"wav {audio_path} unreadable ({wav_why}); "
                             "audio from the video's track")
    limit = int(max_seconds * sample_rate)
    if x.size > limit:
        duration = x.size / sample_rate
        log.warning("%s: audio of %.1f s cut at %g s (extract.max_audio_s)", source, duration,
                    max_seconds)
        if notes is not None:
            notes.append(f"audio cut at {max_seconds:g} s of {duration:.1f} s")
        x = x[:limit]
    return x


def is_silent(audio: np.ndarray, rms_floor: float = 1e-3) -> bool:
    """True for audio whose RMS is below `rms_floor` (about -60 dBFS): nothing to encode."""
    if audio.size == 0:
        return True
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < rms_floor

"""Rendering of one demo clip: a drawn cartoon face, a synthetic voice, and their mp4 / wav files.

Class cues are large (random encoders keep only coarse signal) but scaled by a per-clip intensity
and blurred by per-clip noise, so classes overlap and each modality confuses different classes.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

# Face expression at full intensity: mouth curve (+ smile), mouth opening, mouth width,
# brow angle (+ inner ends raised, - frowning V), brow height, eye openness.
# Sad and worried differ only slightly, so the face confuses them.
_FACE = {
    "neutral": (0.0, 0.05, 1.0, 0.0, 0.0, 1.0),
    "angry": (-0.5, 0.35, 1.0, -1.3, -0.5, 0.5),
    "happy": (1.3, 0.45, 1.35, 0.1, 0.25, 0.75),
    "sad": (-1.2, 0.0, 0.9, 1.1, 0.0, 0.55),
    "worried": (-0.8, 0.15, 0.8, 1.2, 0.45, 1.05),
    "surprise": (0.0, 1.7, 0.95, 0.2, 1.3, 2.1),
}
# Placement at full intensity: offset x, offset y (fractions of the frame), scale factor.
_PLACE = {
    "neutral": (0.0, 0.0, 1.0),
    "angry": (0.0, -0.02, 1.15),
    "happy": (0.0, -0.04, 1.05),
    "sad": (0.0, 0.06, 0.8),
    "worried": (0.05, 0.03, 0.9),
    "surprise": (0.0, -0.03, 1.3),
}
# Skin tint at full intensity (RGB), the cartoon convention: red with anger, blue with sorrow,
# pale with worry (close to sad), warm with joy.
_TINT = {
    "neutral": (0, 0, 0), "angry": (60, -35, -35), "happy": (25, 40, -45),
    "sad": (-35, -10, 45), "worried": (-25, 10, 35), "surprise": (15, 15, 15),
}
_MOTION = {"neutral": "still", "angry": "shake", "happy": "nod", "sad": "droop",
           "worried": "tremble", "surprise": "widen"}

# Voice at full intensity: pitch shift (semitones), contour over the utterance (semitones),
# per-syllable pitch spread (semitones), syllables per second, spectral tilt (dB per octave),
# loudness, breathiness, tremor (semitones at 5-7 Hz), gasp (a breathy onset burst).
# Angry, happy and surprise share high energy, so the voice confuses them.
_VOICE = {
    "neutral": (0.0, -1.0, 0.8, 4.0, -11.0, 0.45, 0.05, 0.0, 0.0),
    "angry": (4.0, -1.5, 2.0, 6.0, -3.0, 1.0, 0.03, 0.0, 0.0),
    "happy": (6.0, 0.5, 3.5, 5.5, -5.0, 0.85, 0.05, 0.0, 0.0),
    "sad": (-5.0, -5.0, 0.4, 2.5, -16.0, 0.3, 0.5, 0.0, 0.0),
    "worried": (3.0, 0.0, 1.2, 5.5, -9.0, 0.45, 0.35, 1.5, 0.3),
    "surprise": (8.0, 6.0, 2.5, 4.5, -5.0, 0.85, 0.05, 0.0, 1.0),
}
_VOWELS = np.array([(730, 1090), (270, 2290), (300, 870), (530, 1840), (570, 840), (660, 1720)])
_HAIR = np.array([(30, 25, 20), (60, 40, 25), (100, 70, 40), (200, 170, 110), (150, 150, 150),
                  (15, 15, 15)], dtype=np.float32)
_SKIN = np.array([(255, 224, 189), (241, 194, 125), (224, 172, 105), (198, 134, 66),
                  (141, 85, 36), (255, 205, 148)], dtype=np.float32)


def _blend(neutral, target, intensity: float, rng: np.random.Generator, noise) -> np.ndarray:
    """Neutral moved toward the class prototype by `intensity`, plus per-clip noise."""
    neutral, target = np.asarray(neutral, float), np.asarray(target, float)
    return neutral + intensity * (target - neutral) + rng.normal(0.0, noise, neutral.shape)


def sample_clip_params(label: str, rng: np.random.Generator) -> dict:
    """Per-clip latent intensity, face and voice parameters for a clip of class `label`."""
    intensity = rng.uniform(0.2, 1.0)
    # Face and voice share half of their intensity: a clip can show its emotion in one modality
    # more than in the other, which is what makes fusing them pay.
    face_i, voice_i = (0.5 * intensity + 0.5 * rng.uniform(0.2, 1.0) for _ in range(2))
    face = _blend(_FACE["neutral"], _FACE[label], face_i, rng, 0.18)
    place = _blend(_PLACE["neutral"], _PLACE[label], face_i, rng, [0.07, 0.06, 0.06])
    tint = _blend(_TINT["neutral"], _TINT[label], face_i, rng, 8.0)
    voice = _blend(_VOICE["neutral"], _VOICE[label], voice_i, rng,
                   [2.0, 4.0, 0.5, 2.0, 2.0, 0.12, 0.05, 0.2, 0.15])
    # A quarter of the clips borrow the motion of a random class: gestures are a weak cue.
    motion = _MOTION[label] if rng.random() > 0.25 else rng.choice(list(_MOTION.values()))
    return {
        "intensity": intensity, "face": face, "place": place, "tint": tint, "motion": str(motion),
        "motion_amp": face_i * rng.uniform(0.6, 1.4), "voice": voice,
        "speaker_f0": float(np.exp(rng.uniform(np.log(110.0), np.log(220.0)))),
        "formant_scale": rng.uniform(0.88, 1.15),
    }


# ---------------------------------------------------------------------------------------- face


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    # Muted colours around a random grey: random vision encoders are swamped by saturated,
    # high-contrast backgrounds, and real sets are mostly muted too.
    base = rng.uniform(50, 200) + rng.normal(0, 12, 3)
    other = base + rng.normal(0, 25, 3)
    kind = rng.integers(4)
    if kind == 0:  # flat
        w = np.zeros_like(xx)
    elif kind == 1:  # gradient in a random direction
        a = rng.uniform(0, 2 * np.pi)
        w = (np.cos(a) * xx + np.sin(a) * yy + 1.5) / 3.0
    elif kind == 2:  # stripes
        a, f = rng.uniform(0, np.pi), rng.uniform(3, 9)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy))
    else:  # smooth blobs
        w = np.zeros_like(xx)
        for _ in range(4):
            c, r = rng.uniform(0, 1, 2), rng.uniform(0.1, 0.35)
            w += np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * r * r))
        w = w / w.max()
    img = base + w[..., None] * (other - base)
    for _ in range(rng.integers(0, 3)):  # clutter: objects that a face may partly cover
        x0, y0 = rng.integers(0, size, 2)
        w_, h_ = rng.integers(size // 10, size // 4, 2)
        img[y0:y0 + h_, x0:x0 + w_] = base + rng.normal(0, 40, 3)
    img += rng.normal(0, rng.uniform(1, 4), img.shape)
    return img.astype(np.float32)


def _segment_dist(xx, yy, p, q):
    d = q - p
    t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / (d @ d + 1e-9), 0, 1)
    return np.hypot(xx - p[0] - t * d[0], yy - p[1] - t * d[1])


def _crop(img, xx, yy, x0, x1, y0, y1):
    """Views of the frame and its coordinate grids over a box, clipped to the frame."""
    h, w = img.shape[:2]
    ys = slice(min(max(int(y0), 0), h), min(max(int(y1) + 2, 0), h))
    xs = slice(min(max(int(x0), 0), w), min(max(int(x1) + 2, 0), w))
    return img[ys, xs], xx[ys, xs], yy[ys, xs]


def _draw_face(img, xx, yy, cx, cy, a, expr, skin, hair, gaze):
    # Each part is drawn inside its own bounding box: masks over the frame cost 5 times more.
    curve, opening, width, brow_angle, brow_h, eye_open = expr
    b = 1.25 * a
    im, x, y = _crop(img, xx, yy, cx - 1.1 * a, cx + 1.1 * a, cy - 1.1 * b, cy + 1.1 * b)
    im[((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1] = skin
    cap = (((x - cx) / (1.05 * a)) ** 2 + ((y - cy + 0.1 * b) / (1.02 * b)) ** 2 <= 1)
    im[cap & (y < cy - 0.62 * b)] = hair
    eye_y = cy - 0.12 * b
    ry = 0.11 * a * max(eye_open, 0.15)
    for side in (-1, 1):
        ex = cx + side * 0.4 * a
        im, x, y = _crop(img, xx, yy, ex - 0.2 * a, ex + 0.2 * a, eye_y - ry, eye_y + ry)
        m = ((x - ex) / (0.2 * a)) ** 2 + ((y - eye_y) / ry) ** 2 <= 1
        im[m] = (245, 245, 245)
        pr = min(0.09 * a, ry)
        im[m & ((x - ex - gaze * 0.08 * a) ** 2 + (y - eye_y) ** 2 <= pr * pr)] = (25, 20, 20)
        # Brows: the inner end moves up (sad, worried) or down (angry) with brow_angle.
        by = eye_y - 0.22 * b - brow_h * 0.14 * b
        inner = np.array([cx + side * 0.12 * a, by - brow_angle * 0.12 * b])
        outer = np.array([cx + side * 0.62 * a, by + brow_angle * 0.05 * b])
        lo, hi = np.minimum(inner, outer) - 0.07 * a, np.maximum(inner, outer) + 0.07 * a
        im, x, y = _crop(img, xx, yy, lo[0], hi[0], lo[1], hi[1])
        im[_segment_dist(x, y, inner, outer) <= 0.07 * a] = hair * 0.6
    mx, my, w = cx, cy + 0.5 * b, 0.38 * a * max(width, 0.3)
    bend, gap_max = abs(curve) * 0.09 * b, max(opening, 0.0) * 0.22 * b
    im, x, y = _crop(img, xx, yy, mx - w, mx + w, my - bend - 0.3 * gap_max - 0.06 * a,
                     my + bend + gap_max + 0.06 * a)
    u = (x - mx) / w
    inside = np.abs(u) <= 1
    line = my + curve * 0.18 * b * (0.5 - u ** 2)
    gap = max(opening, 0.0) * 0.22 * b * np.sqrt(np.clip(1 - u ** 2, 0, 1))
    im[inside & (np.abs(y - line) <= 0.06 * a)] = (160, 50, 60)  # lips
    im[inside & (y >= line - 0.3 * gap) & (y <= line + gap)] = (70, 15, 25)  # open mouth


def render_frames(params: dict | None, size: int, n_frames: int, fps: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Frames `[T, size, size, 3]` uint8; `params=None` renders background only (no face)."""
    bg = _background(size, rng)
    frames = np.repeat(bg[None], n_frames, axis=0)
    if params is None:
        return np.clip(frames, 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    skin = _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 8, 3) + params["tint"]
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.8, 1.2)
    dx, dy, scale = params["place"]
    cx0, cy0, a0 = (0.5 + dx) * size, (0.52 + dy) * size, 0.32 * size * max(scale, 0.6)
    expr = np.array(params["face"])
    motion, amp = params["motion"], params["motion_amp"]
    t = np.arange(n_frames) / fps
    freq, phase = rng.uniform(1.5, 3.5), rng.uniform(0, 2 * np.pi)
    onset = rng.uniform(0.25, 0.6) * t[-1] if n_frames > 1 else 0.0
    gaze = rng.uniform(-1, 1)
    for k in range(n_frames):
        cx, cy, a, e = cx0, cy0, a0, expr.copy()
        if motion == "shake":
            cx += amp * 0.09 * size * np.sin(2 * np.pi * freq * t[k] + phase)
        elif motion == "nod":
            cy += amp * 0.07 * size * np.sin(2 * np.pi * freq * t[k] + phase)
            e[1] *= 0.6 + 0.4 * np.abs(np.sin(2 * np.pi * freq * t[k]))  # laughing mouth
        elif motion == "droop":
            cy += amp * 0.08 * size * t[k] / max(t[-1], 1e-6)
        elif motion == "tremble":
            cx += amp * 0.025 * size * rng.normal()
            cy += amp * 0.025 * size * rng.normal()
        elif motion == "widen":
            if t[k] < onset:  # calm before the sudden widening
                e = np.array(_FACE["neutral"]) + 0.3 * (expr - np.array(_FACE["neutral"]))
                a = a0 / (1 + 0.12 * amp)
        else:  # still, with a slow drift
            cx += 0.01 * size * np.sin(0.5 * t[k] + phase)
        _draw_face(frames[k], xx, yy, cx, cy, a, e, skin, hair, gaze)
    return np.clip(frames, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- voice


def _formant_gain(freq, f1, f2):
    return (1.0 / (1.0 + ((freq - f1) / 120.0) ** 2) + 0.6 / (1.0 + ((freq - f2) / 180.0) ** 2)
            + 0.05)


def render_voice(params: dict | None, seconds: float, sr: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Mono int16 audio; `params=None` renders a silent clip (faint noise only)."""
    n = int(round(seconds * sr))
    if params is None:
        return np.round(rng.normal(0, 2.0, n)).astype(np.int16)
    shift, contour, spread, rate, tilt, loud, breath, tremor, gasp = params["voice"]
    rate = float(np.clip(rate, 1.5, 8.0))
    t = np.arange(n) / sr
    start, end = rng.uniform(0.0, 0.25) * seconds, rng.uniform(0.8, 1.0) * seconds
    # Syllables: onsets at about `rate` per second with jitter and an occasional pause.
    onsets, x = [], start
    while x < end - 0.08:
        onsets.append(x)
        x += rng.uniform(0.7, 1.3) / rate + (0.15 if rng.random() < 0.12 else 0.0)
    env = np.zeros(n)
    st = np.zeros(n)  # pitch offset in semitones
    f1 = np.full(n, 500.0)
    f2 = np.full(n, 1500.0)
    for on in onsets:
        dur = min(rng.uniform(0.55, 0.85) / rate, end - on)
        i0, i1 = int(on * sr), min(int((on + dur) * sr), n)
        if i1 - i0 < 16:
            continue
        env[i0:i1] = np.maximum(env[i0:i1], np.hanning(i1 - i0) ** 0.7)
        st[i0:i1] = rng.normal(0, max(spread, 0.1))
        v1, v2 = _VOWELS[rng.integers(len(_VOWELS))] * params["formant_scale"]
        f1[i0:i1], f2[i0:i1] = v1, v2
    rel = np.clip((t - start) / max(end - start, 1e-3), 0, 1)
    st = st + shift + contour * (rel - 0.5)
    wobble = np.sin(2 * np.pi * rng.uniform(5, 7) * t)  # tremor: an anxious, shaky voice
    st += max(tremor, 0.0) * wobble
    f0 = params["speaker_f0"] * 2.0 ** (st / 12.0)
    # Harmonic series by complex recurrence (z^h) instead of one sin() per harmonic, with the
    # formant gains evaluated every `hop` samples: both are several times faster and inaudible.
    hop = 32
    m = -(-n // hop)
    pad = m * hop - n
    z = np.exp(1j * 2 * np.pi * np.cumsum(np.pad(f0, (0, pad), mode="edge")) / sr)
    z = z.astype(np.complex64).reshape(m, hop)
    f0c, f1c, f2c = (np.pad(v, (0, pad), mode="edge")[::hop, None] for v in (f0, f1, f2))
    voice = np.zeros((m, hop), np.float32)
    zh = z.copy()
    # Harmonics up to 7.5 kHz but none below -60 dB: bright voices reach high, dull ones stop early.
    top = min(7500.0 / f0.min(), 1e-3 ** (6.02 / min(tilt, -1.0)))
    for h in range(1, int(top) + 1):
        fh = h * f0c
        amp = (h ** (tilt / 6.02) * _formant_gain(fh, f1c, f2c) * (fh < 7800)).astype(np.float32)
        voice += amp * zh.imag
        zh *= z
    voice = voice.reshape(-1)[:n].astype(np.float64)
    voice /= np.abs(voice).max() + 1e-9
    voice = (voice + np.clip(breath, 0, 0.6) * rng.normal(0, 0.3, n)) * env
    voice *= 1.0 + 0.15 * np.clip(tremor, 0.0, 2.0) * wobble
    if gasp > 0.3:  # a sharp breathy intake before speaking ("oh!")
        i0 = int(max(start - 0.12, 0.0) * sr)
        burst = np.diff(rng.normal(0, 1, int(0.12 * sr) + 1))  # differenced: bright hiss
        burst *= np.hanning(len(burst)) * min(gasp, 1.5) * 0.8
        voice[i0:i0 + len(burst)] += burst[: n - i0]
    level = np.clip(loud, 0.1, 1.2) * 0.4
    out = level * voice / (np.abs(voice).max() + 1e-9) + rng.normal(0, 0.004, n)
    return np.round(np.clip(out, -1, 1) * 32767).astype(np.int16)


def render_clip(label: str, no_face: bool, silent: bool, seed: int, index: int, size: int,
                fps: int, seconds: float, sr: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """Frames `[T, size, size, 3]` and int16 audio of clip `index`, from the seed `(seed, index)`.

    The face and voice parameters are drawn even when `no_face` or `silent` drop them, so the
    background of a clip does not depend on whether it has a face.
    """
    rng = np.random.default_rng([seed, 1, index])
    params = sample_clip_params(label, rng)
    n_frames = max(1, int(round(seconds * fps)))
    frames = render_frames(None if no_face else params, size, n_frames, fps, rng)
    audio = render_voice(None if silent else params, seconds, sr, rng)
    return frames, audio


# --------------------------------------------------------------------------------------- files


def write_wav(path: str | Path, audio: np.ndarray, sr: int) -> None:
    """16-bit mono PCM wav."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.ascontiguousarray(audio, dtype="<i2").tobytes())


def write_mp4(path: str | Path, frames: np.ndarray, audio: np.ndarray, fps: int, sr: int) -> None:
    """H.264 (yuv420p) video with an AAC track carrying `audio` (int16 mono)."""
    import av  # heavy; only the writer processes need it

    with av.open(str(path), "w") as box:
        v = box.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # Byte-identical output for a seed: one thread, and ultrafast, whose output matched x264's
        # plain C code; with veryfast (lookahead, mbtree) the bitstream depended on what the
        # process had encoded before.
        v.options = {"preset": "ultrafast", "crf": "18", "threads": "1"}
        a = box.add_stream("aac", rate=sr)
        a.layout = "mono"
        a.options = {"aac_coder": "fast"}  # the default two-loop search costs twice the time
        for k, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = k
            box.mux(v.encode(vf))
        box.mux(v.encode())
        af = av.AudioFrame.from_ndarray(audio[None, :].astype(np.int16), format="s16",
                                        layout="mono")
        af.sample_rate, af.pts = sr, 0
        box.mux(a.encode(af))
        box.mux(a.encode())

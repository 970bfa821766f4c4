"""A corpus of bad inputs, built at test time from the demo generator: one clip per case.

Each case damages one clip of a small demo corpus in MER2025's layout. `CASES` says what each
case does, and what extraction must make of it (which modalities are read).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SR = 16000
# case -> (split of the clip it damages, modalities extraction must read: frames, audio, text)
CASES = {
    "truncated_mp4": ("train", {"audio", "text"}),  # cut before its index: no frames
    "zero_wav": ("train", {"frames", "audio", "text"}),  # audio from the mp4's track
    "zero_wav_no_track": ("train", {"frames", "text"}),  # 0-byte wav, mp4 without audio
    "odd_wav": ("train", {"frames", "audio", "text"}),  # wav cut mid-sample
    "absent_wav": ("train", {"frames", "audio", "text"}),
    "no_track": ("train", {"frames", "text"}),  # mp4 without audio, no wav
    "empty_subtitle": ("train", {"frames", "audio"}),
    "missing_subtitle": ("pool", {"frames", "audio"}),  # no row in subtitle_chieng.csv
    "no_media": ("candidate", {"text"}),  # a candidate with neither mp4 nor wav
    "nothing": ("candidate", set()),  # cut mp4, no wav, empty subtitle: the clip fails
    "one_frame": ("train", {"frames", "audio", "text"}),
    "long_120s": ("pool", {"frames", "audio", "text"}),  # audio cut at max_audio_s
}
BROKEN_MODALITY = {  # case -> modalities that failed (status set), beside those merely absent
    "truncated_mp4": {"frames"}, "zero_wav_no_track": {"audio"}, "no_track": {"audio"},
    "no_media": {"frames", "audio"}, "nothing": {"frames", "audio"},
}


def write_video(path: Path, frames: np.ndarray, audio: np.ndarray | None, fps: int) -> None:
    """H.264 mp4 of `frames`, with an AAC track of `audio` (int16) unless it is None."""
    from ecmf.data import synth

    if audio is not None:
        synth.write_mp4(path, frames, audio, fps, SR)
        return
    import av

    with av.open(str(path), "w") as box:
        v = box.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        v.options = {"preset": "ultrafast", "threads": "1"}
        for k, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = k
            box.mux(v.encode(vf))
        box.mux(v.encode())


def _voice(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (np.clip(x + 0.01 * rng.normal(size=t.size), -1, 1) * 32767).astype(np.int16)


def _frames(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def damage(root: Path, truth: pd.DataFrame) -> dict[str, str]:
    """Apply every case of CASES to a clip of its split (not silent, not text-empty, not a
    test candidate where it matters); returns case -> sample name."""
    from ecmf.data import synth

    flags = {c: truth[c].astype(str).str.lower() == "true" for c in ("silent", "empty_text")}
    clean = truth[~flags["silent"] & ~flags["empty_text"]]
    picked: dict[str, str] = {}
    for case, (split, _) in CASES.items():
        pool = clean[(clean["split"] == split) & ~clean["name"].isin(picked.values())]
        picked[case] = pool["name"].iloc[0]
    video = {c: root / "video" / f"{n}.mp4" for c, n in picked.items()}
    wav = {c: root / "audio" / f"{n}.wav" for c, n in picked.items()}

    for case in ("truncated_mp4", "nothing"):
        video[case].write_bytes(video[case].read_bytes()[:300])
    wav["zero_wav"].write_bytes(b"")
    wav["zero_wav_no_track"].write_bytes(b"")
    write_video(video["zero_wav_no_track"], _frames(8), None, 8)
    raw = wav["odd_wav"].read_bytes()
    wav["odd_wav"].write_bytes(raw[: len(raw) * 2 // 3 | 1])  # an odd byte count
    for case in ("absent_wav", "no_track", "nothing", "no_media"):
        wav[case].unlink()
    write_video(video["no_track"], _frames(8, seed=1), None, 8)
    video["no_media"].unlink()
    write_video(video["one_frame"], _frames(1, seed=2), _voice(1.0, 2), 8)
    synth.write_wav(wav["one_frame"], _voice(1.0, 2), SR)
    write_video(video["long_120s"], _frames(120, size=32, seed=3), _voice(120.0, 3), 1)
    synth.write_wav(wav["long_120s"], _voice(120.0, 3), SR)

    subs_path = root / "subtitle_chieng.csv"
    subs = pd.read_csv(subs_path, dtype=str, keep_default_na=False)
    for case in ("empty_subtitle", "nothing"):
        subs.loc[subs["name"] == picked[case], ["chinese", "english"]] = ""
    subs = subs[subs["name"] != picked["missing_subtitle"]]
    subs.to_csv(subs_path, index=False)
    return picked


def extract_sets(workdir: Path, root: Path, models: dict[str, str]) -> list[str]:
    """`--set` items of a light extraction: tiny frames and audio, packaged text, no faces."""
    light = {"num_gpus": 0, "num_cpus": 0.5, "group": "light", "batch_size": 4}
    sets = [f"workdir={workdir}", f"corpus.root={root}", "extract.encoders.faces=null",
            "extract.decode_batch_size=4", f"extract.encoders.frames.model={models['clip']}",
            f"extract.encoders.audio.model={models['hubert']}", "train.epochs=2",
            "train.folds=2", "train.cpus_per_worker=1"]
    for name in ("frames", "audio", "text"):
        sets += [f"extract.encoders.{name}.{k}={v}" for k, v in light.items()]
    return [a for s in sets for a in ("--set", s)]



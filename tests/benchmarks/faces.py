"""Faces-stage throughput before and after decode-once and the fast CLIP preprocessing.

    python tests/benchmarks/faces.py --out faces.json [--clips 24]

Generated 480p talking-head clips (854x480 H.264, the demo's drawn faces at 480 px) go
through the production decode task (`decode_batch`) and the production face encoder
(OpenCV's Haar cascade, a tiny CLIP tower, one torch thread):

- before: the decode task gives the towers' 256 px frames only; the face actor re-reads every
  clip from its video at `detect_short_side` (640, so the video's own 480), runs the cascade on
  the full frames and preprocesses the crops with transformers' PIL processor (`input: frames`,
  `haar_shrink: false`, `fast_processor: false`);
- after: the decode task gives the detector its frames at 640 from the same decode
  (`face_frames`), the cascade scans frames shrunk so that a `min_face` face fills its window,
  in as many threads as the actor has CPUs (`--cpus`, 2: this machine's), and the actor
  preprocesses with OpenCV over the batch (the defaults).

The faces stage is the face encoder's actor, which bounds the pipeline when its GPU waits on
it; the decode tasks run on other CPUs, and their time is printed too. Both ways run in this
process, alternately, `--repeats` times; `speedup` is the ratio of the medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ecmf import schema  # noqa: E402

SIZE, WIDTH = 480, 854


def write_clips(out: Path, n: int, seconds: float = 2.0, fps: int = 25) -> list[str]:
    from ecmf.data.synth import render_frames, sample_clip_params, write_mp4

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        label = schema.LABELS[i % len(schema.LABELS)]
        frames = render_frames(sample_clip_params(label, rng), SIZE, int(seconds * fps), fps, rng)
        pad = (WIDTH - SIZE) // 2
        frames = np.pad(frames, ((0, 0), (0, 0), (pad, WIDTH - SIZE - pad), (0, 0)), mode="edge")
        path = out / f"clip_{i:03d}.mp4"
        write_mp4(path, frames, np.zeros(int(seconds * 16000), np.int16), fps, 16000)
        paths.append(str(path))
    return paths


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="clips per face-encoder call")
    p.add_argument("--cpus", type=float, default=2.0,
                   help="num_cpus of the face actor after (before: 1, the old default)")
    args = p.parse_args()
    import torch

    from ecmf.config import FaceEncoderConfig
    from ecmf.features.encoders import ENCODERS
    from ecmf.features.extract import decode_batch, face_short_side, input_column
    from ecmf.models.tiny import build_tiny_clip_vision

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_clips(tmp, args.clips)
        tower = str(build_tiny_clip_vision(tmp / "clip"))
        base = FaceEncoderConfig(name="faces", model=tower, batch_size=args.batch,
                                 detector="haar", detect_short_side=640, num_cpus=args.cpus)
        ways = {"before": dataclasses.replace(base, input=schema.FRAMES, fast_processor=False,
                                              haar_shrink=False, num_cpus=1.0),
                "after": base}
        encoders = {w: ENCODERS.get("faces")("faces", c, input_column(c)) for w, c in ways.items()}
        rows = {schema.SAMPLE_ID: np.array([Path(q).stem for q in paths], dtype=object),
                schema.VIDEO: np.array(paths, dtype=object),
                schema.AUDIO: np.array([""] * len(paths), dtype=object)}
        times = {w: {"decode": [], "faces": []} for w in ways}
        found = {}
        for _ in range(args.repeats):
            for way, cfg in ways.items():
                side = face_short_side({"faces": cfg})
                decoded, start = [], time.perf_counter()
                for s in range(0, len(paths), args.batch):
                    part = {k: v[s:s + args.batch] for k, v in rows.items()}
                    decoded.append(decode_batch(part, 8, 16000, 30.0, frames=True, audio=False,
                                                face_short_side=side))
                times[way]["decode"].append(time.perf_counter() - start)
                start = time.perf_counter()
                masks = [encoders[way](dict(b))[schema.mask_column("faces")] for b in decoded]
                times[way]["faces"].append(time.perf_counter() - start)
                found[way] = float(np.concatenate(masks).mean())
    med = {w: {k: statistics.median(v) for k, v in t.items()} for w, t in times.items()}
    result = {
        "clips": args.clips, "video": f"{WIDTH}x{SIZE} H.264, 2 s, 8 frames sampled",
        "detector": "haar", "tower": "tiny CLIP (2 layers, 64 px)", "repeats": args.repeats,
        "faces_stage_clips_per_s": {w: round(args.clips / m["faces"], 2) for w, m in med.items()},
        "decode_clips_per_s": {w: round(args.clips / m["decode"], 2) for w, m in med.items()},
        "clips_with_a_face": found,
        "speedup": round(med["before"]["faces"] / med["after"]["faces"], 2),
        "bar_speedup": 2.0,
        "seconds": {w: {k: [round(x, 3) for x in v] for k, v in t.items()}
                    for w, t in times.items()},
    }
    text = json.dumps(result, indent=1)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of feature extraction: the Ray pipeline (`extract_features`) against a sequential
per-clip loop, and the pipeline's peak memory on a small and a large set of demo clips.

    python tests/benchmarks/extract.py --out extract-bench.json [--clips 200] [--big 1000]

The sequential loop runs the way MERTools' scripts do: for each clip, decode it (the same
`sample_frames` / `read_audio`), then each encoder on it (the same encoder classes and tiny models:
CLIP and HuBERT built from configs, the packaged MiniLM for text), in one process with torch's
default threads, as a script of its own (a child process, timed from its start: imports and model
loading count, as they do in every Ray actor). `speedup` is the loop's wall time over the
pipeline's on the same `--clips` clips; Ray's own start, once per command, is timed apart and
`speedup_with_ray_start` counts it in. `speedup_warm` runs the pipeline a second time in
the same Ray session, as a second job on a running cluster, where Ray Data's cluster-wide
helper actors are already up (not the bar). The pipeline runs the three encoders in one shared actor
pool (`group:`, `--group all`) or in a pool each (`--group none`).
`rss_ratio` is the peak resident memory of the whole process tree (this driver, Ray's GCS and
raylet, every worker), sampled every 0.2 s, of the pipeline on `--big` clips over `--clips` clips.
The demo corpus is written once with `--big` clips; CSV manifests (`corpus.layout: csv`) pick
the first `--clips` of it and all of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NUM_FRAMES = 8


class PeakRss:
    """Peak of the summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a worker that exited between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total())


def write_corpus(root: Path, clips: int, big: int) -> dict[int, Path]:
    """A demo corpus of `big` clips and CSV manifests of its first `clips` and of all of it."""
    from ecmf.config import DemoConfig
    from ecmf.data.demo import write_demo_corpus
    from ecmf.data.mer2025 import read_mer2025

    n_cand = max(2, big // 4)
    write_demo_corpus(DemoConfig(n_train=big // 2, n_pool=big - big // 2 - n_cand,
                                 n_candidates=n_cand, n_test=1), root / "corpus")
    m = read_mer2025(root / "corpus")
    if len(m) != big:
        raise RuntimeError(f"the demo corpus has {len(m)} clips; {big} asked")
    out = {}
    for n in (clips, big):
        rows = m.iloc[:n]
        path = root / f"manifest-{n}.csv"
        rows.rename(columns={"sample_id": "name", "video_path": "path"})[
            ["name", "path", "audio_path", "text"]].to_csv(path, index=False)
        out[n] = path
    return out


def encoder_configs(tiny: dict[str, str], args) -> dict[str, dict]:
    from ecmf.config import PACKAGED_MINILM, ExtractConfig

    default = ExtractConfig().encoders
    enc = {"num_gpus": 0.0, "num_cpus": args.encoder_cpus, "pool_size": args.pool_size}
    if args.group == "all":
        enc["group"] = "encoders"
    models = {"frames": ("clip", tiny["clip"]), "audio": ("hubert", tiny["hubert"]),
              "text": ("text", PACKAGED_MINILM)}
    # Batch sizes: the library's defaults per encoder unless --batch-size says otherwise.
    return {k: {**enc, "name": name, "model": model,
                "batch_size": args.batch_size or default[k].batch_size}
            for k, (name, model) in models.items()}


def sequential(manifest: Path, encoders: dict[str, dict]) -> dict:
    """Decode one clip, then each encoder on it; clip after clip, in this process."""
    start = time.perf_counter()
    import pandas as pd
    import torch

    from ecmf.config import EncoderConfig
    from ecmf.data.media import MediaError, read_audio, sample_frames
    from ecmf.features.encoders import ENCODERS

    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    base = manifest.parent
    threads = torch.get_num_threads()
    models = {n: ENCODERS.get(e["name"])(n, EncoderConfig(**e)) for n, e in encoders.items()}
    torch.set_num_threads(threads)  # the encoders set one thread each; a script keeps torch's own
    loaded = time.perf_counter() - start
    failed = 0
    for r in rows.itertuples(index=False):
        video, audio = str(base / r.path), str(base / r.audio_path) if r.audio_path else ""
        try:
            inputs = {"frames": sample_frames(video, NUM_FRAMES),
                      "audio": read_audio(audio, video, 16000, 60.0), "text": r.text}
        except MediaError:
            failed += 1
            continue
        for model in models.values():
            x = inputs[model.input]
            if model.present(x):
                model.encode([x])
    wall = time.perf_counter() - start
    return {"wall_s": wall, "load_s": loaded, "clips": len(rows), "failed": failed,
            "torch_threads": threads}


def sequential_script(manifest: Path, encoders: dict[str, dict]) -> dict:
    """`sequential` in a fresh Python process, timed from outside, process start included."""
    import subprocess
    import sys

    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--out", os.devnull, "--sequential",
                           str(manifest), json.dumps(encoders)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the sequential loop failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - start
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_wall_s": wall}


def pipeline(manifest: Path, workdir: Path, encoders: dict[str, dict], args,
             warm: bool = False) -> dict:
    """`extract_features` on an embedded Ray, with the peak RSS of the process tree.

    `warm`: then run it again in the same Ray session into another workdir, as a second job
    on a running cluster would: Ray Data's cluster-wide helper actors (stats, autoscaling
    coordinator, actor locations: detached, so a cluster starts them once) are up, and idle
    workers have Ray Data imported; the encoder actors start afresh all the same.
    """
    import ray

    from ecmf.config import ExtractConfig, load_config
    from ecmf.features.extract import extract_features
    from ecmf.runtime import ray_session

    # Only these encoders: a null entry drops a default one (e.g. faces).
    only = {**{name: None for name in ExtractConfig().encoders}, **encoders}
    cfg = load_config(None, [f"workdir={workdir}", "corpus.layout=csv",
                             f"corpus.manifest={manifest}"],
                      base={"ray": {"num_cpus": args.ray_cpus},
                            "extract": {"num_frames": NUM_FRAMES, "encoders": only,
                                        "decode_batch_size": args.decode_batch_size}})
    warm_wall = None
    t0 = time.perf_counter()
    with ray_session(cfg.ray):  # Ray's processes are children of this one: PeakRss sees them
        ray.data.DataContext.get_current().enable_progress_bars = False
        started = time.perf_counter() - t0
        with PeakRss() as rss:
            t1 = time.perf_counter()
            summary = extract_features(cfg)
            wall = time.perf_counter() - t1
        if warm:  # outside the memory figure, which is one job's
            again = dataclasses.replace(cfg, workdir=f"{workdir}-warm")
            t2 = time.perf_counter()
            extract_features(again)
            warm_wall = time.perf_counter() - t2
    if summary["done"] + summary["failed"] != summary["clips"]:
        raise RuntimeError(f"extraction left clips out: {summary}")
    return {"wall_s": wall, "ray_start_s": started, "peak_rss_mb": rss.peak / 2**20,
            "rss_samples": rss.samples, "summary": summary, "warm_wall_s": warm_wall}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--clips", type=int, default=200, help="clips for speedup (default 200)")
    parser.add_argument("--big", type=int, default=1000, help="clips of the large run for "
                        "rss_ratio (default 1000)")
    parser.add_argument("--ray-cpus", type=int, default=None,
                        help="logical CPUs of the embedded Ray (default: the library's)")
    parser.add_argument("--encoder-cpus", type=float, default=1.0,
                        help="num_cpus of each encoder's actor (default 1.0, the library's)")
    parser.add_argument("--pool-size", type=int, default=1, help="actors per encoder")
    parser.add_argument("--group", choices=["none", "all"], default="all",
                        help="all (default): the three encoders share one actor pool "
                             "(`group:`), the layout for a machine without GPUs; none: an "
                             "actor pool per encoder, as on a GPU node")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per encoder call (default: the library's per encoder)")
    parser.add_argument("--decode-batch-size", type=int, default=8)
    parser.add_argument("--keep", help="write the corpus and workdirs here and keep them")
    parser.add_argument("--sequential", nargs=2, metavar=("MANIFEST", "ENCODERS_JSON"),
                        help=argparse.SUPPRESS)  # the child process of sequential_script
    args = parser.parse_args(argv)
    if args.sequential:
        print(json.dumps(sequential(Path(args.sequential[0]), json.loads(args.sequential[1]))))
        return {}
    if not 0 < args.clips < args.big:
        parser.error("expected 0 < --clips < --big")

    from ecmf.tiny_models import build_tiny_models

    with tempfile.TemporaryDirectory(prefix="ecmf-bench-") as tmp:
        root = Path(args.keep or tmp)
        t = time.perf_counter()
        manifests = write_corpus(root, args.clips, args.big)
        print(f"corpus: {args.big} clips in {time.perf_counter() - t:.0f} s")
        encoders = encoder_configs(build_tiny_models(root / "models"), args)
        loads = [round(os.getloadavg()[0], 2)]
        seq = sequential_script(manifests[args.clips], encoders)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"sequential: {args.clips} clips in {seq['process_wall_s']:.1f} s")
        small = pipeline(manifests[args.clips], root / "run-small", encoders, args, warm=True)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"pipeline: {args.clips} clips in {small['wall_s']:.1f} s, "
              f"peak {small['peak_rss_mb']:.0f} MB; again on the running Ray "
              f"{small['warm_wall_s']:.1f} s")
        large = pipeline(manifests[args.big], root / "run-big", encoders, args)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"pipeline: {args.big} clips in {large['wall_s']:.1f} s, "
              f"peak {large['peak_rss_mb']:.0f} MB")
    seq["wall_s"] = seq.pop("process_wall_s")
    figures = {
        "speedup": round(seq["wall_s"] / small["wall_s"], 3),
        # The same 200 clips again in the same Ray session (a second job on a running
        # cluster): not the bar, which counts Ray Data's first start in every run.
        "speedup_warm": round(seq["wall_s"] / small["warm_wall_s"], 3),
        "pipeline_warm_wall_s": round(small["warm_wall_s"], 2),
        "speedup_with_ray_start": round(seq["wall_s"] / (small["wall_s"] + small["ray_start_s"]),
                                        3),
        "rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "pipeline_clips_per_s": round(args.clips / small["wall_s"], 2),
        "sequential_clips_per_s": round(args.clips / seq["wall_s"], 2),
        "pipeline_big_clips_per_s": round(args.big / large["wall_s"], 2),
        "pipeline_wall_s": round(small["wall_s"], 2),
        "sequential_wall_s": round(seq["wall_s"], 2),
        "sequential_start_and_load_s": round(seq["load_s"], 2),  # imports and models
        "pipeline_big_wall_s": round(large["wall_s"], 2),
        "ray_start_s": [round(small["ray_start_s"], 2), round(large["ray_start_s"], 2)],
        "peak_rss_mb": {str(args.clips): round(small["peak_rss_mb"], 1),
                        str(args.big): round(large["peak_rss_mb"], 1)},
        "rss_samples": [small["rss_samples"], large["rss_samples"]],
        "clips": args.clips, "big": args.big,
        "failed": {"pipeline": small["summary"]["failed"], "sequential": seq["failed"]},
        "sequential_torch_threads": seq["torch_threads"],
        "pipeline": {"ray_cpus": args.ray_cpus or "library default",
                     "encoder_num_cpus": args.encoder_cpus, "pool_size": args.pool_size,
                     "encoder_pools": "one shared (group)" if args.group == "all"
                     else "one per encoder",
                     "batch_size": {k: e["batch_size"] for k, e in encoders.items()},
                     "decode_batch_size": args.decode_batch_size},
        "encoders": "frames: tiny CLIP, audio: tiny HuBERT (ecmf.tiny_models), text: packaged "
                    "all-MiniLM-L6-v2",
        "num_frames": NUM_FRAMES, "cpu_count": os.cpu_count(),
        "load_average_1m": loads,  # before the loop, the small and big runs, and at the end
    }
    for key, value in figures.items():
        print(f"{key:>26}: {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()

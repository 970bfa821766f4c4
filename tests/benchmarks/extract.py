"""Benchmark of feature extraction: the Ray pipeline (`extract_features`) against sequential
per-clip loops, and the pipeline's peak memory on a small and a large set of demo clips.

    python tests/benchmarks/extract.py --out extract-bench.json [--clips 200] [--big 1000]

Both loops use the same decoding (`sample_frames` / `read_audio`) and the same encoder classes
and tiny models (CLIP and HuBERT built from configs, the packaged MiniLM for text) as the
pipeline, with torch's default threads, each loop a Python process of its own timed from its
start (imports and model loading count, as they do in every Ray actor):
- MERTools' way (`speedup`, the bar): a script per feature, one after the other, as MERTools'
  baselines run (`extract_*` per feature, each over every clip), each loading its one model and
  decoding what it reads of every clip;
- a fused loop (`speedup_fused_loop`): one process with every model loaded, each clip decoded
  once and passed to every encoder; the stronger baseline, which no MERTools script does.
Ray's own start, once per command, is timed apart and `speedup_with_ray_start` counts it in.
`speedup_warm` and `speedup_fused_loop_warm` run the pipeline a second time in the same Ray
session, as a second job on a running cluster, where Ray Data's cluster-wide helper actors are
already up (not the bar). The pipeline runs the three encoders in one shared actor pool
(`group:`, `--group all`) or in a pool each (`--group none`).
Memory: the process tree (this driver, Ray's GCS, raylet and agents, every worker) sampled
every 0.2 s. `rss_ratio` is the peak of its summed proportional set size (PSS: a page shared by
k processes counts 1/k in each, so the total is what the run holds) on `--big` clips over
`--clips` clips; `rss_sum_ratio` the same for the plain RSS sum, which counts shared libraries
and object-store pages once per process that maps them.
The demo corpus is written once with `--big` clips; CSV manifests (`corpus.layout: csv`) pick
the first `--clips` of it and all of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from peakmem import PeakMemory  # noqa: E402  (a sibling module: run as a script)

NUM_FRAMES = 8


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
    """Decode what `encoders` read of one clip, then each encoder on it; clip after clip, in
    this process."""
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
    needs = {model.input for model in models.values()}
    failed = 0
    for r in rows.itertuples(index=False):
        video, audio = str(base / r.path), str(base / r.audio_path) if r.audio_path else ""
        inputs = {"text": r.text}
        try:
            if "frames" in needs:
                inputs["frames"] = sample_frames(video, NUM_FRAMES)
            if "audio" in needs:
                inputs["audio"] = read_audio(audio, video, 16000, 60.0)
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


def mertools_scripts(manifest: Path, encoders: dict[str, dict]) -> dict:
    """MERTools' way: a script per feature, one after the other, each loading its one model and
    reading (decoding) what that model needs of every clip."""
    runs = {name: sequential_script(manifest, {name: enc}) for name, enc in encoders.items()}
    return {"wall_s": sum(r["process_wall_s"] for r in runs.values()),
            "per_script_wall_s": {n: round(r["process_wall_s"], 2) for n, r in runs.items()},
            "load_s": {n: round(r["load_s"], 2) for n, r in runs.items()},
            "failed": max(r["failed"] for r in runs.values()),
            "torch_threads": next(iter(runs.values()))["torch_threads"]}


def pipeline(manifest: Path, workdir: Path, encoders: dict[str, dict], args,
             warm: bool = False) -> dict:
    """`extract_features` on an embedded Ray, with the peak memory of the process tree.

    `warm`: then run it again in the same Ray session into another workdir, as a second job
    on a running cluster would: Ray Data's cluster-wide helper actors (stats, autoscaling
    coordinator, actor locations: detached, so a cluster starts them once) are up, and idle
    workers have Ray Data imported; the encoder actors start afresh all the same.
    """
    import ray

    from ecmf.config import ExtractConfig
    from ecmf.features.extract import extract_features
    from ecmf.runtime.session import ray_session
    from ecmf.stages.common import load_config

    # Only these encoders: a null entry drops a default one (e.g. faces).
    only = {**dict.fromkeys(ExtractConfig().encoders), **encoders}
    cfg = load_config(None, [f"workdir={workdir}", "corpus.layout=csv",
                             f"corpus.manifest={manifest}"],
                      base={"ray": {"num_cpus": args.ray_cpus},
                            "extract": {"num_frames": NUM_FRAMES, "encoders": only,
                                        "decode_batch_size": args.decode_batch_size}})
    warm_wall = None
    t0 = time.perf_counter()
    with ray_session(cfg.ray):  # Ray's processes are children of this one: PeakMemory sees them
        ray.data.DataContext.get_current().enable_progress_bars = False
        started = time.perf_counter() - t0
        with PeakMemory(interval_s=0.2) as mem:
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
    return {"wall_s": wall, "ray_start_s": started, "peak_pss_mb": mem.peak_pss / 2**20,
            "peak_rss_sum_mb": mem.peak_rss / 2**20, "processes": mem.processes,
            "samples": mem.samples, "summary": summary, "warm_wall_s": warm_wall}


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

    from ecmf.models.tiny import build_tiny_models

    with tempfile.TemporaryDirectory(prefix="ecmf-bench-") as tmp:
        root = Path(args.keep or tmp)
        t = time.perf_counter()
        manifests = write_corpus(root, args.clips, args.big)
        print(f"corpus: {args.big} clips in {time.perf_counter() - t:.0f} s")
        encoders = encoder_configs(build_tiny_models(root / "models"), args)
        loads = [round(os.getloadavg()[0], 2)]
        mer = mertools_scripts(manifests[args.clips], encoders)
        print(f"MERTools-style scripts: {args.clips} clips in {mer['wall_s']:.1f} s "
              f"{mer['per_script_wall_s']}")
        fused = sequential_script(manifests[args.clips], encoders)
        fused["wall_s"] = fused.pop("process_wall_s")
        loads.append(round(os.getloadavg()[0], 2))
        print(f"fused loop: {args.clips} clips in {fused['wall_s']:.1f} s")
        small = pipeline(manifests[args.clips], root / "run-small", encoders, args, warm=True)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"pipeline: {args.clips} clips in {small['wall_s']:.1f} s, "
              f"peak {small['peak_pss_mb']:.0f} MB; again on the running Ray "
              f"{small['warm_wall_s']:.1f} s")
        large = pipeline(manifests[args.big], root / "run-big", encoders, args)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"pipeline: {args.big} clips in {large['wall_s']:.1f} s, "
              f"peak {large['peak_pss_mb']:.0f} MB")
    ratio = {"speedup": mer["wall_s"] / small["wall_s"],
             "speedup_warm": mer["wall_s"] / small["warm_wall_s"],
             "speedup_fused_loop": fused["wall_s"] / small["wall_s"],
             "speedup_fused_loop_warm": fused["wall_s"] / small["warm_wall_s"],
             "speedup_with_ray_start": mer["wall_s"] / (small["wall_s"] + small["ray_start_s"]),
             "rss_ratio": large["peak_pss_mb"] / small["peak_pss_mb"],
             "rss_sum_ratio": large["peak_rss_sum_mb"] / small["peak_rss_sum_mb"]}
    figures = {
        **{k: round(v, 3) for k, v in ratio.items()},
        "pipeline_wall_s": round(small["wall_s"], 2),
        "pipeline_warm_wall_s": round(small["warm_wall_s"], 2),
        "mertools_scripts_wall_s": round(mer["wall_s"], 2),
        "mertools_per_script_wall_s": mer["per_script_wall_s"],
        "mertools_start_and_load_s": mer["load_s"],  # imports and the model, per script
        "fused_loop_wall_s": round(fused["wall_s"], 2),
        "fused_loop_start_and_load_s": round(fused["load_s"], 2),
        "pipeline_big_wall_s": round(large["wall_s"], 2),
        "pipeline_clips_per_s": round(args.clips / small["wall_s"], 2),
        "mertools_clips_per_s": round(args.clips / mer["wall_s"], 2),
        "fused_loop_clips_per_s": round(args.clips / fused["wall_s"], 2),
        "pipeline_big_clips_per_s": round(args.big / large["wall_s"], 2),
        "ray_start_s": [round(small["ray_start_s"], 2), round(large["ray_start_s"], 2)],
        "peak_pss_mb": {str(args.clips): round(small["peak_pss_mb"], 1),
                        str(args.big): round(large["peak_pss_mb"], 1)},
        "peak_rss_sum_mb": {str(args.clips): round(small["peak_rss_sum_mb"], 1),
                            str(args.big): round(large["peak_rss_sum_mb"], 1)},
        "processes": [small["processes"], large["processes"]],
        "memory_samples": [small["samples"], large["samples"]],
        "clips": args.clips, "big": args.big,
        "failed": {"pipeline": small["summary"]["failed"], "mertools": mer["failed"],
                   "fused_loop": fused["failed"]},
        "sequential_torch_threads": fused["torch_threads"],
        "pipeline": {"ray_cpus": args.ray_cpus or "library default",
                     "encoder_num_cpus": args.encoder_cpus, "pool_size": args.pool_size,
                     "encoder_pools": "one shared (group)" if args.group == "all"
                     else "one per encoder",
                     "batch_size": {k: e["batch_size"] for k, e in encoders.items()},
                     "decode_batch_size": args.decode_batch_size},
        "encoders": "frames: tiny CLIP, audio: tiny HuBERT (ecmf.models.tiny), text: packaged "
                    "all-MiniLM-L6-v2",
        "num_frames": NUM_FRAMES, "cpu_count": os.cpu_count(),
        "load_average_1m": loads,  # before the loops, the small and big runs, and at the end
    }
    for key, value in figures.items():
        print(f"{key:>26}: {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()

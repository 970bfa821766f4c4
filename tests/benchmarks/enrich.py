"""Benchmark of LLM enrichment, transformers backend on CPU with the tiny causal LM: samples/s,
generated tokens/s, and the Ray Data path's wall time over a plain loop (same model, same prompts).

    python tests/benchmarks/enrich.py --out enrich-bench.json [--n 256] [--batch-size 8]

Model loading is included identically in both timed runs: the plain loop loads the model in this
process and the Ray path in its actor. Before either, each path runs once untimed on one batch
(warm file cache, imports, first-call kernels). Both use one torch thread, as the actor (num_cpus=1)
does. The timed runs alternate (plain, Ray, plain, ...) and the figures are medians over --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def subtitles(n: int) -> list[str]:
    """`n` non-empty English subtitles of a generated demo corpus (no media is written)."""
    from ecmf.config import DemoConfig
    from ecmf.data.demo import plan_corpus

    plan = plan_corpus(DemoConfig(n_train=n, n_pool=n, n_candidates=n // 2 + 1, n_test=1))
    texts = [t for t in plan["english"] if t.strip()]
    if len(texts) < n:
        raise RuntimeError(f"the demo plan has {len(texts)} subtitles; {n} asked")
    return texts[:n]


def batches(texts: list[str], size: int) -> list[dict]:
    import numpy as np

    return [{"sample_id": np.array([f"s{i:05d}" for i in range(s, min(s + size, len(texts)))],
                                   dtype=object),
             "text": np.array(texts[s:s + size], dtype=object)}
            for s in range(0, len(texts), size)]


def plain_loop(cfg, model: str, texts: list[str], warm_up: bool = False) -> dict:
    """The backend called batch by batch in this process: load, then every batch."""
    import torch

    from ecmf.enrichment.backends import TransformersBackend

    torch.set_num_threads(max(1, int(cfg.num_cpus)))
    parts = batches(texts, cfg.batch_size)
    if warm_up:
        parts = parts[:1]
    start = time.perf_counter()
    backend = TransformersBackend(cfg, model)
    tokens = sum(int(backend(batch)["generated_tokens"].sum()) for batch in parts)
    return {"wall_s": time.perf_counter() - start, "tokens": tokens}


def ray_path(cfg, model: str, texts: list[str], warm_up: bool = False) -> dict:
    """The same rows through `enrich_dataset` (an actor pool of cfg.pool_size) on Ray Data, in
    blocks of the stage's size."""
    import pandas as pd
    import ray

    from ecmf.enrichment.pipeline import enrich_dataset
    from ecmf.stages.enrich import ROWS_PER_BLOCK

    rows = texts[:cfg.batch_size] if warm_up else texts
    df = pd.DataFrame({"sample_id": [f"s{i:05d}" for i in range(len(rows))], "text": rows})
    ds = ray.data.from_pandas([df.iloc[s:s + ROWS_PER_BLOCK]
                               for s in range(0, len(df), ROWS_PER_BLOCK)])
    start = time.perf_counter()
    first, n, tokens = None, 0, 0
    for batch in enrich_dataset(ds, cfg, model).iter_batches(batch_size=None,
                                                             batch_format="numpy"):
        first = first or time.perf_counter() - start
        n += len(batch["sample_id"])
        tokens += int(batch["generated_tokens"].sum())
    if n != len(rows):
        raise RuntimeError(f"the Ray path returned {n} rows for {len(rows)} subtitles")
    return {"wall_s": time.perf_counter() - start, "tokens": tokens, "first_output_s": first}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--n", type=int, default=256, help="subtitles (default 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (median)")
    args = parser.parse_args(argv)

    import ray

    from ecmf.config import EnrichConfig
    from ecmf.models.tiny import build_tiny_causal_lm

    texts = subtitles(args.n)
    cfg = EnrichConfig(model="tiny", batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, pool_size=1, num_cpus=1.0)
    plain, on_ray = [], []
    with tempfile.TemporaryDirectory(prefix="ecmf-bench-") as tmp:
        model = str(build_tiny_causal_lm(Path(tmp) / "llm", seed=0))
        ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 1024**2,
                 log_to_driver=False)
        try:
            plain_loop(cfg, model, texts, warm_up=True)
            ray_path(cfg, model, texts, warm_up=True)
            for _ in range(args.repeats):
                plain.append(plain_loop(cfg, model, texts))
                on_ray.append(ray_path(cfg, model, texts))
        finally:
            ray.shutdown()
    tokens = {r["tokens"] for r in plain + on_ray}
    if len(tokens) != 1:
        # Same greedy model, prompts and batches: a difference means the paths did other work.
        print(f"warning: generated tokens differ between runs: {sorted(tokens)}", file=sys.stderr)
    t_plain = statistics.median(r["wall_s"] for r in plain)
    t_ray = statistics.median(r["wall_s"] for r in on_ray)
    n_tokens = plain[0]["tokens"]
    figures = {
        "samples_per_s": round(len(texts) / t_plain, 2),
        "tokens_per_s": round(n_tokens / t_plain, 1),
        "ray_overhead": round(t_ray / t_plain, 3),
        "ray_samples_per_s": round(len(texts) / t_ray, 2),
        "ray_tokens_per_s": round(on_ray[0]["tokens"] / t_ray, 1),
        "plain_wall_s": [round(r["wall_s"], 2) for r in plain],
        "ray_wall_s": [round(r["wall_s"], 2) for r in on_ray],
        # Actor start, model load and the first block of rows: Ray's fixed cost shows here.
        "ray_first_output_s": [round(r["first_output_s"], 2) for r in on_ray],
        "generated_tokens": n_tokens, "samples": len(texts),
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "model": "tiny Llama (2 layers, hidden 64) from ecmf.models.tiny, random weights",
        "model_loading": "included in both timed runs; one untimed warm-up run per path first",
        "torch_threads": 1, "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()

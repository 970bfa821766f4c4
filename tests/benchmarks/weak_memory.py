"""Peak memory of the weak classifiers over a pool of the real pool's shape.

    python tests/benchmarks/weak_memory.py --out weak-memory.json [--pool 125000 --dims 3840]

MER2025's pool is about 125,000 clips; its four production features are 3,840 floats a clip
(CLIP-L frames and faces, chinese-hubert-large, chinese-roberta-wwm-ext-large: 1,024 each but
faces here 768 so that they sum to the issue's 3,840). The script writes a feature store of
that shape with 7,369 labeled clips (MER2025-SEMI's labeled set) beside the pool, then runs
`weak_probabilities`, the weak classifiers of `ecmf refine`, on an embedded Ray of 2 CPUs,
sampling the summed PSS of this driver and every Ray process. It prints one JSON object:
`peak_pss_gb` (the bar: <= 4), the pool's size in memory, the time and what ran.

Only the classifiers' run is measured: writing the store comes first. Logistic regression on
the feature set of all four features (the largest design matrix) and on frames alone, 3 folds:
the memory is set by the shapes (a batch of pool rows, the labeled rows), not by how many
classifiers run one after another.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from peakmem import PeakMemory  # noqa: E402

from ecmf import schema  # noqa: E402

LABELED = 7369


def feature_dims(total: int) -> dict[str, int]:
    dims = {"frames": 1024, "faces": 768, "audio": 1024, "text": 1024}
    scale = total / sum(dims.values())
    return {k: max(1, round(v * scale)) for k, v in dims.items()}


def write_workdir(root: Path, pool: int, dims: dict[str, int], rows_per_file: int = 4096):
    """manifest.parquet and a store of LABELED + `pool` clips, written a file at a time."""
    n = LABELED + pool
    ids = np.array([f"clip_{i:06d}" for i in range(n)])
    labels = np.array(schema.LABELS)[np.arange(n) % len(schema.LABELS)]
    pd.DataFrame({schema.SAMPLE_ID: ids,
                  schema.SPLIT: ["train"] * LABELED + ["pool"] * pool,
                  schema.LABEL: [*labels[:LABELED], *[None] * pool]}).to_parquet(
        root / "manifest.parquet", index=False)
    store = root / "features" / "store"
    store.mkdir(parents=True)
    rng = np.random.default_rng(0)
    centroids = {f: rng.normal(size=(len(schema.LABELS), d)).astype(np.float32)
                 for f, d in dims.items()}
    y = np.arange(n) % len(schema.LABELS)
    for part, start in enumerate(range(0, n, rows_per_file)):
        rows = slice(start, min(n, start + rows_per_file))
        cols = {schema.SAMPLE_ID: pa.array(ids[rows].tolist(), pa.string()),
                "error": pa.array([""] * len(ids[rows]), pa.string())}
        for f, d in dims.items():
            x = centroids[f][y[rows]] + 2.0 * rng.normal(size=(len(ids[rows]), d)).astype(
                np.float32)
            cols[schema.feature_column(f)] = pa.FixedSizeListArray.from_arrays(
                pa.array(x.astype(np.float32).ravel(), pa.float32()), d)
            cols[schema.mask_column(f)] = pa.array(np.ones(len(ids[rows]), bool), pa.bool_())
        pq.write_table(pa.table(cols), store / f"part-{part:04d}.parquet")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--pool", type=int, default=125_000)
    p.add_argument("--dims", type=int, default=3840)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args()
    import ray

    from ecmf.data.manifest import load_manifest
    from ecmf.semi.weak import weak_probabilities
    from ecmf.stages.common import load_config
    from ecmf.train.fit import fold_split

    dims = feature_dims(args.dims)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        root = Path(tmp)
        start = time.time()
        # In a process of its own, so that what writing held is not this driver's to measure.
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=write_workdir, args=(root, args.pool, dims))
        proc.start()
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"writing the store failed (exit {proc.exitcode})")
        written = time.time() - start
        store_gb = sum(f.stat().st_size for f in (root / "features" / "store").glob("*")) / 1e9
        cfg = load_config(None, [f"workdir={root}", f"train.folds={args.folds}",
                                 "refine.classifiers=[lr]", "refine.cpus_per_task=1",
                                 f"refine.feature_sets=[[{','.join(dims)}], [frames]]"])
        fold_split(cfg, load_manifest(cfg), write=True)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024**2)
        try:
            idle = PeakMemory()
            idle._sample()  # Ray up, this driver ready: what the run adds is above it
            start = time.time()
            with PeakMemory() as mem:
                out = weak_probabilities(cfg)
            seconds = time.time() - start
        finally:
            ray.shutdown()
        pool_rows = int((out["part"] == "pool").sum())
    result = {
        "pool": args.pool, "labeled": LABELED, "dims": sum(dims.values()), "features": dims,
        "pool_features_gb_in_memory": round(args.pool * sum(dims.values()) * 4 / 1e9, 2),
        "store_gb_on_disk": round(store_gb, 2), "store_write_s": round(written, 1),
        "classifiers": ["lr"], "feature_sets": [list(dims), ["frames"]], "folds": args.folds,
        "ray_cpus": args.cpus, "pool_rows_predicted": pool_rows, "seconds": round(seconds, 1),
        "pss_before_gb": round(idle.peak_pss / 1e9, 2),
        "peak_pss_gb": round(mem.peak_pss / 1e9, 2), "peak_rss_gb": round(mem.peak_rss / 1e9, 2),
        "processes": mem.processes, "bar_peak_pss_gb": 4.0,
    }
    text = json.dumps(result, indent=1)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

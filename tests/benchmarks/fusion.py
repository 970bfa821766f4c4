"""Benchmark of the fusion models and of Ray Train's cost.

    python tests/benchmarks/fusion.py --out fusion-bench.json [--workdir DIR] [--seeds 5]

Part 1, quality, on the demo corpus's features (frames, audio, text from the demo's tiny
encoders; no enrichment): `ecmf` fusion, `mertools-attention`, `concat-mlp` and each single
modality (the `ecmf` model on one feature), each a 5-fold run with the demo's training settings
(pipeline.demo_overrides: 25 epochs, batch 64, hidden 64, ...), over --seeds seeds. A seed sets
the fold split, the initial weights and the batch order. Every model gets the same settings and
the same epochs; the baseline is MERTools' architecture at a width inside its own search grid.
The score is the WAF of the fold ensemble (mean probability of the 5 fold models) on the demo's
clean test set (candidates with hidden truth); the out-of-fold WAF over the noisy training labels
is reported beside it. Training runs in this process through `train_one_fold` (the code Ray Train
runs), one torch thread. With --workdir pointing at a finished `ecmf demo` output, its store is
read; otherwise a demo corpus is written and its features extracted here first (the unlabeled
pool, which this benchmark does not use, is cut to --pool clips to save the extraction time).

Part 2, Ray's overhead: 7,369 generated samples of four 1024-d features (class centroids plus
noise, a few missing), 5 folds, --overhead-epochs epochs (100), the default model and training
settings a user gets (`ecmf`, hidden 128, 4 heads, 1 layer, batch 32): `train_one_fold` over
the 5 folds called directly (read the store, train, save each fold model) against `fit`'s
TorchTrainer with 1 worker of 1 CPU (Ray Data read, worker start, a checkpoint per fold).
`ray_overhead` is Ray's time over plain PyTorch's, both timed in this run (ray.init excluded),
alternating (plain, Ray, Ray, plain, ... or Ray first with --overhead-first ray) with
--overhead-repeats. On 2 shared cores 100 epochs take far longer than 10 minutes a side:
--overhead-epochs and --overhead-hidden trade fidelity for time (fewer epochs leave Ray's fixed
start-up cost a larger share; a smaller model leaves any per-step cost a larger share).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "600")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FUSED = ["ecmf", "mertools-attention", "concat-mlp"]


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------------------- part 1: quality


def demo_workdir(workdir: Path | None, scratch: Path, pool: int):
    """The config of a demo workdir holding a feature store: the one given, or one made here."""
    from ecmf.stages.common import load_config
    from ecmf.stages.demo import demo_overrides

    if workdir is not None:
        if not (workdir / "features" / "store").is_dir():
            raise SystemExit(f"{workdir}/features/store is missing: run `ecmf demo --out "
                             f"{workdir}` or leave --workdir out")
        sets = [f"workdir={workdir}", f"corpus.root={workdir / 'corpus'}"]
        return load_config(None, sets, base=demo_overrides(workdir, _tiny_paths(workdir)))
    return _make_demo_store(scratch, pool)


def _tiny_paths(out: Path) -> dict[str, str]:
    return {k: str(out / "models" / k) for k in ("clip", "hubert", "llm")}


def _make_demo_store(out: Path, pool: int):
    from ecmf.data.demo import write_demo_corpus
    from ecmf.features.extract import extract_features
    from ecmf.runtime.session import ray_session
    from ecmf.stages.demo import demo_config

    # No enrichment (its text comes from a random tiny LM), and no encoder that needs a GPU.
    cfg = demo_config(out, None, ["extract.encoders.enriched=null", f"demo.n_pool={pool}"])
    gpu = [n for n, e in cfg.extract.encoders.items() if e.num_gpus > 0]
    if gpu:
        cfg = demo_config(out, None, ["extract.encoders.enriched=null", f"demo.n_pool={pool}",
                                      *(f"extract.encoders.{n}=null" for n in gpu)])
    start = time.time()
    if not (Path(cfg.corpus.root) / "hidden_truth.csv").is_file():
        write_demo_corpus(cfg.demo, Path(cfg.corpus.root))
    with ray_session(cfg.ray):
        extract_features(cfg)
    print(f"demo corpus and features: {time.time() - start:.0f} s (load {load_avg()})")
    return cfg


def test_split(cfg):
    """Names and labels of the demo's clean test set (candidates with hidden truth)."""
    import pandas as pd

    from ecmf.features.store import ok_ids

    truth = pd.read_csv(Path(cfg.corpus.root) / "hidden_truth.csv", dtype=str,
                        keep_default_na=False)
    test = truth[truth["test"].str.lower() == "true"]
    have = ok_ids(Path(cfg.workdir) / "features" / "store")
    return test[test["name"].isin(have)][["name", "discrete"]].reset_index(drop=True)


def ensemble_probs(states: list[dict], train_cfg, dims: dict[str, int], ft) -> np.ndarray:
    import numpy as np
    import torch

    from ecmf.models.fusion import MODELS
    from ecmf.train.loop import model_kwargs

    out = []
    for state in states:
        model = MODELS.get(train_cfg.model)(**model_kwargs(train_cfg, dims))
        model.load_state_dict(state)
        model.eval()
        with torch.inference_mode():
            f = {k: torch.tensor(ft.feats[k]) for k in dims}
            m = {k: torch.tensor(ft.masks[k]) for k in dims}
            out.append(torch.softmax(model(f, m), -1).numpy())
    return np.mean(out, axis=0)


def cv_run(cfg, manifest, features: list[str], model: str, seed: int, test) -> dict:
    """One k-fold run: test WAF of the fold ensemble, out-of-fold WAF, seconds."""
    import numpy as np

    from ecmf import schema
    from ecmf.features.store import read_features
    from ecmf.train.fit import training_table
    from ecmf.train.loop import train_one_fold
    from ecmf.train.metrics import weighted_f1
    from ecmf.tune.trial import trial_data

    tc = dataclasses.replace(cfg.train, model=model, seed=seed, features=features)
    store = Path(cfg.workdir) / "features" / "store"
    table = training_table(manifest, tc.folds, seed)
    data = trial_data(store, table, features)
    dims = {f: int(data[schema.feature_column(f)].shape[1]) for f in features}
    start = time.perf_counter()
    folds = [train_one_fold(tc, data, features, dims, k) for k in range(tc.folds)]
    seconds = time.perf_counter() - start
    labeled = read_features(store, features, data[schema.SAMPLE_ID].tolist())
    oof = np.zeros(len(labeled), dtype=np.int64)
    for k, r in enumerate(folds):
        held = data["fold"] == k
        oof[held] = ensemble_probs([r["state"]], tc, dims, labeled.take(np.flatnonzero(held))
                                   ).argmax(1)
    ft = read_features(store, features, test["name"].tolist())
    pred = ensemble_probs([r["state"] for r in folds], tc, dims, ft).argmax(1)
    y_test = np.array([schema.label_index(v) for v in test["discrete"]])
    return {"test_waf": weighted_f1(y_test, pred), "oof_waf": weighted_f1(data["y"], oof),
            "seconds": seconds}


def quality(cfg, seeds: int) -> dict:
    import numpy as np
    import torch

    from ecmf.data.manifest import load_manifest

    torch.set_num_threads(1)
    manifest = load_manifest(cfg)
    test = test_split(cfg)
    from ecmf.features.store import store_dims

    have = store_dims(Path(cfg.workdir) / "features" / "store")
    features = [f for f in cfg.train.features if f in have]  # the demo's fused features
    runs = {m: (m, features) for m in FUSED}
    runs.update({f"single:{f}": ("ecmf", [f]) for f in features})
    scores: dict[str, list[dict]] = {name: [] for name in runs}
    start = time.time()
    for seed in range(seeds):  # seeds outermost: load drift touches every model alike
        for name, (model, feats) in runs.items():
            scores[name].append(cv_run(cfg, manifest, feats, model, seed, test))
        print(f"seed {seed}: " + ", ".join(f"{n} {scores[n][-1]['test_waf']:.4f}"
                                           for n in runs) + f" (load {load_avg()})")

    def stat(name, key):
        v = [r[key] for r in scores[name]]
        return float(np.mean(v)), float(np.std(v)), [round(x, 4) for x in v]

    table = {name: {"test_waf": stat(name, "test_waf"), "oof_waf": stat(name, "oof_waf"),
                    "seconds_per_run": round(statistics.mean(r["seconds"] for r in scores[name]),
                                             2)}
             for name in runs}
    singles = [n for n in runs if n.startswith("single:")]
    best_single = max(singles, key=lambda n: table[n]["test_waf"][0])
    return {"table": table, "best_single": best_single, "test_size": int(len(test)),
            "n_labeled": int((manifest["split"] == "train").sum()), "features": features,
            "train": dataclasses.asdict(cfg.train), "seconds": round(time.time() - start, 1)}


# ---------------------------------------------------------------------------- part 2: overhead


def write_generated_store(root: Path, n: int, dims: dict[str, int], seed: int = 0):
    """A workdir with a store of `n` generated samples (class centroid + noise, ~5% missing
    per modality) and its manifest; returns the labels."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ecmf import schema

    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(schema.LABELS), n)
    ids = np.array([f"gen_{i:06d}" for i in range(n)])
    store = root / "features" / "store"
    store.mkdir(parents=True, exist_ok=True)
    centres = {f: rng.normal(size=(len(schema.LABELS), d)).astype(np.float32) * 0.3
               for f, d in dims.items()}
    for p, rows in enumerate(np.array_split(np.arange(n), 8)):
        cols = {schema.SAMPLE_ID: pa.array(ids[rows]), "error": pa.array([""] * len(rows))}
        for f, d in dims.items():
            x = centres[f][y[rows]] + rng.normal(size=(len(rows), d)).astype(np.float32)
            present = rng.random(len(rows)) > 0.05
            x[~present] = 0.0
            cols[schema.feature_column(f)] = pa.FixedSizeListArray.from_arrays(
                pa.array(x.ravel(), pa.float32()), d)
            cols[schema.mask_column(f)] = pa.array(present)
        pq.write_table(pa.table(cols), store / f"part-{p:02d}.parquet")
    pd.DataFrame({schema.SAMPLE_ID: ids, schema.SPLIT: "train",
                  schema.LABEL: np.array(schema.LABELS)[y]}).to_parquet(root / "manifest.parquet")


def plain_fit(cfg, table, out: Path) -> float:
    """The Ray worker's work without Ray: read the store, train every fold, save each model."""
    import numpy as np
    import torch

    from ecmf import schema
    from ecmf.train.fit import resolve_features
    from ecmf.train.loop import save_fold, train_one_fold
    from ecmf.tune.trial import trial_data

    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))  # as the Ray worker does
    start = time.perf_counter()
    features, dims = resolve_features(cfg)
    data = trial_data(Path(cfg.workdir) / "features" / "store", table, features)
    order = np.argsort(data[schema.SAMPLE_ID].astype(str), kind="stable")  # as a shard is
    data = {k: v[order] for k, v in data.items()}
    out.mkdir(parents=True, exist_ok=True)
    for k in range(cfg.train.folds):
        save_fold(train_one_fold(cfg.train, data, features, dims, k), cfg.train, features, dims,
                  out)
    return time.perf_counter() - start


def overhead(epochs: int, repeats: int, n: int, dim: int, hidden: int, scratch: Path,
             first: str = "plain") -> dict:
    from ecmf.data.manifest import load_manifest
    from ecmf.stages.common import load_config
    from ecmf.train.fit import fit, training_table

    dims = {f"feat{i}": dim for i in range(4)}
    root = scratch / "generated"
    write_generated_store(root, n, dims)
    cfg = load_config(None, [f"workdir={root}", f"train.epochs={epochs}", "train.folds=5",
                             f"train.hidden={hidden}"])
    table = training_table(load_manifest(cfg), cfg.train.folds, cfg.train.seed)
    times: dict[str, list] = {"plain": [], "ray": []}
    loads: dict[str, list] = {"plain": [], "ray": []}
    pair = ("plain", "ray") if first == "plain" else ("ray", "plain")
    order = [s for r in range(repeats) for s in (pair if r % 2 == 0 else pair[::-1])]
    for i, side in enumerate(order):
        before = load_avg()
        if side == "plain":
            t = plain_fit(cfg, table, scratch / f"plain-{i}")
        else:
            # fit's own timer covers trainer.fit() only; its OOF prediction afterwards is
            # work the plain side does not do.
            t = fit(cfg, table, scratch / f"ray-{i}")["fit_seconds"]
        times[side].append(round(t, 1))
        loads[side].append([before, load_avg()])
        print(f"{side}: {t:.1f} s ({epochs} epochs, load {before} -> {load_avg()})")
    tc = cfg.train
    return {"ray_overhead": round(sum(times["ray"]) / sum(times["plain"]), 3),
            "plain_s": times["plain"], "ray_s": times["ray"], "order": order,
            "load_average_1m_before_after": loads, "samples": n,
            "features": dict(dims.items()), "epochs": epochs, "folds": tc.folds,
            "model": tc.model, "hidden": tc.hidden, "heads": tc.heads, "layers": tc.layers,
            "batch_size": tc.batch_size, "num_workers": tc.num_workers,
            "cpus_per_worker": tc.cpus_per_worker, "torch_threads": 1}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--workdir", type=Path,
                        help="a demo workdir with features/store (e.g. an `ecmf demo` output); "
                             "default: make one in a temporary directory")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pool", type=int, default=24,
                        help="unlabeled pool clips of a demo corpus made here (default 24)")
    parser.add_argument("--overhead-epochs", type=int, default=100)
    parser.add_argument("--overhead-repeats", type=int, default=1,
                        help="timed runs per side, alternating (default 1: plain, then Ray)")
    parser.add_argument("--overhead-first", choices=["plain", "ray"], default="plain",
                        help="side timed first (then alternating)")
    parser.add_argument("--overhead-samples", type=int, default=7369)
    parser.add_argument("--overhead-dim", type=int, default=1024)
    parser.add_argument("--overhead-hidden", type=int, default=128,
                        help="train.hidden of the timed model (default 128, the default a user "
                             "gets; smaller makes each step cheaper, so Ray's share larger)")
    parser.add_argument("--skip", choices=["quality", "overhead"], help="leave one part out")
    args = parser.parse_args(argv)

    import ray

    figures: dict = {"cpu_count": os.cpu_count(), "load_average_1m_at_start": load_avg()}
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="ecmf-fusion-bench-") as tmp:
        scratch = Path(tmp)
        ray.init(num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024**2,
                 log_to_driver=False)
        try:
            if args.skip != "quality":
                cfg = demo_workdir(args.workdir.resolve() if args.workdir else None,
                                   scratch / "demo", args.pool)
                q = quality(cfg, args.seeds)
                t = q["table"]
                figures.update({
                    "ecmf_waf_mean": round(t["ecmf"]["test_waf"][0], 4),
                    "ecmf_waf_std": round(t["ecmf"]["test_waf"][1], 4),
                    "baseline_waf_mean": round(t["mertools-attention"]["test_waf"][0], 4),
                    "baseline_waf_std": round(t["mertools-attention"]["test_waf"][1], 4),
                    "concat_waf_mean": round(t["concat-mlp"]["test_waf"][0], 4),
                    "concat_waf_std": round(t["concat-mlp"]["test_waf"][1], 4),
                    "best_single_waf_mean": round(t[q["best_single"]]["test_waf"][0], 4),
                    "best_single_waf_std": round(t[q["best_single"]]["test_waf"][1], 4),
                    "best_single": q["best_single"],
                    "quality": q,
                })
                margin = figures["ecmf_waf_mean"] - figures["baseline_waf_mean"]
                spread = max(figures["ecmf_waf_std"], figures["baseline_waf_std"])
                figures["ecmf_minus_baseline"] = round(margin, 4)
                figures["ecmf_beats_baseline_by_more_than_spread"] = bool(margin > spread)
            if args.skip != "overhead":
                o = overhead(args.overhead_epochs, args.overhead_repeats, args.overhead_samples,
                             args.overhead_dim, args.overhead_hidden, scratch,
                             args.overhead_first)
                figures["ray_overhead"] = o.pop("ray_overhead")
                figures["overhead"] = o
        finally:
            ray.shutdown()
    figures["seconds"] = round(time.time() - start, 1)
    figures["load_average_1m_at_end"] = load_avg()
    for key, value in figures.items():
        if key not in ("quality", "overhead"):
            print(f"{key:>42}: {value}")
    if "quality" in figures:
        for name, row in figures["quality"]["table"].items():
            print(f"{name:>24}: test WAF {row['test_waf'][0]:.4f} ± {row['test_waf'][1]:.4f}, "
                  f"OOF WAF {row['oof_waf'][0]:.4f} ± {row['oof_waf'][1]:.4f}")
    if "overhead" in figures:
        print(f"{'overhead':>24}: {json.dumps(figures['overhead'])}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()

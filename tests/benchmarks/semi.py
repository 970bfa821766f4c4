"""Benchmark of semi-supervised learning on the demo corpus, scored with its hidden truth, and of
pool inference plus selection at scale.

    python tests/benchmarks/semi.py --out semi-bench.json [--seeds 1,2,3] [--scale-rows 1000000]

Quality, per seed: generate the demo corpus and its features, train the fusion model on the
labeled set alone (the baseline), refine the labels, run the pseudo-label rounds (training on
the refined labels), then score against the hidden truth:
- corrected_fraction: corrupted training labels whose refined label is the true one;
- clean_changed_fraction: clean training labels that refinement changed (both from
  refine/labels.parquet, one refined label per clip voted by the out-of-fold sources);
- fold_blind_corrected_fraction, fold_blind_clean_changed_fraction: the same over the labels
  the fold models train on (refine/fold_labels.parquet, a label per clip and fold model, voted
  by sources fit without that model's fold), when refinement is fold-blind (the default);
- frontier_fusion_corrected, frontier_oracle_corrected: ceilings of the correction bar, the
  most corrupted labels one source corrects at 5% of the clean ones changed (the best
  threshold on its margin over the given label, chosen with the truth): the fusion model's
  out-of-fold predictions, and those of the same model trained on the hidden true labels
  (`oracle_test_waf`: its test WAF, what clean labels are worth);
- pseudo_precision: selected pseudo-labels (every round, default selection) that are true,
  counted per fold that took them (each fold model of a round trains on its own selection);
- waf_gain: test WAF (x100) of the run `ecmf predict` would use (best round by validation WAF)
  minus the baseline's. Means over the seeds, and each seed's figures.
Nothing is tuned here: every setting is the config default, except refinement switched on
(`--set KEY=VALUE` changes one, to compare; the figures record it).
Seed 0 was the development seed; the default seeds are 1, 2, 3.

Scale: a generated pool of `--scale-rows` rows (four 256-d float32 features, classes as noisy
clusters) written to a Parquet store in chunks, a tiny fold ensemble trained on 2,000 of its rows,
then `predict_store` (Ray Data, streamed, with each fold's probabilities) and a round's
fold-by-fold selection (`select_round`, the default strategy) over every row. A thread
samples the resident memory of the driver and of every process under it (Ray's GCS, raylet,
object store and workers) each 0.5 s: scale_peak_rss_gb is the peak of the summed proportional
set size (PSS: shared pages split between the processes that map them), scale_peak_rss_sum_gb
the peak of the plain RSS sum, which counts shared libraries and object-store pages once per
process. The scale part runs on its own local Ray of 3 logical CPUs (2 inference actors and
one for the Parquet reads).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "600")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from peakmem import PeakMemory  # noqa: E402  (a sibling module: run as a script)

SCALE_FEATURES = ("f0", "f1", "f2", "f3")
SCALE_DIM = 256


# ------------------------------------------------------------------------------------ quality


def correction_frontier(probs, given, truth, noisy, max_clean: float = 0.05) -> float:
    """The most corrupted labels one source can correct while changing at most `max_clean` of
    the clean ones: labels whose top class differs are changed in order of the top class's
    margin over the given label, and the best prefix is taken (an upper bound for any
    threshold on that margin)."""
    import numpy as np

    probs = np.asarray(probs, dtype=np.float64)
    rows = np.arange(len(given))
    top = probs.argmax(axis=1)
    margin = probs[rows, top] - probs[rows, given]
    order = [i for i in np.argsort(-margin, kind="stable") if top[i] != given[i]]
    n_clean, n_noisy = int((~noisy).sum()), int(noisy.sum())
    best = corrected = changed = 0
    for i in order:
        if noisy[i]:
            corrected += int(top[i] == truth[i])
        else:
            changed += 1
        if changed <= max_clean * n_clean:
            best = max(best, corrected)
    return best / n_noisy if n_noisy else float("nan")


def quality_seed(seed: int, root: Path, sets: list[str] = ()) -> dict:
    """One seed: corpus, features, baseline, refinement, rounds; figures against the truth."""
    import numpy as np
    import pandas as pd

    from ecmf import schema
    from ecmf.data.demo import write_demo_corpus
    from ecmf.data.manifest import load_manifest
    from ecmf.features.extract import extract_features
    from ecmf.semi.refine import refine_labels
    from ecmf.semi.rounds import best_run, run_rounds
    from ecmf.stages.demo import demo_config
    from ecmf.stages.evaluate import score_run
    from ecmf.train.fit import fit, train_stage, training_table
    from ecmf.workdir import Workdir

    out = root / f"seed{seed}"
    # The enriched text of the demo comes from a random LM: neither extracted nor voted here.
    # Fixed features (frames, audio, text), so figures do not move with the demo's defaults.
    cfg = demo_config(out, None, [f"demo.seed={seed}", "extract.encoders.enriched=null",
                                  "extract.encoders.faces=null", "train.features=frames,audio,text",
                                  "refine.enabled=true", *sets])
    wd = Workdir.of(cfg)
    times = {}
    t = time.perf_counter()
    if not (Path(cfg.corpus.root) / "hidden_truth.csv").is_file():
        write_demo_corpus(cfg.demo, cfg.corpus.root)
    times["corpus"] = time.perf_counter() - t
    for name, fn in (("extract", extract_features), ("train", train_stage),
                     ("refine", refine_labels), ("rounds", run_rounds)):
        t = time.perf_counter()
        fn(cfg)
        times[name] = time.perf_counter() - t

    truth = pd.read_csv(Path(cfg.corpus.root) / "hidden_truth.csv", dtype=str,
                        keep_default_na=False).set_index("name")
    test = truth[truth["test"].str.lower() == "true"].reset_index()[["name", "discrete"]]
    labels = pd.read_parquet(wd.refine / "labels.parquet").set_index(schema.SAMPLE_ID)
    noisy = (truth.loc[labels.index, "is_noisy"].str.lower() == "true").to_numpy()
    right = (labels["refined"] == truth.loc[labels.index, "discrete"]).to_numpy()
    summary = json.loads((wd.rounds / "summary.json").read_text())
    last = summary["rounds"][-1]
    pseudo = (pd.read_parquet(Path(last["run"]) / "labels.parquet") if last["round"] > 0
              else pd.DataFrame(columns=[schema.SAMPLE_ID, schema.LABEL]))
    # Ceilings: how much one source could correct (the fusion model's out-of-fold predictions,
    # and those of a fusion model trained on the hidden true labels), and the test WAF of that
    # model: what perfectly clean labels would give.
    t = time.perf_counter()
    table = training_table(load_manifest(cfg), cfg.train.folds, cfg.train.seed)
    truth_idx = np.array([schema.label_index(v) for v in
                          truth.loc[table[schema.SAMPLE_ID], "discrete"]])
    oracle_dir = out / "oracle"
    if not (oracle_dir / "oof.parquet").is_file():
        fit(cfg, table.assign(y=truth_idx), oracle_dir)
    times["oracle"] = time.perf_counter() - t
    t_noisy = (truth.loc[table[schema.SAMPLE_ID], "is_noisy"].str.lower() == "true").to_numpy()
    frontier = {}
    for name, run in (("fusion", wd.train), ("oracle", oracle_dir)):
        oof = pd.read_parquet(run / "oof.parquet").set_index(schema.SAMPLE_ID)
        oof = oof.reindex(table[schema.SAMPLE_ID])[list(schema.PROB_COLUMNS)].to_numpy()
        have = np.isfinite(oof).all(axis=1)  # clips without features have no prediction
        frontier[name] = correction_frontier(oof[have], table["y"].to_numpy()[have],
                                             truth_idx[have], t_noisy[have])
    pseudo_right = (pseudo[schema.LABEL].to_numpy() ==
                    truth.loc[pseudo[schema.SAMPLE_ID], "discrete"].to_numpy())
    base = score_run(wd.train, wd.store, test)["waf"]
    chosen = best_run(cfg)
    after = score_run(chosen, wd.store, test)["waf"]
    rounds_waf = [score_run(r["run"], wd.store, test)["waf"] for r in summary["rounds"][1:]]
    folded_path = wd.refine / "fold_labels.parquet"
    blind = {}
    if folded_path.is_file():  # what the fold models trained on: a label per (clip, fold model)
        folded = pd.read_parquet(folded_path)
        f_noisy = (truth.loc[folded[schema.SAMPLE_ID], "is_noisy"].str.lower() == "true")
        f_noisy = f_noisy.to_numpy()
        f_right = (folded["refined"].to_numpy() ==
                   truth.loc[folded[schema.SAMPLE_ID], "discrete"].to_numpy())
        blind = {"fold_blind_corrected_fraction": float(f_right[f_noisy].mean()),
                 "fold_blind_clean_changed_fraction":
                     float(folded["changed"].to_numpy()[~f_noisy].mean())}
    fig = {
        "seed": seed,
        "corrected_fraction": float(right[noisy].mean()),
        "clean_changed_fraction": float(labels["changed"].to_numpy()[~noisy].mean()),
        "pseudo_precision": float(pseudo_right.mean()) if len(pseudo) else float("nan"),
        "pseudo_labels": int(len(pseudo)),  # one per fold that took a clip
        "pseudo_clips": int(pseudo[schema.SAMPLE_ID].nunique()),
        "waf_gain": 100 * (after - base),
        "baseline_test_waf": base, "after_test_waf": after,
        "chosen_run": str(Path(chosen).relative_to(wd.root)),
        "rounds_test_waf": rounds_waf,
        "rounds_val_waf": [r["val_waf"] for r in summary["rounds"]],
        **blind,
        "frontier_fusion_corrected": frontier["fusion"],
        "frontier_oracle_corrected": frontier["oracle"],
        "oracle_test_waf": score_run(oracle_dir, wd.store, test)["waf"],
        "noisy_labels": int(noisy.sum()), "changed": int(labels["changed"].sum()),
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    print(f"seed {seed}: corrected {fig['corrected_fraction']:.3f}, clean changed "
          f"{fig['clean_changed_fraction']:.3f}, pseudo precision {fig['pseudo_precision']:.3f} "
          f"({len(pseudo)} labels of {fig['pseudo_clips']} clips), test WAF {100 * base:.2f} -> "
          f"{100 * after:.2f} "
          f"({fig['chosen_run']}), {sum(times.values()):.0f} s", flush=True)
    return fig


# -------------------------------------------------------------------------------------- scale


def write_scale_store(store: Path, rows: int, chunk: int, seed: int = 0) -> dict:
    """`rows` store rows in files of `chunk` rows: each feature a class centre plus noise."""
    import numpy as np
    import pyarrow.parquet as pq

    from ecmf import schema
    from ecmf.features.extract import to_store_rows

    store.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    c = len(schema.LABELS)
    centres = {f: rng.normal(0, 1, size=(c, SCALE_DIM)).astype(np.float32)
               for f in SCALE_FEATURES}
    labels = []
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        y = rng.integers(0, c, n)
        batch = {schema.SAMPLE_ID: np.array([f"pool_{i:08d}" for i in range(start, start + n)]),
                 "error": np.array([""] * n)}
        for f in SCALE_FEATURES:
            noise = rng.standard_normal((n, SCALE_DIM), dtype=np.float32) * 8.0
            batch[schema.feature_column(f)] = centres[f][y] + noise
            batch[schema.mask_column(f)] = rng.random(n) > 0.05
            batch[schema.feature_column(f)][~batch[schema.mask_column(f)]] = 0.0
        pq.write_table(to_store_rows(batch, list(SCALE_FEATURES)),
                       store / f"part-{start // chunk:05d}.parquet")
        if start < 2000:
            labels.append(y)
    return {"first_labels": np.concatenate(labels)[:2000]}


def train_scale_ensemble(store: Path, run: Path, y, folds: int = 2) -> None:
    """A tiny fold ensemble (the demo's model settings, 3 epochs) on the first 2,000 rows."""
    import numpy as np

    from ecmf import schema
    from ecmf.config import TrainConfig
    from ecmf.features.store import read_features
    from ecmf.train.loop import save_fold, train_one_fold

    ids = [f"pool_{i:08d}" for i in range(len(y))]
    ft = read_features(store, list(SCALE_FEATURES), ids)
    data = {schema.SAMPLE_ID: ft.ids, "y": np.asarray(y, dtype=np.int64),
            "weight": np.ones(len(y), dtype=np.float32), "fold": np.arange(len(y)) % folds}
    for f in SCALE_FEATURES:
        data[schema.feature_column(f)] = ft.feats[f]
        data[schema.mask_column(f)] = ft.masks[f]
    cfg = TrainConfig(hidden=64, epochs=3, batch_size=64, folds=folds)
    dims = dict.fromkeys(SCALE_FEATURES, SCALE_DIM)
    (run / "models").mkdir(parents=True, exist_ok=True)
    for k in range(folds):
        result = train_one_fold(cfg, data, list(SCALE_FEATURES), dims, k)
        save_fold(result, cfg, list(SCALE_FEATURES), dims, run / "models")


def scale(rows: int, root: Path, chunk: int, pool_size: int, batch_size: int) -> dict:
    import numpy as np
    import ray

    from ecmf import schema
    from ecmf.semi.rounds import select_round
    from ecmf.semi.select import class_prior
    from ecmf.stages.common import load_config
    from ecmf.train.predict import predict_store

    store, run = root / "scale" / "store", root / "scale" / "run"
    t = time.perf_counter()
    folds = 2
    first = write_scale_store(store, rows, chunk)["first_labels"]
    write_s = time.perf_counter() - t
    disk_gb = sum(p.stat().st_size for p in store.glob("*.parquet")) / 1024**3
    print(f"scale: wrote {rows:,} rows ({disk_gb:.2f} GB of Parquet) in {write_s:.0f} s",
          flush=True)
    train_scale_ensemble(store, run, first, folds)
    # Inference and selection only: the peak covers Ray's processes, not the writing above.
    with PeakMemory() as mem:
        t = time.perf_counter()
        preds = predict_store(store, run, root / "scale" / "predictions",
                              batch_size=batch_size, pool_size=pool_size, per_fold=True)
        infer_s = time.perf_counter() - t
        prior = class_prior(np.asarray(first), len(schema.LABELS))
        # What a round does with them: each fold selects from its own probabilities.
        cfg = load_config(None, [f"train.folds={folds}", "pseudo.min_agree=0"])
        sel = select_round(preds, cfg, prior, 1)
        total_s = time.perf_counter() - t
    assert len(preds) == rows, f"predicted {len(preds)} of {rows} rows"
    fig = {
        "scale_rows": rows, "scale_rows_per_s": rows / total_s,
        "scale_peak_rss_gb": mem.peak_pss / 1024**3,
        "scale_peak_rss_sum_gb": mem.peak_rss / 1024**3, "scale_processes": mem.processes,
        "scale_inference_s": infer_s,
        "scale_total_s": total_s, "scale_selected": int(len(sel)),
        "scale_selected_clips": int(sel[schema.SAMPLE_ID].nunique()), "scale_folds": folds,
        "scale_store_gb": disk_gb, "scale_write_s": write_s,
        "scale_pool_size": pool_size, "scale_batch_size": batch_size,
        "ray_object_store_gb": ray.cluster_resources().get("object_store_memory", 0) / 1024**3,
    }
    print(f"scale: {rows:,} rows predicted and selected in {total_s:.1f} s = "
          f"{fig['scale_rows_per_s']:,.0f} rows/s; peak resident memory (driver + Ray, PSS) "
          f"{fig['scale_peak_rss_gb']:.2f} GB (summed RSS {fig['scale_peak_rss_sum_gb']:.2f} GB);"
          f" {len(sel):,} labels selected over {folds} folds", flush=True)
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--seeds", default="1,2,3", help="demo corpus seeds (default 1,2,3)")
    parser.add_argument("--scale-rows", type=int, default=1_000_000,
                        help="rows of the generated pool (0: skip the scale part)")
    parser.add_argument("--scale-chunk", type=int, default=20_000, help="rows per Parquet file")
    parser.add_argument("--scale-pool-size", type=int, default=2, help="inference actors")
    parser.add_argument("--scale-batch-size", type=int, default=2048)
    parser.add_argument("--workdir", help="keep outputs here (default: a temporary directory)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config setting on top of the defaults, for the quality runs "
                             "(repeatable; the figures record them)")
    args = parser.parse_args(argv)

    import numpy as np
    import ray

    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="ecmf-semi-bench-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    load = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    figures: dict = {"settings": args.set}
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024**2,
             log_to_driver=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        per_seed = []
        for s in seeds:
            per_seed.append(quality_seed(s, root, args.set))
            for key in ("corrected_fraction", "clean_changed_fraction", "pseudo_precision",
                        "waf_gain", "fold_blind_corrected_fraction",
                        "fold_blind_clean_changed_fraction", "frontier_fusion_corrected",
                        "frontier_oracle_corrected", "oracle_test_waf"):
                if all(key in f for f in per_seed):
                    figures[key] = float(np.nanmean([f[key] for f in per_seed]))
            figures["seeds"] = per_seed
            # After every seed, so that an interrupted run still leaves its figures.
            out.write_text(json.dumps({**figures, "complete": False}, indent=2) + "\n")
        if args.scale_rows > 0:
            ray.shutdown()
            ray.init(num_cpus=args.scale_pool_size + 1, include_dashboard=False,
                     object_store_memory=512 * 1024**2, log_to_driver=False)
            figures.update(scale(args.scale_rows, root, args.scale_chunk, args.scale_pool_size,
                                 args.scale_batch_size))
    finally:
        ray.shutdown()
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    figures.update({"complete": True, "load_average_before": load,
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "seconds": round(time.perf_counter() - start, 1),
                    "cpu_count": os.cpu_count()})
    for key, value in figures.items():
        if key != "seeds":
            print(f"{key:>24}: {value}")
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()

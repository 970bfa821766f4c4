"""Benchmark of early stopping in `ecmf tune`: 16 trials with ASHA against the same 16 trials run to
the end (FIFO), on the demo corpus's features: the best validation WAF each finds, and wall times.

    python tests/benchmarks/tune.py --out tune-bench.json [--workdir demo-out] [--trials 16]

The points are drawn once (seeded) and given to both searches, and a trial is deterministic (fixed
seeds, folds in lockstep, one torch thread), so a trial ASHA stops has the same history as its FIFO
twin up to that epoch: the check `asha_histories_are_prefixes` says so. `best_waf_gap` is FIFO's
best minus ASHA's, `time_ratio` ASHA's wall time over FIFO's (each includes trial start-up).
Other work on the machine changes wall times from minute to minute, so with --repeats 2 (default)
the searches run in the order ASHA, FIFO, FIFO, ASHA and the ratio is of the summed times.
The workdir is only read (manifest, feature store): `ecmf demo --out DIR` makes one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")

SPACE = {
    "hidden": {"choice": [64, 128, 256]},
    "layers": {"randint": [1, 2]},
    "dropout": {"uniform": [0.1, 0.5]},
    "modality_dropout": {"uniform": [0.0, 0.3]},
    "lr": {"loguniform": [3e-5, 3e-3]},
    "weight_decay": {"loguniform": [1e-5, 1e-2]},
    "features": {"choice": [["text"], ["text", "audio"], ["text", "enriched"], []]},
}


def search(cfg, points: list[dict], out: Path) -> dict:
    """One search over `points` into `out`: wall time, the trials table and the histories."""
    from ecmf.tune import report
    from ecmf.tune.driver import EXPERIMENT, run_search

    load = os.getloadavg()[0]
    start = time.perf_counter()
    run_search(cfg, out, points=points)
    wall = time.perf_counter() - start
    table, histories, _ = report.load_trials(out / "ray" / EXPERIMENT, list(SPACE),
                                             cfg.train.epochs)
    print(f"{cfg.tune.scheduler}: {wall:.1f} s, best {table['best_val_waf'].max():.4f}, "
          f"{int(table['epochs_run'].sum())} epochs (load {load:.1f} -> {os.getloadavg()[0]:.1f})")
    return {"wall_s": wall, "table": table, "histories": histories,
            "load": [round(load, 2), round(os.getloadavg()[0], 2)]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the figures")
    parser.add_argument("--workdir", default="demo-out",
                        help="a demo workdir with features/store (default demo-out)")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--in-flight", type=int, default=2, help="trials at once (1 CPU each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn points")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each search, alternating (ABBA) against load drift")
    args = parser.parse_args(argv)

    import numpy as np
    import ray

    from ecmf.stages.common import load_config
    from ecmf.tune.space import parse_space, sample_points

    workdir = Path(args.workdir).resolve()
    if not (workdir / "features" / "store").is_dir():
        raise SystemExit(f"{workdir}/features/store is missing: run `ecmf demo --out {workdir}`")
    base = [f"workdir={workdir}", f"train.epochs={args.epochs}", "tune.cpus_per_trial=1",
            f"tune.max_concurrent_trials={args.in_flight}", f"tune.num_samples={args.trials}",
            f"tune.seed={args.seed}"]
    cfgs = {s: load_config(None, [*base, f"tune.scheduler={s}"], base={"tune": {"space": SPACE}})
            for s in ("asha", "fifo")}
    points = sample_points(parse_space(SPACE), args.trials, args.seed)

    order = [s for r in range(args.repeats)
             for s in (("asha", "fifo") if r % 2 == 0 else ("fifo", "asha"))]
    runs: dict[str, list] = {"asha": [], "fifo": []}
    with tempfile.TemporaryDirectory(prefix="ecmf-tune-bench-") as tmp:
        ray.init(num_cpus=args.in_flight, include_dashboard=False,
                 object_store_memory=256 * 1024**2, log_to_driver=False)
        try:
            for i, name in enumerate(order):
                runs[name].append(search(cfgs[name], points, Path(tmp) / f"{i}-{name}"))
        finally:
            ray.shutdown()

    fifo = runs["fifo"][0]
    best = {k: [round(float(r["table"]["best_val_waf"].max()), 4) for r in v]
            for k, v in runs.items()}
    wall = {k: sum(r["wall_s"] for r in v) for k, v in runs.items()}
    epochs = {k: sum(int(r["table"]["epochs_run"].sum()) for r in v) for k, v in runs.items()}
    # Trials are numbered in the order of `points` in every run; ASHA's stops depend on which
    # trial reports first, so its runs may differ from each other, never from FIFO's histories.
    prefixes = all(
        np.allclose(h, fifo["histories"][f]["val_waf"][:len(h)])
        for asha in runs["asha"]
        for a, f in zip(asha["table"]["trial_id"], fifo["table"]["trial_id"])
        for h in [asha["histories"][a]["val_waf"]])
    fifo_best_trial = int(fifo["table"]["best_val_waf"].idxmax())
    figures = {
        # The worst of ASHA's runs against FIFO's (which are all the same: deterministic).
        "best_waf_gap": round(max(best["fifo"]) - min(best["asha"]), 4),
        "time_ratio": round(wall["asha"] / wall["fifo"], 3),
        "asha_best_waf": best["asha"],
        "fifo_best_waf": best["fifo"],
        "asha_wall_s": [round(r["wall_s"], 1) for r in runs["asha"]],
        "fifo_wall_s": [round(r["wall_s"], 1) for r in runs["fifo"]],
        "order": order,
        "load_average_1m_before_after": {k: [r["load"] for r in v] for k, v in runs.items()},
        "epoch_ratio": round(epochs["asha"] / epochs["fifo"], 3),
        "asha_stopped_early": [int((r["table"]["status"] == "stopped early").sum())
                               for r in runs["asha"]],
        "fifo_best_trial": fifo_best_trial,
        "fifo_best_trial_epochs_under_asha": [int(r["table"]["epochs_run"][fifo_best_trial])
                                              for r in runs["asha"]],
        "asha_histories_are_prefixes_of_fifo": bool(prefixes),
        "trials": args.trials, "epochs": args.epochs, "cv_folds": cfgs["asha"].tune.cv_folds,
        "grace_period": cfgs["asha"].tune.grace_period,
        "reduction_factor": cfgs["asha"].tune.reduction_factor, "in_flight": args.in_flight,
        "cpu_count": os.cpu_count(),
    }
    for key, value in figures.items():
        print(f"{key:>34}: {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()

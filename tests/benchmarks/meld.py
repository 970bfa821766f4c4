"""Real-data benchmark on MELD's utterance transcripts (text only, 7 classes), through the CLI.

    python tests/benchmarks/meld.py --out meld.json [--seeds 1,2,3]
        [--strategies curriculum,threshold,adaptive,soft] [--work DIR] [--set KEY=VALUE ...]

Reads `../shared/data/meld/` (public, GPL v3; see its README: columns, licence, the logistic-
regression reference figures); nothing of it is copied into the project. It exits with that
reason where a checkout lacks the data.

1. The three CSVs become one CSV-manifest corpus of text-only rows named `<split>_dia<D>_utt<U>`;
   `ecmf extract` embeds them once with the packaged all-MiniLM-L6-v2 (the `text` feature).
2. **full**: every train label; `ecmf train`, `ecmf predict` over dev and test (candidates).
3. **scarce**, per seed: 10% of train labeled (stratified), the other 90% the unlabeled pool;
   `ecmf train` (the baseline), then for each selection strategy `ecmf pseudo-label` on a copy
   of that run (`pseudo.candidates=false`: the pool is train's unlabeled 90%; dev and test are
   only predicted), `ecmf predict` (the round `predict` picks by validation WAF) and `ecmf
   evaluate --truth` (its rounds.png).
4. Every choice is made on dev: the strategy reported is the one of the best mean dev WAF over
   the seeds; its test WAF is reported. Epochs are chosen inside each fit (an inner split of
   its training folds); rounds stop on out-of-fold validation WAF.

Prints (and writes to --out) JSON: full_waf, scarce_waf_mean, scarce_semi_waf_mean,
semi_gain_mean, semi_gain_min (test WAF, semi minus the same seed's baseline), pseudo_precision_mean
(selected pseudo-labels that are the pool's true labels, which the system never sees), the
chosen strategy, per-strategy dev and test figures, and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # throwaway local clusters
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "meld"
SPLITS = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
STRATEGIES = ("curriculum", "threshold", "adaptive", "soft")
BASE_CONFIG = """\
# MELD text-only benchmark (tests/benchmarks/meld.py): the packaged MiniLM text encoder alone.
corpus:
  layout: csv
  manifest: {manifest}
extract:
  encoders:
    frames: null
    faces: null
    audio: null
train:
  features: [text]
"""


def read_meld(data: Path):
    """One frame of every utterance: name, text, label, part (train/dev/test)."""
    import pandas as pd

    frames = []
    for part, file in SPLITS.items():
        df = pd.read_csv(data / file, encoding="utf-8")
        frames.append(pd.DataFrame({
            "name": [f"{part}_dia{d}_utt{u}" for d, u in zip(df["Dialogue_ID"],
                                                             df["Utterance_ID"])],
            "text": df["Utterance"].astype(str).str.replace("\u0092", "'").to_numpy(),
            "label": df["Emotion"].to_numpy(), "part": part}))
    return pd.concat(frames, ignore_index=True)


def scarce_labeled(meld, seed: int, share: float = 0.1) -> set:
    """A stratified `share` of train's utterances, a function of the seed."""
    from sklearn.model_selection import train_test_split

    train = meld[meld["part"] == "train"]
    keep, _ = train_test_split(train["name"], train_size=share, stratify=train["label"],
                               random_state=seed)
    return set(keep)


def write_manifest(meld, labeled: set, path: Path) -> Path:
    """The CSV manifest: labeled train rows, the rest of train as pool, dev and test as
    candidates (no label: their truth stays in the benchmark)."""
    import pandas as pd

    train = meld["part"] == "train"
    is_lab = meld["name"].isin(labeled)
    df = pd.DataFrame({
        "name": meld["name"], "text": meld["text"],
        "label": meld["label"].where(is_lab, ""),
        "split": ["train" if lab else ("pool" if t else "candidate")
                  for lab, t in zip(is_lab, train)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def ecmf(command: str, config: Path, sets: list[str], *extra: str, log: Path) -> float:
    """Run one `ecmf` command (its output appended to `log`); its seconds."""
    exe = Path(sys.executable).with_name("ecmf")
    args = [str(exe if exe.exists() else shutil.which("ecmf")), command, str(config), "-q",
            *[a for s in sets for a in ("--set", s)], *extra]
    t = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        rc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc != 0:
        raise SystemExit(f"meld: `ecmf {command}` failed ({rc}); see {log}")
    return time.perf_counter() - t


def workdir(root: Path, name: str, manifest: Path, features: Path, sets: list[str]):
    """A workdir sharing the extracted store (`features` linked in) and its config file."""
    wd = root / name
    wd.mkdir(parents=True, exist_ok=True)
    if not (wd / "features").exists():
        (wd / "features").symlink_to(features.resolve(), target_is_directory=True)
    config = wd / "meld.yaml"
    config.write_text(BASE_CONFIG.format(manifest=manifest.resolve()))
    return wd, config, [f"workdir={wd}", *sets]


def predictions(wd: Path):
    import pandas as pd

    return pd.read_csv(wd / "predict" / "submission.csv", dtype=str,
                       keep_default_na=False).set_index("name")["discrete"]


def scores(pred, meld) -> dict:
    """WAF of `pred` (name -> label) on dev and on test."""
    from sklearn.metrics import f1_score

    out = {}
    for part in ("dev", "test"):
        rows = meld[meld["part"] == part]
        out[part] = float(f1_score(rows["label"], pred.reindex(rows["name"]).to_numpy(),
                                   average="weighted"))
    return out


def pseudo_precision(wd: Path, truth) -> tuple[float, int]:
    """Selected pseudo-labels (rows of every fold, all rounds) that are true, and how many."""
    import pandas as pd

    summary = json.loads((wd / "rounds" / "summary.json").read_text())
    last = summary["rounds"][-1]
    if last["round"] == 0:
        return float("nan"), 0
    labels = pd.read_parquet(Path(last["run"]) / "labels.parquet")
    right = labels["label"].to_numpy() == truth.reindex(labels["sample_id"]).to_numpy()
    return float(right.mean()), int(len(labels))


def main(argv=None) -> dict:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/ecmf-meld", help="working folder (kept for reuse)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every command")
    p.add_argument("--skip-full", action="store_true", help="the scarce setting only")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not all((data / f).is_file() for f in SPLITS.values()):
        raise SystemExit(f"meld: {data} lacks {list(SPLITS.values())} (third-party data under "
                         f"../shared/data/meld, not part of the project)")
    start = time.perf_counter()
    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    log = root / "commands.log"
    meld = read_meld(data)
    truth = meld.set_index("name")["label"]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    strategies = [s for s in args.strategies.split(",") if s]
    seconds: dict[str, float] = {}

    # Embed every utterance once, in the full setting's workdir; the others link its store.
    train_names = set(meld.loc[meld["part"] == "train", "name"])
    full_manifest = write_manifest(meld, train_names, root / "corpus" / "full.csv")
    features = root / "full" / "features"
    wd = root / "full"
    wd.mkdir(parents=True, exist_ok=True)
    full_cfg = wd / "meld.yaml"
    full_cfg.write_text(BASE_CONFIG.format(manifest=full_manifest.resolve()))
    full_sets = [f"workdir={wd}", *args.set]
    if not any((features / "store").glob("*.parquet")):
        seconds["extract"] = ecmf("extract", full_cfg, full_sets, log=log)
    figures: dict = {"data": str(data), "sets": args.set, "seeds": seeds}
    if not args.skip_full:
        seconds["full_train"] = ecmf("train", full_cfg, full_sets, log=log)
        ecmf("predict", full_cfg, full_sets, log=log)
        full_scores = scores(predictions(wd), meld)
        figures["full_waf"] = full_scores["test"]
        figures["full_dev_waf"] = full_scores["dev"]
        print(f"full: dev {full_scores['dev']:.4f}, test {full_scores['test']:.4f}", flush=True)

    per_seed = []
    for seed in seeds:
        labeled = scarce_labeled(meld, seed)
        manifest = write_manifest(meld, labeled, root / "corpus" / f"scarce{seed}.csv")
        sets = ["pseudo.candidates=false", *args.set]
        base, base_cfg, base_sets = workdir(root, f"scarce{seed}/train-only", manifest, features,
                                            sets)
        t = time.perf_counter()
        if not (base / "predict" / "submission.csv").is_file():
            ecmf("train", base_cfg, base_sets, log=log)
            ecmf("predict", base_cfg, base_sets, log=log)
        seconds[f"seed{seed}_train"] = time.perf_counter() - t
        row = {"seed": seed, "labeled": len(labeled), "baseline": scores(predictions(base), meld),
               "strategies": {}}
        for name in strategies:
            wd_s, cfg_s, sets_s = workdir(root, f"scarce{seed}/{name}", manifest, features,
                                          [*sets, f"pseudo.strategy={name}"])
            t = time.perf_counter()
            if not (wd_s / "predict" / "submission.csv").is_file():
                if not (wd_s / "train").exists():
                    shutil.copytree(base / "train", wd_s / "train")
                ecmf("pseudo-label", cfg_s, sets_s, log=log)
                ecmf("predict", cfg_s, sets_s, log=log)
                test_truth = wd_s / "test_truth.csv"
                rows = meld[meld["part"] == "test"]
                rows[["name", "label"]].rename(columns={"label": "discrete"}).to_csv(
                    test_truth, index=False)
                ecmf("evaluate", cfg_s, sets_s, "--truth", str(test_truth), log=log)
            seconds[f"seed{seed}_{name}"] = time.perf_counter() - t
            summary = json.loads((wd_s / "rounds" / "summary.json").read_text())
            precision, taken = pseudo_precision(wd_s, truth)
            row["strategies"][name] = {
                **scores(predictions(wd_s), meld), "pseudo_precision": precision,
                "pseudo_rows": taken, "chosen_round": summary["best"]["round"],
                "rounds_val_waf": [r["val_waf"] for r in summary["rounds"]],
                "stopped": summary["stopped"]}
            s = row["strategies"][name]
            print(f"seed {seed} {name}: dev {row['baseline']['dev']:.4f} -> {s['dev']:.4f}, "
                  f"test {row['baseline']['test']:.4f} -> {s['test']:.4f}, round "
                  f"{s['chosen_round']}, precision {precision:.3f} of {taken}", flush=True)
        per_seed.append(row)

    if per_seed:
        dev_mean = {n: float(np.mean([r["strategies"][n]["dev"] for r in per_seed]))
                    for n in strategies}
        chosen = max(strategies, key=lambda n: dev_mean[n])  # chosen on dev, never on test
        gains = [r["strategies"][chosen]["test"] - r["baseline"]["test"] for r in per_seed]
        figures.update({
            "chosen_strategy": chosen,
            "strategy_dev_waf_mean": dev_mean,
            "strategy_test_gain_mean": {n: float(np.mean([r["strategies"][n]["test"]
                                                          - r["baseline"]["test"]
                                                          for r in per_seed]))
                                        for n in strategies},
            "scarce_waf_mean": float(np.mean([r["baseline"]["test"] for r in per_seed])),
            "scarce_semi_waf_mean": float(np.mean([r["strategies"][chosen]["test"]
                                                   for r in per_seed])),
            "semi_gain_mean": float(np.mean(gains)), "semi_gain_min": float(np.min(gains)),
            "pseudo_precision_mean": float(np.nanmean([r["strategies"][chosen]["pseudo_precision"]
                                                       for r in per_seed])),
            "per_seed": per_seed})
    figures["seconds"] = round(time.perf_counter() - start, 1)
    figures["stage_seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    text = json.dumps(figures, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)
    return figures


if __name__ == "__main__":
    main()

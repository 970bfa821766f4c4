"""Pseudo-labeling rounds: predict the unlabeled pool, select confident labels, retrain.

Round k writes `rounds/<k>/` (its selected labels with provenance, pool predictions, models,
metrics, resolved config) and never touches an earlier round; a re-run resumes after the last
finished round. Rounds stop early when validation WAF stops improving.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.config import Config
from ecmf.workdir import Workdir, load_manifest, write_json

log = logging.getLogger(__name__)
LABEL_COLUMNS = [schema.SAMPLE_ID, schema.LABEL, schema.CONFIDENCE, "weight", "round", "source"]


def _val_waf(run_dir: Path) -> float:
    return float(json.loads((run_dir / "metrics.json").read_text())["cv"]["waf"])


def select_round(preds: pd.DataFrame, cfg: Config, prior: np.ndarray, k: int) -> pd.DataFrame:
    """The pseudo-labels one round adds, with their provenance."""
    from ecmf.semi.select import select_pseudo_labels

    pc = cfg.pseudo
    probs = preds[list(schema.PROB_COLUMNS)].to_numpy()
    idx = select_pseudo_labels(probs, pc.threshold, prior if pc.class_balance else None,
                               pc.max_per_round)
    chosen = preds.iloc[idx]
    return pd.DataFrame({
        schema.SAMPLE_ID: chosen[schema.SAMPLE_ID].values,
        schema.LABEL: chosen[schema.PRED].values,
        schema.CONFIDENCE: chosen[schema.CONFIDENCE].values,
        "weight": pc.weight, "round": k, "source": "fusion-fold-ensemble",
    })


def run_rounds(cfg: Config) -> dict:
    """Run the configured pseudo-label rounds on top of the workdir's `train` run."""
    from ecmf.features.store import ok_ids
    from ecmf.semi.select import class_prior
    from ecmf.train.fit import fit, training_table
    from ecmf.train.predict import predict_store

    wd = Workdir.of(cfg)
    if not (wd.train / "metrics.json").is_file():
        raise FileNotFoundError(f"{wd.train}/metrics.json: run `ecmf train` before pseudo-label")
    manifest = load_manifest(cfg)
    labeled = manifest[manifest[schema.SPLIT] == "train"]
    prior = class_prior(np.array([schema.label_index(v) for v in labeled[schema.LABEL]]),
                        len(schema.LABELS))
    extracted = ok_ids(wd.store)
    unlabeled = sorted(set(manifest.loc[manifest[schema.SPLIT] != "train", schema.SAMPLE_ID])
                       & extracted)
    history = [{"round": 0, "run": str(wd.train), "val_waf": _val_waf(wd.train),
                "pseudo_total": 0, "added": 0}]
    selected = pd.DataFrame(columns=LABEL_COLUMNS)
    prev, best, stale = wd.train, history[0]["val_waf"], 0
    for k in range(1, cfg.pseudo.rounds + 1):
        rdir = wd.rounds / str(k)
        if (rdir / "metrics.json").is_file() and (rdir / "labels.parquet").is_file():
            selected = pd.read_parquet(rdir / "labels.parquet")
            log.info("round %d already finished: resuming after it", k)
        else:
            taken = set(selected[schema.SAMPLE_ID])
            remaining = [s for s in unlabeled if s not in taken]
            preds = predict_store(wd.store, prev, rdir / "pool_predictions", ids=remaining)
            new = select_round(preds, cfg, prior, k)
            selected = pd.concat([selected, new], ignore_index=True) if len(selected) else new
            table = training_table(manifest, cfg.train.folds, cfg.train.seed, pseudo=selected)
            fit(cfg, table, rdir)
            # Written last: its presence marks the round finished.
            selected.to_parquet(rdir / "labels.parquet", index=False)
        waf = _val_waf(rdir)
        added = int((selected["round"] == k).sum())
        history.append({"round": k, "run": str(rdir), "val_waf": waf,
                        "pseudo_total": int(len(selected)), "added": added})
        log.info("round %d: %d pseudo-labels added (%d in all), validation WAF %.4f",
                 k, added, len(selected), waf)
        prev = rdir
        if waf > best:
            best, stale = waf, 0
        else:
            stale += 1
            if stale >= cfg.pseudo.patience:
                log.info("validation WAF has not improved for %d round(s): stopping", stale)
                break
        if added == 0:
            log.info("no pool sample passed the selection: stopping")
            break
    best_round = max(history, key=lambda h: h["val_waf"])
    summary = {"rounds": history, "best": best_round}
    write_json(wd.rounds / "summary.json", summary)
    return summary


def best_run(cfg: Config) -> Path:
    """The run a prediction should use: the best round by validation WAF, else `train`."""
    wd = Workdir.of(cfg)
    summary = wd.rounds / "summary.json"
    if summary.is_file():
        return Path(json.loads(summary.read_text())["best"]["run"])
    if (wd.train / "models").is_dir():
        return wd.train
    raise FileNotFoundError(f"{wd.train}/models: nothing trained yet; run `ecmf train`")

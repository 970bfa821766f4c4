"""Pseudo-labeling rounds: predict the unlabeled pool, select confident labels, retrain.

Round k writes `rounds/<k>/` (its selected labels with provenance, pool predictions, models,
metrics, resolved config, and the key of its settings and inputs) and never touches an earlier
round; a re-run resumes after the last finished round, refusing one made with other settings.
Rounds stop early when validation WAF (out-of-fold, against the original labels) stops
improving. Selection: fold-ensemble confidence after temperature calibration, agreement of
the weak classifiers' pool predictions, class quotas, a cap per round (`ecmf.semi.select`).

Pseudo-labels are fold-consistent: fold f's model of round k trains on labels chosen by fold
f's models alone (the fusion fold model and the weak classifiers fit without fold f), so that
the out-of-fold validation WAF that stops the rounds and picks the best one is not lifted by
labels leaking back through the pool (`select_round`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.config import Config, ConfigError
from ecmf.data.manifest import load_manifest, with_labels
from ecmf.errors import MissingInput
from ecmf.features.store import ok_ids
from ecmf.keys import Stamp, file_sha256, frame_sha256
from ecmf.semi.refine import refined_labels
from ecmf.semi.select import (
    SELECTION,
    agreeing_groups,
    apply_temperature,
    class_prior,
    fit_temperature,
)
from ecmf.semi.weak import fold_top_column, read_weak_probabilities
from ecmf.train.fit import fit, stage_table
from ecmf.train.metrics import score
from ecmf.train.predict import fold_prob_columns, predict_store, run_labels
from ecmf.workdir import Workdir, write_json

log = logging.getLogger(__name__)
LABEL_COLUMNS = [schema.SAMPLE_ID, schema.LABEL, schema.CONFIDENCE, "weight", "round",
                 "train_fold", "source", "agreed"]
FUSION_SOURCE = "fusion-fold-model"  # the fold's own model of the previous run
KEY_FILE = "round_key.json"
# Settings a resume may change: how many rounds run and on what resources.
FREE_SETTINGS = {"pseudo": {"rounds", "patience"},
                 "train": {"num_workers", "use_gpu", "cpus_per_worker", "storage_path",
                           "max_failures"}}


def val_waf(run_dir: Path, reference: pd.Series) -> float:
    """Out-of-fold WAF of a run against `reference` labels (sample_id -> class name).

    Every run is scored against the same labels (the original annotations), whatever labels it
    was trained on, so that rounds trained on refined labels compare with the first run.
    """

    oof = pd.read_parquet(run_dir / "oof.parquet")
    ref = reference.reindex(oof[schema.SAMPLE_ID])
    keep = ref.notna().to_numpy()
    return float(score(ref[keep], oof.loc[keep, schema.PRED], run_labels(run_dir))["waf"])


def pool_agreement(ids: np.ndarray, fusion: np.ndarray, weak_pool: pd.DataFrame | None,
                   min_agree: int, fold: int,
                   num_classes: int = len(schema.LABELS)) -> tuple[np.ndarray | None, list[str]]:
    """Per pool row (`ids`): whether >= `min_agree` weak feature sets (groups) predict the
    fusion model's class `fusion` [M] (indices), and the agreeing sources (comma-joined);
    (None, []) when not asked for. Each weak classifier votes with its model of fold `fold`
    (fit without that fold's labels), so the agreement, too, is blind to the labels the
    fold's next model is validated on."""

    if weak_pool is None or min_agree == 0:
        return None, [FUSION_SOURCE] * len(ids)

    column = fold_top_column(fold)
    names = sorted(weak_pool["source"].unique())
    c = num_classes
    tops, groups = [], []
    for name in names:
        one = weak_pool[weak_pool["source"] == name].set_index(schema.SAMPLE_ID)
        top = one[column].reindex(ids).fillna(-1).to_numpy(dtype=np.int64)
        onehot = np.full((len(ids), c), np.nan)
        voted = top >= 0
        onehot[voted] = 0.0
        onehot[np.flatnonzero(voted), top[voted]] = 1.0
        tops.append(onehot)
        groups.append(one["group"].iloc[0])
    count, agreeing = agreeing_groups(fusion, tops, groups)
    agreed = [",".join([FUSION_SOURCE] + [names[j] for j in row]) for row in agreeing]
    return count >= min_agree, agreed


def calibration(run_dir: Path, reference: pd.Series) -> float:
    """Temperature of a run's fold models, fitted on its out-of-fold predictions against the
    `reference` (original) labels, so a confidence threshold means the same in every round."""

    labels = run_labels(run_dir)
    oof = pd.read_parquet(run_dir / "oof.parquet")
    ref = reference.reindex(oof[schema.SAMPLE_ID])
    keep = ref.notna().to_numpy()
    y = schema.label_indices(ref[keep].to_numpy(), "the reference labels", labels)
    return fit_temperature(oof.loc[keep, schema.prob_columns(labels)].to_numpy(), y)


def select_round(preds: pd.DataFrame, cfg: Config, prior: np.ndarray, k: int,
                 weak_pool: pd.DataFrame | None = None, temperature: float = 1.0,
                 taken: dict[int, set] | None = None) -> pd.DataFrame:
    """The pseudo-labels one round adds, with their provenance (confidence after calibration).

    Fold-consistent: fold f's next model gets the labels that fold f's model of the previous
    run chose (its per-fold probabilities in `preds`, `fold_prob_columns`), never the ensemble's,
    which saw every labeled clip, fold f's validation clips included; otherwise a round's
    out-of-fold validation WAF would score labels its models learnt through the pool and rise
    whether or not the round helped. Each fold selects on its own (threshold, agreement,
    quotas, `pseudo.max_per_round`) among the rows it has not taken before (`taken[f]`); a clip
    may be taken by several folds, even with different labels: one row per fold (`train_fold`).
    """

    pc = cfg.pseudo
    labels = list(cfg.labels) or list(schema.LABELS)
    strategy = SELECTION.get(pc.strategy)
    taken = taken or {}
    pool_total = int(preds[schema.SAMPLE_ID].nunique()) + len(set.intersection(
        *[set(taken.get(f, set())) for f in range(cfg.train.folds)]))
    frames = []
    for f in range(cfg.train.folds):
        cols = fold_prob_columns(f, labels)
        if cols[0] not in preds:
            raise ValueError(f"pool predictions lack fold {f}'s probabilities ({cols[0]}...): "
                             f"predict with per_fold=True")
        rows = preds[~preds[schema.SAMPLE_ID].isin(taken.get(f, set()))]
        ids = rows[schema.SAMPLE_ID].to_numpy()
        probs = apply_temperature(rows[cols].to_numpy(dtype=np.float64), temperature)
        agree, agreed = pool_agreement(ids, probs.argmax(axis=1), weak_pool, pc.min_agree, f,
                                       len(labels))
        chosen = strategy(probs, prior=prior, round=k, pool_total=pool_total, settings=pc,
                          agree=agree)
        idx = chosen.index
        frames.append(pd.DataFrame({
            schema.SAMPLE_ID: ids[idx],
            schema.LABEL: np.array(labels)[probs[idx].argmax(axis=1)],
            schema.CONFIDENCE: probs[idx].max(axis=1),
            "weight": chosen.weight, "round": k, "train_fold": f, "source": FUSION_SOURCE,
            "agreed": [agreed[i] for i in idx],
        }, columns=LABEL_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def rounds_key(cfg: Config, train_labels: pd.DataFrame, weak: bool) -> dict:
    """What a round's labels and models depend on, besides the rounds before it: the pseudo
    and train settings (but `FREE_SETTINGS`), the labels trained on (original or refined, with
    their weights), the first run's out-of-fold predictions and, when the weak classifiers vote
    (`weak`), their settings.

    Not the feature store: a resumed extraction appends clips to it, which later rounds may
    take from the pool without changing what earlier rounds chose. A store extracted again with
    other encoders is refused by `ecmf extract` itself, and a retrained first run changes its
    out-of-fold predictions.
    """
    from dataclasses import asdict

    wd = Workdir.of(cfg)
    key = {section: {k: v for k, v in asdict(getattr(cfg, section)).items()
                     if k not in FREE_SETTINGS[section]} for section in ("pseudo", "train")}
    order = [c for c in (schema.SAMPLE_ID, "train_fold") if c in train_labels]
    key["labels_sha256"] = frame_sha256(train_labels.sort_values(order, kind="stable"))
    key["first_run"] = file_sha256(wd.train / "oof.parquet")
    if weak:
        rc = cfg.refine
        key["weak"] = {"classifiers": list(rc.classifiers), "options": rc.options,
                       "feature_sets": rc.feature_sets}
    return key


class StaleRoundsError(ConfigError):
    """Finished rounds on disk were made with other settings or inputs than this run's."""

    def __init__(self, message: str, rounds_dir: Path):
        super().__init__(message)
        self.rounds_dir = rounds_dir


def check_round_key(rdir: Path, key: dict) -> None:
    """Refuse to build on a finished round made with other settings or inputs.

    Rounds never overwrite an earlier one, so a changed setting cannot take effect in rounds
    already on disk; resuming after them would mix two configurations in one run. A round
    without its key file was not written by this ecmf, and is refused the same way.
    """
    changes = Stamp(rdir / KEY_FILE).changes(key)
    if changes is None:
        changes = [f"{KEY_FILE} is missing"]
    if changes:
        raise StaleRoundsError(
            f"{rdir} was made with other settings or inputs than this run's "
            f"({'; '.join(changes)}). Rounds never overwrite earlier ones: move {rdir.parent} "
            f"aside (or remove it) to run the rounds again with these settings, or use another "
            f"workdir", rdir.parent)


def run_rounds(cfg: Config) -> dict:
    """Run the configured pseudo-label rounds on top of the workdir's `train` run.

    With `refine.enabled`, every round trains on the labels `ecmf refine` wrote: fold-blind
    ones by default (fold model k's from sources that never saw fold k), else one per clip
    voted with the `train` run's out-of-fold predictions. With `pseudo.min_agree` > 0, the
    weak classifiers' pool predictions, which `ecmf refine` wrote too, vote on which
    pseudo-labels to trust. Missing or stale, either stops naming `ecmf refine`.
    """

    wd = Workdir.of(cfg)
    if not (wd.train / "metrics.json").is_file():
        raise MissingInput(f"{wd.train}/metrics.json: run `ecmf train` before pseudo-label")
    manifest = load_manifest(cfg)
    cfg = with_labels(cfg, manifest)
    labeled = manifest[manifest[schema.SPLIT] == "train"]
    reference = labeled.set_index(schema.SAMPLE_ID)[schema.LABEL]
    refined = refined_labels(cfg)
    train_labels = refined["refined"] if refined is not None else labeled[schema.LABEL]
    prior = class_prior(schema.label_indices(np.asarray(train_labels), "training labels",
                                             cfg.labels), len(cfg.labels))
    weak_pool = None
    if cfg.pseudo.min_agree > 0 and cfg.refine.classifiers:
        weak = read_weak_probabilities(cfg)
        weak_pool = weak[weak["part"] == "pool"]
    if refined is not None:  # fold-blind: a label per fold model (a train_fold column)
        trained_on = refined[[c for c in (schema.SAMPLE_ID, "train_fold", "refined", "weight")
                              if c in refined]]
    else:
        trained_on = labeled[[schema.SAMPLE_ID, schema.LABEL]]
    key = rounds_key(cfg, trained_on, weak=weak_pool is not None)
    extracted = ok_ids(wd.store)
    splits = ["pool", "candidate"] if cfg.pseudo.candidates else ["pool"]
    unlabeled = sorted(set(manifest.loc[manifest[schema.SPLIT].isin(splits), schema.SAMPLE_ID])
                       & extracted)
    history = [{"round": 0, "run": str(wd.train), "val_waf": val_waf(wd.train, reference),
                "pseudo_total": 0, "pseudo_rows": 0, "added": 0}]
    selected = pd.DataFrame(columns=LABEL_COLUMNS)
    prev, best, stale = wd.train, history[0]["val_waf"], 0
    stopped = f"all {cfg.pseudo.rounds} rounds ran"
    for k in range(1, cfg.pseudo.rounds + 1):
        rdir = wd.rounds / str(k)
        if (rdir / "metrics.json").is_file() and (rdir / "labels.parquet").is_file():
            check_round_key(rdir, key)
            selected = pd.read_parquet(rdir / "labels.parquet")
            log.info("round %d already finished: resuming after it", k)
        else:
            taken = {f: set(selected.loc[selected["train_fold"].isin([f, -1]),
                                         schema.SAMPLE_ID]) for f in range(cfg.train.folds)}
            everywhere = set.intersection(*taken.values())
            remaining = [s for s in unlabeled if s not in everywhere]
            pc = cfg.predict
            preds = predict_store(wd.store, prev, rdir / "pool_predictions", ids=remaining,
                                  batch_size=pc.batch_size, pool_size=pc.pool_size,
                                  num_cpus=pc.num_cpus, num_gpus=pc.num_gpus, per_fold=True)
            temperature = calibration(prev, reference) if cfg.pseudo.calibrate else 1.0
            new = select_round(preds, cfg, prior, k, weak_pool, temperature, taken)
            write_json(rdir / "selection.json", {
                "round": k, "candidates": len(remaining), "added": int(len(new)),
                "added_clips": int(new[schema.SAMPLE_ID].nunique()),
                "added_per_fold": {int(f): int(n) for f, n in
                                   new["train_fold"].value_counts().sort_index().items()},
                "strategy": cfg.pseudo.strategy, "threshold": cfg.pseudo.threshold,
                "min_agree": cfg.pseudo.min_agree, "mean_weight": round(float(
                    new["weight"].mean()), 4) if len(new) else None,
                "temperature": round(temperature, 4),
                "added_per_class": new[schema.LABEL].value_counts().to_dict(),
                "refined_labels": refined is not None})
            if len(new) == 0 and (k > 1 or refined is None):
                # The round would train on the previous run's table: the same models again.
                stopped = f"round {k}: no pool clip passed the selection"
                log.info("%s (%s): stopping before training it", stopped,
                         rdir / "selection.json")
                break
            selected = pd.concat([selected, new], ignore_index=True) if len(selected) else new
            table = stage_table(cfg, manifest, pseudo=selected, refined=refined)
            fit(cfg, table, rdir)
            Stamp(rdir / KEY_FILE).write(key)
            # Written last: its presence marks the round finished.
            selected.to_parquet(rdir / "labels.parquet", index=False)
        waf = val_waf(rdir, reference)
        added = int((selected["round"] == k).sum())
        history.append({"round": k, "run": str(rdir), "val_waf": waf,
                        "pseudo_total": int(selected[schema.SAMPLE_ID].nunique()),
                        "pseudo_rows": int(len(selected)), "added": added})
        log.info("round %d: %d pseudo-labels added over %d folds (%d clips in all), validation "
                 "WAF %.4f", k, added, cfg.train.folds, history[-1]["pseudo_total"], waf)
        prev = rdir
        if waf > best:
            best, stale = waf, 0
        else:
            stale += 1
            if stale >= cfg.pseudo.patience:
                stopped = f"validation WAF has not improved for {stale} round(s)"
                log.info("%s: stopping", stopped)
                break
        if added == 0:
            stopped = f"round {k}: no pool clip passed the selection"
            log.info("%s: stopping", stopped)
            break
    best_round = max(history, key=lambda h: h["val_waf"])
    summary = {"rounds": history, "best": best_round, "stopped": stopped,
               "validation_labels": "original", "refined_labels": refined is not None,
               "fold_blind": refined is not None and "train_fold" in refined}
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
    raise MissingInput(f"{wd.train}/models: nothing trained yet; run `ecmf train`")

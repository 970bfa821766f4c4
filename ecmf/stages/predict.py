"""The `ecmf predict` stage: the best run's fold ensemble over every candidate, the submission
CSV beside its probabilities (Parquet, and MERTools' emo_probs npz)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ecmf import schema
from ecmf.config import Config
from ecmf.data.manifest import load_manifest, with_labels
from ecmf.data.mer2025 import CANDIDATES, candidate_names
from ecmf.errors import InputError
from ecmf.features.mertools_out import write_emo_probs
from ecmf.features.store import ok_ids, usage_counts
from ecmf.semi.rounds import best_run
from ecmf.stages.common import stage_session
from ecmf.train.predict import predict_store, run_labels
from ecmf.train.submission import check_submission, write_submission
from ecmf.workdir import Workdir, save_config, write_json

log = logging.getLogger(__name__)


def predict_candidates(cfg: Config, run: str | Path | None = None) -> dict:
    """Fold-ensemble predictions for every candidate; `predict/submission.csv` and, for
    MER2025's label set, MERTools' `predict/emo_probs.npz` beside them."""

    cfg = with_labels(cfg)
    wd = Workdir.of(cfg)
    run = Path(run) if run else best_run(cfg)
    manifest = load_manifest(cfg)
    cands = manifest.loc[manifest[schema.SPLIT] == "candidate", schema.SAMPLE_ID].tolist()
    if not cands:
        raise InputError(f"{cfg.corpus.root}: track_all_candidates.csv lists no candidates")
    save_config(cfg, wd.predict)
    have = ok_ids(wd.store)
    pc = cfg.predict
    preds = predict_store(wd.store, run, wd.predict / "probabilities",
                          ids=[c for c in cands if c in have], batch_size=pc.batch_size,
                          pool_size=pc.pool_size, num_cpus=pc.num_cpus, num_gpus=pc.num_gpus)
    # A candidate whose clip failed extraction still needs a row: the labeled set's majority
    # class, listed in fallbacks.csv so that nobody mistakes it for a prediction.
    missing = [c for c in cands if c not in set(preds[schema.SAMPLE_ID])]
    labeled = manifest.loc[manifest[schema.SPLIT] == "train", schema.LABEL]
    majority = labeled.value_counts().idxmax()
    if missing:
        log.warning("%d candidate(s) have no features (see %s); predicted %r for them",
                    len(missing), wd.errors, majority)
        pd.DataFrame({"name": missing, "discrete": majority}).to_csv(
            wd.predict / "fallbacks.csv", index=False)
    full = pd.concat([preds[[schema.SAMPLE_ID, schema.PRED]],
                      pd.DataFrame({schema.SAMPLE_ID: missing, schema.PRED: majority})])
    labels = run_labels(run)
    path = write_submission(full, cands, wd.predict / "submission.csv", labels)
    check_submission(path, cands, labels)
    emo_probs = None
    if sorted(labels) == sorted(schema.LABELS):  # MERTools reads MER2025's six only
        emo_probs = _write_emo_probs(cfg, wd.predict / "emo_probs.npz", preds, cands, majority)
    summary = {"run": str(run), "candidates": len(cands), "predicted": int(len(preds)),
               "fallbacks": len(missing),
               "candidate_modalities": usage_counts(wd.store, cands)["modalities"],
               "submission": str(path), "emo_probs": str(emo_probs) if emo_probs else None,
               "probabilities": str(wd.predict / "probabilities")}
    write_json(wd.predict / "summary.json", summary)
    return summary


def _write_emo_probs(cfg: Config, path: Path, preds: pd.DataFrame, cands: list[str],
                     fallback: str) -> Path:
    """MERTools' emo_probs npz of the candidates, in track_all_candidates.csv's order as
    MERTools' submission.py reads them (the manifest's order for other layouts, or where the
    file is gone); a fallback
    candidate's row is one-hot on `fallback`."""
    import numpy as np

    names = cands
    # The release's own order where its file is there (a workdir whose manifest was built from
    # a corpus since moved keeps the manifest's).
    if cfg.corpus.layout == "mer2025" and (Path(cfg.corpus.root) / CANDIDATES).is_file():
        names = candidate_names(cfg.corpus.root, cfg.corpus.encoding)
    probs = preds.set_index(schema.SAMPLE_ID)[list(schema.PROB_COLUMNS)].reindex(names)
    probs = np.array(probs, dtype=np.float32)  # a copy: pandas may hand out a read-only view
    probs[np.isnan(probs).any(axis=1)] = np.eye(len(schema.LABELS))[schema.label_index(fallback)]
    return write_emo_probs(path, names, probs, schema.LABELS)


def run(cfg: Config, run_dir: str | None = None) -> dict:
    """Predict with the best round (by validation WAF), or the training run `run_dir`."""
    with stage_session(cfg, "predict", run_dir):
        return predict_candidates(cfg, run_dir)

"""Evaluation: cross-validation metrics of every run, and test metrics of the submission
against a truth file."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.config import Config
from ecmf.data.manifest import with_labels
from ecmf.errors import InputError, MissingInput
from ecmf.features.store import ok_ids, read_features
from ecmf.semi.curves import plot_rounds
from ecmf.train.metrics import format_per_class, plot_confusion, score
from ecmf.train.predict import FoldEnsemble
from ecmf.workdir import Workdir, save_config, write_json

log = logging.getLogger(__name__)


def read_truth(path: str | Path, labels=schema.LABELS) -> pd.DataFrame:
    """A truth CSV with columns name, discrete (MER2025's label format), classes of `labels`."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("name", "discrete"):
        if col not in df:
            raise InputError(f"{path}: missing column {col!r}; expected name,discrete")
    for i, v in enumerate(df["discrete"]):
        schema.label_index(v, f"{path} line {i + 2}", labels)
    return df[["name", "discrete"]]


def score_run(run: str | Path, store: str | Path, truth: pd.DataFrame) -> dict:
    """Test metrics of one run's fold ensemble on the truth names (features from the store)."""

    ens = FoldEnsemble(run)
    ft = read_features(store, ens.features, truth["name"].tolist())
    pred = np.array(ens.labels)[ens.predict(ft.feats, ft.masks).argmax(axis=1)]
    return score(truth["discrete"], pred, ens.labels)


def evaluate(cfg: Config, truth_path: str | Path | None = None) -> dict:
    """Cross-validation metrics of every run, and test metrics of the submission if truth given;
    with pseudo-label rounds, `rounds.png`: validation WAF and labels taken per round (and each
    round's test WAF with a truth file)."""

    cfg = with_labels(cfg)
    labels = list(cfg.labels)
    wd = Workdir.of(cfg)
    out = wd.evaluate
    finished = [run for run in [wd.train] + sorted(wd.rounds.glob("[0-9]*"),
                                                   key=lambda p: int(p.name))
                if (run / "metrics.json").is_file()]
    if not finished:
        raise MissingInput(f"{wd.root} holds no finished training run to evaluate: run "
                           f"`ecmf train` (and `ecmf predict` to score a submission) first")
    save_config(cfg, out)
    runs = {}
    for run in finished:
        m = json.loads((run / "metrics.json").read_text())
        name = str(run.relative_to(wd.root))
        # Out-of-fold predictions over the whole labeled set (each by the fold model that
        # never trained on it), not the mean of the folds' best validation epochs.
        runs[name] = {k: m["cv"][k] for k in ("waf", "accuracy", "per_class_f1", "support",
                                               "confusion")}
        png = out / f"confusion_cv_{name.replace('/', '_')}.png"
        plot_confusion(np.array(m["cv"]["confusion"]), list(m["cv"]["per_class_f1"]), png)
        runs[name]["confusion_png"] = png.name
    result: dict = {"cross_validation": runs}
    # Pseudo-label rounds (validation WAF against the original labels, pseudo-labels added) and
    # the label refinement they trained on, as `ecmf pseudo-label` and `ecmf refine` wrote them.
    truth = read_truth(truth_path, labels) if truth_path else None
    if (wd.rounds / "summary.json").is_file():
        result["rounds"] = json.loads((wd.rounds / "summary.json").read_text())["rounds"]
        test_waf = None
        if truth is not None:  # each round's own fold ensemble on the truth clips
            known = truth[truth["name"].isin(ok_ids(wd.store))]
            test_waf = {r["round"]: score_run(r["run"], wd.store, known)["waf"]
                        for r in result["rounds"]}
            for r in result["rounds"]:
                r["test_waf"] = test_waf[r["round"]]
        plot_rounds(result["rounds"], out / "rounds.png", test_waf)
        result["rounds_png"] = "rounds.png"
    if (wd.refine / "metrics.json").is_file():
        refine = json.loads((wd.refine / "metrics.json").read_text())
        result["refine"] = {k: refine[k] for k in ("n_labeled", "changed", "changed_fraction",
                                                   "transitions", "fold_labels") if k in refine}
    if truth is not None:
        sub_path = wd.predict / "submission.csv"
        if not sub_path.is_file():
            raise MissingInput(f"{sub_path}: run `ecmf predict` before evaluating it")
        sub = pd.read_csv(sub_path, dtype=str, keep_default_na=False)
        merged = truth.merge(sub, on="name", how="left", suffixes=("", "_pred"))
        absent = merged.loc[merged["discrete_pred"].isna(), "name"].tolist()
        if absent:
            raise InputError(f"{sub_path}: {len(absent)} name(s) of {truth_path} have no "
                             f"prediction, e.g. {absent[:5]}")
        test = score(merged["discrete"], merged["discrete_pred"], labels)
        plot_confusion(np.array(test["confusion"]), labels,
                       out / "confusion.png")
        result["test"] = test
    write_json(out / "metrics.json", result)
    return result


def run(cfg: Config, truth: str | None = None) -> dict:
    """Evaluate every finished run (and the submission against `truth`); print the per-class
    tables."""
    result = evaluate(cfg, truth)
    tables = [*result["cross_validation"].items(), *([("test", result["test"])]
                                                     if "test" in result else [])]
    for name, m in tables:
        print(format_per_class(m, f"{name} ({'truth file' if name == 'test' else 'out-of-fold'})"),
              file=sys.stderr)
    return result

"""Any label set: a corpus whose classes are not MER2025's six trains, predicts, is scored and
plotted with its own labels; a configured `labels:` list fixes the set and its order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from synthetic_workdir import SMALL, make_workdir

from ecmf import schema
from ecmf.cli import main
from ecmf.data.manifest import corpus_labels
from ecmf.errors import InputError
from ecmf.stages.common import load_config

# Six classes under other names (the synthetic features have six), out of alphabetical order.
NAMES = {"neutral": "calm", "angry": "furious", "happy": "amused", "sad": "gloomy",
         "worried": "tense", "surprise": "startled"}


def relabel(wd):
    m = pd.read_parquet(wd / "manifest.parquet")
    m[schema.LABEL] = m[schema.LABEL].map(NAMES)
    m.to_parquet(wd / "manifest.parquet", index=False)
    truth = pd.read_csv(wd / "candidate_truth.csv")
    truth["discrete"] = truth["discrete"].map(NAMES)
    truth.to_csv(wd / "candidate_truth.csv", index=False)
    return wd


def sets(wd, *extra):
    return [a for s in [f"workdir={wd}", *SMALL, *extra] for a in ("--set", s)]


def test_the_corpus_label_set_is_resolved_and_checked():
    manifest = pd.DataFrame({schema.SAMPLE_ID: ["a", "b", "c", "d"],
                             schema.LABEL: ["joy", "anger", None, "joy"],
                             schema.SPLIT: ["train", "train", "pool", "train"]})
    assert corpus_labels(load_config(None, []), manifest) == ["anger", "joy"]
    # MER2025's classes, or a subset of them: MER2025's six, in its order.
    mer = manifest.assign(label=["sad", "happy", None, "sad"])
    assert corpus_labels(load_config(None, []), mer) == list(schema.LABELS)
    # A configured list keeps its order; a corpus label outside it is named with its sample.
    fixed = load_config(None, ["labels=[joy, anger, fear]"])
    assert corpus_labels(fixed, manifest) == ["joy", "anger", "fear"]
    with pytest.raises(InputError, match=r"label\(s\) \['joy'\] \(e.g. sample 'a'\)"):
        corpus_labels(load_config(None, ["labels=[anger, fear]"]), manifest)
    with pytest.raises(InputError, match="1 distinct label"):
        corpus_labels(load_config(None, []), manifest.assign(label=["joy", "joy", None, "joy"]))
    with pytest.raises(Exception, match="labels"):
        load_config(None, ["labels=[joy, joy]"])


@pytest.mark.ray
def test_a_run_on_another_label_set_predicts_and_scores_in_it(ray_local, tmp_path):
    wd = relabel(make_workdir(tmp_path, n_train=90))
    ours = sorted(NAMES.values())
    assert main(["train", *sets(wd)]) == 0
    metrics = json.loads((wd / "train" / "metrics.json").read_text())
    assert metrics["labels"] == ours and list(metrics["cv"]["per_class_f1"]) == ours
    oof = pd.read_parquet(wd / "train" / "oof.parquet")
    assert [c for c in oof if c.startswith("prob_")] == schema.prob_columns(ours)
    assert set(oof[schema.PRED]) <= set(ours) and set(oof["label"]) <= set(ours)

    assert main(["predict", *sets(wd)]) == 0
    summary = json.loads((wd / "predict" / "summary.json").read_text())
    assert summary["emo_probs"] is None  # MERTools' file holds MER2025's six only
    sub = pd.read_csv(wd / "predict" / "submission.csv")
    assert set(sub["discrete"]) <= set(ours)
    assert main(["evaluate", *sets(wd), "--truth", str(wd / "candidate_truth.csv")]) == 0
    test = json.loads((wd / "evaluate" / "metrics.json").read_text())["test"]
    assert list(test["per_class_f1"]) == ours
    # Scored against the truth in our names: better than a constant guess.
    assert test["accuracy"] > 1 / 6


@pytest.mark.ray
def test_a_configured_order_is_the_models_class_order(ray_local, tmp_path):
    wd = relabel(make_workdir(tmp_path, n_train=60))
    order = list(NAMES.values())  # not sorted
    assert main(["train", *sets(wd, "train.epochs=2", f"labels=[{', '.join(order)}]")]) == 0
    oof = pd.read_parquet(wd / "train" / "oof.parquet")
    assert [c for c in oof if c.startswith("prob_")] == schema.prob_columns(order)
    probs = oof[schema.prob_columns(order)].to_numpy()
    assert (np.array(order)[probs.argmax(1)] == oof[schema.PRED].to_numpy()).all()
    # A label the list lacks fails before Ray, naming it.
    assert main(["train", *sets(wd, f"labels=[{', '.join(order[:-1])}]")]) == 2

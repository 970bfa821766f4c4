"""Stages exchange files, never calls: `ecmf pseudo-label` reads the weak classifiers'
probabilities `ecmf refine` wrote and, when they are missing or stale, names `ecmf refine`
instead of fitting them itself."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from synthetic_workdir import make_workdir

from ecmf.cli import main
from ecmf.data.manifest import load_manifest
from ecmf.errors import MissingInput
from ecmf.semi.weak import read_weak_probabilities, weak_inputs, weak_key
from ecmf.stages.common import load_config
from ecmf.train.fit import fold_split


def _trained(tmp_path):
    """A workdir with a store and what `ecmf train` leaves that the rounds check first."""
    wd = make_workdir(tmp_path)
    (wd / "train").mkdir()
    (wd / "train" / "metrics.json").write_text("{}")
    return wd


def test_pseudo_label_without_refine_names_it_before_ray(tmp_path, no_ray, capsys):
    wd = _trained(tmp_path)
    assert main(["pseudo-label", "--set", f"workdir={wd}", "--set", "pseudo.min_agree=1"]) == 2
    err = capsys.readouterr().err
    assert "run `ecmf refine` before `ecmf pseudo-label`" in err
    assert not (wd / "refine").exists()  # nothing fitted or written in its place


def test_weak_probabilities_are_read_only_when_their_key_matches(tmp_path):
    wd = _trained(tmp_path)
    cfg = load_config(None, [f"workdir={wd}", "train.folds=3"])
    fold_split(cfg, load_manifest(cfg), write=True)  # what `ecmf train` writes
    with pytest.raises(MissingInput, match="run `ecmf refine` first"):
        read_weak_probabilities(cfg)
    # What `ecmf refine` writes: the probabilities, then their key, last.
    probs = pd.DataFrame({"sample_id": ["clip_0000"], "part": ["pool"]})
    probs.to_parquet(wd / "refine.tmp.parquet")
    (wd / "refine").mkdir()
    (wd / "refine.tmp.parquet").rename(wd / "refine" / "weak_probs.parquet")
    with pytest.raises(MissingInput, match="its key file is missing.*run `ecmf refine` again"):
        read_weak_probabilities(cfg)
    key = weak_key(cfg, *weak_inputs(cfg))
    (wd / "refine" / "weak_key.json").write_text(json.dumps(key))
    pd.testing.assert_frame_equal(read_weak_probabilities(cfg), probs)
    # Another classifier setting: the file no longer matches, and the message says what.
    other = load_config(None, [f"workdir={wd}", "train.folds=3", "refine.classifiers=[lr]"])
    with pytest.raises(MissingInput, match=r"classifiers: .* -> \['lr'\].*`ecmf refine` again"):
        read_weak_probabilities(other)

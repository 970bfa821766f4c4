"""A MERTools user's one command: `ecmf import-features --mertools DIR` on a feature tree that
covers half of a MER2025 release, then `ecmf train` and `ecmf predict`, whose emo_probs npz reads
back the way MERTools' submission.py reads its own."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ecmf import schema
from ecmf.cli import main

pytestmark = pytest.mark.ray  # every test here starts Ray

# MERTools' class order (`emos_mer`, its toolkit/globals.py), written out rather than imported.
EMOS_MER = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


def _release(root, rng):
    """A MER2025 release without media (import, train and predict never decode it): 48 labeled
    clips, 16 candidates listed out of name order, 32 pool clips; -> names, class of each."""
    root.mkdir(parents=True)
    train = [f"t{i:03d}" for i in range(48)]
    cands = [f"q{i:03d}" for i in range(16)][::-1]
    pool = [f"p{i:03d}" for i in range(32)]
    names = train + cands + pool
    y = dict(zip(names, rng.permutation(np.arange(len(names)) % len(schema.LABELS))))
    pd.DataFrame({"name": train, "discrete": [schema.LABELS[y[n]] for n in train],
                  "valence": 0.0}).to_csv(root / "track1_train_disdim.csv", index=False)
    pd.DataFrame({"name": cands}).to_csv(root / "track_all_candidates.csv", index=False)
    pd.DataFrame({"name": names, "chinese": "", "english": ""}).to_csv(
        root / "subtitle_chieng.csv", index=False)
    return train, cands, pool, y


def _tree(root, names, y, rng):
    """MERTools' feature tree: two -UTT folders whose vectors sit near their class's centre;
    the CLIP one lacks a few of the clips the HuBERT one has."""
    for folder, dim, subset in (("chinese-hubert-large-UTT", 16, names),
                                ("clip-vit-large-patch14-UTT", 8, names[::6] + names[1::6])):
        centres = rng.normal(size=(len(schema.LABELS), dim)) * 4
        (root / folder).mkdir(parents=True)
        for n in subset:
            x = centres[y[n]] + rng.normal(scale=0.5, size=dim)
            np.save(root / folder / f"{n}.npy", x.astype(np.float32)[None])  # [1, D], as MERTools
    (root / "openface_face").mkdir()  # other MERTools output in the tree: not a feature


def test_mertools_tree_to_emo_probs(tmp_path, ray_local):
    rng = np.random.default_rng(0)
    corpus, tree, work = tmp_path / "mer2025", tmp_path / "features", tmp_path / "run"
    train, cands, pool, y = _release(corpus, rng)
    # MERTools processed half the release: 36 labeled clips, 8 candidates, 4 pool clips.
    done = train[:36] + sorted(cands)[:8] + pool[:4]
    _tree(tree, done, y, rng)
    sets = [a for s in (f"workdir={work}", f"corpus.root={corpus}", "train.epochs=2",
                        "train.folds=2", "train.cpus_per_worker=1", "train.batch_size=16",
                        "ray.object_store_mb=128")
            for a in ("--set", s)]

    assert main(["import-features", "--mertools", str(tree), *sets]) == 0
    # Read from the files the commands write: the shared test Ray's workers may print to
    # stdout too, interleaved with a command's JSON.
    summary = json.loads((work / "features" / "import_summary.json").read_text())
    assert summary["samples"] == 96 and summary["imported"] == 48 and summary["failed"] == 0
    assert summary["not_imported"] == 48 and len(summary["not_imported_examples"]) == 5
    assert set(summary["not_imported_examples"]) <= set(train[36:] + pool[4:] +
                                                         sorted(cands)[8:])
    assert set(summary["features"]) == {"chinese_hubert_large", "clip_vit_large_patch14"}
    assert summary["features"]["clip_vit_large_patch14"]["missing"] == 32
    errors = pd.read_parquet(work / "features" / "errors.parquet")
    assert errors.empty  # a clip MERTools did not process is no error

    assert main(["train", *sets]) == 0
    metrics = json.loads((work / "train" / "metrics.json").read_text())
    assert metrics["n_labeled"] == 36 and metrics["n_labeled_without_features"] == 12

    assert main(["predict", *sets]) == 0
    result = json.loads((work / "predict" / "summary.json").read_text())
    assert result["fallbacks"] == 8
    # As MERTools' submission.py reads a result: emo_probs, argmax, idx2emo_mer, and the names
    # of track_all_candidates.csv in its order.
    emo_probs = np.load(result["emo_probs"], allow_pickle=True)["emo_probs"].tolist()
    names = pd.read_csv(corpus / "track_all_candidates.csv")["name"].tolist()
    assert np.shape(emo_probs) == (16, 6)
    npz = np.load(result["emo_probs"])
    assert npz["emo_probs"].dtype == np.float32 and npz["names"].tolist() == names == cands
    assert npz["labels"].tolist() == EMOS_MER
    assert np.allclose(np.sum(emo_probs, axis=1), 1.0, atol=1e-5)
    preds = dict(zip(names, (EMOS_MER[k] for k in np.argmax(emo_probs, 1))))
    sub = pd.read_csv(result["submission"])
    assert dict(zip(sub["name"], sub["discrete"])) == preds  # the same decision as ecmf's CSV
    probs = pd.read_parquet(work / "predict" / "probabilities").set_index(schema.SAMPLE_ID)
    row = {n: i for i, n in enumerate(names)}
    for n in probs.index:
        assert np.allclose(emo_probs[row[n]], probs.loc[n, [f"prob_{c}" for c in EMOS_MER]],
                           atol=1e-6)
    majority = pd.read_csv(work / "predict" / "fallbacks.csv")["discrete"].iloc[0]
    for n in sorted(cands)[8:]:  # no features: one-hot on the labeled set's majority class
        assert emo_probs[row[n]] == [float(c == majority) for c in EMOS_MER]

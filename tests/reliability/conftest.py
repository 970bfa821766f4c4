"""Fixtures of the reliability tests: the bad-input corpus (bad_corpus.py) and tiny encoders."""

from __future__ import annotations

import pandas as pd
import pytest
from bad_corpus import damage


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory):
    """The demo corpus with every case applied: {"root", "cases": case -> name, "truth"}."""
    from ecmf.config import DemoConfig
    from ecmf.data.demo import write_demo_corpus

    root = tmp_path_factory.mktemp("bad") / "corpus"
    write_demo_corpus(DemoConfig(n_train=24, n_pool=6, n_candidates=8, n_test=3, seconds=1.0,
                                 silent_rate=0.0, empty_text_rate=0.0, no_face_rate=0.0,
                                 workers=2), root)
    truth = pd.read_csv(root / "hidden_truth.csv", dtype=str, keep_default_na=False)
    return {"root": root, "cases": damage(root, truth), "truth": truth}


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory):
    from ecmf.models.tiny import build_tiny_clip_vision, build_tiny_hubert

    out = tmp_path_factory.mktemp("models")
    return {"clip": str(build_tiny_clip_vision(out / "clip")),
            "hubert": str(build_tiny_hubert(out / "hubert"))}

"""`ecmf refine`: multi-source label refinement of the labeled set into `refine/`, and the
weak classifiers' probabilities over the pool that `ecmf pseudo-label` reads."""

from __future__ import annotations

from ecmf.config import Config
from ecmf.semi.refine import refine_labels
from ecmf.stages.common import stage_session


def run(cfg: Config) -> dict:
    """Vote the refined labels; the summary counts how many changed."""

    with stage_session(cfg, "refine"):
        return refine_labels(cfg)

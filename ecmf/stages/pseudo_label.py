"""`ecmf pseudo-label`: pseudo-label rounds over the unlabeled pool, one folder each under
`rounds/`, resuming after the last finished round."""

from __future__ import annotations

from ecmf.config import Config
from ecmf.semi.rounds import run_rounds
from ecmf.stages.common import stage_session


def run(cfg: Config) -> dict:
    """Run the rounds that are not finished; the summary lists every round."""

    with stage_session(cfg, "pseudo-label"):
        return run_rounds(cfg)

"""`ecmf tune`: hyperparameter search (Ray Tune, ASHA) into `tune/`: `trials.csv`,
`val_waf.png` and, for a finished search, `best.yaml`."""

from __future__ import annotations

from ecmf.config import Config
from ecmf.stages.common import stage_session


def run(cfg: Config, resume: bool = False) -> dict:
    """Search `tune.space`; an unfinished search exits with its reason."""
    from ecmf.tune.driver import (  # imports Ray: after the inputs are checked
        SearchError,
        tune_stage,
    )

    with stage_session(cfg, "tune"):
        try:
            return tune_stage(cfg, resume=resume)
        except SearchError as e:
            raise SystemExit(f"ecmf tune: {e}") from None

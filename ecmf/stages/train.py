"""`ecmf train`: k-fold fusion models (each fold a Ray task, or Ray Train DDP) into `train/`."""

from __future__ import annotations

import sys

from ecmf.config import Config
from ecmf.errors import MissingInput
from ecmf.stages.common import stage_session
from ecmf.train.fit import RUN_FILE, train_stage
from ecmf.train.metrics import format_per_class
from ecmf.workdir import Workdir


def run(cfg: Config, resume: bool = False) -> dict:
    """Fit every fold; the summary holds the out-of-fold metrics, printed per class."""
    run_file = Workdir.of(cfg).train / RUN_FILE
    if resume and not run_file.is_file():  # before Ray starts
        raise MissingInput(f"{run_file} does not exist: {run_file.parent} has no run to resume; "
                           f"train without --resume")
    with stage_session(cfg, "train"):
        result = train_stage(cfg, resume)
    print(format_per_class(result["cv"], "train (out-of-fold)"), file=sys.stderr)
    return result

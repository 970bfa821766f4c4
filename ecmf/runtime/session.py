"""Connecting to Ray: an embedded local Ray by default, or the cluster a config names."""

from __future__ import annotations

import contextlib
import logging
import os

from ecmf.config import RayConfig

log = logging.getLogger(__name__)


def worker_level() -> str:
    """The level Ray's workers log at: this process's (the CLI sets it from -v / -q)."""
    return logging.getLevelName(logging.getLogger().getEffectiveLevel())


@contextlib.contextmanager
def ray_session(cfg: RayConfig):
    """Use the Ray already running in this process, the cluster at `cfg.address`, or start one.

    Under `ray job submit` the driver joins the job's cluster through RAY_ADDRESS; a plain CLI
    call starts an embedded local Ray for the command and shuts it down afterwards.
    """
    import ray

    os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S",
                          str(cfg.no_progress_timeout_s))
    if ray.is_initialized():
        yield ray
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Workers log at the driver's level (-v: DEBUG, default INFO, -q: WARNING) and their lines
    # reach this console, so a warning inside an actor ("LLM batch ... failed") is seen.
    logs = dict(log_to_driver=True, logging_config=ray.LoggingConfig(log_level=worker_level()))
    if address:
        ray.init(address=address, **logs)
    else:
        num_cpus = cfg.num_cpus or max(4, os.cpu_count() or 1)
        log.info("starting an embedded local Ray with %d logical CPUs", num_cpus)
        ray.init(num_cpus=num_cpus, include_dashboard=False,
                 object_store_memory=cfg.object_store_mb * 1024**2, **logs)
    ray.data.DataContext.get_current().enable_progress_bars = True
    try:
        yield ray
    finally:
        ray.shutdown()

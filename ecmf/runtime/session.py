"""Connecting to Ray: a new embedded local Ray by default, the cluster on this machine
("auto"), or the cluster a config or RAY_ADDRESS names."""

from __future__ import annotations

import contextlib
import logging
import os

from ecmf.config import RayConfig

log = logging.getLogger(__name__)
LOCAL, AUTO = "local", "auto"


def worker_level() -> str:
    """The level Ray's workers log at: this process's (the CLI sets it from -v / -q)."""
    return logging.getLevelName(logging.getLogger().getEffectiveLevel())


def resolve_address(cfg: RayConfig) -> str:
    """Where a command's Ray is: `ray.address` when it names a cluster ("auto": the one running
    on this machine, or an address); with "local" (the default), the cluster RAY_ADDRESS names
    (`ray job submit` sets it for a job's driver), else "local": a new embedded Ray, whatever
    else runs on the machine (a `ray start` head, or the address file a killed one left)."""
    if cfg.address and cfg.address != LOCAL:
        return cfg.address
    return os.environ.get("RAY_ADDRESS") or LOCAL


@contextlib.contextmanager
def ray_session(cfg: RayConfig):
    """Use the Ray already running in this process, or start or join the one `resolve_address`
    names; an embedded one is shut down afterwards."""
    import ray

    os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S",
                          str(cfg.no_progress_timeout_s))
    if ray.is_initialized():
        yield ray
        return
    address = resolve_address(cfg)
    # Workers log at the driver's level (-v: DEBUG, default INFO, -q: WARNING) and their lines
    # reach this console, so a warning inside an actor ("LLM batch ... failed") is seen.
    logs = dict(log_to_driver=True, logging_config=ray.LoggingConfig(log_level=worker_level()))
    # Ray's LoggingConfig also gives the driver's root logger a handler of its own: every line
    # would print twice, once with Ray's metadata. The driver keeps the handlers it had.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    if address == LOCAL:
        num_cpus = cfg.num_cpus or max(4, os.cpu_count() or 1)
        log.info("starting an embedded local Ray with %d logical CPUs", num_cpus)
        ray.init(address=LOCAL, num_cpus=num_cpus, include_dashboard=False,
                 object_store_memory=cfg.object_store_mb * 1024**2, **logs)
    else:
        ray.init(address=address, **logs)
    if handlers:
        root.handlers[:] = handlers
        root.setLevel(level)
    ray.data.DataContext.get_current().enable_progress_bars = True
    try:
        yield ray
    finally:
        ray.shutdown()

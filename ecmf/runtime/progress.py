"""Progress lines on the driver: done/total with rate and ETA (`Progress`), Ray tasks collected
in order as they finish (`collect`), and records sent from Ray workers to a driver thread
(`Relay`, `send`), and a fit's lines per epoch of each fold (`EpochLines`, `epoch_relay`).
Everything logs INFO through the `ecmf.progress` logger, so `-q` hides it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Self

log = logging.getLogger("ecmf.progress")  # the name users see beside each line


def format_duration(seconds: float | None) -> str:
    """`45s`, `3m05s`, `2h07m`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts `total` units of work (`update`) and logs a line with rate and ETA at most every
    `every` seconds, always for the last unit, and whenever an update is `force`d."""

    def __init__(self, total: int, what: str, unit: str = "item", every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log):
        self.total, self.what, self.unit, self.every = int(total), what, unit, every
        self.clock, self.logger = clock, logger
        self.done = 0
        self.start = self._last_line = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def rate(self) -> float | None:
        """Units per second so far; None before the first one."""
        t = self.elapsed()
        return self.done / t if self.done and t > 0 else None

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first unit."""
        if self.done >= self.total:
            return 0.0
        r = self.rate()
        return (self.total - self.done) / r if r else None

    def status(self) -> str:
        """`3/12 tasks, 2.0s/task, elapsed 6s, ETA 18s`."""
        r = self.rate()
        if r is None:
            speed = f"?/{self.unit}"
        elif r >= 1:
            speed = f"{r:.1f} {self.unit}s/s"
        else:
            speed = f"{1 / r:.1f}s/{self.unit}"
        return (f"{self.done}/{self.total} {self.unit}s, {speed}, elapsed "
                f"{format_duration(self.elapsed())}, ETA {format_duration(self.eta())}")

    def update(self, n: int = 1, detail: str = "", force: bool = False) -> bool:
        """Count `n` more units; log `<what>: [<detail> | ]<status>` when due. True if logged."""
        self.done += n
        now = self.clock()
        if not (force or self.done >= self.total or now - self._last_line >= self.every):
            return False
        self._last_line = now
        self.logger.info("%s: %s%s", self.what, f"{detail} | " if detail else "", self.status())
        return True


def collect(refs: list, what: str, unit: str = "task", every: float = 5.0) -> list:
    """`ray.get` of `refs`, in their order, waiting with `ray.wait` so that a `Progress` line
    can tell how many have finished (in any order) with rate and ETA, also while none does."""
    import ray

    progress = Progress(len(refs), what, unit, every)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=every)
        progress.update(len(ready))
    return ray.get(list(refs))


def send(queue, record: dict) -> None:
    """Put `record` on a `Relay`'s queue from a Ray worker. Never raises: progress is worth
    less than the work it reports on (a driver gone, a queue actor lost)."""
    from ray.exceptions import RayError

    try:
        queue.put_nowait(record)
    except RayError as e:
        log.debug("progress record not sent: %s", e)


# What `Relay.__exit__` puts on its queue after the workers' last record: the drain thread
# stops at it.
_WAKE = "ecmf-relay-stop"


class Relay:
    """A Ray queue (a 0-CPU actor) that workers `send` records to; a driver thread hands each
    to `handler` in arrival order. Use as a context manager: on exit, the records still queued
    are handled and the actor is ended."""

    def __init__(self, handler: Callable[[Any], None], poll_s: float = 0.5):
        self.handler, self.poll_s = handler, poll_s
        self.queue = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self._thread = threading.Thread(target=self._drain, name="ecmf-progress", daemon=True)
        self._thread.start()
        return self

    def _handle(self, record) -> None:
        try:
            self.handler(record)
        except Exception:  # a bad line must not fail the work it reports on
            log.debug("progress record %r not shown", record, exc_info=True)

    def _drain(self) -> None:
        from ray.exceptions import RayError
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                record = self.queue.get(timeout=self.poll_s)
            except Empty:
                continue
            except RayError as e:  # the queue actor is gone
                log.debug("progress queue lost: %s", e)
                return
            if record == _WAKE:
                return
            self._handle(record)

    def __exit__(self, *exc) -> None:
        import ray
        from ray.exceptions import RayError
        from ray.util.queue import Empty

        self._stop.set()
        try:  # wakes the drain thread now, not at its next poll (up to poll_s per fit)
            self.queue.put_nowait(_WAKE)
        except RayError as e:
            log.debug("progress queue lost: %s", e)
        self._thread.join()
        try:
            while True:
                record = self.queue.get_nowait()
                if record != _WAKE:
                    self._handle(record)
        except Empty:
            pass
        except RayError as e:
            log.debug("progress queue lost: %s", e)
        ray.kill(self.queue.actor, no_restart=True)


class EpochLines:
    """The driver's side of the workers' progress records (`train_loop_per_worker`): a line per
    epoch of each fold, `<run>: fold k/K epoch e/E: train loss L, val WAF W | n/N epochs, ...`
    (folds and epochs counted from 1), with the elapsed time and the ETA of all the folds left
    to train, and a line per finished fold. A restarted worker group sends a new start, and the
    count begins again with the folds it has left."""

    def __init__(self, name: str, folds: int, epochs: int):
        self.name, self.folds, self.epochs = name, folds, epochs
        self.progress: Progress | None = None

    def __call__(self, r: dict) -> None:
        kind = r.get("kind")
        if kind == "start" or self.progress is None:
            todo = r.get("folds", range(self.folds)) if kind == "start" else range(self.folds)
            self.progress = Progress(len(todo) * self.epochs, self.name, unit="epoch")
            if r.get("resumed"):
                log.info("%s: fold(s) %s of %d kept from the checkpoint", self.name,
                                  ", ".join(str(k + 1) for k in r["resumed"]), self.folds)
        if kind == "epoch":
            self.progress.update(1, force=True, detail=(
                f"fold {r['fold'] + 1}/{self.folds} epoch {r['epoch'] + 1}/{self.epochs}: "
                f"train loss {r['train_loss']:.4f}, val WAF {r['val_waf']:.4f}"))
        elif kind == "fold":
            log.info("%s: fold %d/%d done, best epoch %d, val WAF %.4f", self.name,
                              r["fold"] + 1, self.folds, r["best_epoch"] + 1, r["val_waf"])


@contextlib.contextmanager
def epoch_relay(handler: EpochLines):
    """The queue the workers send progress records to (a `Relay` into `handler`), or None where
    the `ecmf.progress` logger would drop its lines (`-q`)."""
    if not log.isEnabledFor(logging.INFO):
        yield None
        return
    with Relay(handler) as relay:
        yield relay.queue

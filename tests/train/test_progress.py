"""Progress on the driver: the rate/ETA arithmetic and its throttle, Ray tasks collected in order,
records relayed from Ray workers, and a local `ecmf train` that logs a line per epoch of each
fold."""

from __future__ import annotations

import logging
import math
import os
import re
import time

import pytest
from synthetic_workdir import SMALL, make_workdir

from ecmf.cli import main
from ecmf.runtime.progress import (
    EpochLines,
    Progress,
    Relay,
    collect,
    epoch_relay,
    format_duration,
    send,
)

EPOCH_LINE = re.compile(r"fold (\d+)/(\d+) epoch (\d+)/(\d+): train loss (\S+), val WAF (\S+) "
                        r"\| (\d+)/(\d+) epochs, .*elapsed \S+, ETA (\S+)$")


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ecmf.progress"]


def test_format_duration():
    assert [format_duration(s) for s in (0, 4.6, 59, 60, 185, 3600, 7620)] == [
        "0s", "5s", "59s", "1m00s", "3m05s", "1h00m", "2h07m"]
    assert format_duration(None) == format_duration(float("nan")) == "?"


def test_progress_rate_and_eta(caplog):
    clock = Clock()
    p = Progress(10, "work", unit="task", every=5.0, clock=clock)
    assert p.rate() is None and p.eta() is None
    clock.t += 8.0
    with caplog.at_level(logging.INFO, logger="ecmf.progress"):
        p.update(2)  # 8 s for 2 tasks: 4 s each, 8 left
        assert p.rate() == pytest.approx(0.25)
        assert p.eta() == pytest.approx(32.0)
        assert lines(caplog) == ["work: 2/10 tasks, 4.0s/task, elapsed 8s, ETA 32s"]
        clock.t += 2.0
        p.update(8)
        assert p.eta() == 0.0
    assert lines(caplog)[-1] == "work: 10/10 tasks, 1.0 tasks/s, elapsed 10s, ETA 0s"


def test_progress_logs_at_most_every_few_seconds_and_the_last_unit(caplog):
    clock = Clock()
    p = Progress(6, "work", every=5.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="ecmf.progress"):
        logged = []
        for _ in range(6):
            clock.t += 2.0
            logged.append(p.update())
        assert logged == [False, False, True, False, False, True]  # 6 s, then the last
        clock.t += 0.1
        assert p.update(0, detail="note", force=True)
    assert lines(caplog)[-1].startswith("work: note | 6/6 items")


def test_epoch_lines_count_the_folds_left_and_start_again_on_a_restart(caplog):
    show = EpochLines("train", folds=3, epochs=2)
    with caplog.at_level(logging.INFO, logger="ecmf.progress"):
        show({"kind": "start", "folds": [1, 2], "resumed": [0], "epochs": 2})
        show({"kind": "epoch", "fold": 1, "epoch": 0, "train_loss": 1.5, "val_waf": 0.25})
        assert show.progress.total == 4 and show.progress.done == 1
        show({"kind": "fold", "fold": 1, "best_epoch": 0, "val_waf": 0.25, "val_acc": 0.3})
        show({"kind": "start", "folds": [2], "resumed": [0, 1], "epochs": 2})  # a restart
        assert show.progress.total == 2 and show.progress.done == 0
    got = lines(caplog)
    assert got[0] == "train: fold(s) 1 of 3 kept from the checkpoint"
    assert got[1].startswith("train: fold 2/3 epoch 1/2: train loss 1.5000, "
                             "val WAF 0.2500 | 1/4 epochs")
    assert got[2] == "train: fold 2/3 done, best epoch 1, val WAF 0.2500"


def test_no_relay_where_progress_lines_are_dropped():
    logger = logging.getLogger("ecmf.progress")
    before = logger.level
    logger.setLevel(logging.WARNING)  # as -q leaves it
    try:
        with epoch_relay(EpochLines("x", 2, 3)) as queue:
            assert queue is None
    finally:
        logger.setLevel(before)


@pytest.mark.ray
def test_collect_keeps_the_order_of_the_refs(ray_local, caplog):
    def after(seconds: float, value):  # local: pickled by value, no import on the worker
        time.sleep(seconds)
        return value

    task = ray_local.remote(after).options(num_cpus=0)
    refs = [task.remote(s, i) for i, s in enumerate([1.0, 0.5, 0.0, 0.2])]  # finish: 2, 3, 1, 0
    with caplog.at_level(logging.INFO, logger="ecmf.progress"):
        assert collect(refs, "sleepers", every=0.1) == [0, 1, 2, 3]
    assert lines(caplog)[-1].startswith("sleepers: 4/4 tasks")


@pytest.fixture
def send_all():
    """A Ray task's side: n records on a relay's queue (defined here, so it is pickled by
    value: the workers cannot import this test module)."""

    def send_all(queue, n: int) -> int:
        for i in range(n):
            send(queue, {"i": i})
        return n

    return send_all


@pytest.mark.ray
def test_relay_hands_worker_records_to_the_driver_in_order(ray_local, send_all):
    got = []
    with Relay(got.append, poll_s=0.2) as relay:
        ray_local.get(ray_local.remote(send_all).options(num_cpus=0).remote(relay.queue, 20))
    assert got == [{"i": i} for i in range(20)]


@pytest.mark.ray
def test_relay_exit_wakes_its_thread_instead_of_waiting_out_a_poll(ray_local, send_all):
    got = []
    with Relay(got.append, poll_s=120) as relay:
        ray_local.get(ray_local.remote(send_all).options(num_cpus=0).remote(relay.queue, 3))
        began = time.monotonic()
    # Every record still handled, and the exit did not sit out the 120 s poll.
    assert got == [{"i": i} for i in range(3)]
    assert time.monotonic() - began < 60


@pytest.mark.ray
def test_local_train_logs_a_line_per_epoch_of_each_fold(ray_local, tmp_path, caplog):
    wd = make_workdir(tmp_path, n_train=60)
    items = [f"workdir={wd}", f"corpus.root={wd}", *SMALL, "train.folds=2", "train.epochs=3"]
    with caplog.at_level(logging.INFO):
        assert main(["train", *[a for s in items for a in ("--set", s)]]) == 0
    records = [r for r in caplog.records if r.name == "ecmf.progress"]
    assert records and all(r.levelno == logging.INFO for r in records)  # -q hides them
    seen = []
    for m in filter(None, (EPOCH_LINE.search(r.getMessage()) for r in records)):
        fold, folds, epoch, epochs, loss, waf, done, total, eta = m.groups()
        assert (int(folds), int(epochs), int(total)) == (2, 3, 6)
        assert math.isfinite(float(loss)) and 0.0 <= float(waf) <= 1.0
        seen.append((int(fold), int(epoch), int(done)))
    # The two folds train at once, so their lines interleave; each fold's come in order.
    assert {f: [e for g, e, _ in seen if g == f] for f in (1, 2)} == {1: [1, 2, 3], 2: [1, 2, 3]}
    assert [d for _, _, d in seen] == [1, 2, 3, 4, 5, 6]
    assert eta == "0s"
    done = [r.getMessage() for r in records if " done, best epoch " in r.getMessage()]
    assert sorted(d.split(": ")[1][:8] for d in done) == ["fold 1/2", "fold 2/2"]


@pytest.mark.ray
def test_each_epoch_line_prints_once_in_ecmf_format(tmp_path):
    """A command's own process, as a user runs it: Ray's logging config adds a handler to the
    driver's root logger, which printed every line twice (once with Ray's metadata)."""
    import subprocess
    import sys

    wd = make_workdir(tmp_path, n_train=40)
    items = [f"workdir={wd}", *SMALL, "train.folds=2", "train.epochs=2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "ecmf.cli", "train",
                           *[a for s in items for a in ("--set", s)]],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if EPOCH_LINE.search(ln)]
    assert len(lines) == 4 and len(set(lines)) == 4  # 2 folds x 2 epochs, none twice
    assert all(re.match(r"^\d\d:\d\d:\d\d INFO ecmf\.progress: train: fold", ln) for ln in lines)
    assert not any("job_id=" in ln for ln in done.stderr.splitlines())

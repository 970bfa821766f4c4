"""Ray that starts cleanly beside the user's own: with a `ray start` head running on this
machine, or the address file a killed one left, `ecmf train` with the default config starts
an embedded Ray of its own; with `ray.address: auto` it joins the running cluster. The address
files live in private temp dirs (RAY_TMPDIR), and only the test's own head is ended."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from synthetic_workdir import SMALL, make_workdir

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


def _train(workdir: Path, tmpdir: Path, *sets: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmpdir)  # where ray.init looks for a running cluster's address
    items = [f"workdir={workdir}", *SMALL, "train.folds=2", "train.epochs=2", *sets]
    return subprocess.run([sys.executable, "-m", "ecmf.cli", "train",
                           *[a for s in items for a in ("--set", s)]],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def short_dirs():
    """Private RAY_TMPDIRs under /tmp: an embedded Ray puts its sockets there, and their paths
    must stay under 108 bytes."""
    made = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="ecmfad-", dir="/tmp")))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def _address_file(tmpdir: Path, address: str) -> None:
    (tmpdir / "ray").mkdir(parents=True, exist_ok=True)
    (tmpdir / "ray" / "ray_current_cluster").write_text(address)


def test_train_starts_its_own_ray_beside_a_running_head_and_joins_it_with_auto(
        ray_head, tmp_path, short_dirs):
    from ray.job_submission import JobSubmissionClient

    running = short_dirs()
    _address_file(running, ray_head.gcs)  # as `ray start` writes it
    client = JobSubmissionClient(ray_head.address)
    drivers = {j.job_id for j in client.list_jobs()}

    # ray.address auto: the cluster running on this machine, whose job list shows the driver.
    joined = _train(make_workdir(tmp_path / "auto", n_train=40), running, "ray.address=auto")
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "starting an embedded local Ray" not in joined.stderr
    assert {j.job_id for j in client.list_jobs()} - drivers  # its driver ran there

    # The default ("local"): a new embedded Ray, though a head is running (before: "When
    # connecting to an existing cluster, num_cpus and num_gpus must not be provided").
    drivers = {j.job_id for j in client.list_jobs()}
    own = _train(make_workdir(tmp_path / "local", n_train=40), running)
    assert own.returncode == 0, own.stderr[-3000:]
    assert "starting an embedded local Ray" in own.stderr
    assert {j.job_id for j in client.list_jobs()} == drivers  # nothing ran on the head

    # The address file a killed head left behind: the same.
    stale = short_dirs()
    _address_file(stale, "127.0.0.1:1")
    gone = _train(make_workdir(tmp_path / "stale-wd", n_train=40), stale)
    assert gone.returncode == 0, gone.stderr[-3000:]

"""A real Ray head for the cluster tests: `ray start --head --block` on free loopback ports.

`ray stop` would kill every Ray on the machine (the in-process Ray of this very pytest run and
other users' too), so the head runs in its own --temp-dir and is stopped by its process tree:
the `ray start --block` process, its descendants, and anything whose command line names that
temp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120


@dataclass
class RayHead:
    address: str  # the Jobs API, http://127.0.0.1:<dashboard port>
    temp_dir: str
    log: Path
    gcs: str = ""  # 127.0.0.1:<GCS port>, what `ray.init(address=...)` joins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root_pid: int, temp_dir: str) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}

    def add(p: psutil.Process) -> None:
        found[p.pid] = p
        try:
            for c in p.children(recursive=True):
                found[c.pid] = c
        except psutil.Error:
            pass

    with contextlib.suppress(psutil.Error):
        add(psutil.Process(root_pid))
    for p in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(p.info["cmdline"] or []):
            add(p)
    found.pop(os.getpid(), None)  # never this pytest process
    return list(found.values())


def _ended(p: psutil.Process) -> bool:
    """Gone, or a zombie: one that exited and waits for its parent to reap it (the head's
    raylet, under `ray start`), which `psutil.wait_procs` would wait out in full."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait_ended(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait up to `timeout_s` for `procs` to end -> those still running."""
    deadline = time.monotonic() + timeout_s
    while not all(_ended(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in procs if not _ended(p)]


def stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """End the head: SIGTERM to `ray start --block`, which stops what it started (2-3 s for an
    idle head here; SIGTERM to every process at once left the GCS and raylet waiting on each
    other for over 15 s), SIGTERM to what is left after 5 s (the fake provider's nodes; a
    head that ran jobs), SIGKILL after 3 s more; remove its temp dir. A throwaway test head
    needs no graceful end: the full 15 s each took was a sixth of the cluster tests' time."""
    procs = _tree(proc.pid, temp_dir)  # before anything dies and gets re-parented
    proc.terminate()
    rest = _wait_ended(procs, 5)
    for p in rest:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    alive = _wait_ended(rest, 3)
    for p in alive + _tree(proc.pid, temp_dir):
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    proc.wait(timeout=5)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_ready(address: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the Ray head's Jobs API at {address} did not answer within "
                       f"{START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def start_head(temp_dir: str, num_cpus: int, object_store_mb: int, args: list[str] = (),
               env: dict[str, str] | None = None,
               gcs: int | None = None) -> tuple[subprocess.Popen, int, int]:
    """`ray start --head --block` from this environment on free loopback ports (the GCS on
    `gcs` if given), in its own temp dir and session -> (process, GCS port, dashboard port);
    its log is ray-start.log."""
    bindir = Path(sys.executable).parent
    gcs, dashboard = gcs or free_port(), free_port()
    full_env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                # A throwaway head on loopback; cluster configs keep token auth on.
                "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    cmd = [str(bindir / "ray"), "start", "--head", "--block", f"--temp-dir={temp_dir}",
           "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
           f"--num-cpus={num_cpus}", "--num-gpus=0",
           f"--object-store-memory={object_store_mb * 1024**2}", "--disable-usage-stats", *args]
    log = Path(temp_dir) / "ray-start.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                cwd=temp_dir, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{dashboard}", proc, log)
    except BaseException:
        stop_head(proc, temp_dir)
        raise
    return proc, gcs, dashboard


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head (4 logical CPUs, dashboard on 127.0.0.1) started from this environment,
    for one module: left running, its dashboard and log monitor took CPU from every later test."""
    # Short: Ray's unix sockets live under it and their paths are limited to ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="ecmfray-", dir="/tmp")
    proc, gcs, dashboard = start_head(temp_dir, num_cpus=4, object_store_mb=384)
    try:
        yield RayHead(f"http://127.0.0.1:{dashboard}", temp_dir, Path(temp_dir) / "ray-start.log",
                      f"127.0.0.1:{gcs}")
    finally:
        stop_head(proc, temp_dir)


def _autoscaling_config(gcs_port: int) -> dict:
    empty: list = []
    return {
        "cluster_name": "ecmf-fake-gpu", "max_workers": 3, "idle_timeout_minutes": 5,
        "upscaling_speed": 2.0,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{gcs_port}",
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "gpu_node": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {},
                         "min_workers": 0, "max_workers": 3}},
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": empty, "setup_commands": empty,
        "head_setup_commands": empty, "worker_setup_commands": empty,
        "head_start_ray_commands": empty, "worker_start_ray_commands": empty,
    }


REHEARSAL = Path(__file__).parent / "rehearsal"


def rehearsal_env(gpu_image: Path) -> dict[str, str]:
    """The environment of every process of the simulated cluster and of its drivers: the
    production split of model files (rehearsal/sitecustomize.py: `gpu_image` readable on GPU
    nodes alone), and the explicit opt-in that runs GPU work on CPUs (ecmf.runtime.devices)."""
    path = os.pathsep.join(p for p in (str(REHEARSAL), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "ECMF_GPU_IMAGE_DIR": str(gpu_image),
            "ECMF_SIMULATED_GPUS": "1"}


@pytest.fixture(scope="module")
def fake_gpu_cluster():
    """The head (2 CPUs, no GPU) with the fake provider's autoscaler; ended by its process
    tree and temp dir, never `ray stop` (which would end every Ray on the machine)."""
    temp_dir = tempfile.mkdtemp(prefix="ecmffk-", dir="/tmp")
    config = Path(temp_dir) / "autoscaling.yaml"
    gcs = free_port()  # the provider's nodes join the GCS named in the config
    config.write_text(yaml.safe_dump(_autoscaling_config(gcs)))
    gpu_image = Path(temp_dir) / "gpu-image"  # model files only GPU nodes may read
    gpu_image.mkdir()
    env = rehearsal_env(gpu_image)
    proc, gcs, dashboard = start_head(temp_dir, num_cpus=2, object_store_mb=256,
                                      args=[f"--autoscaling-config={config}"],
                                      env={"RAY_FAKE_CLUSTER": "1", **env}, gcs=gcs)
    try:
        yield {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dashboard}",
               "temp_dir": temp_dir, "gpu_image": gpu_image, "env": env}
    finally:
        stop_head(proc, temp_dir)

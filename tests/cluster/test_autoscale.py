"""The production path on a simulated GPU cluster that scales from zero.

Ray's fake multi-node provider (PLATFORM_NOTES.md): a head that offers no GPU, and a worker type
offering `GPU: 1` (a fake resource: no CUDA behind it) with `min_workers: 0`. Every stage runs
as its own driver process joined to that cluster, as a job on the head would: extraction with
GPU encoders, training with a GPU per fold task, one pseudo-label round, a 2-trial search
with GPU trials and a submitted job. The state API then shows that the autoscaler launched the
GPU nodes and that the GPU work ran on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score

from ecmf import schema

pytestmark = [pytest.mark.autoscale, pytest.mark.cluster]
REPO = Path(__file__).resolve().parents[2]
STAGE_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def gpu_config(tiny_corpus, tmp_path_factory, fake_gpu_cluster):
    """Overrides that ask for GPUs everywhere, with tiny models that run on CPU inside, staged
    in the GPU image: only the GPU nodes' processes can read them."""
    from ecmf.models.tiny import build_tiny_clip_vision, build_tiny_hubert

    out = tmp_path_factory.mktemp("fake-gpu")
    image = fake_gpu_cluster["gpu_image"]
    gpu = {"num_gpus": 1, "num_cpus": 1, "group": "gpu", "batch_size": 4}
    cfg = {
        "workdir": str(out / "run"),
        "corpus": {"root": str(tiny_corpus)},
        "extract": {"decode_batch_size": 4, "encoders": {
            "frames": {**gpu, "name": "clip", "model": str(build_tiny_clip_vision(image / "clip"))},
            "faces": None,
            "audio": {**gpu, "name": "hubert", "model": str(build_tiny_hubert(image / "hubert"))},
            "text": gpu}},
        "train": {"num_workers": 2, "use_gpu": True, "cpus_per_worker": 1, "epochs": 2,
                  "folds": 2, "storage_path": str(out / "ray_results")},
        "pseudo": {"rounds": 1, "threshold": 0.2, "class_balance": False},
        "predict": {"num_gpus": 1, "num_cpus": 1},
        "tune": {"num_samples": 2, "runner": "process", "cpus_per_trial": 1,
                 "gpus_per_trial": 1, "scheduler": "fifo", "cv_folds": 2,
                 "space": {"lr": {"choice": [0.001, 0.003]}}},
    }
    path = out / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {"path": path, "workdir": Path(cfg["workdir"])}


def _stage(cluster: dict, *args: str) -> dict:
    """One `ecmf` command as its own driver on the fake cluster -> the JSON it printed last
    (the cluster's log lines, e.g. the autoscaler's, come before it)."""
    env = {**os.environ, **cluster["env"], "RAY_ADDRESS": cluster["gcs"]}
    done = subprocess.run([sys.executable, "-m", "ecmf.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=STAGE_TIMEOUT_S)
    if done.returncode:  # the error, without the progress bars around it
        lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "%|" not in ln]
        pytest.fail(f"ecmf {args[0]} exited {done.returncode}:\n" + "\n".join(lines[-80:]))
    out = done.stdout
    return json.loads(out[out.rfind("\n{\n") + 1:] if "\n{\n" in out else out)


def _actors_on(cluster: dict, class_part: str) -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(address=cluster["dashboard"], limit=10000, detail=True,
                         raise_on_missing_output=False)
    return {a.node_id for a in actors if class_part in (a.class_name or "")}


def _tasks_on(cluster: dict, name: str) -> set[str]:
    from ray.util.state import list_tasks

    tasks = list_tasks(address=cluster["dashboard"], filters=[("name", "=", name)], limit=10000,
                       detail=True, raise_on_missing_output=False)
    return {t.node_id for t in tasks if t.node_id}


def test_every_stage_runs_on_gpu_nodes_the_autoscaler_starts(fake_gpu_cluster, gpu_config):
    from ray.util.state import list_nodes

    cluster, cfg = fake_gpu_cluster, str(gpu_config["path"])
    head = [n for n in list_nodes(address=cluster["dashboard"], detail=True) if n.is_head_node]
    assert len(head) == 1 and not head[0].resources_total.get("GPU")
    assert len(list_nodes(address=cluster["dashboard"])) == 1  # scaled to zero at start

    start = time.time()
    # Extraction as a submitted job (its driver on the head, as `ray job submit` runs one),
    # the other stages as drivers of their own joined to the cluster.
    spec = gpu_config["path"].with_name("extract-job.yaml")
    spec.write_text(yaml.safe_dump({
        "name": "ecmf-fake-gpu-extract", "config": cfg, "steps": ["extract"],
        "entrypoint_num_cpus": 0,
        # The code as an image holds it (`local://`: a directory on every node), not uploaded:
        # Ray 2.60 unpacks an uploaded working_dir with overwrite=True as each node first uses
        # it, under the session dir, which fake nodes share, so a GPU node joining mid-job
        # deleted the files under the head's running workers (seen in CI: "No module named
        # ecmf.features.store"). The upload path is covered on one node by test_cluster_jobs_live.
        "runtime_env": {"working_dir": f"local://{REPO}"}}))
    out = subprocess.run(
        [sys.executable, "-m", "ecmf.cli", "submit", str(spec), "--address",
         cluster["dashboard"], "--follow", "--timeout", str(STAGE_TIMEOUT_S)],
        cwd=REPO, capture_output=True, text=True, timeout=STAGE_TIMEOUT_S + 60)
    assert out.returncode == 0, out.stderr[-6000:]
    summary = json.loads((gpu_config["workdir"] / "features" / "summary.json").read_text())
    assert summary["failed"] == 0 and summary["done"] == summary["clips"]
    metrics = _stage(cluster, "train", cfg)
    # Every labeled clip was scored out of fold on the GPU nodes, and the WAF reported is the
    # one its predictions give.
    oof = pd.read_parquet(gpu_config["workdir"] / "train" / "oof.parquet")
    assert len(oof) == metrics["n_labeled"] > 0
    waf = f1_score(oof["label"], oof[schema.PRED], average="weighted")
    assert metrics["cv"]["waf"] == pytest.approx(waf, abs=1e-4)
    _stage(cluster, "refine", cfg)  # the weak classifiers the rounds read
    rounds = _stage(cluster, "pseudo-label", cfg)
    assert rounds["rounds"], rounds
    search = _stage(cluster, "tune", cfg)
    assert search["trials"] == 2, search
    predicted = _stage(cluster, "predict", cfg)
    assert predicted["fallbacks"] == 0 and predicted["predicted"] == predicted["candidates"]
    print(f"five stages on the fake GPU cluster: {time.time() - start:.0f} s")

    nodes = list_nodes(address=cluster["dashboard"], detail=True, limit=100)
    gpu_nodes = {n.node_id for n in nodes if n.resources_total.get("GPU")}
    assert gpu_nodes and all(not n.is_head_node for n in nodes if n.node_id in gpu_nodes)
    for what in ("MapBatches(EncoderGroup)", "MapBatches(Predictor)"):
        where = _actors_on(cluster, what)
        assert where and where <= gpu_nodes, (what, where, gpu_nodes)
    # train's folds (and the pseudo-label round's), each a task asking for a GPU
    where = _tasks_on(cluster, "train_fold")
    assert where and where <= gpu_nodes, ("train_fold", where, gpu_nodes)


BOUNDARIES = '''
import json, os, sys
import ray
from transformers import AutoConfig
from ecmf.runtime.devices import device_for

image = sys.argv[1]
out = {}
try:
    AutoConfig.from_pretrained(os.path.join(image, "clip"))
    out["driver_loads"] = "loaded"
except OSError as e:
    out["driver_loads"] = str(e)
ray.init(address=os.environ["RAY_ADDRESS"])

@ray.remote(num_gpus=1, num_cpus=0)
def on_gpu_node():
    config = AutoConfig.from_pretrained(os.path.join(image, "clip"))
    return config.model_type, str(device_for(1, "k"))

out["gpu_node"] = ray.get(on_gpu_node.remote())
strict = on_gpu_node.options(runtime_env={"env_vars": {"ECMF_SIMULATED_GPUS": "0"}})
try:
    out["without_opt_in"] = ray.get(strict.remote())
except ray.exceptions.RayTaskError as e:
    out["without_opt_in"] = str(e)
print(json.dumps(out))
'''


def test_the_rehearsal_keeps_production_s_boundaries(fake_gpu_cluster, gpu_config):
    """What makes the simulation see production's splits: the GPU image's model files load on
    a GPU node and nowhere else, and a GPU node without CUDA fails loudly unless the
    rehearsal's opt-in is set."""
    cluster = fake_gpu_cluster
    env = {**os.environ, **cluster["env"], "RAY_ADDRESS": cluster["gcs"]}
    done = subprocess.run([sys.executable, "-c", BOUNDARIES, str(cluster["gpu_image"])],
                          env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=STAGE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "the GPU image's model files are not on this node" in out["driver_loads"]
    assert out["gpu_node"] == ["clip_vision_model", "cpu"]  # the opt-in: CPU, with a warning
    assert "k asks for a GPU, but node" in out["without_opt_in"]
    assert "sees no CUDA" in out["without_opt_in"]

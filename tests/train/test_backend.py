"""The process group of a fit: `train.backend` chosen on the driver (`torch_backend`), handed to
every TorchTrainer, and the loop's collectives on the training device, which work under it."""

from __future__ import annotations

import ast
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from ecmf.config import ConfigError, TrainConfig
from ecmf.stages.common import load_config
from ecmf.train.fit import NCCL_WITH_GLOO, make_trainer, torch_backend
from ecmf.train.loop import _Dist

# (train.use_gpu, CUDA on the driver, train.backend) -> the TorchConfig backend
CHOICES = {
    (False, False, "auto"): "gloo",
    (False, True, "auto"): "gloo",  # CPU workers: NCCL could not take their tensors
    (True, False, "auto"): "gloo",  # a fake GPU node, a CPU wheel, or a CPU-only head
    (True, True, "auto"): NCCL_WITH_GLOO,
    (False, False, "gloo"): "gloo",
    (False, True, "gloo"): "gloo",
    (True, False, "gloo"): "gloo",
    (True, True, "gloo"): "gloo",
    (True, False, "nccl"): NCCL_WITH_GLOO,  # a CPU-only head driving CUDA workers
    (True, True, "nccl"): NCCL_WITH_GLOO,
}


@pytest.mark.parametrize(("use_gpu", "cuda", "backend"), sorted(CHOICES))
def test_backend_choice(use_gpu, cuda, backend):
    got = torch_backend(TrainConfig(use_gpu=use_gpu, backend=backend), cuda_available=cuda)
    assert got == CHOICES[use_gpu, cuda, backend]
    if backend == "auto" and not cuda:
        assert "nccl" not in got  # CPU wheels and fake GPU nodes have no NCCL at all


def test_nccl_routes_cuda_tensors_to_nccl_and_cpu_ones_to_gloo():
    pairs = dict(item.split(":") for item in NCCL_WITH_GLOO.split(","))
    assert pairs == {"cpu": "gloo", "cuda": "nccl"}


@pytest.mark.parametrize(("key", "value"), [("backend", "mpi"), ("backend", "NCCL")])
def test_unknown_backend_names_the_key_and_the_choices(key, value):
    with pytest.raises(ConfigError, match=r"train\.backend.*'auto', 'gloo', 'nccl'"):
        TrainConfig(**{key: value})


def test_nccl_without_gpus_is_refused():
    with pytest.raises(ConfigError, match=r"train\.backend.*train\.use_gpu"):
        TrainConfig(backend="nccl", use_gpu=False)
    assert TrainConfig(backend="nccl", use_gpu=True).backend == "nccl"


def test_backend_is_a_config_key():
    cfg = load_config(None, ["train.use_gpu=true", "train.backend=gloo"])
    assert (cfg.train.use_gpu, cfg.train.backend) == (True, "gloo")
    assert TrainConfig().backend == "auto"


def _trainer(tmp_path, **train):
    tc = TrainConfig(**train)
    return make_trainer(tc, {"train": {}}, "backend-test", str(tmp_path), datasets={})


def test_fit_trainer_gets_the_chosen_backend(tmp_path, caplog):
    cuda = torch.cuda.is_available()
    with caplog.at_level(logging.WARNING, logger="ecmf.train.fit"):
        gpu_auto = _trainer(tmp_path, use_gpu=True)
    # Left to Ray, use_gpu alone would give plain "nccl", which this CPU wheel lacks.
    assert gpu_auto.backend_config.backend == (NCCL_WITH_GLOO if cuda else "gloo")
    if not cuda:
        assert "train.backend: nccl" in caplog.text  # says how to get NCCL from a CPU head
    assert _trainer(tmp_path, use_gpu=True, backend="nccl").backend_config.backend == \
        NCCL_WITH_GLOO
    assert _trainer(tmp_path, use_gpu=True, backend="gloo").backend_config.backend == "gloo"
    assert _trainer(tmp_path).backend_config.backend == "gloo"


def test_every_torch_trainer_is_given_its_backend():
    root = Path(__file__).resolve().parents[2] / "ecmf"
    calls = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "TorchTrainer"):
                calls.append((path.relative_to(root.parent).as_posix(),
                              {k.arg for k in node.keywords}))
    assert calls, "no TorchTrainer found under ecmf/"
    missing = [p for p, kw in calls if "torch_config" not in kw]
    assert not missing, f"TorchTrainer without torch_config (Ray would pick NCCL): {missing}"


@pytest.fixture
def one_process_group(request):
    """A real one-rank process group of `request.param` (backend string), destroyed after."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(request.param, init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def collective_devices(monkeypatch):
    """The devices of the tensors handed to all_reduce (the real one still runs)."""
    import torch.distributed as dist

    seen = []
    real = dist.all_reduce

    def spy(tensor, *args, **kwargs):
        seen.append(tensor.device)
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", spy)
    return seen


def _check_dist(device: torch.device, seen: list) -> None:
    d = _Dist(device)
    assert (d.on, d.rank, d.world) == (True, 0, 1)
    assert d.max(7) == 7 and isinstance(d.max(7), int)
    counts = d.sum(np.array([3, 0, 5]))
    assert isinstance(counts, np.ndarray) and counts.tolist() == [3.0, 0.0, 5.0]
    w = torch.tensor([0.5, 1.5, 2.0], device=device, requires_grad=True)
    total = d.total(w)
    assert total.device.type == device.type and float(total) == pytest.approx(4.0)
    assert not total.requires_grad  # a constant denominator: gradients flow through the loss
    assert d.gather(11) == [11]
    assert len(seen) == 4 and all(s.type == device.type for s in seen)


@pytest.mark.parametrize("one_process_group", ["gloo"], indirect=True)
def test_dist_collectives_under_gloo(one_process_group, collective_devices):
    _check_dist(torch.device("cpu"), collective_devices)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL takes CUDA tensors)")
@pytest.mark.parametrize("one_process_group", [NCCL_WITH_GLOO, "nccl", "gloo"], indirect=True)
def test_dist_collectives_on_cuda(one_process_group, collective_devices):
    torch.cuda.set_device(0)
    _check_dist(torch.device("cuda", 0), collective_devices)

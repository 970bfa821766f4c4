"""One rule for devices, one helper for boundaries (`ecmf.runtime.devices`), through the real
components: a GPU asked for where CUDA is missing fails naming the config key (the simulated
cluster opts in to the CPU explicitly); what a fold task, an encoder actor, a predictor or the
LLM backend hands back crosses through `to_host` and holds no device memory."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic_workdir import DIMS, synthetic_features

from ecmf import schema
from ecmf.config import PACKAGED_MINILM, EncoderConfig, TrainConfig
from ecmf.features.encoders import ENCODERS
from ecmf.runtime import devices
from ecmf.runtime.devices import NoCuda, device_for, device_tensors, to_host
from ecmf.train import fold_tasks
from ecmf.train.predict import Predictor

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="shows what a node without CUDA does"),
]


@pytest.fixture
def real_gpus(monkeypatch):
    """As in production: no simulated GPUs, whatever the environment says."""
    monkeypatch.delenv(devices.SIMULATED_GPUS_ENV, raising=False)


@pytest.fixture
def spy(monkeypatch):
    """Every object `to_host` returned, by id: the proof that a result crossed through it."""
    seen = []
    real = devices.to_host

    def recording(obj):
        out = real(obj)
        seen.append(id(out))
        return out

    monkeypatch.setattr(devices, "to_host", recording)
    return seen


def test_a_gpu_asked_for_without_cuda_fails_naming_the_key(real_gpus):
    assert device_for(0, "train.use_gpu") == torch.device("cpu")
    with pytest.raises(NoCuda, match=r"train\.use_gpu asks for a GPU, but node .* sees no CUDA"
                                     r".*Set train\.use_gpu to 0"):
        device_for(True, "train.use_gpu")


def test_the_simulated_cluster_opts_in_to_the_cpu_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv(devices.SIMULATED_GPUS_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="ecmf.runtime.devices"):
        assert device_for(1, "predict.num_gpus.sim-test") == torch.device("cpu")
    assert "running on the CPU because ECMF_SIMULATED_GPUS=1" in caplog.text


@pytest.mark.parametrize("component", ["encoder", "fold task", "predictor"])
def test_every_component_asked_for_a_gpu_fails_without_cuda(real_gpus, component):
    """Before: each picked the CPU in silence (one CPU thread for weeks on a bad node)."""
    if component == "encoder":
        cfg = EncoderConfig(name="text", model=PACKAGED_MINILM, num_gpus=1)
        with pytest.raises(NoCuda, match=r"extract\.encoders\.text\.num_gpus"):
            ENCODERS.get("text")("text", cfg)
    elif component == "fold task":
        with pytest.raises(NoCuda, match=r"train\.use_gpu"):
            fold_tasks.task_device(True)
    else:
        with pytest.raises(NoCuda, match=r"predict\.num_gpus"):
            Predictor("no-run-needed", use_gpu=True)


def test_to_host_moves_every_tensor_and_keeps_the_rest():
    @dataclasses.dataclass
    class Out:
        w: object
        n: int = 3

    obj = {"state": {"w": torch.ones(2)}, "hist": [{"waf": np.float64(0.5)}], "ids": ("a", "b"),
           "arr": np.zeros(2), "out": Out(torch.zeros(1))}
    host = to_host(obj)
    assert host["state"]["w"].device.type == "cpu" and host["ids"] == ("a", "b")
    assert host["arr"] is obj["arr"] and host["out"].n == 3 and device_tensors(host) == []
    # What the check finds where a tensor is not in host memory (meta: a device without data).
    meta = {"state": {"w": torch.empty(2, device="meta")},
            "more": [Out(torch.empty(1, device="meta"))]}
    assert device_tensors(meta) == ["result['state']['w'] on meta", "result['more'][0].w on meta"]


def _rows(n=60) -> dict:
    y, feats, masks = synthetic_features(n, 0)
    d = {schema.SAMPLE_ID: np.array([f"s{i:03d}" for i in range(n)]), "y": y.astype(np.int64),
         "weight": np.ones(n, np.float32), "fold": np.arange(n) % 3}
    for f in DIMS:
        d[schema.feature_column(f)] = feats[f]
        d[schema.mask_column(f)] = masks[f]
    return d


def test_a_fold_task_hands_back_what_to_host_made(spy, monkeypatch):
    """The fold task itself, in this process: its return value is `to_host`'s output."""
    monkeypatch.setattr(fold_tasks, "task_rows", lambda config, features: _rows())
    tc = TrainConfig(epochs=2, folds=3, hidden=16, heads=2, batch_size=16)
    config = {"train": dataclasses.asdict(tc), "features": list(DIMS), "dims": dict(DIMS),
              "num_classes": len(schema.LABELS)}
    saved = fold_tasks.train_fold_task(config, 0, 0)
    assert id(saved) in spy and device_tensors(saved) == []
    assert saved["state_dict"] and saved["fold"] == 0


@pytest.fixture(scope="module")
def tiny_llm_path(tmp_path_factory) -> str:
    from ecmf.models.tiny import build_tiny_causal_lm

    return str(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llm", seed=0))


def test_an_encoder_actor_and_the_llm_backend_hand_back_what_to_host_made(spy, tiny_llm_path):
    cfg = EncoderConfig(name="text", model=PACKAGED_MINILM)
    encoder = ENCODERS.get("text")("text", cfg)
    batch = {schema.SAMPLE_ID: np.array(["a", "b"], dtype=object),
             schema.ERROR: np.array(["", ""], dtype=object),
             "text": np.array(["hello there", ""], dtype=object)}
    out = encoder(batch)
    assert id(out) in spy and device_tensors(out) == []

    from ecmf.config import EnrichConfig
    from ecmf.enrichment.backends import TransformersBackend

    llm = TransformersBackend(EnrichConfig(max_new_tokens=4), tiny_llm_path, "enrich")
    out = llm({schema.SAMPLE_ID: np.array(["a"], dtype=object),
               "text": np.array(["Where were you?"], dtype=object)})
    assert id(out) in spy and device_tensors(out) == []


def test_a_predictor_hands_back_what_to_host_made(spy, tmp_path):
    from ecmf.train.loop import save_fold, train_one_fold

    tc = TrainConfig(epochs=1, folds=3, hidden=16, heads=2, batch_size=16)
    rows = _rows()
    run = tmp_path / "run" / "models"
    run.mkdir(parents=True)
    for k in range(3):
        save_fold(train_one_fold(tc, rows, list(DIMS), DIMS, k), tc, list(DIMS), DIMS, run)
    predictor = Predictor(str(tmp_path / "run"))
    batch = {schema.SAMPLE_ID: rows[schema.SAMPLE_ID][:4]}
    for f in DIMS:
        batch[schema.feature_column(f)] = list(rows[schema.feature_column(f)][:4])
        batch[schema.mask_column(f)] = rows[schema.mask_column(f)][:4]
    out = predictor(batch)
    assert id(out) in spy and isinstance(out, pd.DataFrame) and len(out) == 4

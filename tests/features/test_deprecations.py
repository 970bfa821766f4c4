"""Ray's removal notices: one extraction on the embedded Ray calls no API that Ray deprecates, and
decoding still runs in its own CPU tasks, never fused into an encoder's actor pool."""

from __future__ import annotations

import logging
import warnings

import pytest
import ray.data  # noqa: F401  (its import sets up the "ray.data" logger, dropping other handlers)
from ray.util.annotations import RayDeprecationWarning

pytestmark = pytest.mark.ray  # every test here starts Ray


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_extraction_calls_no_deprecated_ray_api(tmp_path, tiny_corpus, tiny, ray_local, capsys):
    """Audio and text share one pool of 1 CPU, what a decode task asks: Ray Data would fuse
    decoding into that pool's actors unless the decode map differs in what the fusion rule
    compares. The execution plan, as Ray Data logs it, shows which operators ran."""
    import json

    from ecmf.cli import main

    sets = [f"workdir={tmp_path / 'run'}", f"corpus.root={tiny_corpus}",
            "extract.encoders.frames=null", "extract.encoders.faces=null",
            "extract.encoders.text.num_cpus=1",
            f"extract.encoders.audio.model={tiny['hubert']}", "extract.encoders.audio.num_cpus=1",
            "extract.encoders.audio.num_gpus=0", "extract.encoders.audio.group=light",
            "extract.encoders.text.group=light"]
    plans = _Records()
    ray_data_log = logging.getLogger("ray.data")  # Ray Data's loggers do not propagate to root
    ray_data_log.addHandler(plans)
    capsys.readouterr()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RayDeprecationWarning)
            assert main(["extract", *[a for s in sets for a in ("--set", s)]]) == 0
    finally:
        ray_data_log.removeHandler(plans)
    summary = json.loads(capsys.readouterr().out)
    assert summary["done"] == summary["clips"] > 0 and summary["failed"] == 0
    plan = next(m for m in plans.messages
                if m.startswith("Execution plan of Dataset") and "decode_batch" in m)
    assert "TaskPoolMapOperator[MapBatches(decode_batch)]" in plan, plan
    assert "MapBatches(decode_batch)->" not in plan, plan

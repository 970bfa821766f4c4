"""What a cluster can run: node shapes from the nodes up and the autoscaler's node types, and
requests that no node can ever hold refused (or, where the types are unknown, only warned)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ecmf.config import ConfigError, EncoderConfig
from ecmf.runtime.capacity import Capacity, check_placeable, node_types_from_yaml

REPO = Path(__file__).resolve().parents[1]
HEAD = {"CPU": 8.0, "memory": 3e10}


def _launcher_capacity() -> Capacity:
    """The shipped launcher cluster as its driver sees it at start: the head alone is up."""
    config = yaml.safe_load((REPO / "cluster" / "launcher" / "ecmf-aws.yaml").read_text())
    types = node_types_from_yaml(config)
    shapes = (HEAD, *(r for r, most in types if most > 0))
    extra = {}
    for r, most in types:
        for k, v in r.items():
            extra[k] = extra.get(k, 0.0) + v * most
    return Capacity(shapes, {k: HEAD.get(k, 0.0) + extra.get(k, 0.0) for k in {*HEAD, *extra}},
                    "test")


def test_the_launcher_cluster_scaled_to_zero_can_run_the_default_encoders():
    from ecmf.config import ExtractConfig
    from ecmf.features.extract import check_resources, encoder_stages

    capacity = _launcher_capacity()
    assert capacity.totals["GPU"] >= 1 and capacity.fits({"CPU": 1, "GPU": 1})
    check_resources(encoder_stages(ExtractConfig().encoders), capacity)  # GPUs from zero: fine


@pytest.mark.ray
def test_a_gpu_request_without_a_gpu_node_type_is_refused_naming_the_key(ray_local):
    from ecmf.features.extract import check_resources, encoder_stages

    stages = encoder_stages({"frames": EncoderConfig(num_gpus=1.0, num_cpus=1.0),
                             "text": EncoderConfig(num_cpus=0.5)})
    # The session's local Ray has no GPU and no autoscaler: it never will.
    with pytest.raises(ConfigError, match=r"extract\.encoders\.frames asks for 1 CPU, 1 GPU.*"
                                          r"no node can offer it"):
        check_resources(stages)


def test_unknown_node_types_warn_instead_of_refusing(caplog):
    up_now = Capacity(({"CPU": 2.0},), {"CPU": 2.0}, "head only", known=False)
    check_placeable({"train workers": {"CPU": 1, "GPU": 1}}, up_now)
    assert "train workers asks for 1 CPU, 1 GPU" in caplog.text and "autoscaler" in caplog.text
    fixed = Capacity(({"CPU": 2.0},), {"CPU": 2.0}, "head only")
    with pytest.raises(ConfigError, match="train workers"):
        check_placeable({"train workers": {"CPU": 1, "GPU": 1}}, fixed)
    check_placeable({"ok": {"CPU": 2, "GPU": 0}}, fixed)


def test_node_types_honour_the_global_max_workers():
    config = {"max_workers": 2, "available_node_types": {
        "head": {"resources": {"CPU": 4}, "max_workers": 0},
        "gpu": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0, "max_workers": 10}}}
    assert node_types_from_yaml(config) == [({"CPU": 4.0}, 0), ({"CPU": 8.0, "GPU": 1.0}, 2)]

"""EnrichConfig: tasks, vote limits and vLLM engine kwargs from YAML / --set, with named errors."""

from __future__ import annotations

import json

import pytest

from ecmf.config import ConfigError, EnrichConfig
from ecmf.stages.common import load_config


def test_tasks_and_engine_kwargs_from_set_items():
    cfg = load_config(None, ["enrich.tasks=enrich,vote", "enrich.backend=vllm",
                             "enrich.engine_kwargs.gpu_memory_utilization=0.9",
                             "enrich.engine_kwargs.max_model_len=null"]).enrich
    assert cfg.tasks == ["enrich", "vote"] and cfg.backend == "vllm"
    # Set items merge into the default engine kwargs; null removes one.
    assert cfg.engine_kwargs == {"enable_prefix_caching": True, "gpu_memory_utilization": 0.9}
    assert load_config(None, ["enrich.tasks=vote"]).enrich.tasks == ["vote"]


def test_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("enrich:\n  tasks: [vote]\n  vote_max_new_tokens: 120\n  cache: false\n"
                    "  engine_kwargs: {max_num_seqs: 128, dtype: bfloat16}\n")
    cfg = load_config(path).enrich
    assert (cfg.tasks, cfg.vote_max_new_tokens, cfg.cache) == (["vote"], 120, False)
    assert cfg.engine_kwargs["max_num_seqs"] == 128 and cfg.engine_kwargs["dtype"] == "bfloat16"
    assert cfg.engine_kwargs["max_model_len"] == 4096


@pytest.mark.parametrize("kwargs,key", [
    ({"tasks": []}, "enrich.tasks"), ({"tasks": ["enrich", "score"]}, "enrich.tasks"),
    ({"tasks": ["vote", "vote"]}, "enrich.tasks"),
    ({"vote_max_new_tokens": 0}, "enrich.vote_max_new_tokens"),
    ({"engine_kwargs": {"model": "x"}}, "enrich.engine_kwargs"),
    ({"language": "fr"}, "enrich.language"),
])
def test_bad_values_name_their_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"config {key}: expected"):
        EnrichConfig(**kwargs)
    with pytest.raises(ConfigError, match=f"config {key}: expected"):
        load_config(None, [f"enrich.{k}={json.dumps(v)}" for k, v in kwargs.items()])

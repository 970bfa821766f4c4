"""Config: defaults, YAML and --set overrides, validation messages that name the key."""

from __future__ import annotations

import pytest
import yaml

from ecmf.config import Config, ConfigError, load_config, save_config


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg == Config()
    path = save_config(cfg, tmp_path)
    assert load_config(path) == cfg


def test_yaml_then_set_overrides_in_that_order(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"epochs": 7, "lr": 0.01}, "workdir": "w"}))
    cfg = load_config(p, ["train.epochs=9", "train.features=text,audio", "ray.address=null"])
    assert cfg.train.epochs == 9 and cfg.train.lr == 0.01 and cfg.workdir == "w"
    assert cfg.train.features == ["text", "audio"]
    assert cfg.ray.address is None


def test_nested_encoder_override_keeps_other_keys_and_null_removes_one():
    cfg = load_config(None, ["extract.encoders.text.batch_size=3", "extract.encoders.audio=null"])
    assert cfg.extract.encoders["text"].batch_size == 3
    assert cfg.extract.encoders["text"].name == "text"
    assert "audio" not in cfg.extract.encoders


@pytest.mark.parametrize("item, key", [
    ("train.folds=1", "train.folds"),
    ("train.epochs=ten", "train.epochs"),
    ("train.hidden=102", "train.hidden"),
    ("pseudo.threshold=0", "pseudo.threshold"),
    ("corpus.text_column=french", "corpus.text_column"),
    ("train.bogus=1", "bogus"),
    ("nosuchsection.x=1", "nosuchsection"),
])
def test_bad_values_name_the_key(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [item])


def test_an_encoder_group_needs_one_pool_size():
    sets = ["extract.encoders.text.group=light", "extract.encoders.audio.group=light"]
    assert load_config(None, sets).extract.encoders["audio"].group == "light"
    with pytest.raises(ConfigError, match="group 'light'.*'audio': 2, 'text': 1"):
        load_config(None, [*sets, "extract.encoders.audio.pool_size=2"])


def test_set_needs_key_value_and_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")

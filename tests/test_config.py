"""Config: defaults, YAML and --set overrides, validation messages that name the key."""

from __future__ import annotations

import pytest
import yaml

from ecmf.config import Config, ConfigError
from ecmf.stages.common import load_config
from ecmf.workdir import save_config


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


@pytest.mark.parametrize("item, path", [
    ("extract.encoders.frames.batch_size=0", "extract.encoders.frames.batch_size"),
    ("extract.encoders.faces.min_face=2", "extract.encoders.faces.min_face"),
    ("extract.encoders.text.precision=fp8", "extract.encoders.text.precision"),
    ("train.folds=1", "train.folds"),
])
def test_a_nested_error_names_the_full_key_path(item, path):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert f"config {path}:" in str(e.value)


@pytest.mark.parametrize("item, path, close", [
    ("extract.encoders.frames.name=clipp", "extract.encoders.frames.name", "clip"),
    ("extract.encoders.faces.detector=retinafce", "extract.encoders.faces.detector",
     "retinaface"),
    ("train.model=ecmff", "train.model", "ecmf"),
    ("enrich.backend=vlm", "enrich.backend", "vllm"),
    ("corpus.layout=cvs", "corpus.layout", "csv"),
    ("refine.classifiers=lr,svn", r"refine.classifiers\[1\]", "svm"),
])
def test_registered_names_are_checked_at_load_with_the_closest_name(item, path, close):
    with pytest.raises(ConfigError, match=rf"config {path}: expected one of \[.*\]; "
                                          rf"did you mean '{close}'\?"):
        load_config(None, [item])


def test_an_unknown_key_suggests_the_closest_one():
    with pytest.raises(ConfigError, match=r"'epoch': did you mean 'epochs'\?"):
        load_config(None, ["train.epoch=3"])


def test_face_options_live_on_face_encoders_only():
    from ecmf.config import FaceEncoderConfig

    cfg = load_config(None, ["extract.encoders.faces.detector=haar"])
    assert isinstance(cfg.extract.encoders["faces"], FaceEncoderConfig)
    assert not hasattr(cfg.extract.encoders["frames"], "detector")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['detector'\] in "
                                          r"extract\.encoders\.frames"):
        load_config(None, ["extract.encoders.frames.detector=haar"])


def test_a_loaded_config_is_frozen():
    import dataclasses

    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # cache keys hash the config: nothing may change it afterwards
    assert dataclasses.replace(cfg.train, epochs=3).epochs == 3


def test_describe_prints_yaml_that_loads_back_with_a_comment_on_every_key():
    import dataclasses

    from ecmf.config import describe, field_comments, to_dict
    from ecmf.config import extract as config_extract
    from ecmf.config import sections as config

    cfg = load_config(None, ["train.epochs=3", "extract.encoders.audio=null"])
    text = describe(cfg)
    assert yaml.safe_load(text) == to_dict(cfg)
    assert any(line.startswith("  epochs: 3  # ") for line in text.splitlines())
    classes = [c for c in {**vars(config_extract), **vars(config)}.values()
               if isinstance(c, type) and dataclasses.is_dataclass(c)]
    assert len(classes) >= 13
    for cls in classes:
        comments = field_comments(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not comments.get(f.name)]
        assert not missing, f"{cls.__name__}: no comment for {missing}"

"""The one typed config: frozen nested dataclasses (`sections`, extraction's in `extract`), their
YAML / `--set` mechanics (`dicts`), and reading and describing a config (`load`).

Its public names are re-exported here: `from ecmf.config import Config, TrainConfig, read_config`.
"""

from ecmf.config.dicts import ConfigError, check, from_dict, merge, parse_set, section, to_dict
from ecmf.config.extract import (
    FACE_ENCODERS,
    PACKAGED_MINILM,
    PRECISIONS,
    RETINAFACE_WEIGHTS,
    EncoderConfig,
    ExtractConfig,
    FaceEncoderConfig,
)
from ecmf.config.load import describe, field_comments, read_config
from ecmf.config.sections import (
    LR_SCHEDULES,
    TRAIN_BACKENDS,
    TRAIN_STRATEGIES,
    Config,
    CorpusConfig,
    DemoConfig,
    EnrichConfig,
    PredictConfig,
    PseudoConfig,
    RayConfig,
    RefineConfig,
    TrainConfig,
    TuneConfig,
)

__all__ = [
    "FACE_ENCODERS", "LR_SCHEDULES", "PACKAGED_MINILM", "PRECISIONS", "RETINAFACE_WEIGHTS",
    "TRAIN_BACKENDS", "TRAIN_STRATEGIES", "Config", "ConfigError", "CorpusConfig", "DemoConfig",
    "EncoderConfig", "EnrichConfig", "ExtractConfig", "FaceEncoderConfig", "PredictConfig",
    "PseudoConfig", "RayConfig", "RefineConfig", "TrainConfig", "TuneConfig", "check",
    "describe", "field_comments", "from_dict", "merge", "parse_set", "read_config", "section",
    "to_dict",
]

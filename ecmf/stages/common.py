"""What every stage does before its work: load and validate the config, check its inputs
before Ray starts."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd

from ecmf.config import Config, ConfigError, FaceEncoderConfig, read_config
from ecmf.data.layouts import LAYOUTS
from ecmf.data.manifest import corpus_labels, load_manifest
from ecmf.errors import MissingInput
from ecmf.features.encoders import ENCODERS
from ecmf.features.faces import FACE_DETECTORS
from ecmf.features.store import store_dims
from ecmf.runtime import session
from ecmf.semi.select import SELECTION
from ecmf.semi.weak import WEAK_CLASSIFIERS
from ecmf.tune.space import parse_space, search_points
from ecmf.workdir import Workdir


def load_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = (),
                base: dict | None = None, check_names: bool = True) -> Config:
    """`ecmf.config.read_config`, then `validate` unless `check_names` is False (a caller that
    validates later: the check imports the components, torch among them)."""
    cfg = read_config(path, sets, base)
    return validate(cfg) if check_names else cfg


def _name(registry, value: str, key: str) -> None:
    if value not in registry:
        raise ConfigError(key=key, expected=registry.expected(value), value=value).qualify("")


def validate(cfg: Config) -> Config:
    """Check the names components registered and the tune space; return `cfg` unchanged."""

    _name(LAYOUTS, cfg.corpus.layout, "corpus.layout")
    for feature, enc in cfg.extract.encoders.items():
        where = f"extract.encoders.{feature}"
        _name(ENCODERS, enc.name, f"{where}.name")
        if isinstance(enc, FaceEncoderConfig):
            _name(FACE_DETECTORS, enc.detector, f"{where}.detector")
    from ecmf.models.fusion import MODELS

    _name(MODELS, cfg.train.model, "train.model")
    from ecmf.enrichment.backends import BACKENDS

    _name(BACKENDS, cfg.enrich.backend, "enrich.backend")

    _name(SELECTION, cfg.pseudo.strategy, "pseudo.strategy")

    for i, name in enumerate(cfg.refine.classifiers):
        _name(WEAK_CLASSIFIERS, name, f"refine.classifiers[{i}]")
    for name in cfg.refine.options:
        _name(WEAK_CLASSIFIERS, name, f"refine.options.{name}")

    parse_space(cfg.tune.space)
    if cfg.tune.space:  # every sampled point must make a valid train config
        search_points(cfg.tune, cfg.train)
        for i, model in enumerate((cfg.tune.space.get("model") or {}).get("choice", []) or []):
            _name(MODELS, model, f"tune.space.model.choice[{i}]")
    return cfg


# What each stage reads besides the corpus, checked before Ray starts.
STAGE_NEEDS = {"enrich": (), "train": ("store",), "tune": ("store",),
               "refine": ("store", "fusion_run"), "pseudo-label": ("store", "train_run"),
               "predict": ("store", "a_run")}


def check_inputs(cfg: Config, stage: str, run: str | Path | None = None) -> pd.DataFrame:
    """What `stage` checks before Ray starts: the corpus reads (its manifest is returned), and
    the inputs of STAGE_NEEDS exist: the feature store holds features, a training run is there.
    Each error names the command that makes the missing input."""
    manifest = load_manifest(cfg)
    corpus_labels(cfg, manifest)  # a label outside `labels:` is named before Ray starts
    wd = Workdir.of(cfg)
    needs = STAGE_NEEDS[stage]
    if "store" in needs and not any(wd.store.glob("*.parquet")):
        raise MissingInput(f"feature store {wd.store} holds no features: run `ecmf extract` "
                           f"(or `ecmf import-features`) with this config first")
    if "store" in needs:
        _check_feature_names(cfg, wd.store)
    fusion = "fusion_run" in needs and cfg.refine.weights.get("fusion", 0) > 0
    if ("train_run" in needs or fusion) and not (wd.train / "metrics.json").is_file():
        why = " (the fusion source of refine.weights; or set refine.weights.fusion=0)" \
            if fusion else ""
        raise MissingInput(f"{wd.train} holds no finished run: run `ecmf train` before "
                           f"`ecmf {stage}`{why}")
    if stage == "pseudo-label" and cfg.pseudo.min_agree > 0 and cfg.refine.classifiers:
        weak = wd.refine / "weak_probs.parquet"
        if not weak.is_file():
            raise MissingInput(f"pseudo.min_agree is {cfg.pseudo.min_agree} but {weak} is not "
                               f"there: run `ecmf refine` before `ecmf pseudo-label`, which "
                               f"fits the weak classifiers that vote on the pool (or set "
                               f"pseudo.min_agree=0)")
    if stage == "pseudo-label" and cfg.refine.enabled:
        labels = wd.refine / ("fold_labels.parquet" if cfg.refine.fold_blind else "labels.parquet")
        if not labels.is_file():
            raise MissingInput(f"refine.enabled is true but {labels} is not there: run `ecmf "
                               f"refine` before `ecmf pseudo-label` (or set refine.enabled=false)")
    if "a_run" in needs:
        if run is not None:
            if not any((Path(run) / "models").glob("fold_*.pt")):
                raise MissingInput(f"--run {run}: no fold models in {Path(run) / 'models'}; "
                                   f"give a directory that `ecmf train` wrote")
        elif not (wd.rounds / "summary.json").is_file() and not (wd.train / "models").is_dir():
            raise MissingInput(f"{wd.root} holds no trained run: run `ecmf train` before "
                               f"`ecmf {stage}`")
    return manifest


def _check_feature_names(cfg: Config, store: Path) -> None:
    """The features the config names (train.features, refine.feature_sets, a tune space's
    feature lists) are in the store: a typo fails here, not inside a training worker."""

    have = sorted(store_dims(store))
    named = {"train.features": list(cfg.train.features)}
    for i, fs in enumerate(cfg.refine.feature_sets):
        named[f"refine.feature_sets[{i}]"] = list(fs)
    space = cfg.tune.space.get("features")
    for kind in ("choice", "grid"):
        for i, fs in enumerate(space.get(kind) or [] if isinstance(space, dict) else []):
            names = fs if isinstance(fs, list) else [n for n in str(fs).split(",") if n]
            named[f"tune.space.features.{kind}[{i}]"] = names
    for key, names in named.items():
        unknown = [n for n in names if n not in have]
        if unknown:
            raise ConfigError(key=key, value=names,
                              expected=f"features of the store {store} ({have}); "
                                       f"{unknown} are not there").qualify("")


@contextlib.contextmanager
def stage_session(cfg: Config, stage: str, run: str | Path | None = None):
    """Before Ray starts, the stage's inputs (`check_inputs`: the corpus reads, the store and
    earlier runs it needs exist), then the registered names (`validate` imports the components,
    torch among them: a missing stage is named in about a second); then a Ray session."""
    check_inputs(cfg, stage, run)
    validate(cfg)
    with session.ray_session(cfg.ray):
        yield

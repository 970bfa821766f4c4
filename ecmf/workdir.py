"""Where each stage reads and writes under a run's workdir, and the manifest every stage starts from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ecmf.config import Config
from ecmf.errors import MissingInput


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def of(cls, cfg: Config) -> Workdir:
        return cls(Path(cfg.workdir))

    manifest = property(lambda self: self.root / "manifest.parquet")
    enrich = property(lambda self: self.root / "enrich")
    enriched = property(lambda self: self.root / "enrich" / "enriched.parquet")
    features = property(lambda self: self.root / "features")
    store = property(lambda self: self.root / "features" / "store")
    errors = property(lambda self: self.root / "features" / "errors.parquet")
    models = property(lambda self: self.root / "models")  # tiny models the demo builds
    train = property(lambda self: self.root / "train")
    refine = property(lambda self: self.root / "refine")
    rounds = property(lambda self: self.root / "rounds")
    predict = property(lambda self: self.root / "predict")
    evaluate = property(lambda self: self.root / "evaluate")


def build_manifest(cfg: Config) -> pd.DataFrame:
    """Read the corpus named by the config (by its `corpus.layout`) and write `manifest.parquet`
    into the workdir."""
    from ecmf.data.layouts import read_corpus

    df = read_corpus(cfg.corpus)
    wd = Workdir.of(cfg)
    wd.root.mkdir(parents=True, exist_ok=True)
    df.to_parquet(wd.manifest, index=False)
    return df


def load_manifest(cfg: Config) -> pd.DataFrame:
    """The workdir's manifest, built from the corpus on first use."""
    wd = Workdir.of(cfg)
    if wd.manifest.is_file():
        return pd.read_parquet(wd.manifest)
    return build_manifest(cfg)


# What each stage reads besides the corpus, checked before Ray starts.
STAGE_NEEDS = {"enrich": (), "train": ("store",), "tune": ("store",),
               "refine": ("store", "fusion_run"), "pseudo-label": ("store", "train_run"),
               "predict": ("store", "a_run")}


def check_inputs(cfg: Config, stage: str, run: str | Path | None = None) -> pd.DataFrame:
    """What `stage` checks before Ray starts: the corpus reads (its manifest is returned), and
    the inputs of STAGE_NEEDS exist: the feature store holds features, a training run is there.
    Each error names the command that makes the missing input."""
    manifest = load_manifest(cfg)
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
    from ecmf.config_dict import ConfigError
    from ecmf.features.store import store_dims

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


def save_config(cfg: Config, directory: str | Path) -> Path:
    """Write the resolved config as `config.yaml` in `directory` (a stage's output folder)."""
    import yaml

    from ecmf.config import to_dict

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = d / "config.yaml"
    out.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return out


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path

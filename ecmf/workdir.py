"""Where each stage reads and writes under a run's workdir, and the manifest every stage starts from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ecmf.config import Config
from ecmf.errors import InputError, MissingInput


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def of(cls, cfg: Config) -> Workdir:
        return cls(Path(cfg.workdir))

    manifest = property(lambda self: self.root / "manifest.parquet")
    folds = property(lambda self: self.root / "folds.parquet")  # every stage's folds
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
    corpus_labels(cfg, df)  # a label outside a configured set fails before anything is written
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


def corpus_labels(cfg: Config, manifest: pd.DataFrame) -> list[str]:
    """The class names a run uses, in order: `cfg.labels` when given (every manifest label must
    be one of them), else MER2025's six for a corpus whose labels are all MER2025 classes (its
    own layout, or a subset, which then scores as MER2025 does), else the corpus' labels
    sorted."""
    from ecmf import schema

    labeled = manifest[manifest[schema.LABEL].notna()]
    present = sorted(set(labeled[schema.LABEL]))
    if cfg.labels:
        unknown = [v for v in present if v not in cfg.labels]
        if unknown:
            first = labeled.loc[labeled[schema.LABEL] == unknown[0], schema.SAMPLE_ID].iloc[0]
            raise InputError(f"the corpus' label(s) {unknown} (e.g. sample {first!r}) are not in "
                             f"config labels {list(cfg.labels)}: add them, or set labels: [] to "
                             f"take the corpus' own")
        return list(cfg.labels)
    if set(present) <= set(schema.LABELS):  # the mer2025 layout's reader allows no other
        return list(schema.LABELS)
    if len(present) < 2:
        raise InputError(f"the corpus has {len(present)} distinct label(s) {present}; a "
                         f"classifier needs two or more (config corpus: {cfg.corpus})")
    return present


def with_labels(cfg: Config, manifest: pd.DataFrame | None = None) -> Config:
    """`cfg` with its label set resolved from the corpus (`corpus_labels`): every stage calls it
    first, and the resolved list is what its saved config.yaml records."""
    from dataclasses import replace

    labels = corpus_labels(cfg, load_manifest(cfg) if manifest is None else manifest)
    return cfg if list(cfg.labels) == labels else replace(cfg, labels=labels)


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

"""Where each stage reads and writes under a run's workdir, and the manifest every stage starts from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ecmf.config import Config


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def of(cls, cfg: Config) -> "Workdir":
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


def check_inputs(cfg: Config, needs_store: bool = True) -> pd.DataFrame:
    """What a stage checks before Ray starts: the corpus reads (its manifest is returned) and,
    where the stage reads features, the store holds some; the error names the command to run."""
    manifest = load_manifest(cfg)
    store = Workdir.of(cfg).store
    if needs_store and not any(store.glob("*.parquet")):
        raise FileNotFoundError(f"feature store {store} holds no features: run `ecmf extract` "
                                f"(or `ecmf import-features`) with this config first")
    return manifest


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path

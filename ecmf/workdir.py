"""Where each stage reads and writes under a run's workdir, and writing its small files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ecmf.config import Config, to_dict


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


def save_config(cfg: Config, directory: str | Path) -> Path:
    """Write the resolved config as `config.yaml` in `directory` (a stage's output folder)."""
    import yaml

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = d / "config.yaml"
    out.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return out


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path

"""The manifest every stage starts from (the corpus read by its layout, one row per sample) and
the label set a run uses."""

from __future__ import annotations

import pandas as pd

from ecmf import schema
from ecmf.config import Config
from ecmf.data.layouts import read_corpus
from ecmf.errors import InputError
from ecmf.workdir import Workdir


def build_manifest(cfg: Config) -> pd.DataFrame:
    """Read the corpus named by the config (by its `corpus.layout`) and write `manifest.parquet`
    into the workdir."""

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

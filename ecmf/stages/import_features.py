"""`ecmf import-features`: MERTools feature folders (one `.npy` per clip, `-UTT` and `-FRA`)
into the feature store."""

from __future__ import annotations

from ecmf.config import Config
from ecmf.features.mertools import import_stage


def run(cfg: Config, sources: list[str] = (), steps: int | None = None, overwrite: bool = False,
        mertools: str | None = None) -> dict:
    """Import `--mertools DIR`'s folders and each `--from FEATURE=FOLDER`; the summary counts
    imported, not imported and unreadable clips per feature."""
    return import_stage(cfg, list(sources), steps, overwrite, mertools=mertools)

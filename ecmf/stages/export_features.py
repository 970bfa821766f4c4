"""`ecmf export-features`: the feature store as MERTools folders (`<feature>-UTT/<name>.npy`)."""

from __future__ import annotations

from ecmf.config import Config
from ecmf.features.mertools_out import export_stage


def run(cfg: Config, out: str, features: list[str] | None = None, overwrite: bool = False) -> dict:
    """Write every feature (or `features`) of the store under `out`."""
    return export_stage(cfg, out, features or None, overwrite)

"""`ecmf config`: the resolved config as YAML, each key with its comment."""

from __future__ import annotations

from ecmf.config import Config, describe


def run(cfg: Config) -> None:
    """Print what a command would run with."""
    print(describe(cfg), end="")

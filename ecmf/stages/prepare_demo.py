"""`ecmf prepare-demo`: the generated demo corpus, in MER2025's release layout."""

from __future__ import annotations

from ecmf.config import Config
from ecmf.data.demo import write_demo_corpus


def run(cfg: Config, out: str = "demo-out/corpus") -> dict:
    """Write the corpus under `out`; the summary counts its clips by split."""
    return write_demo_corpus(cfg.demo, out)

"""Fixtures of the enrichment tests: one tiny causal LM per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> str:
    from ecmf.models.tiny import build_tiny_causal_lm

    return str(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llm", seed=0))

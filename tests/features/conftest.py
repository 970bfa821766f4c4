"""Fixtures of the feature tests: the tiny encoders, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny random CLIP / HuBERT / causal LM saved to disk: name -> from_pretrained path."""
    from ecmf.models.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("models"))

"""Fixtures of the training tests; the synthetic workdir itself is built in synthetic_workdir.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_workdir import make_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("wd"))

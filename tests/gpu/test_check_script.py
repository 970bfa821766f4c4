"""`make gpu-check` (tests/gpu/check.py) where there is no CUDA: it skips, saying why, as one
JSON object; on a GPU machine it prints the figures (run there, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHECK = Path(__file__).resolve().parent / "check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check runs")
def test_without_cuda_the_check_skips_with_its_reason(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(CHECK), "--out", str(out)], capture_output=True,
                          text=True, timeout=120, cwd="/")  # from anywhere, no install needed
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["skipped"].startswith("no CUDA device here")


def test_the_architectures_are_the_production_configs():
    """The sizes the check builds are those of the encoders the MER2025 config names."""
    arch = {p.stem: json.loads(p.read_text())
            for p in (CHECK.parent / "architectures").glob("*.json")}
    assert set(arch) == {"clip-vit-large-patch14", "chinese-hubert-large",
                         "chinese-roberta-wwm-ext-large"}
    for name, cfg in arch.items():
        assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (
            1024, 24, 16), name
    import yaml

    mer = yaml.safe_load((CHECK.parents[2] / "jobs" / "configs" / "mer2025.yaml").read_text())
    models = {e["model"].split("/")[-1] for e in mer["extract"]["encoders"].values() if e}
    assert set(arch) <= models

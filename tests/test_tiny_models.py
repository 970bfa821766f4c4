"""Tiny random models: built offline, loaded through the Auto classes, small and deterministic."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ecmf.models.tiny import (
    build_tiny_causal_lm,
    build_tiny_clip_vision,
    build_tiny_hubert,
    build_tiny_models,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0, image_size=64)


def _dir_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def test_build_returns_three_small_dirs(tiny):
    assert set(tiny) == {"clip", "hubert", "llm"}
    for path in tiny.values():
        assert (Path(path) / "config.json").is_file()
        assert (Path(path) / "model.safetensors").is_file()
        assert _dir_bytes(path) < 20 * 1024**2


def test_clip_loads_with_auto_classes(tiny):
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(tiny["clip"])
    model = AutoModel.from_pretrained(tiny["clip"]).eval()
    frames = [np.full((90, 120, 3), v, dtype=np.uint8) for v in (0, 128, 255)]
    pixels = processor(images=frames, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (3, 3, 64, 64)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    assert out.pooler_output.shape == (3, 128)
    assert out.last_hidden_state.shape == (3, 2 * 2 + 1, 128)


def test_hubert_loads_with_auto_classes(tiny):
    from transformers import AutoFeatureExtractor, AutoModel

    extractor = AutoFeatureExtractor.from_pretrained(tiny["hubert"])
    model = AutoModel.from_pretrained(tiny["hubert"]).eval()
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(16000).astype(np.float32),
             rng.standard_normal(8000).astype(np.float32)]
    inputs = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    assert inputs["input_values"].shape == (2, 16000)
    assert "attention_mask" not in inputs  # group-norm front end: fed without a mask
    assert model.config.feat_extract_norm == "group"
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) >= 5  # the feature sums the last four layers
    assert out.last_hidden_state.shape == (2, 49, 64)  # 320 samples a frame, as in real HuBERT


def test_causal_lm_loads_and_generates(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["llm"], padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(tiny["llm"]).eval()
    assert tok.pad_token is not None and tok.eos_token is not None
    assert tok.pad_token_id != tok.eos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "Why now?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert "Why now?" in text and text.endswith("<|assistant|>\n")
    enc = tok([text, "A much longer prompt than the first one."], return_tensors="pt",
              padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=6,
                             pad_token_id=tok.pad_token_id)
    new = out[:, enc["input_ids"].shape[1]:]
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 6
    assert all(isinstance(s, str) for s in tok.batch_decode(new, skip_special_tokens=True))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("build", [build_tiny_clip_vision, build_tiny_hubert, build_tiny_causal_lm])
def test_builders_are_deterministic_for_a_seed(build, tmp_path):
    a, b, c = (build(tmp_path / name, seed=seed) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    for name in ("tokenizer.json", "preprocessor_config.json"):
        if (a / name).exists():
            assert (a / name).read_bytes() == (b / name).read_bytes()


def test_build_tiny_models_reuses_and_rebuilds(tmp_path):
    first = build_tiny_models(tmp_path, seed=0)
    stamp = {k: os.stat(Path(p) / "model.safetensors").st_mtime_ns for k, p in first.items()}
    time.sleep(0.01)
    again = build_tiny_models(tmp_path, seed=0)
    assert again == first
    assert stamp == {k: os.stat(Path(p) / "model.safetensors").st_mtime_ns
                     for k, p in again.items()}
    # A half-written directory (no config) and a different seed are both rebuilt.
    (Path(first["hubert"]) / "config.json").unlink()
    build_tiny_models(tmp_path, seed=0)
    assert (Path(first["hubert"]) / "config.json").is_file()
    build_tiny_models(tmp_path, seed=1)
    marker = json.loads((Path(first["llm"]) / "tiny_model.json").read_text())
    assert marker["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "hubert", "llm"]


def test_clip_image_size_must_split_into_two_by_two_patches(tmp_path):
    with pytest.raises(ValueError, match="even number"):
        build_tiny_clip_vision(tmp_path, image_size=61)

"""Encoders called directly on NumPy batches with tiny models loaded through from_pretrained."""

from __future__ import annotations

import numpy as np
import pytest

from ecmf.config import PACKAGED_MINILM, EncoderConfig
from ecmf.features.encoders import ENCODERS


def _batch(n, **cols):
    return {"sample_id": np.array([f"s{i}" for i in range(n)], dtype=object),
            "error": np.array([""] * n, dtype=object), **cols}


def test_clip_encoder_means_over_frames(tiny):
    enc = ENCODERS.get("clip")("frames", EncoderConfig("clip", tiny["clip"], batch_size=2))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(3, 4, 40, 40, 3), dtype=np.uint8)
    frames[2] = frames[0][[3, 2, 1, 0]]  # same frames, other order: same mean feature
    out = enc(_batch(3, frames=frames))
    x = out["feat_frames"]
    assert x.shape == (3, enc.dim) and x.dtype == np.float32 and out["mask_frames"].all()
    assert np.allclose(x[0], x[2], atol=1e-5) and not np.allclose(x[0], x[1])


def test_hubert_encoder_masks_silence_and_decode_errors(tiny):
    enc = ENCODERS.get("hubert")("audio", EncoderConfig("hubert", tiny["hubert"]))
    t = np.arange(16000) / 16000
    voiced = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    audio = np.empty(3, dtype=object)
    audio[:] = [voiced, np.zeros(8000, np.float32), voiced[:4000]]
    batch = _batch(3, audio=audio)
    batch["error"][2] = "decode: broken"
    out = enc(batch)
    assert out["mask_audio"].tolist() == [True, False, False]
    assert np.abs(out["feat_audio"][1:]).sum() == 0 and np.abs(out["feat_audio"][0]).sum() > 0


def test_hubert_chunks_long_audio_to_the_same_kind_of_feature(tiny):
    enc = ENCODERS.get("hubert")("audio", EncoderConfig("hubert", tiny["hubert"]))
    rng = np.random.default_rng(1)
    wav = (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32)
    whole = enc.encode([wav])
    enc.chunk_s = 1.0
    chunked = enc.encode([wav])
    assert chunked.shape == whole.shape and np.isfinite(chunked).all()
    assert not np.allclose(chunked, whole)  # really ran per chunk


def test_text_encoder_uses_packaged_minilm_and_masks_empty_text():
    enc = ENCODERS.get("text")("text", EncoderConfig("text", PACKAGED_MINILM, batch_size=2))
    text = np.array(["I am so happy today!", "", "I am so happy today!", "   "], dtype=object)
    out = enc(_batch(4, text=text))
    assert enc.dim == 384
    assert out["mask_text"].tolist() == [True, False, True, False]
    assert np.allclose(out["feat_text"][0], out["feat_text"][2], atol=1e-5)


def test_unknown_encoder_lists_available():
    with pytest.raises(KeyError, match="available.*clip"):
        ENCODERS.get("whisper")


def test_an_encoder_group_runs_its_members_in_turn_on_one_batch(tiny):
    from ecmf import schema
    from ecmf.features.encoders import EncoderGroup
    from ecmf.features.extract import encoder_stages

    encoders = {"audio": EncoderConfig("hubert", tiny["hubert"], group="light", batch_size=4),
                "frames": EncoderConfig("clip", tiny["clip"]),
                "text": EncoderConfig("text", PACKAGED_MINILM, group="light"),
                "caption": EncoderConfig("text", PACKAGED_MINILM, input="text")}
    stages = encoder_stages(encoders)
    # The group runs at its first member's place; the last reader of an input drops it.
    assert [[m["feature"] for m in s] for s in stages] == [["audio", "text"], ["frames"],
                                                            ["caption"]]
    drops = {m["feature"]: m["drop_input"] for s in stages for m in s}
    assert drops == {"audio": True, "text": False, "frames": True, "caption": True}

    rng = np.random.default_rng(0)
    def batch():
        return _batch(2, audio=[rng.standard_normal(16000).astype(np.float32), np.zeros(0)],
                      text=np.array(["a happy day", ""], dtype=object))
    group = EncoderGroup(stages[0])
    b = batch()
    alone = [ENCODERS.get(m["cfg"].name)(**{**m, "drop_input": False}) for m in stages[0]]
    expected = alone[1](alone[0](dict(b)))
    got = group(dict(b))
    for name in ("audio", "text"):
        np.testing.assert_array_equal(got[schema.feature_column(name)],
                                      expected[schema.feature_column(name)])
        np.testing.assert_array_equal(got[schema.mask_column(name)], [True, False])
    assert "audio" not in got and "text" in got  # audio's last reader dropped it


def test_pools_that_hold_every_cpu_are_refused_before_ray_data_stalls(ray_local):
    from ecmf.config import ConfigError
    from ecmf.features.extract import _check_cpu_budget, encoder_stages, pool_settings

    total = ray_local.cluster_resources()["CPU"]
    # A group holds its largest num_cpus once, not the sum of its members'.
    group = encoder_stages({"a": EncoderConfig(num_cpus=total - 1, group="g"),
                            "b": EncoderConfig(num_cpus=1.0, group="g", batch_size=4)})
    assert pool_settings(group[0]) == {"batch_size": 4, "pool_size": 1, "num_cpus": total - 1,
                                       "num_gpus": 0.0}
    _check_cpu_budget(group)
    apart = encoder_stages({"a": EncoderConfig(num_cpus=total - 1), "b": EncoderConfig()})
    with pytest.raises(ConfigError, match="leaving less than 1 for decoding"):
        _check_cpu_budget(apart)

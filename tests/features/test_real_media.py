"""Real media: six CREMA-D talking-head clips (flv, H.263 video + mp3 audio; tests/data/crema-d)
decoded with decord, their faces found by the CPU detector, and the whole extraction on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecmf.config import EncoderConfig, FaceEncoderConfig

CREMA = Path(__file__).parents[1] / "data" / "crema-d"
CLIPS = sorted(CREMA.glob("1001_DFA_*.flv"))
EMOTIONS = {"ANG": "angry", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}  # FEA, DIS: unlabeled


def test_the_six_clips_are_there():
    assert [p.stem.split("_")[2] for p in CLIPS] == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


@pytest.mark.parametrize("path", CLIPS, ids=lambda p: p.stem)
def test_decord_decodes_frames_and_the_flv_audio_track(path):
    import decord

    from ecmf.data.media import is_silent, read_audio, sample_frames

    frames = sample_frames(str(path), 8)
    assert frames.shape == (8, 256, 341, 3) and frames.dtype == np.uint8  # 480x360, short side 256
    assert frames.std() > 20 and not np.array_equal(frames[0], frames[-1])
    audio = read_audio("", str(path), 16000)  # no wav: the flv's own mp3 track
    vr = decord.VideoReader(str(path))
    video_s = len(vr) / vr.get_avg_fps()
    assert audio.dtype == np.float32 and 1.5 < len(audio) / 16000 < 3.0
    assert abs(len(audio) / 16000 - video_s) < 0.3
    assert not is_silent(audio) and np.abs(audio).max() <= 1.0


@pytest.mark.parametrize("path", CLIPS, ids=lambda p: p.stem)
def test_the_cpu_default_detector_finds_the_face_in_every_frame(path):
    from ecmf.data.media import sample_frames
    from ecmf.features.faces import build_detector

    cfg = FaceEncoderConfig("faces")  # the defaults: haar, margin 0.2, min_face 40
    frames = sample_frames(str(path), 8)
    boxes = [build_detector(cfg).detect(f) for f in frames]
    assert all(len(b) >= 1 for b in boxes), [len(b) for b in boxes]
    for found in boxes:
        x0, y0, x1, y1 = max(found, key=lambda f: f[0][2] - f[0][0])[0]
        # The actor sits in the middle of the frame, its face a third of the frame high.
        assert 100 < (x0 + x1) / 2 < 240 and 60 < (y0 + y1) / 2 < 150 and 70 < y1 - y0 < 120
    assert len(build_detector(cfg).faces(frames)) == 8


def test_egemaps_functionals_on_real_speech():
    pytest.importorskip("opensmile", reason="openSMILE is the optional `egemaps` extra "
                                            "(pip install 'ecmf[egemaps]')")
    from ecmf.data.media import read_audio
    from ecmf.features.encoders import ENCODERS

    enc = ENCODERS.get("egemaps")("egemaps", EncoderConfig("egemaps"))
    audio = np.empty(3, dtype=object)
    audio[:] = [read_audio("", str(CLIPS[0])), np.zeros(16000, np.float32),
                read_audio("", str(CLIPS[3]))]
    out = enc({"sample_id": np.array(["ang", "silent", "hap"], dtype=object),
               "error": np.array([""] * 3, dtype=object), "audio": audio})
    x = out["feat_egemaps"]
    assert enc.dim == 88 and x.shape == (3, 88) and np.isfinite(x).all()
    assert out["mask_egemaps"].tolist() == [True, False, True]
    names = enc.model.feature_names
    f0 = x[:, names.index("F0semitoneFrom27.5Hz_sma3nz_amean")]
    assert 10 < f0[0] < 50 and 10 < f0[2] < 50  # an adult voice: 50-450 Hz
    assert not np.allclose(x[0], x[2])
    with pytest.raises(ValueError, match="sequence_steps"):
        ENCODERS.get("egemaps")("egemaps", EncoderConfig("egemaps", sequence_steps=4))


def _corpus(root: Path) -> str:
    """The clips in MER2025's layout; one more clip, truncated, sits in the middle."""
    (root / "video").mkdir(parents=True)
    for p in CLIPS:
        shutil.copy(p, root / "video" / p.name)
    broken = "1001_DFA_GAP_XX"  # sorts between FEA and HAP
    (root / "video" / f"{broken}.flv").write_bytes(CLIPS[0].read_bytes()[:2000])
    names = [p.stem for p in CLIPS] + [broken]
    pd.DataFrame({"name": names, "english": "Don't forget a jacket",
                  "chinese": ""}).to_csv(root / "subtitle_chieng.csv", index=False)
    labeled = [(n, EMOTIONS[n.split("_")[2]]) for n in names if n.split("_")[2] in EMOTIONS]
    pd.DataFrame(labeled, columns=["name", "discrete"]).to_csv(
        root / "track1_train_disdim.csv", index=False)
    pd.DataFrame({"name": [n for n in names if n.split("_")[2] not in EMOTIONS]}).to_csv(
        root / "track_all_candidates.csv", index=False)
    return broken


@pytest.mark.ray
def test_extraction_of_real_clips_stores_finite_features_and_sequences(tmp_path, ray_local):
    import pyarrow.parquet as pq
    from stored_sequences import read_sequences

    from ecmf.features.extract import extract_features
    from ecmf.features.store import read_features, store_dims
    from ecmf.models.tiny import build_tiny_models
    from ecmf.stages.common import load_config

    tiny = build_tiny_models(tmp_path / "models")
    broken = _corpus(tmp_path / "corpus")
    enc = {"num_gpus": 0.0, "num_cpus": 0.5, "pool_size": 1, "batch_size": 4}
    cfg = load_config(None, base={
        "workdir": str(tmp_path / "run"),
        "corpus": {"root": str(tmp_path / "corpus")},
        "extract": {"num_frames": 8, "decode_batch_size": 4, "encoders": {
            "frames": {**enc, "name": "clip", "model": tiny["clip"]},
            "faces": {**enc, "name": "faces", "model": tiny["clip"], "detector": "haar",
                      "detector_weights": "", "sequence_steps": 4},
            "audio": {**enc, "name": "hubert", "model": tiny["hubert"], "sequence_steps": 3},
            "text": None,
        }},
    })
    summary = extract_features(cfg)
    assert summary["done"] == 6 and summary["failed"] == 1

    store = tmp_path / "run" / "features" / "store"
    assert store_dims(store) == {"frames": 128, "faces": 128, "audio": 64}
    ft = read_features(store)
    assert sorted(ft.ids) == [p.stem for p in CLIPS]
    for name, x in ft.feats.items():
        assert np.isfinite(x).all() and ft.masks[name].all(), name
        assert (np.abs(x).sum(axis=1) > 0).all(), name
    assert not np.allclose(ft.feats["faces"], ft.feats["frames"])

    for name, shape in (("faces", (4, 128)), ("audio", (3, 64))):
        ids, seq = read_sequences(store, name, ids=ft.ids)
        assert seq.shape == (6, *shape) and np.isfinite(seq).all(), name
        assert ids.tolist() == ft.ids.tolist()
        # 8 face crops in 4 equal steps: the steps' mean is the utterance feature.
        if name == "faces":
            assert np.allclose(seq.mean(axis=1), ft.feats["faces"], atol=1e-4)
    meta = pq.read_schema(next(store.glob("*.parquet"))).field("seq_audio").metadata
    assert meta == {b"steps": b"3", b"dim": b"64"}

    errors = pd.read_parquet(tmp_path / "run" / "features" / "errors.parquet")
    # No modality of the truncated clip decodes: a row per feature, and the clip fails.
    assert set(errors["sample_id"]) == {broken} and (errors["stage"] == "decode").all()
    assert sorted(errors["feature"]) == ["audio", "faces", "frames"]
    assert errors["reason"].str.contains(broken).all()
    saved = json.loads((tmp_path / "run" / "features" / "summary.json").read_text())
    assert saved["done"] == 6

"""Face branch: detectors by name, the provided-crops reader, crops, and the face encoder's masks,
errors and sequence column (tiny CLIP, real CREMA-D frames for the Haar detector)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ecmf.config import ConfigError, EncoderConfig, FaceEncoderConfig
from ecmf.features.faces import (
    FACE_DETECTORS,
    Detector,
    FaceError,
    RetinaFaceDetector,
    build_detector,
    crop_face,
    read_crops,
)

CREMA = Path(__file__).parents[1] / "data" / "crema-d"


class RecordingDetector(Detector):
    """Finds one face, the middle half of each frame, and records the frame shapes of each
    `detect_many` call."""

    def __init__(self, cfg, device="cpu"):
        super().__init__(cfg, device)
        self.calls = []

    def detect_many(self, frames):
        self.calls.append([f.shape for f in frames])
        return super().detect_many(frames)

    def detect(self, frame):
        h, w = frame.shape[:2]
        return [(np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4], np.float32), None)]


if "test-recording" not in FACE_DETECTORS:
    FACE_DETECTORS.register("test-recording")(RecordingDetector)


def _recorded(obj, name):
    """Wrap method `name` of `obj` so that its positional arguments are recorded."""
    calls, method = [], getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return method(*args, **kwargs)

    setattr(obj, name, wrapper)
    return calls


@pytest.fixture(scope="module")
def crema_frames():
    from ecmf.data.media import sample_frames

    return sample_frames(str(CREMA / "1001_DFA_NEU_XX.flv"), 4)


def _batch(n, **cols):
    return {"sample_id": np.array([f"s{i}" for i in range(n)], dtype=object),
            "error": np.array([""] * n, dtype=object), **cols}


def _ragged(items):
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def test_detectors_are_registered_and_unknown_names_list_them():
    assert {"haar", "retinaface", "provided"} <= set(FACE_DETECTORS.names())
    cfg = FaceEncoderConfig("faces", detector="mtcnn")  # built past the config's validation
    with pytest.raises(KeyError, match=r"available: \[.*'haar'.*'provided'.*'retinaface'"):
        build_detector(cfg)
    from ecmf.stages.common import load_config

    with pytest.raises(ConfigError, match=r"extract\.encoders\.faces\.detector"):
        load_config(None, ["extract.encoders.faces.detector=mtcnn"])
    with pytest.raises(ConfigError, match="min_face"):
        FaceEncoderConfig("faces", min_face=2)
    with pytest.raises(ConfigError, match="sequence_steps"):
        FaceEncoderConfig("faces", sequence_steps=-1)


def test_retinaface_without_the_gpu_extra_names_it(tmp_path):
    pytest.importorskip("cv2")
    try:
        import retinaface.predict_single  # noqa: F401
        pytest.skip("retinaface-pytorch is installed here: the missing-extra error cannot show")
    except ImportError:
        pass
    weights = tmp_path / "r.pth"
    weights.write_bytes(b"")
    with pytest.raises(ImportError, match=r"ecmf\[gpu\]"):
        build_detector(FaceEncoderConfig("faces", detector="retinaface",
                                     detector_weights=str(weights)))


def test_haar_finds_the_real_face_and_no_face_in_noise(crema_frames):
    det = build_detector(FaceEncoderConfig("faces"))
    crops = det.faces(crema_frames)
    assert len(crops) == len(crema_frames)  # one face in every frame of a talking head
    side = crops[0].shape[0]
    assert crops[0].shape == (side, side, 3) and 90 <= side <= 160
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, size=(3, 256, 341, 3), dtype=np.uint8)
    flat = np.full((2, 256, 341, 3), 128, np.uint8)
    assert det.faces(noise) == [] and det.faces(flat) == []
    # A bigger minimum than the face: nothing qualifies.
    assert build_detector(FaceEncoderConfig("faces", min_face=200)).faces(crema_frames) == []


def test_crop_face_squares_widens_and_pads_at_the_border():
    frame = np.arange(100 * 120, dtype=np.uint32).reshape(100, 120, 1).repeat(3, -1)
    frame = (frame % 251).astype(np.uint8)
    crop = crop_face(frame, [40, 30, 60, 60], margin=0.5)  # 20x30 box -> side 30 * 2
    assert crop.shape == (60, 60, 3)
    assert np.array_equal(crop[0, 0], frame[15, 20])  # top-left of the square around (50, 45)
    edge = crop_face(frame, [0, 0, 20, 20], margin=0.5)  # leaves the frame: edge-padded
    assert edge.shape == (40, 40, 3) and np.array_equal(edge[0, 0], frame[0, 0])


def test_crop_face_levels_the_eyes_from_landmarks():
    frame = np.zeros((200, 200, 3), np.uint8)
    cx, cy, r, tilt = 100.0, 100.0, 30.0, math.radians(25)
    eyes = [(cx - r * math.cos(tilt), cy - r * math.sin(tilt)),
            (cx + r * math.cos(tilt), cy + r * math.sin(tilt))]
    for x, y in eyes:
        frame[int(y) - 3:int(y) + 4, int(x) - 3:int(x) + 4] = 255
    crop = crop_face(frame, [60, 60, 140, 140], margin=0.1, landmarks=np.array(eyes))
    assert crop.shape[:2] == (96, 96)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    left, right = ys[xs < 48].mean(), ys[xs >= 48].mean()
    assert abs(left - right) < 2.0  # level after alignment; 25 px apart before
    unaligned = crop_face(frame, [60, 60, 140, 140], margin=0.1)
    ys, xs = np.nonzero(unaligned[..., 0] > 128)
    assert abs(ys[xs < 48].mean() - ys[xs >= 48].mean()) > 20


def test_read_crops_accepts_sensible_layouts(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, size=(5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    assert np.array_equal(read_crops(tmp_path / "rgb.npy"), rgb)
    gray = rng.uniform(0, 1, size=(4, 24, 24)).astype(np.float32)
    np.save(tmp_path / "gray.npy", gray)
    got = read_crops(tmp_path / "gray.npy")
    assert got.shape == (4, 24, 24, 3) and got.dtype == np.uint8
    assert np.array_equal(got[..., 0], got[..., 2])
    assert np.array_equal(got[..., 1], np.round(gray * 255).astype(np.uint8))
    np.save(tmp_path / "one.npy", rgb[0].astype(np.float64))  # one crop, float in [0, 255]
    assert np.array_equal(read_crops(tmp_path / "one.npy"), rgb[:1])


@pytest.mark.parametrize("content, match", [
    (np.zeros((5, 3, 32, 32), np.uint8),
     r"shape \(5, 3, 32, 32\).*expected face crops \[T, H, W, 3\]"),
    (np.zeros((5, 4), np.uint8), r"shape \(5, 4\)"),
    (np.array(["a", "b"]), "dtype"),
    (b"not a numpy file", "cannot read as .npy"),
])
def test_read_crops_errors_name_the_file_and_the_layout(tmp_path, content, match):
    path = tmp_path / "bad.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(FaceError, match=match) as info:
        read_crops(path)
    assert str(path) in str(info.value)


def test_face_encoder_masks_no_face_and_decode_errors(tiny, crema_frames):
    from ecmf.features.encoders import ENCODERS

    enc = ENCODERS.get("faces")("faces", FaceEncoderConfig("faces", tiny["clip"], batch_size=2))
    noise = np.random.default_rng(1).integers(0, 255, size=crema_frames.shape, dtype=np.uint8)
    frames = np.stack([crema_frames, noise, crema_frames])
    batch = _batch(3, frames=frames)
    batch["error"][2] = "decode: broken"
    out = enc(batch)
    assert out["mask_faces"].tolist() == [True, False, False]
    x = out["feat_faces"]
    assert x.shape == (3, 128) and np.isfinite(x).all() and np.abs(x[0]).sum() > 0
    assert np.abs(x[1:]).sum() == 0
    assert out["error"].tolist() == ["", "", "decode: broken"]  # no face is not a failure
    # Faces differ from whole frames: the same tower on the crops, not the frames.
    whole = ENCODERS.get("clip")("frames", EncoderConfig("clip", tiny["clip"]))
    assert not np.allclose(x[0], whole.encode([crema_frames])[0], atol=1e-3)


def _provided_corpus(root: Path, rng) -> dict[str, np.ndarray]:
    """A MER2025-like corpus folder: video/ plus openface_face/<name>/<name>.npy."""
    (root / "video").mkdir(parents=True)
    crops = {"good": rng.integers(0, 255, size=(12, 40, 40, 3), dtype=np.uint8),
             "gray": rng.uniform(0, 1, size=(6, 40, 40)).astype(np.float32)}
    for name, x in crops.items():
        (root / "openface_face" / name).mkdir(parents=True)
        np.save(root / "openface_face" / name / f"{name}.npy", x)
    (root / "openface_face" / "corrupt").mkdir()
    (root / "openface_face" / "corrupt" / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    return crops


def test_provided_crops_corrupt_file_is_its_own_error_and_the_batch_is_stored(tiny, tmp_path):
    from stored_sequences import read_sequences

    from ecmf.features.encoders import ENCODERS
    from ecmf.features.extract import to_store_rows
    from ecmf.features.store import read_features

    crops = _provided_corpus(tmp_path / "corpus", np.random.default_rng(2))
    names = ["good", "corrupt", "noface", "gray"]  # the corrupt file sits mid-batch
    cfg = FaceEncoderConfig("faces", tiny["clip"], detector="provided", sequence_steps=4)
    enc = ENCODERS.get("faces")("faces", cfg)
    batch = {"sample_id": np.array(names, dtype=object),
             "video_path": np.array([str(tmp_path / "corpus" / "video" / f"{n}.mp4")
                                     for n in names], dtype=object),
             "error": np.array([""] * 4, dtype=object),
             "frames": np.zeros((4, 8, 16, 16, 3), np.uint8)}  # 8 sampled frames: 8 crops
    out = enc(batch)
    assert out["mask_faces"].tolist() == [True, False, False, True]
    status = out["status_faces"].tolist()
    assert status[0] == status[2] == status[3] == ""  # no face is absent, not failed
    assert status[1].startswith("encode: sample corrupt:") and "corrupt.npy" in status[1]
    seq = out["seq_faces"]
    assert seq.shape == (4, 4, 128) and np.abs(seq[1:3]).sum() == 0
    # 8 of the 12 crops, 2 per step: the steps' mean is the clip's mean feature.
    assert np.allclose(seq[0].mean(axis=0), out["feat_faces"][0], atol=1e-5)
    # OpenFace's crops are BGR: the tower gets them as RGB.
    idx = ((np.arange(8) + 0.5) * 12 / 8).astype(int)
    expect = enc.encode([list(crops["good"][idx][..., ::-1])])
    assert np.allclose(out["feat_faces"][0], expect[0], atol=1e-5)

    store = tmp_path / "store"
    store.mkdir()
    pq.write_table(to_store_rows(out, ["faces"]), store / "part.parquet")
    field = pq.read_schema(store / "part.parquet").field("seq_faces")
    assert field.metadata == {b"steps": b"4", b"dim": b"128"}
    # Faces are this batch's only feature: a clip without them has nothing read, and fails.
    rows = pq.read_table(store / "part.parquet", columns=["sample_id", "error"]).to_pylist()
    assert [r["sample_id"] for r in rows if r["error"]] == ["corrupt"]
    ft = read_features(store)
    assert ft.ids.tolist() == ["good", "noface", "gray"]
    ids, got = read_sequences(store, "faces", ids=["gray", "good"])
    assert got.shape == (2, 4, 128) and np.array_equal(got[1], seq[0])


def test_provided_without_an_openface_folder_is_an_error_naming_it(tiny, tmp_path):
    from ecmf.features.encoders import ENCODERS

    (tmp_path / "video").mkdir()
    enc = ENCODERS.get("faces")("faces", FaceEncoderConfig("faces", tiny["clip"],
                                                       detector="provided"))
    out = enc({"sample_id": np.array(["a"], dtype=object),
               "video_path": np.array([str(tmp_path / "video" / "a.mp4")], dtype=object),
               "error": np.array([""], dtype=object),
               "frames": _ragged([np.zeros((2, 8, 8, 3), np.uint8)])})
    assert not out["mask_faces"][0]
    assert str(tmp_path / "openface_face") in out["status_faces"][0]
    with pytest.raises(FileNotFoundError, match="encoder.faces_dir"):
        ENCODERS.get("faces")("faces", FaceEncoderConfig("faces", tiny["clip"], detector="provided",
                                                     faces_dir=str(tmp_path / "nowhere")))


def test_retinaface_weights_load_from_the_release_zip_or_the_pth(tmp_path):
    import zipfile

    import torch

    from ecmf.features.faces import _load_state_dict

    state = {"body.conv1.weight": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "r.pth")
    with zipfile.ZipFile(tmp_path / "release.zip", "w") as z:  # torch.hub's cached release
        z.write(tmp_path / "r.pth", "retinaface_resnet50.pth")
    for path in ("r.pth", "release.zip"):
        got = _load_state_dict(str(tmp_path / path), torch)
        assert torch.equal(got["body.conv1.weight"], state["body.conv1.weight"]), path
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("README", "no weights here")
    with pytest.raises(ValueError, match=r"detector_weights: .*empty.zip holds no weight"):
        _load_state_dict(str(tmp_path / "empty.zip"), torch)


def test_provided_crops_reach_the_tower_as_rgb(tiny, tmp_path):
    from ecmf.features.encoders import ENCODERS

    (tmp_path / "video").mkdir()
    blue = np.zeros((4, 32, 32, 3), np.uint8)
    blue[..., 0] = 255  # pure blue as OpenFace stores it: B, G, R
    (tmp_path / "openface_face" / "b").mkdir(parents=True)
    np.save(tmp_path / "openface_face" / "b" / "b.npy", blue)
    enc = ENCODERS.get("faces")("faces", FaceEncoderConfig("faces", tiny["clip"],
                                                       detector="provided"))
    seen = _recorded(enc, "encode")
    out = enc({"sample_id": np.array(["b"], dtype=object),
               "video_path": np.array([str(tmp_path / "video" / "b.mp4")], dtype=object),
               "error": np.array([""], dtype=object),
               "frames": np.zeros((1, 4, 16, 16, 3), np.uint8)})
    assert out["mask_faces"].tolist() == [True]
    (crops,) = seen[0][0]
    assert len(crops) == 4
    for crop in crops:  # blue in RGB: the third channel
        assert crop.shape == (32, 32, 3) and crop.flags["C_CONTIGUOUS"]
        assert (crop[..., 2] == 255).all() and (crop[..., :2] == 0).all()


def _crema_batch(names, num_frames=4):
    from ecmf.data.media import sample_frames

    paths = [str(CREMA / f"1001_DFA_{n}_XX.flv") for n in names]
    return {"sample_id": np.array(names, dtype=object),
            "video_path": np.array(paths, dtype=object),
            "error": np.array([""] * len(names), dtype=object),
            # as extraction decodes them: a 256 px short side (480x360 -> 341x256)
            "frames": np.stack([sample_frames(p, num_frames) for p in paths])}


def test_detectors_see_the_frames_reread_at_detect_short_side_all_clips_in_one_call(tiny):
    from ecmf.data.media import sample_frames
    from ecmf.features.encoders import ENCODERS

    batch = _crema_batch(["NEU", "HAP", "SAD"])
    assert batch["frames"].shape[2:4] == (256, 341)
    sides = {}
    for short_side, shape in ((320, (320, 427, 3)), (0, (256, 341, 3)),
                              (640, (360, 480, 3))):  # 640: the video's own, never upscaled
        cfg = FaceEncoderConfig("faces", tiny["clip"], detector="test-recording", face_margin=0.0,
                            detect_short_side=short_side)
        enc = ENCODERS.get("faces")("faces", cfg)
        seen = _recorded(enc, "encode")
        out = enc(dict(batch))
        assert out["mask_faces"].all()
        # One detection call for the whole batch: 3 clips x 4 frames, at the configured size.
        assert enc.detector.calls == [[shape] * 12], short_side
        crops = seen[0][0]
        assert [len(c) for c in crops] == [4, 4, 4]
        sides[short_side] = crops[0][0].shape[0]
        # Cut from the re-read frame: the box's square (its longer side, half the width).
        frame = sample_frames(batch["video_path"][0], 4, short_side=short_side or 256)[0]
        h, w = frame.shape[:2]
        expect = crop_face(frame, [w / 4, h / 4, 3 * w / 4, 3 * h / 4], 0.0)
        assert np.array_equal(crops[0][0], expect), short_side
    assert abs(sides[320] / sides[0] - 320 / 256) < 0.02  # the crops scale with the frames
    assert abs(sides[640] / sides[0] - 360 / 256) < 0.02


def test_haar_crops_from_the_reread_frames_are_larger(tiny):
    from ecmf.features.encoders import ENCODERS

    batch = _crema_batch(["NEU", "ANG"])
    sides = {}
    for short_side in (0, 640):
        enc = ENCODERS.get("faces")("faces", FaceEncoderConfig("faces", tiny["clip"],
                                                           detect_short_side=short_side))
        seen = _recorded(enc, "encode")
        assert enc(dict(batch))["mask_faces"].all()
        sides[short_side] = np.mean([c.shape[0] for clip in seen[0][0] for c in clip])
    assert 1.25 < sides[640] / sides[0] < 1.6  # native 360 px against the decoded 256 px


class _FakeRetinaNet:
    """RetinaFace's outputs for three priors: the first two overlap and score as faces (the
    second lower), the third is background; it records the images of each forward pass."""

    def __init__(self):
        self.images = []

    def __call__(self, images):
        import torch

        self.images.append(images.clone())
        n = images.shape[0]
        conf = torch.zeros(n, 3, 2)
        conf[:, :, 0] = 5.0
        conf[:, 0, 1], conf[:, 1, 1] = 12.0, 10.0
        land = torch.zeros(n, 3, 10)
        land[:, 0, 2:4] = 1.0  # the second landmark sits 0.1 prior widths right and down
        return torch.zeros(n, 3, 4), conf, land


class _FakeRetinaFace(RetinaFaceDetector):
    size = 64
    frames_per_forward = 4

    def _load(self):
        import torch

        priors = torch.tensor([[0.5, 0.25, 0.25, 0.25], [0.52, 0.26, 0.25, 0.25],
                               [0.2, 0.8, 0.1, 0.1]])
        return _FakeRetinaNet(), priors


def test_retinaface_batches_frames_and_maps_boxes_back_to_each_frame():
    det = _FakeRetinaFace(FaceEncoderConfig("faces", min_face=8))
    rng = np.random.default_rng(0)
    shapes = [(96, 128), (128, 96), (64, 64), (300, 400), (32, 48)]
    frames = [rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]
    found = det.detect_many(frames)
    # Two forward passes of at most frames_per_forward frames on the size x size canvas.
    assert [tuple(x.shape) for x in det.net.images] == [(4, 3, 64, 64), (1, 3, 64, 64)]
    first = det.net.images[0][0]  # 96x128 scaled by 1/2 to 48x64, padded below
    assert (first[:, 48:] == 0).all() and first[:, :48].abs().sum() > 0
    for (h, w), faces in zip(shapes, found):
        assert len(faces) == 1  # the overlapping, lower-scored prior is suppressed
        box, marks = faces[0]
        s = 64 / max(h, w)
        sx, sy = min(64, round(w * s)) / w, min(64, round(h * s)) / h
        # Prior 0 on the canvas: centre (32, 16), side 16 -> [24, 8, 40, 24].
        np.testing.assert_allclose(box, [24 / sx, 8 / sy, 40 / sx, 24 / sy], rtol=1e-5)
        assert marks.shape == (5, 2)
        np.testing.assert_allclose(marks[0], [32 / sx, 16 / sy], rtol=1e-5)
        np.testing.assert_allclose(marks[1], [(32 + 1.6) / sx, (16 + 1.6) / sy], rtol=1e-5)
    crops = det.faces_many([np.stack(frames[:1] * 2), np.stack(frames[3:4])])
    assert [len(c) for c in crops] == [2, 1]
    assert crops[1][0].shape[0] > 2 * crops[0][0].shape[0]  # 400 px wide against 128


def test_detection_frames_rereads_only_where_it_gains_pixels(crema_frames, tmp_path, caplog):
    from ecmf.features.faces import detection_frames

    video = str(CREMA / "1001_DFA_NEU_XX.flv")
    assert detection_frames(crema_frames, video, 320).shape == (4, 320, 427, 3)
    small = np.ascontiguousarray(crema_frames[:, :200, :200])  # a small video's own frames
    for frames, side in ((crema_frames, 0), (crema_frames, 256), (small, 640)):
        assert detection_frames(frames, video, side) is frames
    assert detection_frames(crema_frames, "", 640) is crema_frames  # no video column
    gone = str(tmp_path / "gone.mp4")
    assert detection_frames(crema_frames, gone, 640) is crema_frames
    assert "gone.mp4: cannot re-read" in caplog.text


def test_the_decode_task_gives_the_detector_its_frames_from_the_same_decode():
    """Decode once: the towers' 256 px frames and the detector's frames at detect_short_side
    come from one pass over the video; the face encoder then reads them, no video again."""
    from ecmf.config import EncoderConfig
    from ecmf.data.media import sample_frames
    from ecmf.features.extract import decode_batch, face_short_side, input_column

    faces = FaceEncoderConfig("faces", detector="haar", detect_short_side=320)
    assert input_column(faces) == "face_frames" and face_short_side({"faces": faces}) == 320
    for other in (FaceEncoderConfig("faces", detector="haar", detect_short_side=0),
                  FaceEncoderConfig("faces", detector="provided"),
                  FaceEncoderConfig("faces", detector="haar", input="frames")):
        assert input_column(other) == "frames" and face_short_side({"faces": other}) == 0
    assert face_short_side({"frames": EncoderConfig("clip")}) == 0
    paths = [str(CREMA / "1001_DFA_NEU_XX.flv"), str(CREMA / "missing.flv")]
    batch = {"sample_id": np.array(["a", "b"], dtype=object),
             "video_path": np.array(paths, dtype=object),
             "audio_path": np.array(["", ""], dtype=object)}
    out = decode_batch(batch, 4, 16000, 30.0, frames=True, audio=False, face_short_side=320)
    assert out["frames"][0].shape == (4, 256, 341, 3)
    assert out["face_frames"][0].shape == (4, 320, 427, 3)
    assert np.array_equal(out["face_frames"][0], sample_frames(paths[0], 4, short_side=320))
    assert out["_error_face_frames"][1] == out["_error_frames"][1] != ""  # the same failure
    assert "face_frames" not in decode_batch(batch, 4, 16000, 30.0, frames=True, audio=False)


def test_the_fast_clip_processor_matches_transformers_own(tiny, crema_frames):
    from transformers import AutoImageProcessor

    from ecmf.features.encoders import clip_pixels

    processor = AutoImageProcessor.from_pretrained(tiny["clip"], use_fast=False)
    images = [crema_frames[0], crema_frames[1][:120, :90], crop_face(crema_frames[2],
                                                                      [100, 50, 220, 200], 0.2)]
    slow = processor(images=images, return_tensors="np")["pixel_values"]
    fast = clip_pixels(images, processor)
    assert fast.shape == slow.shape and fast.dtype == np.float32
    # OpenCV's bicubic against PIL's: the same picture, a few grey levels apart at edges.
    assert np.abs(fast - slow).mean() < 0.02 and np.abs(fast - slow).max() < 0.5


def test_haar_on_shrunk_frames_finds_the_faces_the_full_frames_give(crema_frames):
    """Shrunk so that a min_face face fills the 24 px window: the same faces (boxes within a
    few pixels), in threads over the actor's CPUs or not."""
    full = build_detector(FaceEncoderConfig("faces", detector="haar", haar_shrink=False))
    shrunk = build_detector(FaceEncoderConfig("faces", detector="haar"))
    threaded = build_detector(FaceEncoderConfig("faces", detector="haar", num_cpus=2))
    frames = list(crema_frames)
    a, b, c = (d.detect_many(frames) for d in (full, shrunk, threaded))
    assert [len(x) for x in a] == [len(x) for x in b] == [1] * len(frames)
    for (box_a, _), (box_b, _) in zip((x[0] for x in a), (x[0] for x in b)):
        iou_w = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
        iou_h = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
        inter = max(0, iou_w) * max(0, iou_h)
        area = lambda q: (q[2] - q[0]) * (q[3] - q[1])  # noqa: E731
        assert inter / (area(box_a) + area(box_b) - inter) > 0.7
    assert [[box.tolist() for box, _ in x] for x in b] == [[box.tolist() for box, _ in x]
                                                          for x in c]

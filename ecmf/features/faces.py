"""Face detectors by name and the crops they give the face encoder.

`haar` (OpenCV's packaged cascade, CPU, the default), `retinaface` (GPU images, weights from a
configured path) and `provided` (MER2025's OpenFace crops, `openface_face/<name>/<name>.npy`).
A detector turns one clip into a list of face crops, uint8 [h, w, 3]; none means no face.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecmf.registry import Registry

if TYPE_CHECKING:
    from ecmf.config import EncoderConfig

FACE_DETECTORS: Registry[type] = Registry("face detector")


class FaceError(RuntimeError):
    """One clip's faces cannot be read; the message names the file and what was expected."""


class Detector:
    """Per-frame detection, then one crop per frame: the largest face, squared and widened by
    `face_margin` on each side, rotated upright first where the detector gives eye landmarks."""

    def __init__(self, cfg: "EncoderConfig", device: str = "cpu"):
        self.cfg = cfg
        self.device = device

    def detect(self, frame: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(box [x0, y0, x1, y1], landmarks [5, 2] or None) per face in an RGB uint8 frame."""
        raise NotImplementedError

    def faces(self, frames: np.ndarray, sample_id: str = "", video_path: str = "") -> list:
        out = []
        for frame in frames:
            found = [(b, lm) for b, lm in self.detect(frame)
                     if min(b[2] - b[0], b[3] - b[1]) >= self.cfg.min_face]
            if found:
                box, landmarks = max(found, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
                out.append(crop_face(frame, box, self.cfg.face_margin, landmarks))
        return out


def crop_face(frame: np.ndarray, box, margin: float, landmarks=None) -> np.ndarray:
    """A square crop around `box` widened by `margin` of its side on each side, edge-padded
    where it leaves the frame; with landmarks (left eye, right eye, ...) the eyes are levelled."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    angle = 0.0
    if landmarks is not None and len(landmarks) >= 2:
        (lx, ly), (rx, ry) = landmarks[0][:2], landmarks[1][:2]
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
    # Cut a region large enough to rotate without empty corners, then the square itself.
    half = side / 2 * (math.sqrt(2) if angle else 1.0)
    region = _padded_region(frame, int(round(cx - half)), int(round(cy - half)),
                            max(1, int(round(2 * half))))
    if angle:
        from PIL import Image

        img = Image.fromarray(region).rotate(angle, resample=Image.BILINEAR)
        c, h = region.shape[0] / 2, side / 2
        region = np.asarray(img.crop((int(c - h), int(c - h), int(c + h), int(c + h))))
    return np.ascontiguousarray(region, dtype=np.uint8)


def _padded_region(frame: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    pad = max(0, -x, -y, x + size - w, y + size - h)
    if pad:
        frame = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x, y = x + pad, y + pad
    return frame[y:y + size, x:x + size]


@FACE_DETECTORS.register("haar")
class HaarDetector(Detector):
    """OpenCV's frontal-face Haar cascade (`opencv-python-headless<5` ships it): CPU, no landmarks.

    `detector_weights` may name another cascade XML; empty: the packaged frontal-face one.
    """

    def __init__(self, cfg: "EncoderConfig", device: str = "cpu"):
        super().__init__(cfg, device)
        import cv2

        path = cfg.detector_weights or str(
            Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")
        if not Path(path).is_file():
            raise FileNotFoundError(f"encoder.detector_weights: Haar cascade {path} not found; "
                                    "set it to '' for OpenCV's packaged frontal-face cascade")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise ValueError(f"encoder.detector_weights: {path} is not an OpenCV cascade XML")
        self._cv2 = cv2

    def detect(self, frame):
        gray = self._cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8),
                                  self._cv2.COLOR_RGB2GRAY)
        gray = self._cv2.equalizeHist(gray)
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(self.cfg.min_face, self.cfg.min_face))
        return [(np.array([x, y, x + w, y + h], np.float32), None) for x, y, w, h in found]


@FACE_DETECTORS.register("retinaface")
class RetinaFaceDetector(Detector):
    """RetinaFace (ResNet-50, retinaface-pytorch) on the actor's device, weights from
    `detector_weights` (its release's `.zip` or the `.pth` inside): nothing downloads at run
    time."""

    max_size = 960
    threshold = 0.7

    def __init__(self, cfg: "EncoderConfig", device: str = "cpu"):
        super().__init__(cfg, device)
        try:
            import torch
            from retinaface.predict_single import Model
        except ImportError as e:
            raise ImportError(f"face detector 'retinaface' needs retinaface-pytorch and "
                              f"torchvision: install the GPU extra (pip install 'ecmf[gpu]'); "
                              f"CPU runs use detector: haar ({e})") from None
        from ecmf.config import RETINAFACE_WEIGHTS

        path = cfg.detector_weights or RETINAFACE_WEIGHTS
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"encoder.detector_weights: RetinaFace weights {path or '<empty>'} not found; "
                "stage the release's .pth on the node and point detector_weights at it")
        self.model = Model(max_size=self.max_size, device=device)
        self.model.load_state_dict(_load_state_dict(path, torch))
        self.model.eval()

    def detect(self, frame):
        out = []
        for face in self.model.predict_jsons(frame, confidence_threshold=self.threshold):
            if len(face["bbox"]) == 4:  # it returns one empty entry when nothing is found
                out.append((np.asarray(face["bbox"], np.float32),
                            np.asarray(face["landmarks"], np.float32)))
        return out


def _load_state_dict(path: str, torch) -> dict:
    """A `.pth`, or the release's `.zip` around one (what torch.hub caches under TORCH_HOME)."""
    import io
    import zipfile

    # torch's own checkpoints are zips too (with a data.pkl): only unwrap a zip around a .pth.
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if not any(n.endswith("data.pkl") for n in names):
                members = [n for n in names if n.endswith((".pth", ".pt"))]
                if len(members) != 1:
                    raise ValueError(f"encoder.detector_weights: {path} holds "
                                     f"{members or 'no'} weight files; expected one .pth")
                data = z.read(members[0])
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


@FACE_DETECTORS.register("provided")
class ProvidedCrops(Detector):
    """Reads MER2025's OpenFace crops instead of detecting: `<faces_dir>/<name>/<name>.npy`.

    `faces_dir` empty: `openface_face` beside the clip's `video/` folder. No folder for a clip
    means no face; an unreadable or oddly shaped file is an error naming it. As many crops as
    frames were sampled (at least `sequence_steps`) are taken uniformly over the clip.
    """

    def __init__(self, cfg: "EncoderConfig", device: str = "cpu"):
        super().__init__(cfg, device)
        if cfg.faces_dir and not Path(cfg.faces_dir).is_dir():
            raise FileNotFoundError(f"encoder.faces_dir: {cfg.faces_dir} is not a directory")

    def root(self, video_path: str) -> Path:
        if self.cfg.faces_dir:
            return Path(self.cfg.faces_dir)
        if not video_path:
            raise FaceError("no video path to find openface_face/ beside; set "
                            "extract.encoders.<name>.faces_dir")
        root = Path(video_path).parent.parent / "openface_face"
        if not root.is_dir():
            raise FaceError(f"{root}: no OpenFace crops folder beside {Path(video_path).parent}; "
                            "set faces_dir or use another detector")
        return root

    def faces(self, frames, sample_id: str = "", video_path: str = "") -> list:
        path = self.root(video_path) / sample_id / f"{sample_id}.npy"
        if not path.parent.is_dir():
            return []
        if not path.is_file():
            raise FaceError(f"{path}: missing, though its folder exists")
        crops = read_crops(path)
        want = max(len(frames), self.cfg.sequence_steps, 1)
        if len(crops) > want:
            idx = ((np.arange(want) + 0.5) * len(crops) / want).astype(int)
            crops = crops[idx]
        return list(crops)


def read_crops(path: str | Path) -> np.ndarray:
    """Face crops of one clip as uint8 [T, H, W, 3].

    Accepts [T, H, W, 3], [T, H, W, 1], [T, H, W] (grayscale) and one crop [H, W, 3]; floats in
    [0, 1] or [0, 255]. Anything else is a FaceError naming the file and the expected shape.
    """
    expected = "face crops [T, H, W, 3] (or [T, H, W] grayscale), uint8 or float"
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:
        raise FaceError(f"{path}: cannot read as .npy ({type(e).__name__}: {e}); "
                        f"expected {expected}") from None
    if x.ndim == 3 and x.shape[-1] == 3 and x.shape[0] > 4:
        x = x[None]  # a single colour crop [H, W, 3]
    elif x.ndim == 3:
        x = x[..., None]  # grayscale [T, H, W]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[1:3], default=0) < 8:
        raise FaceError(f"{path}: shape {x.shape} dtype {x.dtype}; expected {expected}")
    if x.dtype == np.uint8:
        pass
    elif np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise FaceError(f"{path}: non-finite pixel values; expected {expected}")
        scale = 255.0 if x.size and x.max() <= 1.0 else 1.0
        x = np.clip(x * scale, 0, 255).round().astype(np.uint8)
    else:
        raise FaceError(f"{path}: dtype {x.dtype}; expected {expected}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x)


def build_detector(cfg: "EncoderConfig", device: str = "cpu") -> Detector:
    """The detector `cfg.detector` names ("available: [...]" when unknown)."""
    return FACE_DETECTORS.get(cfg.detector)(cfg, device)

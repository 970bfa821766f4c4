"""Face detectors by name and the crops they give the face encoder.

`haar` (OpenCV's packaged cascade, CPU, the default), `retinaface` (GPU images, weights from a
configured path, batched over frames) and `provided` (MER2025's OpenFace crops,
`openface_face/<name>/<name>.npy`, stored BGR and handed on as RGB). A detector turns clips into
lists of face crops, uint8 RGB [h, w, 3]; an empty list means no face.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecmf.config import RETINAFACE_WEIGHTS
from ecmf.data.media import MediaError, sample_frames
from ecmf.errors import InputError, MissingExtra, MissingInput
from ecmf.features.precision import autocast, autocast_dtype
from ecmf.registry import Registry

if TYPE_CHECKING:
    from ecmf.config import EncoderConfig

log = logging.getLogger(__name__)
FACE_DETECTORS: Registry[type] = Registry("face detector")
HAAR_WINDOW = 24  # the frontal-face cascade's window, in pixels
HAAR_MIN_SIDE = 240  # haar_shrink never shrinks a frame's short side below this


class FaceError(RuntimeError):
    """One clip's faces cannot be read; the message names the file and what was expected."""


class Detector:
    """Detection on frames, then one crop per frame: the largest face, squared and widened by
    `face_margin` on each side, rotated upright first where the detector gives eye landmarks.

    `detect_many` sees every frame of a batch of clips at once: RetinaFace runs them in batched
    forward passes, the default runs `detect` on the frames in `threads` threads, the actor's
    CPUs (`num_cpus`): OpenCV releases the GIL while it scans.
    """

    reads_frames = True  # False: the crops come from elsewhere (provided), not from the frames

    def __init__(self, cfg: EncoderConfig, device: str = "cpu"):
        self.cfg = cfg
        self.device = device
        self.threads = max(1, int(cfg.num_cpus))

    def detect(self, frame: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(box [x0, y0, x1, y1], landmarks [5, 2] or None) per face in an RGB uint8 frame."""
        raise NotImplementedError

    def detect_many(self, frames: list[np.ndarray]) -> list[list]:
        """`detect` of each frame, in order."""
        if self.threads == 1 or len(frames) < 2:
            return [self.detect(frame) for frame in frames]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(self.detect, frames))

    def faces_many(self, clips: list[np.ndarray]) -> list[list[np.ndarray]]:
        """The crops of each clip, one per frame with a face; all the clips' frames go to one
        `detect_many` call, and crops are cut from the frames given."""
        frames = [frame for clip in clips for frame in clip]
        found = iter(self.detect_many(frames) if frames else [])
        return [[c for c in (self._crop(frame, next(found)) for frame in clip) if c is not None]
                for clip in clips]

    def faces(self, frames: np.ndarray, sample_id: str = "", video_path: str = "") -> list:
        """The crops of one clip (see `faces_many`)."""
        return self.faces_many([frames])[0]

    def _crop(self, frame: np.ndarray, found: list) -> np.ndarray | None:
        found = [(b, lm) for b, lm in found if min(b[2] - b[0], b[3] - b[1]) >= self.cfg.min_face]
        if not found:
            return None
        box, landmarks = max(found, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
        return crop_face(frame, box, self.cfg.face_margin, landmarks)


def detection_frames(frames: np.ndarray, video_path: str, short_side: int) -> np.ndarray:
    """A clip's sampled frames as a detector should see them: re-read from `video_path` at the
    same indices with a short side of at most `short_side`, since extraction decodes small
    frames (256 px) for the vision towers and a face in them is a few dozen pixels.

    The decoded `frames` themselves when `short_side` is 0, there is no video, they are already
    that large or were never shrunk (a small video), or the video cannot be read again (logged).
    """
    import inspect

    if not short_side or not video_path or len(frames) == 0:
        return frames
    side = min(frames.shape[1:3])
    # Extraction decodes at sample_frames' default short side: frames below it are the video's own.
    decoded = inspect.signature(sample_frames).parameters["short_side"].default
    if side >= short_side or side < decoded:
        return frames
    try:
        return sample_frames(video_path, len(frames), short_side=short_side)
    except MediaError as e:
        log.warning("%s: cannot re-read its frames for face detection (%s); detecting on the "
                    "decoded ones", video_path, e)
        return frames


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

    def __init__(self, cfg: EncoderConfig, device: str = "cpu"):
        super().__init__(cfg, device)
        import cv2

        path = cfg.detector_weights or str(
            Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")
        if not Path(path).is_file():
            raise MissingInput(f"encoder.detector_weights: Haar cascade {path} not found; "
                               "set it to '' for OpenCV's packaged frontal-face cascade")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise InputError(f"encoder.detector_weights: {path} is not an OpenCV cascade XML")
        self._path = path
        self._local = threading.local()  # a classifier is not safe to share between threads
        self._local.cascade = self.cascade
        self._cv2 = cv2
        # One OpenCV thread per detection thread: the frames are the parallel work, and
        # OpenCV's own pool would take every core of the node, not the actor's share.
        cv2.setNumThreads(1)

    def detect(self, frame):
        cv2 = self._cv2
        gray = cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
        # The cascade scans windows from 24 px up: a min_face face shrunk to 24 px is still
        # found, and the frame holds (24 / min_face)^2 as many pixels to scan. Never below a
        # 240 px short side: on small frames (the demo's 96 px) the cascade needs the context.
        scale = 1.0
        if self.cfg.haar_shrink:
            scale = min(1.0, max(HAAR_WINDOW / self.cfg.min_face,
                                 HAAR_MIN_SIDE / min(gray.shape[:2])))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        side = max(HAAR_WINDOW, round(self.cfg.min_face * scale))
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = self._local.cascade = cv2.CascadeClassifier(self._path)
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                         minSize=(side, side))
        return [(np.array([x, y, x + w, y + h], np.float32) / scale, None)
                for x, y, w, h in found]


@FACE_DETECTORS.register("retinaface")
class RetinaFaceDetector(Detector):
    """RetinaFace (ResNet-50, retinaface-pytorch) on the actor's device, weights from
    `detector_weights` (its release's `.zip` or the `.pth` inside): nothing downloads at run
    time.

    Frames are batched: each is scaled to fit the `size` x `size` canvas the release's priors
    are laid on (its longest side `size`, as the release's own predictor does), normalised,
    padded at the right and bottom, and `frames_per_forward` of them go through one forward
    pass (under autocast on a GPU, `precision`). Boxes and landmarks are mapped back to the
    frames given, so crops are cut at their resolution.
    """

    size = 960
    threshold = 0.7
    nms_iou = 0.4
    variances = (0.1, 0.2)
    frames_per_forward = 32
    mean = (0.485, 0.456, 0.406)  # ImageNet's, as the release normalises its inputs
    std = (0.229, 0.224, 0.225)

    def __init__(self, cfg: EncoderConfig, device: str = "cpu"):
        super().__init__(cfg, device)

        self.net, self.priors = self._load()
        self.amp = autocast_dtype(device, cfg.precision)

    def _load(self):
        """(the network: images [n, 3, size, size] -> (loc, conf, landmarks), priors [P, 4])."""
        try:
            import torch
            from retinaface.predict_single import Model
        except ImportError as e:
            raise MissingExtra(f"face detector 'retinaface' needs retinaface-pytorch and "
                               f"torchvision: install the GPU extra (pip install 'ecmf[gpu]'); "
                               f"CPU runs use detector: haar ({e})") from None

        path = self.cfg.detector_weights or RETINAFACE_WEIGHTS
        if not Path(path).is_file():
            raise MissingInput(
                f"encoder.detector_weights: RetinaFace weights {path or '<empty>'} not found; "
                "stage the release's .pth on the node and point detector_weights at it")
        model = Model(max_size=self.size, device=self.device)
        model.load_state_dict(_load_state_dict(path, torch))
        model.eval()
        return model.model, model.prior_box.to(self.device)

    def detect(self, frame):
        return self.detect_many([frame])[0]

    def detect_many(self, frames):
        import torch

        out = []
        for s in range(0, len(frames), self.frames_per_forward):
            chunk = frames[s:s + self.frames_per_forward]
            images, scales = self._canvas(chunk)
            with torch.inference_mode(), autocast(self.device, self.amp):
                loc, conf, land = self.net(images)
            out.extend(self._decode(loc.float(), conf.float(), land.float(), scales,
                                    [f.shape[:2] for f in chunk]))
        return out

    def _canvas(self, frames: list[np.ndarray]):
        """Normalised frames on one zero canvas [n, 3, size, size], and each frame's (x, y)
        scale from its pixels to the canvas'."""
        import torch
        import torch.nn.functional as F

        mean = torch.tensor(self.mean, device=self.device).view(3, 1, 1) * 255
        std = torch.tensor(self.std, device=self.device).view(3, 1, 1) * 255
        images = torch.zeros(len(frames), 3, self.size, self.size, device=self.device)
        scales = []
        for i, frame in enumerate(frames):
            h, w = frame.shape[:2]
            s = self.size / max(h, w)
            nh, nw = min(self.size, max(1, round(h * s))), min(self.size, max(1, round(w * s)))
            x = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)
            x = x.permute(2, 0, 1)[None].float()
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=s < 1)
            images[i, :, :nh, :nw] = (x[0] - mean) / std
            scales.append((nw / w, nh / h))
        return images, scales

    def _decode(self, loc, conf, land, scales, shapes) -> list[list]:
        """Faces per image from the network's outputs: priors' offsets to boxes and landmarks
        (the release's decoding, over the batch at once), score threshold, NMS, and the
        canvas' pixels back to each frame's."""
        import torch

        p, (v0, v1) = self.priors, self.variances
        centres = p[:, :2] + loc[..., :2] * v0 * p[:, 2:]
        sides = p[:, 2:] * torch.exp(loc[..., 2:] * v1)
        boxes = torch.cat([centres - sides / 2, centres + sides / 2], -1) * self.size
        marks = (p[:, None, :2] + land.view(*land.shape[:2], 5, 2) * v0 * p[:, None, 2:])
        marks = marks * self.size
        scores = torch.softmax(conf, dim=-1)[..., 1]
        out = []
        for i, ((sx, sy), (h, w)) in enumerate(zip(scales, shapes)):
            ok = scores[i] > self.threshold
            b, m = _nms(boxes[i][ok], scores[i][ok], self.nms_iou, marks[i][ok])
            scale = torch.tensor([sx, sy], device=b.device)
            b = (b.view(-1, 2, 2) / scale).view(-1, 4).cpu().numpy()
            m = (m / scale).cpu().numpy()
            b[:, 0::2] = b[:, 0::2].clip(0, w)
            b[:, 1::2] = b[:, 1::2].clip(0, h)
            out.append([(box.astype(np.float32), lm.astype(np.float32)) for box, lm in zip(b, m)
                        if box[2] > box[0] and box[3] > box[1]])
        return out


def _nms(boxes, scores, iou: float, marks):
    """Greedy non-maximum suppression, highest score first: (boxes, landmarks) kept.

    In torch rather than torchvision's: a frame holds a few dozen candidates over the threshold,
    and the CPU image has no torchvision to import.
    """
    import torch

    order = scores.argsort(descending=True)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
    keep = []
    while order.numel():
        i, rest = order[0], order[1:]
        keep.append(i)
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        order = rest[inter / (area[i] + area[rest] - inter).clamp(min=1e-9) <= iou]
    idx = torch.stack(keep) if keep else order
    return boxes[idx], marks[idx]


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
                    raise InputError(f"encoder.detector_weights: {path} holds "
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
    OpenFace stores its crops BGR (OpenCV's order); they are handed on as RGB.
    """

    reads_frames = False

    def __init__(self, cfg: EncoderConfig, device: str = "cpu"):
        super().__init__(cfg, device)
        if cfg.faces_dir and not Path(cfg.faces_dir).is_dir():
            raise MissingInput(f"encoder.faces_dir: {cfg.faces_dir} is not a directory")

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
        # OpenFace writes its aligned faces with OpenCV, blue first: the towers take RGB.
        return list(np.ascontiguousarray(crops[..., ::-1]))


def read_crops(path: str | Path) -> np.ndarray:
    """Face crops of one clip as uint8 [T, H, W, 3], channels in the file's order (OpenFace's:
    BGR).

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


def build_detector(cfg: EncoderConfig, device: str = "cpu") -> Detector:
    """The detector `cfg.detector` names ("available: [...]" when unknown)."""
    return FACE_DETECTORS.get(cfg.detector)(cfg, device)

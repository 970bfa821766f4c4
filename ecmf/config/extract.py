"""Typed configuration of feature extraction: decoding, and an encoder per feature (a face
encoder with its detector's options), each checking its own values (`ecmf.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ecmf.config.dicts import check, section

PACKAGED_MINILM = "packaged:all-minilm-l6-v2"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # EncoderConfig.precision
# Where the GPU image stages RetinaFace's release (STAGE_RETINAFACE, TORCH_HOME=/opt/ecmf/torch;
# docker/README.md), so no node downloads weights at run time.
RETINAFACE_WEIGHTS = "/opt/ecmf/torch/hub/checkpoints/retinaface_resnet50_2020-07-20-f168fae3c.zip"

FACE_ENCODERS = ("faces",)  # encoder names that take FaceEncoderConfig's detector options


@dataclass(frozen=True)
class EncoderConfig:
    """One feature encoder: a registered name, a model (hub id, local path or packaged name)."""

    name: str = "text"  # registered encoder: clip, faces, hubert, text, egemaps
    model: str = PACKAGED_MINILM  # hub id, local path or packaged:<name>
    batch_size: int = 16  # clips per forward pass
    pool_size: int = 1  # actors in this encoder's pool
    num_gpus: float = 0.0  # per actor
    num_cpus: float = 1.0  # per actor
    input: str = ""  # input column; empty: the encoder's own ("frames", "audio" or "text")
    # > 0: also store "seq_<feature>", the per-frame / per-step vectors pooled to this many steps.
    sequence_steps: int = 0
    # Forward passes on a GPU: "auto" (bf16 where supported, else fp16), "bf16", "fp16" or
    # "fp32", under autocast with float32 outputs; on CPU always fp32.
    precision: str = "auto"
    # Encoders with the same non-empty group share one actor pool: one process per actor, one
    # set of imports, the models side by side, run in turn on each batch (e.g. the light text
    # encoders on a small machine, or two vision towers on one GPU). The group's actors take
    # the largest num_cpus / num_gpus and the smallest batch_size of its members, which must
    # agree on pool_size.
    group: str = ""
    # CLIP towers: resize, crop and normalise images with OpenCV, the batch at once (the
    # processor's own sizes, mean and std); false: transformers' PIL processor, image by image,
    # several times slower on the CPU that feeds the GPU.
    fast_processor: bool = True

    @staticmethod
    def config_class(data: dict) -> type:
        """The class of an encoder's settings: face encoders add their detector's options."""
        return FaceEncoderConfig if str(data.get("name", "")).lower() in FACE_ENCODERS \
            else EncoderConfig

    def __post_init__(self):
        check(self.batch_size > 0, "batch_size", "> 0", self.batch_size)
        check(self.pool_size > 0, "pool_size", "> 0", self.pool_size)
        check(self.num_gpus >= 0 and self.num_cpus >= 0, "num_cpus/num_gpus", ">= 0",
              (self.num_cpus, self.num_gpus))
        check(isinstance(self.sequence_steps, int) and self.sequence_steps >= 0,
              "sequence_steps", "an integer >= 0 (0: no sequence column)", self.sequence_steps)
        check(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", self.precision)


@dataclass(frozen=True)
class FaceEncoderConfig(EncoderConfig):
    """A face encoder: an image encoder over face crops that a detector finds."""

    name: str = "faces"  # registered encoder: clip, faces, hubert, text, egemaps
    # Detector: "haar" (CPU), "retinaface" (GPU extra) or "provided" (OpenFace crops on disk).
    detector: str = "haar"
    # retinaface: .zip/.pth, empty for the GPU image's staged RETINAFACE_WEIGHTS; haar: another
    # cascade XML, empty for OpenCV's own.
    detector_weights: str = ""
    face_margin: float = 0.2  # added on each side of a face box, as a fraction of its side
    min_face: int = 40  # smallest face side in pixels of the frames the detector sees
    # "provided" only: the folder of <name>/<name>.npy; empty: openface_face/ beside video/.
    faces_dir: str = ""
    # haar / retinaface: the sampled frames are decoded with this short side too (at most the
    # video's own), in the same pass as the towers' 256 px ones, to detect and crop faces in;
    # 0: the 256 px frames.
    detect_short_side: int = 640
    # haar: detect on each frame shrunk so that a min_face face fills the cascade's 24 px
    # window, never below a 240 px short side (the cost falls with the pixel count); false:
    # at the frame's own size, several times slower on large frames.
    haar_shrink: bool = True

    def __post_init__(self):
        super().__post_init__()
        check(0.0 <= self.face_margin <= 1.0, "face_margin", "in [0, 1]", self.face_margin)
        check(isinstance(self.min_face, int) and self.min_face >= 8, "min_face",
              "an integer >= 8 (pixels)", self.min_face)
        check(isinstance(self.detect_short_side, int) and (self.detect_short_side == 0
                                                           or self.detect_short_side >= 64),
              "detect_short_side", "0 (the decoded frames) or an integer >= 64 (pixels)",
              self.detect_short_side)


def _default_encoders() -> dict[str, EncoderConfig]:
    return {
        "frames": EncoderConfig("clip", "openai/clip-vit-large-patch14", 16, 1, 1.0, 1.0),
        # Right after frames: the last encoder reading "frames" drops them from the stream.
        "faces": FaceEncoderConfig("faces", "openai/clip-vit-large-patch14", 16, 1, 1.0, 1.0,
                                   detector="retinaface"),
        "audio": EncoderConfig("hubert", "TencentGameMate/chinese-hubert-large", 8, 1, 1.0, 1.0),
        "text": EncoderConfig("text", PACKAGED_MINILM, 64, 1, 0.0, 1.0),
    }


@section("extract")
@dataclass(frozen=True)
class ExtractConfig:
    """Feature extraction: decoding parameters and one encoder per feature name."""

    num_frames: int = 8  # frames sampled uniformly per clip
    sample_rate: int = 16000  # Hz the audio is resampled to (the audio encoders' rate)
    max_audio_s: float = 60.0  # longer audio is cut (and logged); encoders chunk within it
    decode_batch_size: int = 8  # clips per decoding task (CPU, beside the encoders)
    # Clips per store file: a killed run loses at most this many per write in flight, and
    # larger files read faster.
    rows_per_file: int = 256
    # Feature name -> encoder; `extract.encoders.<name>: null` drops a default one.
    encoders: dict[str, EncoderConfig] = field(default_factory=_default_encoders)

    def __post_init__(self):
        check(self.num_frames > 0, "num_frames", "> 0", self.num_frames)
        check(self.rows_per_file > 0, "rows_per_file", "> 0", self.rows_per_file)
        check(self.sample_rate == 16000, "sample_rate", "16000 (what the encoders expect)",
               self.sample_rate)
        check(bool(self.encoders), "encoders", "at least one encoder", self.encoders)
        sizes: dict[str, dict[str, int]] = {}
        for name, enc in self.encoders.items():
            if enc.group:
                sizes.setdefault(enc.group, {})[name] = enc.pool_size
        for group, members in sizes.items():
            check(len(set(members.values())) == 1, f"encoders (group {group!r})",
                   "one pool_size for all its members", members)

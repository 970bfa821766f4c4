"""The column contract: label set, column names and Parquet layout shared by every stage."""

from __future__ import annotations

from ecmf.errors import InputError

# MER2025's six classes, in its order: the label set of the MER2025 and demo layouts. Another
# corpus brings its own (`Config.labels`, resolved by `ecmf.data.manifest.with_labels`);
# functions that take a `labels` argument default to these six.
LABELS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")

SAMPLE_ID = "sample_id"

# Manifest (one row per clip of the corpus).
VIDEO = "video_path"
AUDIO = "audio_path"
# Decoded inputs extraction hands the encoders: the towers' frames (256 px), the face
# detector's frames (at its detect_short_side, from the same decode) and the audio.
FRAMES = "frames"
FACE_FRAMES = "face_frames"
TEXT = "text"
LABEL = "label"  # class name as given (noisy for training data); null where unlabeled
SPLIT = "split"  # "train" (labeled), "candidate" (must be predicted) or "pool" (unlabeled, other)
SPLITS = ("train", "candidate", "pool")

# Feature store: one float32 fixed-size-list column per feature, named "feat_<name>",
# with a boolean "mask_<name>" that is False where the modality is missing (no face, silent
# audio, empty subtitle) and the vector is zeros.
FEATURE_PREFIX = "feat_"
MASK_PREFIX = "mask_"
# Frame-level sequences (MERTools' "-FRA" features), where asked for: "seq_<name>", a float32
# fixed-size list of steps * dim values (row-major [steps, dim]); the field metadata holds
# b"steps" and b"dim". Clips of any length are pooled to `steps` equal time segments.
SEQUENCE_PREFIX = "seq_"
# Per feature, "status_<name>": "" where the modality was encoded or is absent by nature (mask
# tells which), else "<stage>: <reason>" for a modality that could not be read (its mask is False
# and the clip keeps its other modalities). "error" is non-empty only for a clip of which no
# modality could be read: readers skip such rows.
STATUS_PREFIX = "status_"
ERROR = "error"
# Free-form notes on a clip's decoding that are not failures (audio cut, audio from the video).
NOTES = "notes"

# Errors table: one row per sample and failed modality (`feature` empty for a whole clip).
ERROR_COLUMNS = ("sample_id", "feature", "stage", "reason")

# Enrichment output.
ENRICHED_TEXT = "enriched_text"
ENRICH_STATUS = "enrich_status"  # "ok" or why the raw subtitle was kept

# Predictions: "prob_<label>" per class, "pred" (class name), "confidence".
PRED = "pred"
CONFIDENCE = "confidence"
PROB_COLUMNS = tuple(f"prob_{name}" for name in LABELS)


def prob_columns(labels=LABELS) -> list[str]:
    """The "prob_<label>" columns of a label set, in its order."""
    return [f"prob_{name}" for name in labels]


def feature_column(name: str) -> str:
    return FEATURE_PREFIX + name


def mask_column(name: str) -> str:
    return MASK_PREFIX + name


def sequence_column(name: str) -> str:
    return SEQUENCE_PREFIX + name


def status_column(name: str) -> str:
    return STATUS_PREFIX + name


def decode_error_column(input_column: str) -> str:
    """Where extraction's decoding says why an input (frames, audio) could not be read."""
    return f"_error_{input_column}"


def feature_names(columns) -> list[str]:
    """Feature names present among `columns` (without the `feat_` prefix), in order."""
    return [c[len(FEATURE_PREFIX):] for c in columns if c.startswith(FEATURE_PREFIX)]


def label_index(label: str, where: str = "", labels=LABELS) -> int:
    """Index of a class name in `labels`; unknown names fail with the label set and where they
    came from."""
    try:
        return list(labels).index(label)
    except ValueError:
        place = f" in {where}" if where else ""
        raise InputError(f"unknown label {label!r}{place}; expected one of "
                         f"{list(labels)}") from None


def label_indices(values, where: str = "", labels=LABELS):
    """Indices (int64 array) of class names; the first unknown one fails as `label_index`."""
    import numpy as np

    index = {name: i for i, name in enumerate(labels)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        k = index.get(v)
        out[i] = k if k is not None else label_index(v, where, labels)
    return out

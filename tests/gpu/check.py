"""`make gpu-check`: the production architectures and code paths on a GPU, as one JSON object.

    python tests/gpu/check.py --out gpu-check.json            # on a machine with CUDA
    python tests/gpu/check.py --device cpu --clips 2 --epochs 1 --out smoke.json   # a dry run

Runs from a clean tree (it puts the repository on sys.path) on a machine that may have only
PyTorch and transformers: no Ray, vLLM, decord or network. What needs a missing package is
skipped with its reason. Measured:

- the encoders of jobs/configs/mer2025.yaml at full size with random weights, built from the
  configs kept in tests/gpu/architectures (CLIP ViT-L/14, chinese-hubert-large,
  chinese-roberta-wwm-ext-large), through ecmf's own encoder classes under autocast: clips/s;
- RetinaFace ResNet-50 (retinaface-pytorch; skipped where it is not installed);
- a fold fit of the fusion model on MER2025's labeled-set size: seconds per epoch;
- the CPU/GPU boundary, as two processes: a CUDA worker runs a fold task and hands its result
  to a driver process with CUDA hidden, which must load it (and cannot load a raw CUDA result).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURES = Path(__file__).resolve().parent / "architectures"
sys.path[:0] = [str(REPO), str(REPO / "tests")]

ROWS = 7369  # MER2025-SEMI's labeled set
FEATURE_DIMS = {"frames": 1024, "faces": 1024, "audio": 1024, "text": 1024, "enriched": 1024}


def _config(name: str) -> dict:
    data = json.loads((ARCHITECTURES / f"{name}.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def build_clip(out: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip import CLIPImageProcessorPil

    config = CLIPVisionConfig(**_config("clip-vit-large-patch14"))
    CLIPVisionModel(config).save_pretrained(out)
    size = config.image_size
    CLIPImageProcessorPil(size={"shortest_edge": size},
                          crop_size={"height": size, "width": size}).save_pretrained(out)
    return out


def build_hubert(out: Path) -> Path:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    HubertModel(HubertConfig(**_config("chinese-hubert-large"))).save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=True).save_pretrained(out)
    return out


def build_text(out: Path) -> Path:
    from transformers import BertConfig, BertModel

    from ecmf.models.tiny import _tiny_tokenizer

    tokenizer = _tiny_tokenizer()
    tokenizer.save_pretrained(out)
    config = BertConfig(vocab_size=len(tokenizer), **_config("chinese-roberta-wwm-ext-large"))
    BertModel(config).save_pretrained(out)
    return out


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def encoders(tmp: Path, device: str, clips: int) -> dict:
    """clips/s of each production encoder, through ecmf's encoder classes."""
    import numpy as np
    import torch

    from ecmf import schema
    from ecmf.config import EncoderConfig
    from ecmf.features.encoders import ENCODERS

    rng = np.random.default_rng(0)
    frames = np.empty(clips, dtype=object)
    frames[:] = [rng.integers(0, 255, (8, 360, 480, 3), dtype=np.uint8) for _ in range(clips)]
    audio = np.empty(clips, dtype=object)
    audio[:] = [(0.1 * rng.normal(size=16000 * (4 + i % 5))).astype(np.float32)
                for i in range(clips)]
    text = np.array([f"你怎么现在才来？我们等了你一个小时，第{i}次了。" for i in range(clips)],
                    dtype=object)
    gpus = 1.0 if device == "cuda" else 0.0
    out = {}
    for feature, name, builder, arch, column, values in [
            ("frames", "clip", build_clip, "clip-vit-large-patch14", "frames", frames),
            ("audio", "hubert", build_hubert, "chinese-hubert-large", "audio", audio),
            ("text", "text", build_text, "chinese-roberta-wwm-ext-large", "text", text)]:
        path = builder(tmp / feature)
        cfg = EncoderConfig(name=name, model=str(path), batch_size=8, num_gpus=gpus)
        enc = ENCODERS.get(name)(feature, cfg)
        batch = {schema.SAMPLE_ID: np.array([f"c{i}" for i in range(clips)], dtype=object),
                 schema.ERROR: np.array([""] * clips, dtype=object), column: values}
        enc(dict(batch))  # warm-up: CUDA context, kernels
        _sync(device)
        start = time.perf_counter()
        result = enc(dict(batch))
        _sync(device)
        seconds = time.perf_counter() - start
        x = result[schema.feature_column(feature)]
        assert x.dtype == np.float32 and np.isfinite(x).all(), feature
        out[feature] = {"architecture": arch, "weights": "random, from the config kept here",
                        "params_m": round(sum(p.numel() for p in enc.model.parameters()) / 1e6),
                        "device": enc.device, "autocast": str(enc.amp).replace("torch.", ""),
                        "clips": clips, "clips_per_s": round(clips / seconds, 2)}
        del enc
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def retinaface(device: str, clips: int) -> dict:
    """Faces a second on 480x360 frames with RetinaFace ResNet-50 (random weights)."""
    if importlib.util.find_spec("retinaface") is None:
        return {"skipped": "retinaface-pytorch is not installed here (the GPU image's `gpu` "
                           "extra has it)"}
    import numpy as np
    import torch
    from retinaface.predict_single import Model

    model = Model(max_size=640, device=device)  # the architecture; its weights stay random
    model.eval()
    images = [np.random.default_rng(i).integers(0, 255, (360, 480, 3), dtype=np.uint8)
              for i in range(8 * clips)]
    model.predict_jsons(images[0])
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for image in images:
            model.predict_jsons(image)
    _sync(device)
    return {"architecture": "RetinaFace ResNet-50", "frames": len(images),
            "frames_per_s": round(len(images) / (time.perf_counter() - start), 1)}


def fit(device: str, epochs: int) -> dict:
    """One fold of the fusion model on MER2025's labeled-set size, on `device`."""
    import numpy as np
    import torch
    from synthetic_workdir import synthetic_features

    from ecmf import schema
    from ecmf.config import TrainConfig
    from ecmf.train.loop import train_one_fold

    y, feats, masks = synthetic_features(ROWS, 0, FEATURE_DIMS)
    data = {schema.SAMPLE_ID: np.array([f"s{i:05d}" for i in range(ROWS)]),
            "y": y.astype(np.int64), "weight": np.ones(ROWS, np.float32),
            "fold": np.arange(ROWS) % 5}
    for f in FEATURE_DIMS:
        data[schema.feature_column(f)] = feats[f]
        data[schema.mask_column(f)] = masks[f]
    cfg = TrainConfig(epochs=epochs, folds=5, hidden=256, batch_size=32, use_gpu=device == "cuda")
    dev = torch.device(device)
    start = time.perf_counter()
    result = train_one_fold(cfg, data, list(FEATURE_DIMS), FEATURE_DIMS, 0,
                            prepare=lambda m: m.to(dev), device=dev, distributed=False)
    seconds = time.perf_counter() - start
    return {"rows": ROWS, "features": FEATURE_DIMS, "epochs": epochs, "hidden": cfg.hidden,
            "seconds": round(seconds, 2), "seconds_per_epoch": round(seconds / epochs, 3),
            "val_waf": round(float(result["val_waf"]), 4)}


WORKER = """
import pickle, sys, dataclasses
sys.path[:0] = sys.argv[3:]
import numpy as np, torch
from synthetic_workdir import synthetic_features, DIMS
from ecmf import schema
from ecmf.config import TrainConfig
from ecmf.train import fold_tasks

def rows(config, features):
    y, feats, masks = synthetic_features(300, 0, DIMS)
    d = {schema.SAMPLE_ID: np.array([f"s{i}" for i in range(300)]), "y": y.astype(np.int64),
         "weight": np.ones(300, np.float32), "fold": np.arange(300) % 3}
    for f in DIMS:
        d[schema.feature_column(f)] = feats[f]
        d[schema.mask_column(f)] = masks[f]
    return d

fold_tasks.task_rows = rows
tc = TrainConfig(epochs=2, folds=3, hidden=32, heads=2, batch_size=32, use_gpu=True)
config = {"train": dataclasses.asdict(tc), "features": list(DIMS), "dims": dict(DIMS),
          "num_classes": len(schema.LABELS)}
saved = fold_tasks.train_fold_task(config, 0, 0)   # what a fold task returns to the driver
with open(sys.argv[1], "wb") as f:
    pickle.dump(saved, f)
raw = {"state_dict": {k: v.cuda() for k, v in saved["state_dict"].items()}}
with open(sys.argv[2], "wb") as f:   # what it returned before the boundary helper
    pickle.dump(raw, f)
"""

DRIVER = """
import json, pickle, sys
sys.path[:0] = sys.argv[3:]
import torch
from ecmf.runtime.devices import device_tensors
out = {"driver_sees_cuda": torch.cuda.is_available()}
with open(sys.argv[1], "rb") as f:
    result = pickle.load(f)
out["fold_task_result_loads"] = True
out["device_tensors"] = device_tensors(result)
try:
    with open(sys.argv[2], "rb") as f:
        pickle.load(f)
    out["raw_cuda_result_loads"] = True
except Exception as e:
    out["raw_cuda_result_loads"] = False
    out["raw_cuda_result_error"] = str(e).splitlines()[0][:200]
print(json.dumps(out))
"""


def boundary(tmp: Path) -> dict:
    """A CUDA worker process returns a fold task's result to a driver process without CUDA."""
    paths = [str(tmp / "result.pkl"), str(tmp / "raw.pkl"), str(REPO), str(REPO / "tests")]
    worker = subprocess.run([sys.executable, "-c", WORKER, *paths], capture_output=True,
                            text=True, timeout=300)
    if worker.returncode:
        return {"error": f"worker: {worker.stderr.strip().splitlines()[-1]}"}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    driver = subprocess.run([sys.executable, "-c", DRIVER, *paths], capture_output=True,
                            text=True, timeout=300, env=env)
    if driver.returncode:
        return {"error": f"driver: {driver.stderr.strip().splitlines()[-1]}"}
    out = json.loads(driver.stdout.strip().splitlines()[-1])
    out["ok"] = (not out["driver_sees_cuda"] and out["fold_task_result_loads"]
                 and not out["device_tensors"] and not out["raw_cuda_result_loads"])
    return out


def _part(result: dict, name: str, fn, *args) -> None:
    start = time.perf_counter()
    try:
        result[name] = fn(*args)
    except ImportError as e:
        result[name] = {"skipped": f"needs a package this machine lacks: {e}"}
    except Exception as e:  # noqa: BLE001 - one failed part is reported, the others still run
        result[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    result.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the JSON object here")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: a dry run of the same code on a machine without CUDA")
    p.add_argument("--clips", type=int, default=32, help="clips per encoder timing")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the fold fit")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        result = {"skipped": f"no CUDA device here (torch {torch.__version__}, built for CUDA "
                             f"{torch.version.cuda or 'none'}): run it on a GPU machine"}
    else:
        result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                  "torch": torch.__version__, "cuda": torch.version.cuda}
        with tempfile.TemporaryDirectory() as tmp:
            _part(result, "encoders", encoders, Path(tmp), args.device, args.clips)
            _part(result, "retinaface", retinaface, args.device, args.clips)
            _part(result, "fit", fit, args.device, args.epochs)
            if args.device == "cuda":
                _part(result, "boundary", boundary, Path(tmp))
            else:
                result["boundary"] = {"skipped": "needs CUDA in the worker process"}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if any(isinstance(v, dict) and "error" in v for v in result.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

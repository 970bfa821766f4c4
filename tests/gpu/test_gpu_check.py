"""The production code paths on a real GPU with Ray (the GPU image), throughput printed:
`pytest -m gpu tests/gpu` there. `make gpu-check` (check.py) needs neither Ray nor an install.

- the encoders (CLIP frames, HuBERT audio, the text encoder) on CUDA under autocast, over a
  handful of clips: clips/s each;
- a fit with NCCL: 2 workers where two GPUs exist, one otherwise;
- vLLM enrichment and label votes over 8 subtitles with the smallest staged instruct model:
  tokens/s.

Production weights are used where they are staged (HF_HOME, as docker/Dockerfile.gpu does);
otherwise tiny models of the same families are built, and the output says so. Every test is
marked `gpu` and skips, with the reason, where CUDA (or vLLM, or a staged LLM) is missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU check runs on a machine with one (make gpu-check)",
                allow_module_level=True)

CLIPS = 16


def _model(hub_id: str, tiny_builder, tmp: Path) -> tuple[str, str]:
    """(path, what it is): the staged production weights, else a tiny model of that family."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(hub_id, local_files_only=True), hub_id
    except Exception:  # noqa: BLE001 - not staged on this machine
        return str(tiny_builder(tmp)), f"tiny {hub_id.split('/')[-1]} (weights not staged)"


def _report(line: str) -> None:
    print(f"\ngpu-check: {line}", flush=True)


def test_encoders_run_on_cuda_under_autocast(tmp_path):
    from ecmf import schema
    from ecmf.config import PACKAGED_MINILM, EncoderConfig
    from ecmf.features.encoders import ENCODERS
    from ecmf.models.tiny import build_tiny_clip_vision, build_tiny_hubert

    rng = np.random.default_rng(0)
    frames = np.empty(CLIPS, dtype=object)
    frames[:] = [rng.integers(0, 255, (8, 256, 256, 3), dtype=np.uint8) for _ in range(CLIPS)]
    audio = np.empty(CLIPS, dtype=object)
    audio[:] = [(0.1 * rng.normal(size=16000 * (3 + i % 5))).astype(np.float32)
                for i in range(CLIPS)]
    text = np.array([f"I can't believe it happened again, number {i}." for i in range(CLIPS)],
                    dtype=object)
    specs = [
        ("frames", "clip", *_model("openai/clip-vit-large-patch14", build_tiny_clip_vision,
                                   tmp_path / "clip"), "frames", frames),
        ("audio", "hubert", *_model("TencentGameMate/chinese-hubert-large",
                                    lambda p: build_tiny_hubert(p, norm="layer"),
                                    tmp_path / "hubert"), "audio", audio),
        ("text", "text", PACKAGED_MINILM, "all-MiniLM-L6-v2 (packaged)", "text", text),
    ]
    for feature, name, path, what, column, values in specs:
        enc = ENCODERS.get(name)(feature, EncoderConfig(name, path, 8, 1, 1.0, 1.0))
        assert enc.device.startswith("cuda"), feature
        batch = {schema.SAMPLE_ID: np.array([f"c{i}" for i in range(CLIPS)], dtype=object),
                 schema.ERROR: np.array([""] * CLIPS, dtype=object), column: values}
        enc(dict(batch))  # warm-up: CUDA context, kernels
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = enc(dict(batch))
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        x = out[schema.feature_column(feature)]
        assert x.dtype == np.float32 and np.isfinite(x).all() and out[
            schema.mask_column(feature)].all(), feature
        _report(f"{feature} ({what}): {CLIPS / seconds:.1f} clips/s on "
                f"{torch.cuda.get_device_name()}")


def test_fit_with_nccl(tmp_path, ray_local):
    from synthetic_workdir import make_workdir

    from ecmf.data.manifest import load_manifest
    from ecmf.stages.common import load_config
    from ecmf.train.fit import fit, training_table

    gpus = torch.cuda.device_count()
    workers = 2 if gpus >= 2 else 1
    root = make_workdir(tmp_path / "w")
    cfg = load_config(None, [f"workdir={root}", "train.use_gpu=true", "train.backend=auto",
                             f"train.num_workers={workers}", "train.epochs=5", "train.folds=3",
                             "train.strategy=ddp"])
    assert cfg.train.backend == "auto"  # auto: NCCL, the driver sees CUDA
    table = training_table(load_manifest(cfg), cfg.train.folds, cfg.train.seed)
    start = time.perf_counter()
    metrics = fit(cfg, table, root / "train")
    _report(f"fit with NCCL, {workers} worker(s) on {gpus} GPU(s): "
            f"{time.perf_counter() - start:.1f} s, out-of-fold WAF {metrics['cv']['waf']:.3f}")
    assert metrics["cv"]["waf"] > 0.3
    # The default strategy: a task per fold, each on a GPU of its own.
    folds = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, strategy="folds"))
    start = time.perf_counter()
    metrics = fit(folds, table, root / "train-folds")
    _report(f"fit, a task per fold on {gpus} GPU(s): {time.perf_counter() - start:.1f} s, "
            f"out-of-fold WAF {metrics['cv']['waf']:.3f}")
    assert metrics["cv"]["waf"] > 0.3


def _smallest_staged_instruct() -> Path | None:
    from huggingface_hub import scan_cache_dir

    try:
        repos = [r for r in scan_cache_dir().repos
                 if r.repo_type == "model" and "instruct" in r.repo_id.lower()]
    except Exception:  # noqa: BLE001 - no cache at all
        return None
    if not repos:
        return None
    repo = min(repos, key=lambda r: r.size_on_disk)
    return max(repo.revisions, key=lambda r: r.last_modified).snapshot_path


def test_vllm_enrichment_and_votes(tmp_path, ray_local):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (the `gpu` extra of docker/Dockerfile.gpu)")
    model = _smallest_staged_instruct()
    if model is None:
        pytest.skip("no instruct model is staged in the Hugging Face cache (HF_HOME)")
    from ecmf.config import DemoConfig
    from ecmf.data.demo import write_demo_corpus
    from ecmf.stages.common import load_config
    from ecmf.stages.enrich import enrich_corpus

    write_demo_corpus(DemoConfig(n_train=4, n_pool=2, n_candidates=2, n_test=1, seconds=0.5,
                                 workers=1), tmp_path / "corpus")
    cfg = load_config(None, [f"workdir={tmp_path / 'w'}", f"corpus.root={tmp_path / 'corpus'}",
                             "enrich.backend=vllm", f"enrich.model={model}",
                             "enrich.tasks=[enrich, vote]"])
    summary = enrich_corpus(cfg)
    for task, s in summary.items():
        assert s["generated_tokens"] > 0, (task, s)
        _report(f"vLLM {task} with {Path(model).parent.parent.name}: "
                f"{s['generated_tokens'] / max(s['seconds'], 1e-9):.0f} tokens/s over 8 "
                f"subtitles")
    assert json.loads((tmp_path / "w" / "enrich" / "summary.json").read_text())

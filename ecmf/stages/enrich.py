"""`ecmf enrich`: every subtitle through the configured LLM backend, one pass per `enrich.tasks`.

Outputs under `<workdir>/enrich/`, one row per clip of the manifest, keyed by `sample_id`:

- `enriched.parquet` (task "enrich"): `enriched_text` (the LLM's description of the subtitle's
  emotional cues; the raw subtitle where the output was unusable, "" for an empty subtitle),
  `enrich_status` ("ok", "truncated", "overlong-truncated", or why the subtitle was kept:
  "empty", "non-text", "label-named", "empty-subtitle", "error: ...").
- `votes.parquet` (task "vote"): `vote_<label>` for every label of the run's label set
  (`cfg.labels`, resolved by `ecmf.data.manifest.with_labels`; float64 probabilities summing
  to 1; NaN on every label where the vote is missing) and `vote_status`
  ("ok", or why it is missing: "empty", "non-json", "truncated", "off-label", "duplicate-label",
  "invalid-score", "all-zero", "empty-subtitle", "error: ...").
- Both also hold `generated_tokens` and the cache key: `model`, `prompt_version`, `input_hash`.

Re-running reuses rows whose key matches (see `cache`); rows of an interrupted run are kept in
`parts/<task>/` and reused too. `summary.json` counts generated and cached samples per task.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ecmf import schema
from ecmf.config import Config, EnrichConfig
from ecmf.data.manifest import build_manifest, with_labels
from ecmf.enrichment import pipeline, prompts
from ecmf.enrichment.cache import KEY_COLUMNS, read_previous, split_cached, with_keys
from ecmf.enrichment.parse import GENERATED_TOKENS, result_columns, status_column
from ecmf.enrichment.prompts import CONTEXT_COLUMNS
from ecmf.stages.common import stage_session
from ecmf.workdir import Workdir, save_config, write_json

log = logging.getLogger(__name__)
ROWS_PER_BLOCK = 64
OUTPUT_FILES = {"enrich": "enriched.parquet", "vote": "votes.parquet"}


def enrich_corpus(cfg: Config) -> dict:
    """Run every task of `cfg.enrich.tasks` over the corpus (votes over the run's label set);
    returns the summary per task."""
    wd = Workdir.of(cfg)
    manifest = build_manifest(cfg)
    cfg = with_labels(cfg, manifest)
    labels = list(cfg.labels)
    columns = [schema.SAMPLE_ID, schema.TEXT, *CONTEXT_COLUMNS.values()]
    inputs = manifest[[c for c in columns if c in manifest.columns]]
    save_config(cfg, wd.enrich)
    summary = {task: run_task(cfg.enrich, inputs, wd.enrich, task, labels)
               for task in cfg.enrich.tasks}
    write_json(wd.enrich / "summary.json", summary)
    return summary


def run_task(cfg: EnrichConfig, inputs: pd.DataFrame, directory: Path, task: str,
             labels: Sequence[str] = schema.LABELS) -> dict:
    """One LLM pass over `inputs` (sample_id, text, ...) into `directory/OUTPUT_FILES[task]`,
    generating only the samples the cache does not hold; a vote is over `labels`."""

    start = time.time()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out_path, parts = directory / OUTPUT_FILES[task], directory / "parts" / task
    labels = list(labels)
    columns, status = result_columns(task, labels), status_column(task)
    keep = [schema.SAMPLE_ID, *columns, *KEY_COLUMNS]
    frame = with_keys(inputs, cfg, task, prompts.PROMPT_VERSION, labels)
    previous = None
    if cfg.cache:
        previous = read_previous([out_path, *sorted(parts.glob("*/*.parquet"))])
    reused, todo = split_cached(frame, previous, columns, status)
    log.info("LLM %s: %d samples, %d cached, %d to generate with %s (%s)", task, len(frame),
             len(reused), len(todo), cfg.model, cfg.backend)
    new = _generate(cfg, todo, parts, task, keep, labels) if len(todo) else None
    frames = [f[keep] for f in (reused, new) if f is not None and len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=keep)
    out = out.drop_duplicates(schema.SAMPLE_ID, keep="last")
    out = out.sort_values(schema.SAMPLE_ID).reset_index(drop=True)
    lost = sorted(set(frame[schema.SAMPLE_ID]) - set(out[schema.SAMPLE_ID]))
    if lost:
        raise RuntimeError(f"LLM {task} lost {len(lost)} sample(s), e.g. {lost[:5]}; the rows "
                           f"that came back stay in {parts} for the next run to reuse")
    # Replace, never half-write: the file is the cache of the next run.
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    out.to_parquet(tmp, index=False)
    os.replace(tmp, out_path)
    shutil.rmtree(parts, ignore_errors=True)
    reasons = out[status].astype(str).str.split(":").str[0].value_counts().to_dict()
    return {"samples": int(len(out)), "generated": int(len(todo)), "cached": int(len(reused)),
            "generated_tokens": int(new[GENERATED_TOKENS].sum()) if new is not None else 0,
            "status": {k: int(v) for k, v in reasons.items()},
            "seconds": round(time.time() - start, 2), "output": str(out_path)}


def _generate(cfg: EnrichConfig, todo: pd.DataFrame, parts: Path, task: str,
              keep: list[str], labels: list[str]) -> pd.DataFrame:
    """The rows of `todo` through the backend on Ray Data; written block by block into a fresh
    folder under `parts`, so that an interrupted run leaves its finished blocks to the next."""
    import ray

    run_dir = parts / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    blocks = [todo.iloc[s:s + ROWS_PER_BLOCK] for s in range(0, len(todo), ROWS_PER_BLOCK)]
    ds = pipeline.enrich_dataset(ray.data.from_pandas(blocks), cfg, cfg.model, task, labels)
    ds.select_columns(keep).write_parquet(str(run_dir))
    return pd.read_parquet(run_dir)


def run(cfg: Config) -> dict:
    """Enrich (and vote) every subtitle; the summary counts generated and cached samples."""
    with stage_session(cfg, "enrich"):
        return enrich_corpus(cfg)

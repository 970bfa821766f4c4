"""`ecmf enrich`: every subtitle through the configured LLM backend into `enrich/enriched.parquet`."""

from __future__ import annotations

import logging
import time

import pandas as pd

from ecmf import schema
from ecmf.config import Config, save_config
from ecmf.workdir import Workdir, build_manifest, write_json

log = logging.getLogger(__name__)
ROWS_PER_BLOCK = 64


def enrich_corpus(cfg: Config) -> dict:
    """Enrich the subtitle of every clip; the raw subtitle is kept wherever the LLM output is not."""
    import ray

    from ecmf.enrichment.pipeline import enrich_dataset
    from ecmf.enrichment.prompts import PROMPT_VERSION

    wd = Workdir.of(cfg)
    manifest = build_manifest(cfg)[[schema.SAMPLE_ID, schema.TEXT]]
    save_config(cfg, wd.enrich)
    start = time.time()
    blocks = [manifest.iloc[s:s + ROWS_PER_BLOCK] for s in range(0, len(manifest), ROWS_PER_BLOCK)]
    ds = enrich_dataset(ray.data.from_pandas(blocks), cfg.enrich, cfg.enrich.model)
    parts = wd.enrich / "parts"
    for old in parts.glob("*.parquet"):
        old.unlink()
    ds.select_columns([schema.SAMPLE_ID, schema.ENRICHED_TEXT, schema.ENRICH_STATUS]) \
      .write_parquet(str(parts))
    out = pd.read_parquet(parts).sort_values(schema.SAMPLE_ID).reset_index(drop=True)
    lost = sorted(set(manifest[schema.SAMPLE_ID]) - set(out[schema.SAMPLE_ID]))
    if lost:
        raise RuntimeError(f"enrichment lost {len(lost)} sample(s), e.g. {lost[:5]}")
    out["model"] = cfg.enrich.model
    out["prompt_version"] = PROMPT_VERSION
    out.to_parquet(wd.enriched, index=False)
    status = out[schema.ENRICH_STATUS].str.split(":").str[0].value_counts().to_dict()
    summary = {"samples": int(len(out)), "status": {k: int(v) for k, v in status.items()},
               "seconds": round(time.time() - start, 2), "output": str(wd.enriched)}
    write_json(wd.enrich / "summary.json", summary)
    return summary

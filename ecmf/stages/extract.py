"""`ecmf extract`: every clip of the corpus through the configured encoders into the Parquet
feature store (Ray Data; resumable, one row per clip)."""

from __future__ import annotations

import sys

from ecmf.config import Config
from ecmf.features.extract import extract_features, preflight
from ecmf.runtime import session
from ecmf.stages.common import validate


def run(cfg: Config) -> dict:
    """Extract what the store lacks; the summary counts clips done, skipped and failed."""
    validate(cfg)  # a misspelt encoder fails before the workdir is touched
    manifest = preflight(cfg)  # a bad corpus or store fails in a second, before Ray starts
    with session.ray_session(cfg.ray):
        s = extract_features(cfg, manifest)
    # One line a person reads after the progress bars; the full summary follows as JSON.
    rate = f", {s['clips_per_s']} clips/s" if s.get("clips_per_s") else ""
    partial = s.get("with_failed_modality", 0)
    partial_txt = f", {partial} with a modality that failed" if partial else ""
    failed = f" (see {s['errors']})" if s.get("failed") or partial else ""
    print(f"ecmf extract: {s['done']} of {s['clips']} clips in the store, {s['skipped']} skipped "
          f"as already done, {s['failed']} failed{partial_txt}{failed}{rate}", file=sys.stderr)
    return s

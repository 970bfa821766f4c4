"""The LLM output cache: a stored row is reused when its sample, model, prompt version and input
hash (the prompt, the label set where it shapes the result, and the token limit) match the current
run; every other sample goes to the model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ecmf.config import EnrichConfig
from ecmf.enrichment.parse import ERROR_PREFIX
from ecmf.enrichment.prompts import as_text, row_context, task_prompt
from ecmf.schema import LABELS, SAMPLE_ID, TEXT

log = logging.getLogger(__name__)

MODEL = "model"
PROMPT_VERSION = "prompt_version"
INPUT_HASH = "input_hash"
KEY_COLUMNS = (MODEL, PROMPT_VERSION, INPUT_HASH)


def input_hash(prompt: str, max_new_tokens: int) -> str:
    """16 hex digits of SHA-256 over the token limit and the prompt."""
    data = f"{max_new_tokens}\n{prompt}".encode("utf-8", errors="surrogatepass")
    return hashlib.sha256(data).hexdigest()[:16]


def with_keys(inputs: pd.DataFrame, cfg: EnrichConfig, task: str, prompt_version: str,
              labels: Sequence[str] = LABELS) -> pd.DataFrame:
    """`inputs` (sample_id, text, optional context columns) plus the cache key columns.

    The hash covers the rendered prompt, so a changed subtitle, language, context or label set
    (`labels`, the run's classes) re-runs the sample even where the prompt version stays.
    """
    labels = list(labels)
    limit = cfg.vote_max_new_tokens if task == "vote" else cfg.max_new_tokens
    # An enrichment prompt names no label, but its cleaning drops outputs that only name one
    # ("label-named"): another label set keys it too. MER2025's six add nothing, so the caches
    # written before label sets were configurable stay valid.
    suffix = "" if task != "enrich" or labels == list(LABELS) else f"\nlabels: {labels}"
    hashes = [input_hash(task_prompt(task, as_text(r[TEXT]), cfg.language, row_context(r), labels)
                         + suffix, limit)
              for r in inputs.to_dict("records")]
    out = inputs.copy()
    out[MODEL] = cfg.model
    out[PROMPT_VERSION] = prompt_version
    out[INPUT_HASH] = hashes
    return out


def read_previous(paths: Iterable[Path]) -> pd.DataFrame | None:
    """Earlier outputs, oldest first; a file an interrupted run left unreadable is skipped."""
    frames = []
    for path in paths:
        if not Path(path).is_file():
            continue
        try:
            frames.append(pd.read_parquet(path))
        except Exception as exc:
            log.warning("LLM cache: skipping unreadable %s (%s)", path, exc)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def split_cached(frame: pd.DataFrame, previous: pd.DataFrame | None, columns: list[str],
                 status: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reused rows, rows to generate) for `frame` (sample_id and KEY_COLUMNS).

    Reused rows are previous rows (sample_id, `columns`, keys) whose keys equal the frame's;
    failed ones ("error: ..." in `status`) are generated again. Later previous rows win.
    """
    need = [SAMPLE_ID, *columns, *KEY_COLUMNS]
    if previous is None or any(c not in previous.columns for c in need):
        return pd.DataFrame(columns=need), frame
    prev = previous[need]
    prev = prev[~prev[status].astype(str).str.startswith(ERROR_PREFIX)]
    reused = frame[[SAMPLE_ID, *KEY_COLUMNS]].merge(prev, on=[SAMPLE_ID, *KEY_COLUMNS],
                                                    how="inner")
    reused = reused.drop_duplicates(SAMPLE_ID, keep="last")[need].reset_index(drop=True)
    todo = frame[~frame[SAMPLE_ID].isin(reused[SAMPLE_ID])].reset_index(drop=True)
    return reused, todo

"""The LLM passes on Ray Data: subtitles in, enrichment or label-vote columns out.

Each actor (or vLLM engine replica) of the pool loads one copy of the LLM through the configured
backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ecmf.config import EnrichConfig
from ecmf.enrichment.parse import result_columns
from ecmf.schema import LABELS

if TYPE_CHECKING:
    import ray.data


def enrich_dataset(ds: ray.data.Dataset, cfg: EnrichConfig, model_path: str,
                   task: str = "enrich", labels: Sequence[str] = LABELS) -> ray.data.Dataset:
    """Add the columns of `parse.result_columns(task, labels)` to a dataset with `sample_id` and
    `text`.

    task "enrich": enriched_text, enrich_status; "vote": vote_<label> per class of `labels` (the
    run's label set), vote_status; both also generated_tokens. Every input column is kept.
    `model_path` is what the backend loads (a local directory or a hub id); `cfg.model` names the
    model in configs, and the caller resolves it (e.g. to a staged copy on the cluster). Lazy:
    nothing runs until the dataset is consumed.
    """
    from ecmf.enrichment.backends import BACKENDS

    labels = list(labels)
    result_columns(task, labels)  # an unknown task fails before any actor starts
    return BACKENDS.get(cfg.backend)(ds, cfg, str(model_path), task, labels=labels)

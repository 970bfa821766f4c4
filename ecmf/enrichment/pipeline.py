"""The enrichment stage on Ray Data: subtitles in, `enriched_text` and `enrich_status` out.

Each actor of the pool loads one copy of the LLM through the configured backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecmf.config import EnrichConfig

if TYPE_CHECKING:
    import ray.data


def enrich_dataset(ds: ray.data.Dataset, cfg: EnrichConfig, model_path: str) -> ray.data.Dataset:
    """Add `enriched_text` and `enrich_status` to a dataset with `sample_id` and `text` columns.

    `model_path` is what the backend loads (a local directory or a hub id); `cfg.model` names the
    model in configs, and the caller resolves it (e.g. to a staged copy on the cluster).
    Lazy, like every Ray Data transform: nothing runs until the dataset is consumed.
    """
    import ray.data

    from ecmf.enrichment.backends import BACKENDS

    backend = BACKENDS.get(cfg.backend)
    return ds.map_batches(
        backend,
        fn_constructor_kwargs={"cfg": cfg, "model_path": str(model_path)},
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.pool_size),
        num_gpus=cfg.num_gpus,
        num_cpus=cfg.num_cpus,
        batch_format="numpy",
    )

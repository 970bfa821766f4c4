"""enrich_dataset end to end through Ray Data with the tiny causal LM."""

from __future__ import annotations

import pandas as pd

from ecmf.config import EnrichConfig
from ecmf.enrichment.pipeline import enrich_dataset


def test_every_sample_comes_back_once(ray_local, tiny_llm):
    n = 22
    df = pd.DataFrame({
        "sample_id": [f"clip_{i:03d}" for i in range(n)],
        "text": ["" if i % 5 == 0 else f"Line {i}: you never listen to me." for i in range(n)],
    })
    cfg = EnrichConfig(max_new_tokens=8, batch_size=4, pool_size=1)
    blocks = [df.iloc[s:s + 8] for s in range(0, n, 8)]
    ds = enrich_dataset(ray_local.data.from_pandas(blocks), cfg, tiny_llm)
    out = ds.to_pandas()
    assert sorted(out["sample_id"]) == list(df["sample_id"])
    out = out.set_index("sample_id")
    for sid, text in zip(df["sample_id"], df["text"], strict=True):
        enriched, status = out.loc[sid, "enriched_text"], out.loc[sid, "enrich_status"]
        assert out.loc[sid, "text"] == text
        if text:
            assert status in {"ok", "empty", "non-text", "label-named", "overlong-truncated"}
            assert isinstance(enriched, str) and enriched
        else:
            assert (enriched, status) == ("", "empty-subtitle")

"""enrich_dataset end to end through Ray Data with the tiny causal LM: enrichment and votes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecmf.config import EnrichConfig
from ecmf.enrichment.pipeline import enrich_dataset
from ecmf.schema import LABELS

KEPT = {"ok", "truncated", "overlong-truncated"}
FALLBACK = {"empty", "non-text", "label-named"}
VOTE_REASONS = {"ok", "empty", "non-json", "truncated", "off-label", "duplicate-label",
                "invalid-score", "all-zero"}


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": [f"clip_{i:03d}" for i in range(n)],
        "text": ["" if i % 5 == 0 else f"Line {i}: you never listen to me." for i in range(n)],
    })


def _dataset(ray, df: pd.DataFrame, rows: int = 8):
    return ray.data.from_pandas([df.iloc[s:s + rows] for s in range(0, len(df), rows)])


@pytest.mark.ray
def test_every_sample_comes_back_once(ray_local, tiny_llm):
    df = _frame(22)
    cfg = EnrichConfig(max_new_tokens=8, batch_size=4, pool_size=1)
    out = enrich_dataset(_dataset(ray_local, df), cfg, tiny_llm).to_pandas()
    assert sorted(out["sample_id"]) == list(df["sample_id"])
    out = out.set_index("sample_id")
    for sid, text in zip(df["sample_id"], df["text"], strict=True):
        row = out.loc[sid]
        assert row["text"] == text
        if text:
            assert row["enrich_status"] in KEPT | FALLBACK
            assert isinstance(row["enriched_text"], str) and row["enriched_text"]
            assert 1 <= row["generated_tokens"] <= 8
        else:
            assert (row["enriched_text"], row["enrich_status"]) == ("", "empty-subtitle")
            assert row["generated_tokens"] == 0


@pytest.mark.ray
def test_votes_come_back_with_a_column_per_label(ray_local, tiny_llm):
    df = _frame(10)
    cfg = EnrichConfig(vote_max_new_tokens=6, batch_size=4, tasks=["vote"])
    out = enrich_dataset(_dataset(ray_local, df, 4), cfg, tiny_llm, task="vote").to_pandas()
    assert sorted(out["sample_id"]) == list(df["sample_id"])
    cols = [f"vote_{x}" for x in LABELS]
    assert set(out.columns) == {"sample_id", "text", *cols, "vote_status", "generated_tokens"}
    probs = out[cols].to_numpy(dtype=float)
    empty = out["text"] == ""
    assert (out.loc[empty, "vote_status"] == "empty-subtitle").all()
    assert set(out.loc[~empty, "vote_status"]) <= VOTE_REASONS
    ok = (out["vote_status"] == "ok").to_numpy()
    np.testing.assert_allclose(probs[ok].sum(axis=1), 1.0)
    assert np.isnan(probs[~ok]).all()
    # The vote's own token limit applies, not max_new_tokens (64).
    assert out.loc[~empty, "generated_tokens"].between(1, 6).all()


def test_unknown_task_or_backend_fails_before_any_work():
    with pytest.raises(ValueError, match="task 'summary'"):
        enrich_dataset(None, EnrichConfig(), "unused", task="summary")
    with pytest.raises(KeyError, match=r"unknown LLM backend 'tgi'; available: \['transformers', "
                                       r"'vllm'\]"):
        enrich_dataset(None, EnrichConfig(backend="tgi"), "unused")

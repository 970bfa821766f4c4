"""The LLM output cache on plain DataFrames: which rows are reused and which are generated again."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecmf.config import EnrichConfig
from ecmf.enrichment.cache import input_hash, read_previous, split_cached, with_keys
from ecmf.enrichment.parse import result_columns
from ecmf.enrichment.prompts import task_prompt
from ecmf.schema import LABELS

COLUMNS = result_columns("enrich")
CUSTOM = ["neutral", "joy", "anger"]
KEYS = ["model", "prompt_version", "input_hash"]
INPUTS = pd.DataFrame({"sample_id": ["a", "b", "c"], "text": ["Hi.", "Go away!", ""]})


def _stored(frame: pd.DataFrame, status="ok") -> pd.DataFrame:
    out = frame.drop(columns=["text"]).copy()
    out["enriched_text"] = [f"about {s}" for s in out["sample_id"]]
    out["enrich_status"] = status
    out["generated_tokens"] = 5
    return out


def test_keys_follow_the_prompt_not_other_columns():
    cfg = EnrichConfig(model="m")
    base = with_keys(INPUTS, cfg, "enrich", "v1")
    assert list(base.columns) == ["sample_id", "text", "model", "prompt_version", "input_hash"]
    assert base["input_hash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert base["input_hash"].nunique() == 3
    extra = INPUTS.assign(label=["x", "y", "z"])
    assert list(with_keys(extra, cfg, "enrich", "v1")["input_hash"]) == list(base["input_hash"])
    changed = INPUTS.assign(text=["Hi.", "Go away, please.", ""])
    assert (with_keys(changed, cfg, "enrich", "v1")["input_hash"] != base["input_hash"]).tolist() \
        == [False, True, False]
    for other in (EnrichConfig(model="m", language="zh"),
                  EnrichConfig(model="m", max_new_tokens=9)):
        assert (with_keys(INPUTS, other, "enrich", "v1")["input_hash"] != base["input_hash"]).all()
    votes = with_keys(INPUTS, cfg, "vote", "v1")
    assert (votes["input_hash"] != base["input_hash"]).all()
    # Context columns are part of the prompt.
    ctx = INPUTS.assign(visual_description=["a smile", "", ""])
    assert (with_keys(ctx, cfg, "enrich", "v1")["input_hash"] != base["input_hash"]).tolist() == [
        True, False, False]
    assert input_hash("\ud800 lone surrogate", 3) != input_hash("", 3)


def test_keys_follow_the_label_set():
    """Another label set is another vote prompt (and another enrichment cleaning): it re-runs."""
    cfg = EnrichConfig(model="m")
    for task in ("vote", "enrich"):
        mer = with_keys(INPUTS, cfg, task, "v1")
        assert list(with_keys(INPUTS, cfg, task, "v1", list(LABELS))["input_hash"]) == \
            list(mer["input_hash"])
        custom = with_keys(INPUTS, cfg, task, "v1", CUSTOM)
        assert (custom["input_hash"] != mer["input_hash"]).all()
        assert list(with_keys(INPUTS, cfg, task, "v1", tuple(CUSTOM))["input_hash"]) == \
            list(custom["input_hash"])
        reordered = with_keys(INPUTS, cfg, task, "v1", CUSTOM[::-1])
        assert (reordered["input_hash"] != custom["input_hash"]).all()
    # MER2025's enrichment keys stay those of the caches written before label sets existed.
    prompts = [task_prompt("enrich", t, "en", {}, ()) for t in INPUTS["text"]]
    assert list(with_keys(INPUTS, cfg, "enrich", "v1")["input_hash"]) == [
        input_hash(p, cfg.max_new_tokens) for p in prompts]
    # A vote stored under MER2025's six is not reused for the custom set.
    frame = with_keys(INPUTS, cfg, "vote", "v1", CUSTOM)
    stored = with_keys(INPUTS, cfg, "vote", "v1")[["sample_id", *KEYS]]
    for c in result_columns("vote", CUSTOM):
        stored[c] = 0 if c != "vote_status" else "ok"
    reused, todo = split_cached(frame, stored, result_columns("vote", CUSTOM), "vote_status")
    assert reused.empty and list(todo["sample_id"]) == ["a", "b", "c"]


def test_everything_matching_is_reused():
    frame = with_keys(INPUTS, EnrichConfig(model="m"), "enrich", "v1")
    reused, todo = split_cached(frame, _stored(frame), COLUMNS, "enrich_status")
    assert list(reused["sample_id"]) == ["a", "b", "c"] and todo.empty
    assert list(reused["enriched_text"]) == ["about a", "about b", "about c"]


def test_a_changed_key_reruns_the_sample():
    cfg = EnrichConfig(model="m")
    frame = with_keys(INPUTS, cfg, "enrich", "v1")
    for changed in (with_keys(INPUTS, cfg, "enrich", "v2"),
                    with_keys(INPUTS, EnrichConfig(model="other"), "enrich", "v1")):
        reused, todo = split_cached(changed, _stored(frame), COLUMNS, "enrich_status")
        assert reused.empty and list(todo["sample_id"]) == ["a", "b", "c"]
    one = with_keys(INPUTS.assign(text=["Hi.", "Go.", ""]), cfg, "enrich", "v1")
    reused, todo = split_cached(one, _stored(frame), COLUMNS, "enrich_status")
    assert list(reused["sample_id"]) == ["a", "c"] and list(todo["sample_id"]) == ["b"]
    # A row to generate keeps every input column for the backend.
    assert list(todo.columns) == list(one.columns)


def test_failed_rows_are_retried_and_later_rows_win():
    frame = with_keys(INPUTS, EnrichConfig(model="m"), "enrich", "v1")
    old = _stored(frame, status=["ok", "error: RuntimeError: oom", "ok"])
    newer = _stored(frame.iloc[[0]]).assign(enriched_text="newer a")
    reused, todo = split_cached(frame, pd.concat([old, newer]), COLUMNS, "enrich_status")
    assert list(todo["sample_id"]) == ["b"]
    assert dict(zip(reused["sample_id"], reused["enriched_text"])) == {"a": "newer a",
                                                                        "c": "about c"}


def test_no_or_old_format_cache_reruns_everything():
    frame = with_keys(INPUTS, EnrichConfig(model="m"), "enrich", "v1")
    for previous in (None, _stored(frame).drop(columns=["input_hash"])):
        reused, todo = split_cached(frame, previous, COLUMNS, "enrich_status")
        assert reused.empty and len(todo) == 3


def test_votes_with_nan_are_cached_like_any_row():
    frame = with_keys(INPUTS, EnrichConfig(model="m"), "vote", "v1")
    cols = result_columns("vote")
    stored = frame[["sample_id", "model", "prompt_version", "input_hash"]].copy()
    for c in cols[:-2]:
        stored[c] = np.nan
    stored["vote_status"], stored["generated_tokens"] = "non-json", 96
    reused, todo = split_cached(frame, stored, cols, "vote_status")
    assert len(reused) == 3 and todo.empty and reused[cols[0]].isna().all()


def test_unreadable_files_are_skipped(tmp_path):
    frame = with_keys(INPUTS, EnrichConfig(model="m"), "enrich", "v1")
    good = tmp_path / "good.parquet"
    _stored(frame).to_parquet(good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 half a file")
    previous = read_previous([tmp_path / "missing.parquet", bad, good])
    assert list(previous["sample_id"]) == ["a", "b", "c"]
    assert read_previous([bad]) is None

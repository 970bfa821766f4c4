"""Output cleaning: enriched text with the subtitle as fallback, and JSON label votes."""

from __future__ import annotations

import json
import math
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecmf.enrichment.parse import (
    clean_enrichment,
    error_status,
    parse_label_vote,
    result_columns,
    status_column,
    task_result,
)
from ecmf.schema import LABELS

SUB = "  Where were you\nlast night? "
SUB_CLEAN = "Where were you last night?"
STATUSES = {"ok", "empty", "non-text", "label-named", "overlong-truncated", "truncated"}
VOTE_REASONS = {"ok", "empty", "non-json", "truncated", "off-label", "duplicate-label",
                "invalid-score", "all-zero"}
VOTE_COLUMNS = [f"vote_{x}" for x in LABELS]


@pytest.mark.parametrize("generated,expected", [
    ("The speaker sounds suspicious and hurt.", ("The speaker sounds suspicious and hurt.", "ok")),
    ('Description: "Tense, accusing tone."', ("Tense, accusing tone.", "ok")),
    ("<|assistant|>\nA flat, tired voice.<|end|>\n<|user|>\nnext", ("A flat, tired voice.", "ok")),
    ("说话人语气急促，似乎在责备对方。", ("说话人语气急促，似乎在责备对方。", "ok")),
    ("She is worried that he lied to her.", ("She is worried that he lied to her.", "ok")),
    ("", (SUB_CLEAN, "empty")),
    ("  \n\t ", (SUB_CLEAN, "empty")),
    ("<|end|>", (SUB_CLEAN, "empty")),
    ("?!?! ... ###", (SUB_CLEAN, "non-text")),
    ("\ufffd\ufffd\ufffd\ufffdab", (SUB_CLEAN, "non-text")),
    ("Angry.", (SUB_CLEAN, "label-named")),
    ("Emotion: surprise", (SUB_CLEAN, "label-named")),
    ("情绪：生气。", (SUB_CLEAN, "label-named")),
])
def test_clean_enrichment_cases(generated, expected):
    assert clean_enrichment(generated, SUB) == expected


def test_overlong_text_is_cut_on_a_sentence_and_kept():
    generated = "A calm tone. " * 100
    text, status = clean_enrichment(generated, SUB, max_chars=100)
    assert status == "overlong-truncated"
    assert len(text) <= 100 and text.endswith(".") and text.startswith("A calm tone.")


def test_no_subtitle_and_no_output_gives_empty_text():
    assert clean_enrichment("", "") == ("", "empty")
    assert clean_enrichment(None, None) == ("", "empty")


def test_max_chars_must_be_positive():
    with pytest.raises(ValueError, match="max_chars"):
        clean_enrichment("text", SUB, max_chars=0)


def test_hitting_the_token_limit_cuts_back_to_a_sentence():
    half = "The voice is low and slow, as if tired. It trails"
    assert clean_enrichment(half, SUB, hit_limit=True) == (
        "The voice is low and slow, as if tired.", "truncated")
    # Cutting would drop more than half: the text stays whole.
    short = "Tired. The voice is low and slow, as if the day"
    assert clean_enrichment(short, SUB, hit_limit=True) == (short, "truncated")
    # Unusable output stays unusable; an overlong one is cut to max_chars first.
    assert clean_enrichment("", SUB, hit_limit=True) == (SUB_CLEAN, "empty")
    assert clean_enrichment("Calm. " * 50, SUB, 40, hit_limit=True)[1] == "overlong-truncated"


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.integers(1, 700), st.booleans())
def test_clean_enrichment_is_total(generated, subtitle, max_chars, hit_limit):
    text, status = clean_enrichment(generated, subtitle, max_chars, hit_limit=hit_limit)
    assert status in STATUSES
    assert (status == "truncated") <= hit_limit
    if status in ("ok", "overlong-truncated", "truncated"):
        assert text and len(text) <= max_chars
    else:
        assert text == clean_enrichment("", subtitle)[0]
        # Empty only where the subtitle has nothing but whitespace and control codes.
        visible = [c for c in subtitle
                   if not c.isspace() and unicodedata.category(c) not in ("Cc", "Cs")]
        assert bool(text) == bool(visible)
    text.encode("utf-8")  # no lone surrogates: the column must go to Parquet


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1))
def test_clean_enrichment_never_returns_whitespace_padding(generated):
    text, _ = clean_enrichment(generated, "fallback text")
    assert text == text.strip() and text


def test_label_vote_cases():
    probs, status = parse_label_vote('{"angry": 3, "sad": 1}', LABELS)
    assert status == "ok"
    np.testing.assert_allclose(probs, [0, 0.75, 0, 0.25, 0, 0])
    probs, status = parse_label_vote('Here you go:\n```json\n{"Neutral": "40%", "happy": 0.6}\n```',
                                     LABELS)
    assert status == "ok"
    np.testing.assert_allclose(probs, [0.4, 0, 0.6, 0, 0, 0])
    probs, status = parse_label_vote('{"worried": 1} I hope this helps {!}', LABELS)
    assert status == "ok" and probs[LABELS.index("worried")] == 1.0


@pytest.mark.parametrize("generated,reason", [
    ("", "empty"), ("   ", "empty"), ("{}", "empty"),
    ("angry", "non-json"), ("[0.5, 0.5]", "non-json"),
    ('{"joy": 1}', "off-label"), ('{"sad": 1, "SAD": 1}', "duplicate-label"),
    ('{"sad": "high"}', "invalid-score"), ('{"sad": -1}', "invalid-score"),
    ('{"sad": true}', "invalid-score"), ('{"sad": NaN}', "invalid-score"),
    ('{"sad": 0, "happy": 0}', "all-zero"), ("[" * 5000, "non-json"),
    ('{"sad": 0.5, "hap', "truncated"), ('Sure! ```json\n{"angry": {"x": 1', "truncated"),
    ("{" * 5000, "truncated"),
])
def test_label_vote_failures(generated, reason):
    assert parse_label_vote(generated, LABELS) == (None, reason)


def test_label_vote_at_the_token_limit():
    assert parse_label_vote("The scores are", LABELS, hit_limit=True) == (None, "truncated")
    assert parse_label_vote("The scores are", LABELS) == (None, "non-json")
    # A complete object is a vote, whatever came after it.
    probs, status = parse_label_vote('{"sad": 1} and then some more wo', LABELS, hit_limit=True)
    assert status == "ok" and probs[LABELS.index("sad")] == 1


@settings(max_examples=300, deadline=None)
@given(st.text(), st.booleans())
def test_label_vote_is_total(generated, hit_limit):
    probs, status = parse_label_vote(generated, LABELS, hit_limit=hit_limit)
    assert status in VOTE_REASONS
    assert (probs is None) == (status != "ok")
    if probs is not None:
        assert probs.shape == (len(LABELS),) and np.all(probs >= 0)
        assert probs.sum() == pytest.approx(1.0)


@given(st.dictionaries(st.sampled_from(LABELS),
                       st.floats(0, 1e300, allow_nan=False) | st.integers(0, 10**6), min_size=1))
def test_label_vote_keeps_proportions(scores):
    probs, status = parse_label_vote(json.dumps(scores), LABELS)
    if all(v == 0 for v in scores.values()):
        assert (probs, status) == (None, "all-zero")
        return
    assert status == "ok" and probs.sum() == pytest.approx(1.0)
    values = np.array([float(scores.get(x, 0)) for x in LABELS])
    np.testing.assert_allclose(probs, values / values.max() / (values / values.max()).sum())


def test_result_columns_and_status():
    assert result_columns("enrich") == ["enriched_text", "enrich_status", "generated_tokens"]
    assert result_columns("vote") == [*VOTE_COLUMNS, "vote_status", "generated_tokens"]
    assert status_column("vote") == "vote_status" and status_column("enrich") == "enrich_status"
    with pytest.raises(ValueError, match="'enrich', 'vote'"):
        result_columns("score")


def test_error_status_is_one_short_line():
    assert error_status(RuntimeError("device lost\nmid-batch")) == (
        "error: RuntimeError: device lost mid-batch")
    assert error_status("EngineDeadError: x") == "error: EngineDeadError: x"
    assert len(error_status("y" * 5000)) <= 210


def test_task_result_with_a_status_skips_parsing():
    assert task_result("enrich", "ignored", SUB, status="empty-subtitle") == {
        "enriched_text": SUB_CLEAN, "enrich_status": "empty-subtitle", "generated_tokens": 0}
    vote = task_result("vote", '{"sad": 1}', SUB, status="error: boom", tokens=3)
    assert vote["vote_status"] == "error: boom" and vote["generated_tokens"] == 3
    assert all(math.isnan(vote[c]) for c in VOTE_COLUMNS)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["enrich", "vote"]), st.text(), st.text(), st.integers(0, 500),
       st.booleans())
def test_task_result_is_total_and_has_the_columns(task, generated, subtitle, tokens, hit_limit):
    row = task_result(task, generated, subtitle, tokens=tokens, hit_limit=hit_limit)
    assert list(row) == result_columns(task)
    assert row["generated_tokens"] == tokens
    if task == "vote":
        probs = np.array([row[c] for c in VOTE_COLUMNS])
        assert probs.dtype == np.float64
        if row["vote_status"] == "ok":
            assert probs.sum() == pytest.approx(1.0) and (probs >= 0).all()
        else:
            assert row["vote_status"] in VOTE_REASONS and np.isnan(probs).all()
    else:
        assert row["enrich_status"] in STATUSES
        row["enriched_text"].encode("utf-8")

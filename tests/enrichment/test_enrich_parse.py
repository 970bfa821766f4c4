"""Output cleaning: enriched text with the subtitle as fallback, and JSON label votes."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecmf.enrichment.parse import clean_enrichment, parse_label_vote
from ecmf.schema import LABELS

SUB = "  Where were you\nlast night? "
SUB_CLEAN = "Where were you last night?"
STATUSES = {"ok", "empty", "non-text", "label-named", "overlong-truncated"}


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


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.integers(1, 700))
def test_clean_enrichment_is_total(generated, subtitle, max_chars):
    text, status = clean_enrichment(generated, subtitle, max_chars)
    assert status in STATUSES
    if status in ("ok", "overlong-truncated"):
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
])
def test_label_vote_failures(generated, reason):
    assert parse_label_vote(generated, LABELS) == (None, reason)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_label_vote_is_total(generated):
    probs, status = parse_label_vote(generated, LABELS)
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

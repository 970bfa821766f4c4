"""Enrichment and label-vote prompts: both languages, the subtitle inside, no labels offered."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecmf.enrichment.prompts import (
    PROMPT_VERSION,
    ZH_LABEL_NAMES,
    as_text,
    enrichment_prompt,
    label_vote_prompt,
    row_context,
    task_prompt,
    vote_json_schema,
)
from ecmf.schema import LABELS

SUBTITLE = "I told you not to touch my things!"
ZH_SUBTITLE = "你怎么现在才来？"


def _label_words(text: str) -> list[str]:
    english = [x for x in LABELS if re.search(rf"\b{x}\b", text, re.IGNORECASE)]
    return english + [z for z in ZH_LABEL_NAMES.values() if z in text]


def test_version_is_set():
    assert PROMPT_VERSION == "enrich-v1"


@pytest.mark.parametrize("language,subtitle", [("en", SUBTITLE), ("zh", ZH_SUBTITLE),
                                               ("zh", SUBTITLE)])
def test_enrichment_prompt_holds_the_subtitle_and_no_label(language, subtitle):
    prompt = enrichment_prompt(subtitle, language)
    assert subtitle in prompt
    assert _label_words(prompt) == []


def test_templates_differ_by_language():
    en, zh = enrichment_prompt(SUBTITLE, "en"), enrichment_prompt(SUBTITLE, "zh")
    assert "emotional cues" in en and "情感线索" in zh
    assert "情感线索" not in en


def test_context_columns_are_rendered_and_empty_ones_dropped():
    prompt = enrichment_prompt(SUBTITLE, "en", {"visual": "a frowning man", "audio": "",
                                                "scene_note": "at night"})
    assert "Visual description: a frowning man" in prompt
    assert "Audio description" not in prompt
    assert "Scene note: at night" in prompt
    assert "seen and heard" in prompt
    assert "seen and heard" not in enrichment_prompt(SUBTITLE, "en", {"audio": " "})
    zh = enrichment_prompt(ZH_SUBTITLE, "zh", {"visual": "一个皱眉的男人"})
    assert "画面描述：一个皱眉的男人" in zh


@pytest.mark.parametrize("language,marker", [("en", "empty"), ("zh", "空")])
def test_empty_subtitle_says_so(language, marker):
    prompt = enrichment_prompt("   ", language)
    assert marker in prompt.split("\n\n")[1]


def test_subtitle_line_breaks_are_collapsed():
    prompt = enrichment_prompt("first line\n\nDescription: second", "en")
    assert 'Subtitle: "first line Description: second"' in prompt
    assert prompt.count("\n\nDescription:") == 1


def test_unknown_language_fails_with_the_known_ones():
    with pytest.raises(ValueError, match="'en', 'zh'"):
        enrichment_prompt(SUBTITLE, "fr")
    with pytest.raises(ValueError, match="'en', 'zh'"):
        label_vote_prompt(SUBTITLE, LABELS, "fr")


@pytest.mark.parametrize("language", ["en", "zh"])
def test_label_vote_prompt_lists_every_label(language):
    prompt = label_vote_prompt(SUBTITLE, LABELS, language)
    assert SUBTITLE in prompt and "JSON" in prompt
    for label in LABELS:
        assert f'"{label}"' in prompt
    if language == "zh":
        assert all(z in prompt for z in ZH_LABEL_NAMES.values())


def test_label_vote_prompt_rejects_bad_label_lists():
    for labels in ([], ["happy", "happy"], ["happy", ""]):
        with pytest.raises(ValueError):
            label_vote_prompt(SUBTITLE, labels)


@given(st.text(), st.sampled_from(["en", "zh"]))
def test_any_subtitle_makes_a_prompt_that_contains_it(subtitle, language):
    prompt = enrichment_prompt(subtitle, language)
    assert " ".join(subtitle.split()) in prompt


@given(st.text(), st.sampled_from(["en", "zh"]))
def test_any_subtitle_makes_a_vote_prompt_with_every_label(subtitle, language):
    prompt = label_vote_prompt(subtitle, LABELS, language)
    assert " ".join(subtitle.split()) in prompt
    assert all(f'"{x}"' in prompt for x in LABELS)


def test_task_prompt_dispatches():
    assert task_prompt("enrich", SUBTITLE, "zh") == enrichment_prompt(SUBTITLE, "zh")
    ctx = {"audio": "a shaky voice"}
    assert task_prompt("vote", SUBTITLE, "en", ctx, LABELS) == label_vote_prompt(
        SUBTITLE, LABELS, "en", ctx)
    with pytest.raises(ValueError, match="'enrich', 'vote'"):
        task_prompt("summary", SUBTITLE)


def test_vote_schema_requires_exactly_the_labels():
    schema = vote_json_schema(LABELS)
    assert schema["required"] == list(LABELS)
    assert set(schema["properties"]) == set(LABELS)
    assert schema["additionalProperties"] is False
    json.dumps(schema)  # travels as a JSON string to vLLM
    with pytest.raises(ValueError):
        vote_json_schema(["sad", "sad"])


def test_cells_and_context_rows():
    assert [as_text(v) for v in (None, float("nan"), b"caf\xc3\xa9", 3, "x")] == [
        "", "", "café", "3", "x"]
    assert row_context({"sample_id": "a", "text": "hi"}) is None
    assert row_context({"text": "hi", "audio_description": None}) == {"audio": ""}

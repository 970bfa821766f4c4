"""Cleaning of LLM outputs: enriched text (with the raw subtitle as fallback) and JSON label votes.

Pure and total: any string in, a value and a status out, never an exception.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from ecmf.enrichment.prompts import ZH_LABEL_NAMES
from ecmf.schema import LABELS

# Statuses of clean_enrichment: "ok" and "overlong-truncated" keep the generated text; the others
# keep the raw subtitle.
OK = "ok"
EMPTY = "empty"
NON_TEXT = "non-text"
LABEL_NAMED = "label-named"
TRUNCATED = "overlong-truncated"

# Below this share of letters (and digits) among visible characters the output is treated as noise.
_MIN_WORD_SHARE = 0.5
# Where a reply opens a new chat turn, the rest is not part of the description.
_TURN_MARKERS = re.compile(r"<\|[^|<>\n]{0,40}\|>|</s>|<s>|\[/?INST\]")
_LEADING_MARKERS = re.compile(r"^(?:\s*(?:" + _TURN_MARKERS.pattern + r")(?:assistant)?)+")
_PREFIX = re.compile(r"^\s*(?:enriched(?: text)?|description|answer|output|response|描述|回答)"
                     r"\s*[:：]\s*", re.IGNORECASE)
_QUOTES = "\"'“”‘’「」『』"
_LABEL_REPLY = re.compile(r"^(?:the\s+)?(?:emotion|label|class|category|情感|情绪|类别)?\s*"
                          r"(?:is|[:：=])?\s*(?P<word>[^\W\d_]+)\s*[.!。！]?$", re.IGNORECASE)


def _sanitize(text: str) -> str:
    """Drop characters Parquet or a tokenizer may choke on (lone surrogates, control codes) and
    collapse whitespace runs."""
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cs" or (cat == "Cc" and ch not in "\n\t"):
            continue
        kept.append(ch)
    return " ".join("".join(kept).split())


def _is_text(text: str) -> bool:
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return False
    wordy = sum(1 for ch in visible if unicodedata.category(ch)[0] in "LN")
    letters = any(unicodedata.category(ch)[0] == "L" for ch in visible)
    return letters and wordy / len(visible) >= _MIN_WORD_SHARE


def _names_label_only(text: str, labels: Sequence[str]) -> bool:
    m = _LABEL_REPLY.match(text)
    if not m:
        return False
    word = m.group("word").lower()
    names = {x.lower() for x in labels} | {ZH_LABEL_NAMES[x] for x in labels if x in ZH_LABEL_NAMES}
    return word in names


def _truncate(text: str, max_chars: int) -> str:
    cut = text[:max_chars]
    # End on a sentence (or at least a word) when that keeps most of the text.
    for marks in (".!?。！？", " "):
        end = max(cut.rfind(m) for m in marks)
        if end >= max_chars // 2:
            return cut[: end + 1].strip()
    return cut.strip()


def clean_enrichment(generated: str, subtitle: str, max_chars: int = 600, *,
                     labels: Sequence[str] = LABELS) -> tuple[str, str]:
    """(text, status) from an LLM's enrichment of `subtitle`.

    status "ok": the cleaned generation. "overlong-truncated": the generation cut to `max_chars`.
    "empty", "non-text" (mostly symbols or undecodable bytes) and "label-named" (the reply is only
    a class name, a label guess rather than a description): the raw subtitle, whitespace collapsed.
    Label words inside a longer description are kept: describing someone as worried is a cue.
    """
    if max_chars < 1:
        raise ValueError(f"clean_enrichment max_chars: expected >= 1, got {max_chars}")
    fallback = _sanitize(subtitle) if isinstance(subtitle, str) else ""
    if not isinstance(generated, str):
        return fallback, EMPTY
    # Markers before the text open the reply; the first one after it opens another turn.
    text = _LEADING_MARKERS.sub("", generated)
    text = _TURN_MARKERS.split(text, maxsplit=1)[0]
    text = _sanitize(_PREFIX.sub("", _sanitize(text))).strip(_QUOTES + " ")
    if not text:
        return fallback, EMPTY
    if not _is_text(text):
        return fallback, NON_TEXT
    if _names_label_only(text, labels):
        return fallback, LABEL_NAMED
    if len(text) > max_chars:
        return _truncate(text, max_chars), TRUNCATED
    return text, OK


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def _json_object(text: str):
    """The first JSON object in `text` (bare, fenced, or amid prose), or None."""
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    decoder = json.JSONDecoder()
    for cand in candidates:
        try:
            value = json.loads(cand)
        except Exception:  # ValueError, RecursionError on deep nesting
            brace = cand.find("{")
            if brace < 0:
                continue
            try:  # an object followed by trailing prose
                value, _ = decoder.raw_decode(cand, brace)
            except Exception:
                continue
        if isinstance(value, dict):
            return value
    return None


def _score(value) -> float | None:
    """A finite score >= 0 from a JSON number or numeric string ("0.3", "30%"), else None."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, str):
            value = value.strip()
            score = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        else:
            score = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return score if math.isfinite(score) and score >= 0 else None


def parse_label_vote(generated: str, labels: Sequence[str]) -> tuple[np.ndarray | None, str]:
    """(probabilities over `labels`, "ok") from an LLM's JSON vote, or (None, reason).

    Keys match labels case-insensitively; missing labels score 0; scores are renormalised to sum
    to 1. Reasons: "empty", "non-json", "off-label" (a key that is not a label), "duplicate-label",
    "invalid-score" (not a finite number >= 0), "all-zero".
    """
    if not isinstance(generated, str) or not generated.strip():
        return None, "empty"
    obj = _json_object(generated)
    if obj is None:
        return None, "non-json"
    if not obj:
        return None, "empty"
    index = {x.lower(): i for i, x in enumerate(labels)}
    scores = np.zeros(len(index), dtype=np.float64)
    seen = set()
    for key, value in obj.items():
        i = index.get(str(key).strip().lower())
        if i is None:
            return None, "off-label"
        if i in seen:
            return None, "duplicate-label"
        seen.add(i)
        score = _score(value)
        if score is None:
            return None, "invalid-score"
        scores[i] = score
    top = scores.max()
    if top <= 0:
        return None, "all-zero"
    scores /= top  # scale first so that huge scores cannot overflow the sum
    return scores / scores.sum(), "ok"

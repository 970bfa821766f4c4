"""Cleaning of LLM outputs: enriched text (with the raw subtitle as fallback) and JSON label votes,
and the output columns both backends write. Pure and total: any string in, a value and a status out.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from ecmf.enrichment.prompts import TASKS, ZH_LABEL_NAMES
from ecmf.schema import ENRICH_STATUS, ENRICHED_TEXT, LABELS

# Statuses of clean_enrichment: "ok", "overlong-truncated" and "truncated" keep the generated text;
# the others keep the raw subtitle.
OK = "ok"
EMPTY = "empty"
NON_TEXT = "non-text"
LABEL_NAMED = "label-named"
TRUNCATED = "overlong-truncated"
CUT_AT_LIMIT = "truncated"  # generation stopped at the token limit (also a vote reason)
# Set by the backends rather than the parsers: the model was not asked, or the request failed.
EMPTY_SUBTITLE = "empty-subtitle"
ERROR_PREFIX = "error"

# Output columns besides enriched_text / enrich_status (schema.py) and sample_id.
GENERATED_TOKENS = "generated_tokens"  # tokens the model generated for the row (0: not asked)
VOTE_PREFIX = "vote_"  # vote_<label>: probability of the class, NaN where the vote is missing
VOTE_STATUS = "vote_status"  # "ok" or why the vote is missing

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


def _truncate(text: str, max_chars: int, marks: tuple[str, ...] = (".!?。！？", " ")) -> str:
    cut = text[:max_chars]
    # End on a sentence (or at least a word) when that keeps most of the text.
    for group in marks:
        end = max(cut.rfind(m) for m in group)
        if end >= max_chars // 2:
            return cut[: end + 1].strip()
    return cut.strip()


def clean_enrichment(generated: str, subtitle: str, max_chars: int = 600, *,
                     labels: Sequence[str] = LABELS, hit_limit: bool = False) -> tuple[str, str]:
    """(text, status) from an LLM's enrichment of `subtitle`.

    status "ok": the cleaned generation. "overlong-truncated": the generation cut to `max_chars`.
    "truncated" (`hit_limit`: generation stopped at its token limit): the generation, cut back to
    its last complete sentence where that keeps at least half of it.
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
    if hit_limit:
        # A half sentence at the end reads as noise to the text encoder.
        return _truncate(text, len(text), marks=(".!?。！？",)), CUT_AT_LIMIT
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


def _unclosed(text: str) -> bool:
    """True when a JSON object opens and is never closed: output cut off mid-object."""
    start = text.find("{")
    return start >= 0 and text.count("{", start) > text.count("}", start)


def parse_label_vote(generated: str, labels: Sequence[str], *,
                     hit_limit: bool = False) -> tuple[np.ndarray | None, str]:
    """(probabilities over `labels`, "ok") from an LLM's JSON vote, or (None, reason).

    Keys match labels case-insensitively; missing labels score 0; scores are renormalised to sum
    to 1. Reasons: "empty", "non-json", "truncated" (no complete object, and an object left open or
    `hit_limit`: generation stopped at its token limit), "off-label" (a key that is not a label),
    "duplicate-label", "invalid-score" (not a finite number >= 0), "all-zero".
    """
    if not isinstance(generated, str) or not generated.strip():
        return None, "empty"
    obj = _json_object(generated)
    if obj is None:
        return None, CUT_AT_LIMIT if hit_limit or _unclosed(generated) else "non-json"
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


def vote_column(label: str) -> str:
    return VOTE_PREFIX + label


def result_columns(task: str, labels: Sequence[str] = LABELS) -> list[str]:
    """The columns a backend adds for `task`, in order (both backends add exactly these)."""
    if task == "enrich":
        return [ENRICHED_TEXT, ENRICH_STATUS, GENERATED_TOKENS]
    if task == "vote":
        return [*(vote_column(x) for x in labels), VOTE_STATUS, GENERATED_TOKENS]
    raise ValueError(f"LLM task {task!r}: expected one of {list(TASKS)}")


def status_column(task: str) -> str:
    """The column that says why a result of `task` is what it is ("ok" or a reason)."""
    return result_columns(task)[-2]


def error_status(error: BaseException | str) -> str:
    """"error: <type>: <message>" on one line, short enough for a Parquet status column."""
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    return f"{ERROR_PREFIX}: " + " ".join(str(error).split())[:200]


def task_result(task: str, generated: str | None, subtitle: str, *, labels: Sequence[str] = LABELS,
                tokens: int = 0, hit_limit: bool = False, status: str | None = None) -> dict:
    """The result columns of one sample (see `result_columns`) from the model's output.

    `status` set (EMPTY_SUBTITLE, an error_status) means there is no output to parse: the enriched
    text falls back to the subtitle and the vote is missing, with that status as the reason.
    """
    if task == "enrich":
        if status is None:
            text, status = clean_enrichment(generated, subtitle, hit_limit=hit_limit, labels=labels)
        else:
            text = clean_enrichment("", subtitle)[0]
        return {ENRICHED_TEXT: text, ENRICH_STATUS: status, GENERATED_TOKENS: int(tokens)}
    columns = result_columns(task, labels)  # validates the task
    probs = None
    if status is None:
        probs, status = parse_label_vote(generated, labels, hit_limit=hit_limit)
    values = [float("nan")] * len(labels) if probs is None else [float(p) for p in probs]
    return dict(zip(columns, [*values, status, int(tokens)], strict=True))

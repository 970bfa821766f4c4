"""Prompt templates for LLM subtitle enrichment and LLM label votes, in English and Chinese.

Pure functions: strings in, strings out. Bump PROMPT_VERSION whenever a template's wording changes:
the cache re-runs every sample whose stored prompt version differs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

PROMPT_VERSION = "enrich-v1"
LANGUAGES = ("en", "zh")
# What an LLM pass produces: "enrich" (enriched_text) or "vote" (vote_<label> probabilities).
TASKS = ("enrich", "vote")
# Optional description columns a dataset may carry, passed to the prompts as context.
CONTEXT_COLUMNS = {"visual": "visual_description", "audio": "audio_description"}

# Chinese names of the MER2025 classes: the Chinese vote prompt shows them beside the English keys,
# and the output parser recognises a reply that is nothing but one of them.
ZH_LABEL_NAMES = {"neutral": "中性", "angry": "生气", "happy": "高兴", "sad": "悲伤",
                  "worried": "担心", "surprise": "惊讶"}

# Context columns a caller may pass (e.g. captions of the frames, a description of the voice).
_CONTEXT_NAMES = {
    "en": {"visual": "Visual description", "audio": "Audio description"},
    "zh": {"visual": "画面描述", "audio": "声音描述"},
}

# The enrichment templates describe cues and never list classes: naming the label set would turn
# the enriched text into a label guess, and the text feature would leak a (noisy) prediction.
_ENRICH = {
    "en": (
        "You help recognise emotions in video clips. Below is the subtitle of one clip{extra}.\n"
        "Describe the emotional cues it carries: the speaker's likely emotional state, the tone "
        "of voice, and the context the words imply. Write two or three plain sentences in your "
        "own words. Describe the cues; do not answer with a single emotion category.\n\n"
        "{body}\n\nDescription:"
    ),
    "zh": (
        "你在帮助识别视频片段中的情感。下面是一个片段的字幕{extra}。\n"
        "请描述其中的情感线索：说话人可能的情绪状态、语气，以及话语隐含的情境。"
        "用自己的话写两三句，描述这些线索，不要只回答一个情感类别词。\n\n"
        "{body}\n\n描述："
    ),
}
_EXTRA = {"en": ", with notes on what is seen and heard", "zh": "，以及画面和声音的说明"}
_SUBTITLE = {"en": 'Subtitle: "{}"', "zh": "字幕：“{}”"}
_EMPTY_SUBTITLE = {"en": "Subtitle: (empty: nothing is said in this clip)",
                   "zh": "字幕：（空：这个片段里没有人说话）"}

_VOTE = {
    "en": (
        "You help recognise emotions in video clips. Below is the subtitle of one clip{extra}.\n"
        "Rate how well each of these emotion classes fits the speaker: {names}.\n"
        "Answer with one JSON object and nothing else: every class as a key, a score between 0 "
        "and 1 as its value, the scores summing to 1, like {example}\n\n{body}\n\nJSON:"
    ),
    "zh": (
        "你在帮助识别视频片段中的情感。下面是一个片段的字幕{extra}。\n"
        "请评估以下每个情感类别与说话人的契合程度：{names}。\n"
        "只回答一个 JSON 对象，不要其他内容：以每个类别的英文名为键，0 到 1 之间的分数为值，"
        "分数之和为 1，格式如 {example}\n\n{body}\n\nJSON："
    ),
}


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"prompt language {language!r}: expected one of {list(LANGUAGES)}")


def _one_line(text: str) -> str:
    # A subtitle's own line breaks would blur where it ends and the instructions resume.
    return " ".join(str(text).split())


def _body(subtitle: str, language: str, context: dict[str, str] | None) -> str:
    sub = _one_line(subtitle)
    lines = [_SUBTITLE[language].format(sub) if sub else _EMPTY_SUBTITLE[language]]
    names = _CONTEXT_NAMES[language]
    sep = ": " if language == "en" else "："
    for key, value in (context or {}).items():
        value = _one_line(value or "")
        if value:
            name = names.get(key, key.replace("_", " ").capitalize())
            lines.append(f"{name}{sep}{value}")
    return "\n".join(lines)


def _extra(language: str, context: dict[str, str] | None) -> str:
    has_context = any(_one_line(v or "") for v in (context or {}).values())
    return _EXTRA[language] if has_context else ""


def enrichment_prompt(subtitle: str, language: str = "en",
                      context: dict[str, str] | None = None) -> str:
    """The prompt asking an LLM to describe a subtitle's emotional cues without naming a class.

    `context` maps optional description columns ("visual", "audio", or any other name) to text;
    empty values are left out. An empty subtitle still yields a prompt, which says the subtitle is
    empty (useful with context); the transformers backend skips empty subtitles without asking.
    """
    _check_language(language)
    return _ENRICH[language].format(extra=_extra(language, context),
                                    body=_body(subtitle, language, context))


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = list(labels)
    if not labels or any(not isinstance(x, str) or not x.strip() for x in labels):
        raise ValueError(f"label vote: expected a non-empty list of class names, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"label vote: class names repeat in {labels!r}")
    return labels


def label_vote_prompt(subtitle: str, labels: Sequence[str], language: str = "en",
                      context: dict[str, str] | None = None) -> str:
    """The prompt asking an LLM for a JSON object {label: score} over `labels` (keys in English,
    whatever the language, so `parse.parse_label_vote` reads both)."""
    _check_language(language)
    labels = _check_labels(labels)
    if language == "zh":
        names = "、".join(f"{x}（{ZH_LABEL_NAMES[x]}）" if x in ZH_LABEL_NAMES else x
                         for x in labels)
    else:
        names = ", ".join(labels)
    example = "{" + ", ".join(f"{json.dumps(x, ensure_ascii=False)}: <score>" for x in labels) + "}"
    return _VOTE[language].format(extra=_extra(language, context), names=names, example=example,
                                  body=_body(subtitle, language, context))


def vote_json_schema(labels: Sequence[str]) -> dict:
    """JSON schema of a label vote: one number per class, every class required, nothing else.

    vLLM's structured outputs decode under it; scores are not bounded here (backends differ in
    which numeric keywords they support) because `parse.parse_label_vote` renormalises anyway.
    """
    labels = _check_labels(labels)
    return {"type": "object", "properties": {x: {"type": "number"} for x in labels},
            "required": labels, "additionalProperties": False}


def as_text(value) -> str:
    """A text cell as str: None and NaN (missing in pandas / Arrow) read as empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def row_context(row) -> dict[str, str] | None:
    """The context descriptions of one row (a mapping of column -> cell), None when it has none."""
    ctx = {k: as_text(row[col]) for k, col in CONTEXT_COLUMNS.items() if col in row}
    return ctx or None


def task_prompt(task: str, subtitle: str, language: str = "en",
                context: dict[str, str] | None = None, labels: Sequence[str] = ()) -> str:
    """The prompt of `task` ("enrich" or "vote"; a vote needs `labels`) for one subtitle."""
    if task == "enrich":
        return enrichment_prompt(subtitle, language, context)
    if task == "vote":
        return label_vote_prompt(subtitle, labels, language, context)
    raise ValueError(f"LLM task {task!r}: expected one of {list(TASKS)}")


def chat_text(tokenizer, prompt: str) -> str:
    """`prompt` as the one user turn of the model's chat template, ready for generation; as it
    is for a model without a template (a base LM)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)

"""TransformersBackend called directly on numpy batches (no Ray) with the tiny causal LM."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from ecmf.config import EnrichConfig
from ecmf.enrichment.backends import BACKENDS, Generation, TransformersBackend, transformers_backend
from ecmf.schema import LABELS

STATUSES = {"ok", "empty", "non-text", "label-named", "overlong-truncated", "truncated",
            "empty-subtitle"}
VOTE_COLUMNS = [f"vote_{x}" for x in LABELS]
CUSTOM = ["neutral", "joy", "anger"]  # another corpus' classes


def _batch(texts) -> dict[str, np.ndarray]:
    return {"sample_id": np.array([f"s{i}" for i in range(len(texts))], dtype=object),
            "text": np.array(texts, dtype=object),
            "label": np.arange(len(texts))}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backend(tiny_llm) -> TransformersBackend:
    return TransformersBackend(EnrichConfig(max_new_tokens=12, batch_size=4), tiny_llm)


def test_registered_by_name():
    assert BACKENDS.get("Transformers") is transformers_backend
    assert BACKENDS.names() == ["transformers", "vllm"]
    with pytest.raises(KeyError, match=r"available: \['transformers', 'vllm'\]"):
        BACKENDS.get("nope")


def _fake(texts, tokens=5, hit_limit=False):
    """A stand-in for `generate` that records its prompts and answers `texts` in turn."""
    seen = []

    def generate(prompts):
        seen.extend(prompts)
        return [Generation(texts[k % len(texts)], tokens, hit_limit) for k in range(len(prompts))]

    return generate, seen


def test_adds_columns_and_keeps_the_batch(backend):
    texts = ["I can't believe you did that!", "", "Fine. Whatever.", None, float("nan"), "   "]
    batch = _batch(texts)
    out = backend(batch)
    assert set(out) == {"sample_id", "text", "label", "enriched_text", "enrich_status",
                        "generated_tokens"}
    for col in ("sample_id", "text", "label"):
        assert out[col] is batch[col]
    assert len(out["enriched_text"]) == len(out["enrich_status"]) == len(texts)
    assert backend.device == "cpu"
    status = list(out["enrich_status"])
    assert set(status) <= STATUSES
    for i in (1, 3, 4, 5):  # nothing to enrich: the model is not asked
        assert (out["enriched_text"][i], status[i]) == ("", "empty-subtitle")
        assert out["generated_tokens"][i] == 0
    for i in (0, 2):
        assert status[i] != "empty-subtitle" and out["enriched_text"][i]
        assert 1 <= out["generated_tokens"][i] <= 12


def test_generation_is_deterministic(backend, tiny_llm):
    batch = _batch(["Why would you say that?", "We won! We actually won!", "Leave me alone."])
    first = backend(batch)
    again = backend(batch)
    other = TransformersBackend(EnrichConfig(max_new_tokens=12), tiny_llm)(batch)
    for col in ("enriched_text", "enrich_status"):
        assert list(first[col]) == list(again[col]) == list(other[col])
    # The tiny LM's words are random but real text: the cleaner keeps them. It rarely emits EOS,
    # so most rows stop at the token limit ("truncated") and keep their text.
    kept = [i for i, s in enumerate(first["enrich_status"]) if s in ("ok", "truncated")]
    assert kept
    for i in kept:
        assert first["enriched_text"][i] and first["enriched_text"][i] != batch["text"][i]


def test_only_new_tokens_are_decoded(backend):
    out = backend.generate(["Say something about the weather, please."])
    assert len(out) == 1 and "weather, please" not in out[0].text


def test_token_counts_stop_at_eos(backend):
    prompts = ["Why?", "We won! We actually won! Tell me how that feels, in detail."]
    gens = backend.generate(prompts)
    for p, g in zip(prompts, gens, strict=True):
        again = backend.generate([p])[0]  # alone: no padding from a longer neighbour
        assert g.tokens == again.tokens and g.hit_limit == again.hit_limit
        assert 1 <= g.tokens <= 12
        assert g.hit_limit == (g.tokens == 12)
    eos = backend.tokenizer.eos_token_id
    ids = backend.tokenizer([backend._format("Why?")], return_tensors="pt",
                            add_special_tokens=False)["input_ids"]
    out = backend.model.generate(ids, do_sample=False, max_new_tokens=12,
                                 pad_token_id=backend.tokenizer.pad_token_id)[0, ids.shape[1]:]
    ended = eos in out.tolist()
    assert gens[0].hit_limit == (not ended)


def test_hitting_the_token_limit_is_recorded(backend, monkeypatch):
    fake, _ = _fake(["The speaker sounds flat and tired today. He seems"], tokens=12,
                    hit_limit=True)
    monkeypatch.setattr(backend, "generate", fake)
    out = backend(_batch(["Leave me alone."]))
    assert list(out["enrich_status"]) == ["truncated"]
    assert list(out["enriched_text"]) == ["The speaker sounds flat and tired today."]
    assert list(out["generated_tokens"]) == [12]


def test_context_columns_reach_the_prompt(backend, monkeypatch):
    fake, seen = _fake(["A tense voice."])
    monkeypatch.setattr(backend, "generate", fake)
    batch = _batch(["Stop it."])
    batch["visual_description"] = np.array(["a man slams a door"], dtype=object)
    out = backend(batch)
    assert "Visual description: a man slams a door" in seen[0]
    assert list(out["enriched_text"]) == ["A tense voice."]


def test_zh_prompts(tiny_llm, monkeypatch):
    zh = TransformersBackend(EnrichConfig(language="zh", max_new_tokens=4), tiny_llm)
    fake, seen = _fake([""])
    monkeypatch.setattr(zh, "generate", fake)
    out = zh(_batch(["你怎么现在才来？"]))
    assert "字幕：“你怎么现在才来？”" in seen[0]
    assert list(out["enrich_status"]) == ["empty"]
    assert list(out["enriched_text"]) == ["你怎么现在才来？"]


def test_a_failed_batch_is_retried_one_by_one(backend, monkeypatch):
    real = backend.model.generate
    texts = ["One sentence here.", "Another one there."]
    alone = [backend(_batch([t]))["enriched_text"][0] for t in texts]
    sizes = []

    def fails_on_batches(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if sizes[-1] > 1:
            raise RuntimeError("CUDA out of memory")
        return real(**kwargs)

    monkeypatch.setattr(backend.model, "generate", fails_on_batches)
    out = backend(_batch(texts))
    assert sizes == [2, 1, 1]  # the batch failed, then each sample went alone
    assert not any(s.startswith("error") for s in out["enrich_status"])
    assert list(out["enriched_text"]) == alone  # greedy: what each gives on its own


def test_generation_errors_keep_the_subtitle(backend, monkeypatch):
    def boom(**kwargs):
        raise RuntimeError("device lost\nmid-batch")

    monkeypatch.setattr(backend.model, "generate", boom)
    out = backend(_batch([" Where  were you? ", ""]))
    assert list(out["enriched_text"]) == ["Where were you?", ""]
    assert list(out["enrich_status"]) == ["error: RuntimeError: device lost mid-batch",
                                          "empty-subtitle"]


def test_missing_columns_are_named(backend):
    with pytest.raises(KeyError, match=r"columns \['text'\]; the batch has \['sample_id'\]"):
        backend({"sample_id": np.array(["a"], dtype=object)})


@pytest.fixture(scope="module")
def voter(tiny_llm) -> TransformersBackend:
    return TransformersBackend(EnrichConfig(vote_max_new_tokens=10), tiny_llm, task="vote")


def test_vote_columns_from_the_real_model(voter):
    out = voter(_batch(["I can't believe you did that!", ""]))
    assert set(out) == {"sample_id", "text", "label", *VOTE_COLUMNS, "vote_status",
                        "generated_tokens"}
    assert voter.max_new_tokens == 10
    probs = np.stack([out[c] for c in VOTE_COLUMNS], axis=1).astype(float)
    assert probs.shape == (2, len(LABELS))
    # A random tiny LM writes no JSON: the vote is missing with a reason, never an exception.
    assert out["vote_status"][0] in {"non-json", "truncated", "empty", "off-label"}
    assert np.isnan(probs[0]).all()
    assert out["vote_status"][1] == "empty-subtitle" and np.isnan(probs[1]).all()


def test_votes_parse_json_and_mark_bad_output(voter, monkeypatch):
    answers = ['{"angry": 3, "sad": 1}', "I think angry.", '{"joy": 1}', '{"happy": 0.5, "sa']
    fake, seen = _fake(answers)
    monkeypatch.setattr(voter, "generate", fake)
    out = voter(_batch(["One.", "Two.", "Three.", "Four."]))
    assert list(out["vote_status"]) == ["ok", "non-json", "off-label", "truncated"]
    probs = np.stack([out[c] for c in VOTE_COLUMNS], axis=1).astype(float)
    np.testing.assert_allclose(probs[0], [0, 0.75, 0, 0.25, 0, 0])
    assert np.isnan(probs[1:]).all()
    assert all('"surprise"' in p and "JSON" in p for p in seen)
    assert list(out["generated_tokens"]) == [5] * 4


def test_every_backend_takes_the_label_set():
    for name in BACKENDS.names():
        param = inspect.signature(BACKENDS.get(name)).parameters["labels"]
        assert param.default == LABELS, name


def test_votes_over_another_label_set(tiny_llm, monkeypatch):
    voter = TransformersBackend(EnrichConfig(vote_max_new_tokens=10), tiny_llm, task="vote",
                                labels=CUSTOM)
    answers = ['{"joy": 2, "anger": 2}', '{"happy": 1}', '{"neutral": 1, "joy": 0, "anger": 0}']
    fake, seen = _fake(answers)
    monkeypatch.setattr(voter, "generate", fake)
    out = voter(_batch(["One.", "Two.", "", "Three."]))
    columns = [f"vote_{x}" for x in CUSTOM]
    assert set(out) == {"sample_id", "text", "label", *columns, "vote_status", "generated_tokens"}
    assert list(out["vote_status"]) == ["ok", "off-label", "empty-subtitle", "ok"]
    probs = np.stack([out[c] for c in columns], axis=1).astype(float)
    np.testing.assert_allclose(probs[[0, 3]], [[0, 0.5, 0.5], [1, 0, 0]])
    assert np.isnan(probs[[1, 2]]).all()
    assert len(seen) == 3
    for prompt in seen:
        assert all(f'"{x}"' in prompt for x in CUSTOM)
        assert "worried" not in prompt and '"happy"' not in prompt
    # An empty batch has the custom columns too.
    empty = voter(_batch([]))
    assert {c for c in empty if c.startswith("vote_")} == {*columns, "vote_status"}


def test_vote_errors_are_recorded(voter, monkeypatch):
    monkeypatch.setattr(voter.model, "generate", lambda **kw: (_ for _ in ()).throw(
        RuntimeError("out of memory")))
    out = voter(_batch(["Stop it."]))
    assert list(out["vote_status"]) == ["error: RuntimeError: out of memory"]
    assert np.isnan(np.array([out[c][0] for c in VOTE_COLUMNS], dtype=float)).all()


def test_unknown_task_fails_at_construction(tiny_llm):
    with pytest.raises(ValueError, match=r"task 'summarise'.*\['enrich', 'vote'\]"):
        TransformersBackend(EnrichConfig(), tiny_llm, task="summarise")


@pytest.mark.parametrize("task", ["enrich", "vote"])
def test_an_empty_batch_keeps_the_column_types(tiny_llm, task):
    out = TransformersBackend(EnrichConfig(), tiny_llm, task=task)(_batch([]))
    assert out["generated_tokens"].dtype == np.int64 and len(out["generated_tokens"]) == 0
    status = "enrich_status" if task == "enrich" else "vote_status"
    assert out[status].dtype == object
    if task == "vote":
        assert out["vote_happy"].dtype == np.float64

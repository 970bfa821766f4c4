"""TransformersBackend called directly on numpy batches (no Ray) with the tiny causal LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecmf.config import EnrichConfig
from ecmf.enrichment.backends import BACKENDS, TransformersBackend

STATUSES = {"ok", "empty", "non-text", "label-named", "overlong-truncated", "empty-subtitle"}


def _batch(texts) -> dict[str, np.ndarray]:
    return {"sample_id": np.array([f"s{i}" for i in range(len(texts))], dtype=object),
            "text": np.array(texts, dtype=object),
            "label": np.arange(len(texts))}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny LM is bound by thread hand-offs: on a busy 2-core machine two threads run it ~10x
    # slower than one. (Ray actors get OMP_NUM_THREADS from their num_cpus already.)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backend(tiny_llm) -> TransformersBackend:
    return TransformersBackend(EnrichConfig(max_new_tokens=12, batch_size=4), tiny_llm)


def test_registered_by_name():
    assert BACKENDS.get("Transformers") is TransformersBackend
    with pytest.raises(KeyError, match="available: .*'transformers'"):
        BACKENDS.get("nope")


def test_adds_columns_and_keeps_the_batch(backend):
    texts = ["I can't believe you did that!", "", "Fine. Whatever.", None, float("nan"), "   "]
    batch = _batch(texts)
    out = backend(batch)
    assert set(out) == {"sample_id", "text", "label", "enriched_text", "enrich_status"}
    for col in ("sample_id", "text", "label"):
        assert out[col] is batch[col]
    assert len(out["enriched_text"]) == len(out["enrich_status"]) == len(texts)
    assert backend.device == "cpu"
    status = list(out["enrich_status"])
    assert set(status) <= STATUSES
    for i in (1, 3, 4, 5):  # nothing to enrich: the model is not asked
        assert (out["enriched_text"][i], status[i]) == ("", "empty-subtitle")
    for i in (0, 2):
        assert status[i] != "empty-subtitle" and out["enriched_text"][i]


def test_generation_is_deterministic(backend, tiny_llm):
    batch = _batch(["Why would you say that?", "We won! We actually won!", "Leave me alone."])
    first = backend(batch)
    again = backend(batch)
    other = TransformersBackend(EnrichConfig(max_new_tokens=12), tiny_llm)(batch)
    for col in ("enriched_text", "enrich_status"):
        assert list(first[col]) == list(again[col]) == list(other[col])
    # The tiny LM's words are random but real text: the cleaner keeps them.
    assert "ok" in set(first["enrich_status"])


def test_only_new_tokens_are_decoded(backend):
    out = backend.generate(["Say something about the weather, please."])
    assert len(out) == 1 and "weather, please" not in out[0]


def test_context_columns_reach_the_prompt(backend, monkeypatch):
    seen = []
    monkeypatch.setattr(backend, "generate", lambda prompts: seen.extend(prompts) or
                        ["A tense voice."] * len(prompts))
    batch = _batch(["Stop it."])
    batch["visual_description"] = np.array(["a man slams a door"], dtype=object)
    out = backend(batch)
    assert "Visual description: a man slams a door" in seen[0]
    assert list(out["enriched_text"]) == ["A tense voice."]


def test_zh_prompts(tiny_llm, monkeypatch):
    zh = TransformersBackend(EnrichConfig(language="zh", max_new_tokens=4), tiny_llm)
    seen = []
    monkeypatch.setattr(zh, "generate", lambda prompts: seen.extend(prompts) or [""] * len(prompts))
    out = zh(_batch(["你怎么现在才来？"]))
    assert "字幕：“你怎么现在才来？”" in seen[0]
    assert list(out["enrich_status"]) == ["empty"]
    assert list(out["enriched_text"]) == ["你怎么现在才来？"]


def test_a_failed_batch_is_retried_one_by_one(backend, monkeypatch):
    real = backend.model.generate

    def fails_on_batches(**kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise RuntimeError("CUDA out of memory")
        return real(**kwargs)

    monkeypatch.setattr(backend.model, "generate", fails_on_batches)
    out = backend(_batch(["One sentence here.", "Another one there."]))
    assert not any(s.startswith("error") for s in out["enrich_status"])


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

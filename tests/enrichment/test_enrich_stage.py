"""`ecmf enrich` end to end: both tasks into Parquet, and the cache across re-runs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from ecmf.config import Config, CorpusConfig, EnrichConfig
from ecmf.enrichment import pipeline, prompts
from ecmf.enrichment.parse import task_result
from ecmf.schema import LABELS
from ecmf.stages.enrich import enrich_corpus, run_task

pytestmark = pytest.mark.ray  # every test here starts Ray

N = 12
VOTES = [f"vote_{x}" for x in LABELS]
CUSTOM = ["neutral", "joy", "anger"]  # another corpus' classes
KEYS = ["model", "prompt_version", "input_hash"]


def _write_corpus(root, english):
    root.mkdir(parents=True, exist_ok=True)
    names = [f"sample_{i:03d}" for i in range(len(english))]
    pd.DataFrame({"name": names, "chinese": ["你好"] * len(names), "english": english}) \
        .to_csv(root / "subtitle_chieng.csv", index=False)
    pd.DataFrame({"name": names[:6], "discrete": list(LABELS), "valence": 0.0}) \
        .to_csv(root / "track1_train_disdim.csv", index=False)
    pd.DataFrame({"name": names[6:]}).to_csv(root / "track_all_candidates.csv", index=False)


def _english(changed: int | None = None) -> list[str]:
    texts = ["" if i in (3, 8) else f"Clip {i}: why would you do that to me?" for i in range(N)]
    if changed is not None:
        texts[changed] = "A brand new line, said with a smile."
    return texts


@pytest.fixture
def cfg(tmp_path, tiny_llm) -> Config:
    _write_corpus(tmp_path / "corpus", _english())
    return Config(workdir=str(tmp_path / "run"), corpus=CorpusConfig(root=str(tmp_path / "corpus")),
                  enrich=EnrichConfig(model=tiny_llm, tasks=["enrich", "vote"], max_new_tokens=8,
                                      vote_max_new_tokens=8, batch_size=4))


def _fake_backend(ds, cfg, model_path, task="enrich", labels=LABELS):
    """Rows answered without a model (a vote all on the second label): the cache lives in the
    driver, the tests count samples."""
    answer = "The speaker sounds calm." if task == "enrich" else json.dumps({labels[1]: 1})

    def answer_batch(batch: pd.DataFrame) -> pd.DataFrame:
        rows = [task_result(task, answer, t, labels=labels, tokens=4) for t in batch["text"]]
        return pd.concat([batch.reset_index(drop=True), pd.DataFrame(rows)], axis=1)

    return ds.map_batches(answer_batch, batch_format="pandas")


@pytest.fixture(params=["model"])
def calls(request, monkeypatch):
    """How many samples each call of enrich_dataset gets (the stage calls it through its module);
    with the "fake" parameter, no model answers them."""
    seen = []
    real = pipeline.enrich_dataset if request.param == "model" else _fake_backend

    def counting(ds, cfg, model_path, task="enrich", labels=LABELS):
        seen.append((task, ds.count()))
        return real(ds, cfg, model_path, task, labels)

    monkeypatch.setattr(pipeline, "enrich_dataset", counting)
    return seen


def _with(cfg: Config, **enrich) -> Config:
    return dataclasses.replace(cfg, enrich=dataclasses.replace(cfg.enrich, **enrich))


def test_both_tasks_then_everything_cached(ray_local, cfg, calls, tmp_path):
    first = enrich_corpus(cfg)
    assert calls == [("enrich", N), ("vote", N)]
    for task in ("enrich", "vote"):
        counts = (first[task]["generated"], first[task]["cached"], first[task]["samples"])
        assert counts == (N, 0, N)
        assert first[task]["generated_tokens"] > 0
    out = tmp_path / "run" / "enrich"
    enriched = pd.read_parquet(out / "enriched.parquet")
    assert list(enriched.columns) == ["sample_id", "enriched_text", "enrich_status",
                                      "generated_tokens", *KEYS]
    assert list(enriched["sample_id"]) == [f"sample_{i:03d}" for i in range(N)]
    assert (enriched["model"] == cfg.enrich.model).all()
    assert (enriched["prompt_version"] == prompts.PROMPT_VERSION).all()
    assert list(enriched.loc[[3, 8], "enrich_status"]) == ["empty-subtitle"] * 2
    votes = pd.read_parquet(out / "votes.parquet")
    assert list(votes.columns) == ["sample_id", *VOTES, "vote_status", "generated_tokens", *KEYS]
    assert votes[VOTES].dtypes.eq(np.float64).all()
    missing = votes["vote_status"] != "ok"
    assert votes.loc[missing, VOTES].isna().all().all()
    assert first["vote"]["status"]["empty-subtitle"] == 2
    assert not (out / "parts").exists() or not any((out / "parts").rglob("*.parquet"))

    second = enrich_corpus(cfg)
    assert calls == [("enrich", N), ("vote", N)]  # the model was not asked again
    for task in ("enrich", "vote"):
        assert (second[task]["generated"], second[task]["cached"]) == (0, N)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "enriched.parquet"), enriched)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "votes.parquet"), votes)


@pytest.mark.parametrize("calls", ["fake"], indirect=True)
def test_prompt_version_model_and_subtitle_changes_rerun(ray_local, cfg, calls, monkeypatch,
                                                         tmp_path):
    cfg = _with(cfg, tasks=["enrich"])
    enrich_corpus(cfg)
    _write_corpus(tmp_path / "corpus", _english(changed=5))
    assert enrich_corpus(cfg)["enrich"]["generated"] == 1
    monkeypatch.setattr(prompts, "PROMPT_VERSION", "enrich-test")
    summary = enrich_corpus(cfg)["enrich"]
    assert (summary["generated"], summary["cached"]) == (N, 0)
    other = _with(cfg, model="another/model")
    assert enrich_corpus(other)["enrich"]["generated"] == N
    assert calls == [("enrich", N), ("enrich", 1), ("enrich", N), ("enrich", N)]
    stored = pd.read_parquet(tmp_path / "run" / "enrich" / "enriched.parquet")
    assert set(stored["model"]) == {"another/model"}
    assert set(stored["prompt_version"]) == {"enrich-test"}
    assert enrich_corpus(_with(other, cache=False))["enrich"]["generated"] == N


@pytest.mark.parametrize("calls", ["fake"], indirect=True)
def test_rows_of_an_interrupted_run_are_reused(ray_local, cfg, calls, tmp_path):
    cfg = _with(cfg, tasks=["vote"])
    enrich_corpus(cfg)
    out = tmp_path / "run" / "enrich"
    done = pd.read_parquet(out / "votes.parquet")
    # As a run killed midway leaves it: some finished blocks, one half-written file, no output.
    part = out / "parts" / "vote" / "20260101-000000-deadbeef"
    part.mkdir(parents=True)
    done.iloc[:5].to_parquet(part / "block_0.parquet")
    (part / "block_1.parquet").write_bytes(b"PAR1 cut off")
    (out / "votes.parquet").unlink()
    summary = enrich_corpus(cfg)["vote"]
    assert (summary["generated"], summary["cached"], summary["samples"]) == (N - 5, 5, N)
    assert calls[-1] == ("vote", N - 5)
    assert not part.exists()
    again = pd.read_parquet(out / "votes.parquet")
    assert list(again["sample_id"]) == list(done["sample_id"])
    pd.testing.assert_frame_equal(again.iloc[:5], done.iloc[:5])


@pytest.mark.parametrize("calls", ["fake", "model"], indirect=True)
def test_votes_over_another_label_set(ray_local, cfg, calls, request, tmp_path):
    """run_task hands the label set to the backend (the fake one, or the tiny LM through the
    registered transformers backend): a vote column per class of the set, no other."""
    inputs = pd.DataFrame({"sample_id": [f"s{i}" for i in range(5)],
                           "text": ["", *(f"Line {i}: you again?" for i in range(1, 5))]})
    out_dir = tmp_path / "custom"
    summary = run_task(cfg.enrich, inputs, out_dir, "vote", labels=CUSTOM)
    assert calls == [("vote", 5)] and summary["generated"] == 5
    votes = pd.read_parquet(out_dir / "votes.parquet")
    columns = [f"vote_{x}" for x in CUSTOM]
    assert list(votes.columns) == ["sample_id", *columns, "vote_status", "generated_tokens",
                                   *KEYS]
    assert votes[columns].dtypes.eq(np.float64).all()
    ok = votes["vote_status"] == "ok"
    assert votes.loc[~ok, columns].isna().all().all()
    if request.node.callspec.params["calls"] == "fake":  # every vote all on "joy"
        assert ok.all() and (votes["vote_joy"] == 1.0).all()
    else:  # the model skips the empty subtitle
        assert votes.loc[0, "vote_status"] == "empty-subtitle"
    # MER2025's six are other prompts: nothing is reused, and the file holds their columns.
    again = run_task(cfg.enrich, inputs, out_dir, "vote")
    assert (again["generated"], again["cached"]) == (5, 0)
    assert list(pd.read_parquet(out_dir / "votes.parquet").columns)[1:8] == [*VOTES,
                                                                               "vote_status"]
    assert run_task(cfg.enrich, inputs, out_dir, "vote")["cached"] == 5


@pytest.mark.parametrize("calls", ["fake"], indirect=True)
def test_enrich_corpus_votes_over_the_configured_labels(ray_local, cfg, calls, tmp_path):
    import yaml

    labels = [*LABELS, "bored"]  # the corpus' labels and one it does not use
    summary = enrich_corpus(dataclasses.replace(_with(cfg, tasks=["vote"]), labels=labels))
    assert summary["vote"]["generated"] == N
    out = tmp_path / "run" / "enrich"
    votes = pd.read_parquet(out / "votes.parquet")
    assert [c for c in votes.columns if c.startswith("vote_")] == [
        *(f"vote_{x}" for x in labels), "vote_status"]
    assert (votes["vote_status"] == "ok").all() and (votes["vote_angry"] == 1.0).all()
    assert yaml.safe_load((out / "config.yaml").read_text())["labels"] == labels
    # With no labels configured, the stage resolves the corpus' own (MER2025's six): re-run.
    summary = enrich_corpus(_with(cfg, tasks=["vote"]))
    assert (summary["vote"]["generated"], summary["vote"]["cached"]) == (N, 0)
    assert yaml.safe_load((out / "config.yaml").read_text())["labels"] == list(LABELS)

"""The vLLM backend: config, row functions and the processor everywhere (the driver needs no vLLM);
a real run on a GPU. Its processor must never execute on CPU: it would wait forever for a GPU."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from ecmf.config import EnrichConfig
from ecmf.enrichment import vllm_engine as ve
from ecmf.enrichment.parse import result_columns
from ecmf.enrichment.prompts import task_prompt, vote_json_schema
from ecmf.schema import LABELS

HAS_VLLM = importlib.util.find_spec("vllm") is not None
NO_VLLM = "vLLM is not installed (CUDA-only: the `gpu` extra)"
# A mark as well as importorskip: the check must come before the session's Ray starts.
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason=NO_VLLM)
CFG = EnrichConfig(backend="vllm", batch_size=32, pool_size=2, max_new_tokens=48,
                   vote_max_new_tokens=80,
                   engine_kwargs={"max_model_len": 2048, "gpu_memory_utilization": 0.85})
ROW = {"sample_id": "s1", "text": "You said you would be here an hour ago.",
       "audio_description": "a shaky voice", "input_hash": "abc"}
CUSTOM = ["neutral", "joy", "anger"]  # another corpus' classes
# Columns the processor's stages add (Ray 2.60), which the output must not carry.
STAGE_COLUMNS = {"prompt": "...", "tokenized_prompt": [1, 2], "generated_tokens": [5, 6],
                 "num_input_tokens": 40, "request_id": 3, "batch_uuid": "f00", "params": "..."}


def test_processor_config_takes_the_enrich_config(tmp_path):
    pytest.importorskip("ray.data.llm", reason="Ray's LLM package (pydantic configs) is missing")
    config = ve.processor_config(CFG, str(tmp_path))
    assert config.model_source == str(tmp_path)
    assert (config.batch_size, config.concurrency) == (32, 2)
    assert config.engine_kwargs["max_model_len"] == 2048
    assert config.engine_kwargs["gpu_memory_utilization"] == 0.85
    assert config.should_continue_on_error is True
    # No CPU stage that loads the model's tokenizer where CPUs are free (the CPU head first,
    # whose image holds no weights): the engine actor formats and vLLM tokenizes.
    assert (config.chat_template_stage, config.tokenize_stage, config.detokenize_stage) == (
        False, False, False)
    # The defaults of EnrichConfig reach the engine unless overridden.
    default = ve.processor_config(EnrichConfig(), "m").engine_kwargs
    assert default["enable_prefix_caching"] is True and default["max_model_len"] == 4096


def test_sampling_params_constrain_votes_to_the_label_schema():
    enrich = ve.sampling_params(CFG, "enrich")
    assert enrich == {"temperature": 0.0, "max_tokens": 48}
    vote = ve.sampling_params(CFG, "vote")
    assert vote["max_tokens"] == 80 and vote["temperature"] == 0.0
    assert json.loads(vote["structured_outputs"]["json"]) == vote_json_schema(LABELS)
    with pytest.raises(ValueError, match="task"):
        ve.sampling_params(CFG, "rank")


def test_votes_ask_for_the_run_label_set():
    """Another corpus' classes reach the prompt, the JSON schema and the result columns; none of
    MER2025's that the run does not use."""
    vote = ve.sampling_params(CFG, "vote", CUSTOM)
    schema = json.loads(vote["structured_outputs"]["json"])
    assert schema["required"] == CUSTOM and list(schema["properties"]) == CUSTOM
    assert schema["additionalProperties"] is False
    req = ve.request_row(dict(ROW), CFG, "vote", CUSTOM)
    prompt = req["messages"][0]["content"]
    assert all(f'"{x}"' in prompt for x in CUSTOM)
    assert "worried" not in prompt and "worried" not in vote["structured_outputs"]["json"]
    assert req["sampling_params"] == vote
    done = ve.finish_row(ve.keep_row({**ROW, **req, **STAGE_COLUMNS, "num_generated_tokens": 9,
                                      "generated_text": '{"neutral": 1, "joy": 0, "anger": 3}'}),
                         CFG, "vote", CUSTOM)
    assert list(done) == [*ROW, *result_columns("vote", CUSTOM)]
    assert (done["vote_status"], done["vote_anger"]) == ("ok", pytest.approx(0.75))
    # A MER2025 class is off this run's label set.
    off = ve.finish_row(ve.keep_row({**ROW, **req, **STAGE_COLUMNS, "num_generated_tokens": 9,
                                     "generated_text": '{"worried": 1}'}), CFG, "vote", CUSTOM)
    assert off["vote_status"] == "off-label" and math.isnan(off["vote_joy"])
    skipped = ve.skipped_row({"sample_id": "s2", "text": ""}, "vote", CUSTOM)
    assert [c for c in skipped if c.startswith("vote_")] == result_columns("vote", CUSTOM)[:-1]


@pytest.mark.parametrize("task", ["enrich", "vote"])
def test_request_row_is_one_chat_message(task):
    req = ve.request_row(dict(ROW), CFG, task)
    assert set(req) == {"messages", "sampling_params", "_ecmf_columns"}
    context = {"audio": "a shaky voice"}
    assert req["messages"] == [{"role": "user", "content": task_prompt(
        task, ROW["text"], "en", context, LABELS)}]
    assert req["_ecmf_columns"] == list(ROW)


def _through_processor(row: dict, task: str, **generated) -> dict:
    """A row as the processor hands it on: inputs, the preprocess output, the stages' columns."""
    data = {**row, **ve.request_row(dict(row), CFG, task), **STAGE_COLUMNS, **generated}
    if data.get("__inference_error__"):
        return data  # failed rows skip postprocess
    return ve.keep_row(data)


@pytest.mark.parametrize("task,text,status", [
    ("enrich", "The speaker sounds let down and impatient.", "ok"),
    ("enrich", "?!?!", "non-text"),
    ("vote", '{"neutral": 0.1, "angry": 0.6, "happy": 0, "sad": 0.1, "worried": 0.2, '
             '"surprise": 0}', "ok"),
    ("vote", '{"angry": 0.6, "happ', "truncated"),
])
def test_finished_rows_have_the_transformers_columns(task, text, status):
    done = ve.finish_row(_through_processor(ROW, task, generated_text=text,
                                            num_generated_tokens=12), CFG, task)
    assert list(done) == [*ROW, *result_columns(task)]
    assert done["generated_tokens"] == 12
    key = "enrich_status" if task == "enrich" else "vote_status"
    assert done[key] == status
    if task == "vote" and status == "ok":
        assert done["vote_angry"] == pytest.approx(0.6)


def test_token_limit_and_failed_requests():
    cut = ve.finish_row(_through_processor(ROW, "enrich", generated_text="A long wait. She is",
                                           num_generated_tokens=48), CFG, "enrich")
    assert (cut["enriched_text"], cut["enrich_status"]) == ("A long wait.", "truncated")
    for task in ("enrich", "vote"):
        failed = _through_processor(ROW, task, generated_text="", num_generated_tokens=0,
                                    __inference_error__="ValueError: prompt too long")
        done = ve.finish_row(failed, CFG, task)
        assert list(done) == [*ROW, *result_columns(task)]
        status = done["enrich_status" if task == "enrich" else "vote_status"]
        assert status == "error: ValueError: prompt too long"
        if task == "enrich":
            assert done["enriched_text"] == ROW["text"]  # the subtitle, as a fallback
        else:
            assert all(math.isnan(done[f"vote_{x}"]) for x in LABELS)


def test_empty_subtitles_are_not_sent():
    row = {"sample_id": "s2", "text": "  "}
    assert not ve._has_text(row) and ve._has_text(ROW)
    assert ve.skipped_row(row, "vote")["vote_status"] == "empty-subtitle"


@pytest.mark.ray
def test_the_driver_builds_the_vllm_pipeline_without_vllm(ray_local, tiny_llm):
    """The driver runs on the CPU head image, which has no vLLM: building the lazy dataset must
    neither need nor import it (and nothing here executes it: it would wait for a GPU)."""
    import sys

    import pandas as pd

    from ecmf.enrichment.pipeline import enrich_dataset

    imported = "vllm" in sys.modules
    df = pd.DataFrame({"sample_id": ["s1", "s2"], "text": [ROW["text"], ""]})
    ds = enrich_dataset(ray_local.data.from_pandas(df), CFG, tiny_llm, "vote")
    assert "vLLMEngineStageUDF" in str(ds) and "_postprocess" in str(ds)
    assert ("vllm" in sys.modules) == imported


@pytest.mark.ray
def test_processor_builds_with_its_stages(ray_local, tiny_llm):
    processor = ve.build_vllm_processor(CFG, tiny_llm, "vote")
    # The engine alone: every stage that loads the model runs where the weights are.
    assert processor.list_stage_names() == ["vLLMEngineStage"]
    engine = processor.get_stage_by_name("vLLMEngineStage")
    # Ray's engine class, behind the check for vLLM, under the name Ray Data shows.
    ray_udf = engine.fn.__mro__[1]
    assert engine.fn is not ray_udf and engine.fn.__name__ == ray_udf.__name__
    assert ray_udf.__module__.startswith("ray.llm.")
    kwargs = engine.fn_constructor_kwargs
    assert kwargs["model"] == tiny_llm and kwargs["batch_size"] == 32
    assert kwargs["engine_kwargs"]["max_model_len"] == 2048
    assert kwargs["should_continue_on_error"] is True
    assert engine.map_batches_kwargs["num_gpus"] == 1


@pytest.mark.ray
@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_without_vllm_the_engine_actor_fails_naming_the_gpu_extra(ray_local, tiny_llm):
    """The engine stage's class as Ray Data starts it, in an actor (with no GPU asked, as none
    is here): with no vLLM on that node it fails at once, and the error names the fix."""
    processor = ve.build_vllm_processor(CFG, tiny_llm, "enrich")
    engine = processor.get_stage_by_name("vLLMEngineStage")
    ctor = engine.get_dataset_map_batches_kwargs(CFG.batch_size, "__data")
    actor = ray_local.remote(num_cpus=0)(engine.fn).remote(**ctor["fn_constructor_kwargs"])
    with pytest.raises(ray_local.exceptions.RayActorError,
                       match=r"(?s)needs vLLM on the GPU workers.*pip install 'ecmf\[gpu\]'"):
        ray_local.get(actor.__ray_ready__.remote(), timeout=120)


def _vllm_sized_llm(path) -> str:
    """The tiny LM's tokenizer with a model whose head size vLLM's attention kernels take (64)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(path)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True, **ids)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.mark.ray
@pytest.mark.gpu
@needs_vllm
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vllm_runs_for_real(ray_local, tiny_llm, tmp_path):
    pytest.importorskip("vllm", reason=NO_VLLM)
    import shutil

    import pandas as pd

    from ecmf.enrichment.pipeline import enrich_dataset
    model = _vllm_sized_llm(shutil.copytree(tiny_llm, tmp_path / "llm"))
    cfg = EnrichConfig(backend="vllm", model=model, batch_size=8, max_new_tokens=16,
                       vote_max_new_tokens=64,
                       engine_kwargs={"max_model_len": 1024, "gpu_memory_utilization": 0.3,
                                      "enforce_eager": True})
    df = pd.DataFrame({"sample_id": [f"s{i}" for i in range(12)],
                       "text": ["" if i == 4 else f"Line {i}: where were you?" for i in range(12)]})
    for task in ("enrich", "vote"):
        out = enrich_dataset(ray_local.data.from_pandas(df), cfg, model, task).to_pandas()
        assert sorted(out["sample_id"]) == sorted(df["sample_id"])
        assert set(out.columns) == {"sample_id", "text", *result_columns(task)}
        status = out.set_index("sample_id")[result_columns(task)[-2]]
        assert status["s4"] == "empty-subtitle"
        assert not status.str.startswith("error").any(), status.tolist()
        assert (out.loc[out["text"] != "", "generated_tokens"] > 0).all()


def test_the_engine_actor_applies_the_chat_template_where_the_model_is(tiny_llm, monkeypatch):
    """The engine stage's class, built on a stand-in for Ray's (no vLLM here): in its actor it
    loads the model's tokenizer by the engine's own model id and hands vLLM each row's chat
    message as the templated prompt, as the transformers backend formats it."""
    import asyncio

    from transformers import AutoTokenizer

    from ecmf.enrichment.prompts import chat_text

    class Engine:  # what Ray's vLLMEngineStageUDF keeps and does, for this test
        def __init__(self, data_column, expected_input_keys, model, **kwargs):
            self.model = model

        async def udf(self, batch):
            for row in batch:
                yield {"prompt": row["prompt"], "generated_text": "ok"}

    monkeypatch.setattr(ve, "require_vllm", lambda: None)
    engine = ve.checked_engine(Engine)("__data", ["sampling_params"], model=tiny_llm)
    prompt = task_prompt("enrich", ROW["text"], "en", {}, LABELS)
    rows = [{"messages": [{"role": "user", "content": prompt}], "sampling_params": {}}]

    async def run():
        return [out async for out in engine.udf(rows)]

    (out,) = asyncio.run(run())
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    assert tokenizer.chat_template is not None
    assert out["prompt"] == chat_text(tokenizer, prompt) != prompt
    assert engine.__class__.__name__ == "Engine"

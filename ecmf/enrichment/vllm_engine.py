"""The vLLM backend: Ray Data's LLM processor (`ray.data.llm`) runs vLLM engines on GPU workers.

Rows out carry the same columns as the transformers backend. vLLM is CUDA-only (the `gpu` extra):
only the GPU workers have it. The driver (on the CPU head) builds the processor without it, and
the engine stage checks for it in its own actor. On a machine without a GPU the processor builds
but waits forever, so never run it there.

The processor has one stage, the engine: Ray LLM's chat-template, tokenize and detokenize
stages are CPU actor pools that load the model's tokenizer wherever CPUs are free, the CPU head
first, whose image has no model weights. The engine actor applies the chat template itself
(`checked_engine`), on the GPU node that holds the weights, and vLLM tokenizes and detokenizes
inside the engine.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ecmf.config import EnrichConfig
from ecmf.enrichment.parse import EMPTY_SUBTITLE, error_status, result_columns, task_result
from ecmf.enrichment.prompts import (
    as_text,
    chat_text,
    row_context,
    task_prompt,
    vote_json_schema,
)
from ecmf.errors import MissingExtra
from ecmf.schema import LABELS, TEXT

if TYPE_CHECKING:
    import ray.data
    from ray.data.llm import vLLMEngineProcessorConfig

# Input columns of each row, kept through the processor's stages so the output carries them again.
_COLUMNS = "_ecmf_columns"
# Set by Ray Data LLM on rows whose request failed (with should_continue_on_error); those rows skip
# the postprocess function and keep every processor column.
_ERROR = "__inference_error__"


def require_vllm() -> None:
    """Fail where vLLM must run (the engine actor on a GPU worker) when it is not installed there.

    The driver never needs vLLM: it runs on the CPU head image, which leaves it out.
    """
    if importlib.util.find_spec("vllm") is None:
        import socket

        raise MissingExtra(
            f"enrich.backend 'vllm' needs vLLM on the GPU workers, and node "
            f"{socket.gethostname()}, which runs a vLLM engine, has none (the base install "
            "leaves it out: it is CUDA-only): install the gpu extra in the GPU workers' image, "
            "pip install 'ecmf[gpu]' (ray[llm] with vLLM), or set enrich.backend=transformers")


def checked_engine(udf: type) -> type:
    """`udf`, the vLLM engine stage's class, that first checks in its actor that vLLM imports,
    then loads the model's tokenizer there and turns each row's chat `messages` into the
    `prompt` vLLM generates from (`chat_text`).

    Ray's own stage fails there too without vLLM, but later (after fetching a model kept in
    cloud storage), and names `ray[llm]` rather than this project's extra. The subclass keeps
    the name that Ray Data shows.
    """
    def __init__(self, *args, **kwargs):
        require_vllm()
        udf.__init__(self, *args, **kwargs)
        from transformers import AutoTokenizer

        # On this GPU node, beside the weights vLLM loads (by the same id or path).
        self.chat_tokenizer = AutoTokenizer.from_pretrained(self.model)

    async def udf_with_prompts(self, batch: list[dict]):
        for row in batch:
            messages = row.pop("messages")
            row["prompt"] = chat_text(self.chat_tokenizer, messages[-1]["content"])
        async for out in udf.udf(self, batch):
            yield out

    return type(udf.__name__, (udf,), {"__init__": __init__, "udf": udf_with_prompts,
                                       "__doc__": udf.__doc__})


def sampling_params(cfg: EnrichConfig, task: str, labels: Sequence[str] = LABELS) -> dict[str, Any]:
    """Greedy decoding; a vote is constrained to the JSON schema over `labels`."""
    if task == "vote":
        # A JSON string rather than a nested dict: it crosses Arrow blocks unchanged.
        schema = json.dumps(vote_json_schema(labels))
        return {"temperature": 0.0, "max_tokens": cfg.vote_max_new_tokens,
                "structured_outputs": {"json": schema}}
    result_columns(task)  # validates the task
    return {"temperature": 0.0, "max_tokens": cfg.max_new_tokens}


def processor_config(cfg: EnrichConfig, model_path: str) -> vLLMEngineProcessorConfig:
    """The validated processor config: batch size, engine replicas and engine kwargs from `cfg`.

    Needs Ray's LLM package (pydantic models), not vLLM itself.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=str(model_path),
        batch_size=cfg.batch_size,
        concurrency=cfg.pool_size,
        engine_kwargs=dict(cfg.engine_kwargs),
        # One bad row is recorded with its reason; it does not fail the whole job.
        should_continue_on_error=True,
        # No CPU stage loads the model (see the module docstring): the engine actor formats
        # the chat prompt, vLLM tokenizes and detokenizes.
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )


def request_row(row: dict, cfg: EnrichConfig, task: str, labels: Sequence[str] = LABELS) -> dict:
    """The processor's preprocess: one chat message and its sampling parameters per row."""
    prompt = task_prompt(task, as_text(row[TEXT]), cfg.language, row_context(row), labels)
    return {"messages": [{"role": "user", "content": prompt}],
            "sampling_params": sampling_params(cfg, task, labels),
            _COLUMNS: [c for c in row if c != _COLUMNS]}


def _inputs(row: dict) -> dict:
    return {c: row[c] for c in list(row[_COLUMNS])}


def keep_row(row: dict) -> dict:
    """The processor's postprocess: the input columns and the generation, nothing else."""
    return {**_inputs(row), _COLUMNS: row[_COLUMNS], "generated_text": row["generated_text"],
            "num_generated_tokens": row["num_generated_tokens"]}


def finish_row(row: dict, cfg: EnrichConfig, task: str, labels: Sequence[str] = LABELS) -> dict:
    """A processor output row (generated or failed) as input columns plus the result columns."""
    subtitle = as_text(row[TEXT])
    error = row.get(_ERROR)
    if error:
        result = task_result(task, None, subtitle, labels=labels, status=error_status(str(error)))
    else:
        limit = cfg.vote_max_new_tokens if task == "vote" else cfg.max_new_tokens
        tokens = int(row.get("num_generated_tokens") or 0)
        result = task_result(task, as_text(row.get("generated_text")), subtitle, labels=labels,
                             tokens=tokens, hit_limit=tokens >= limit)
    return {**_inputs(row), **result}


def skipped_row(row: dict, task: str, labels: Sequence[str] = LABELS) -> dict:
    """A row with an empty subtitle: the model is not asked (as in the transformers backend)."""
    return {**row, **task_result(task, None, as_text(row[TEXT]), labels=labels,
                                 status=EMPTY_SUBTITLE)}


def _has_text(row: dict) -> bool:
    if TEXT not in row:
        raise KeyError(f"LLM backend vllm needs a {TEXT!r} column; the row has {sorted(row)}")
    return bool(as_text(row[TEXT]).strip())


def build_vllm_processor(cfg: EnrichConfig, model_path: str, task: str,
                         labels: Sequence[str] = LABELS):
    """The Ray Data LLM processor (the vLLM engine stage alone) for `task` (a vote over
    `labels`).

    Builds in a driver without vLLM (Ray 2.60's `build_processor` does not import it); the
    engine stage's actors check for it on the GPU workers (`checked_engine`).
    """
    from functools import partial

    from ray.data.llm import build_processor

    processor = build_processor(processor_config(cfg, model_path),
                                preprocess=partial(request_row, cfg=cfg, task=task,
                                                   labels=list(labels)),
                                postprocess=keep_row)
    engine = processor.get_stage_by_name("vLLMEngineStage")
    engine.fn = checked_engine(engine.fn)
    return processor


def vllm_dataset(ds: ray.data.Dataset, cfg: EnrichConfig, model_path: str,
                 task: str = "enrich", labels: Sequence[str] = LABELS) -> ray.data.Dataset:
    """Add the result columns of `task` (a vote over `labels`) to `ds` with vLLM engines (lazy,
    like any transform)."""
    from functools import partial

    labels = list(labels)
    processor = build_vllm_processor(cfg, model_path, task, labels)
    asked = processor(ds.filter(_has_text)).map(partial(finish_row, cfg=cfg, task=task,
                                                        labels=labels))
    skipped = ds.filter(lambda row: not _has_text(row)).map(partial(skipped_row, task=task,
                                                                    labels=labels))
    return asked.union(skipped)

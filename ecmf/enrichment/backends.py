"""LLM backends behind one interface: `backend(ds, cfg, model_path, task, labels=...) -> ds` adds
the columns of `parse.result_columns(task, labels)` to a dataset with `sample_id` and `text`.
Registered in BACKENDS.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from ecmf.config import EnrichConfig
from ecmf.enrichment.parse import (
    EMPTY_SUBTITLE,
    error_status,
    result_columns,
    status_column,
    task_result,
)
from ecmf.enrichment.prompts import CONTEXT_COLUMNS, as_text, chat_text, row_context, task_prompt
from ecmf.enrichment.vllm_engine import vllm_dataset
from ecmf.registry import Registry
from ecmf.runtime import devices
from ecmf.runtime.devices import device_for
from ecmf.schema import LABELS, SAMPLE_ID, TEXT

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

BACKENDS: Registry = Registry("LLM backend")


class Generation(NamedTuple):
    """One continuation: its text, how many tokens it took, and whether it hit the token limit."""

    text: str
    tokens: int
    hit_limit: bool


class TransformersBackend:
    """Greedy batched generation with a transformers causal LM (any device, no vLLM): the callable
    class that Ray Data's `map_batches` runs in an actor pool, one model per actor."""

    def __init__(self, cfg: EnrichConfig, model_path: str, task: str = "enrich",
                 labels: Sequence[str] = LABELS):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.labels = list(labels)
        result_columns(task, self.labels)  # fail here, not per batch, on an unknown task
        torch.manual_seed(0)
        self.cfg, self.task = cfg, task
        self.max_new_tokens = cfg.vote_max_new_tokens if task == "vote" else cfg.max_new_tokens
        self.device = str(device_for(cfg.num_gpus, "enrich.num_gpus"))
        # Left padding: generation continues every row from the end of its own prompt.
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = "auto" if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model.to(self.device).eval()
        self.chat = self.tokenizer.chat_template is not None
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self.eos = {int(t) for t in [*eos, self.tokenizer.eos_token_id] if t is not None}
        log.info("LLM backend (%s): %s on %s (chat template: %s)", task, model_path, self.device,
                 self.chat)

    def _format(self, prompt: str) -> str:
        return chat_text(self.tokenizer, prompt)

    def generate(self, prompts: list[str]) -> list[Generation]:
        """Greedy continuations of `prompts` (new tokens only, special tokens dropped)."""
        texts = [self._format(p) for p in prompts]
        # A chat template already writes the special tokens the model expects.
        enc = self.tokenizer(texts, return_tensors="pt", padding=True,
                             add_special_tokens=not self.chat, return_token_type_ids=False)
        enc = enc.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        results = []
        for ids, text in zip(new, decoded, strict=True):
            # Rows that end early are padded to the longest one: count up to the first EOS.
            end = next((k for k, t in enumerate(ids) if t in self.eos), None)
            tokens = len(ids) if end is None else end + 1
            results.append(Generation(text, tokens, end is None and tokens >= self.max_new_tokens))
        return results

    def _generate_or_fallback(self, prompts: list[str]) -> list[Generation | Exception]:
        try:
            return self.generate(prompts)
        except Exception as exc:  # a failed batch must not end the job
            log.warning("LLM batch of %d failed (%s); retrying one by one", len(prompts),
                        error_status(exc))
        results: list[Generation | Exception] = []
        for p in prompts:
            try:
                results.extend(self.generate([p]))
            except Exception as exc:
                results.append(exc)
        return results

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [c for c in (SAMPLE_ID, TEXT) if c not in batch]
        if missing:
            raise KeyError(f"LLM {self.task} needs columns {missing}; "
                           f"the batch has {sorted(batch)}")
        ids = batch[SAMPLE_ID]
        subtitles = [as_text(v) for v in batch[TEXT]]
        rows = [task_result(self.task, None, s, labels=self.labels, status=EMPTY_SUBTITLE)
                for s in subtitles]
        todo = [i for i, s in enumerate(subtitles) if s.strip()]
        context = [c for c in CONTEXT_COLUMNS.values() if c in batch]
        prompts = [task_prompt(self.task, subtitles[i], self.cfg.language,
                               row_context({c: batch[c][i] for c in context}), self.labels)
                   for i in todo]
        outputs = self._generate_or_fallback(prompts) if todo else []
        for i, gen in zip(todo, outputs, strict=True):
            if isinstance(gen, Exception):
                rows[i] = task_result(self.task, None, subtitles[i], labels=self.labels,
                                      status=error_status(gen))
                log.warning("LLM %s of sample %s failed: %s", self.task, ids[i],
                            rows[i][status_column(self.task)])
            else:
                rows[i] = task_result(self.task, gen.text, subtitles[i], labels=self.labels,
                                      tokens=gen.tokens, hit_limit=gen.hit_limit)
        out = dict(batch)
        # Types from a template row, so that an empty batch gets the same column types.
        template = task_result(self.task, None, "", labels=self.labels, status=EMPTY_SUBTITLE)
        for col, example in template.items():
            dtype = object if isinstance(example, str) else type(example)
            out[col] = np.array([r[col] for r in rows], dtype=dtype)
        return devices.to_host(out)


@BACKENDS.register("transformers")
def transformers_backend(ds: ray.data.Dataset, cfg: EnrichConfig, model_path: str,
                         task: str = "enrich", labels: Sequence[str] = LABELS) -> ray.data.Dataset:
    """TransformersBackend in an actor pool of `cfg.pool_size` (CPU, or GPU with num_gpus > 0)."""
    import ray.data

    return ds.map_batches(
        TransformersBackend,
        fn_constructor_kwargs={"cfg": cfg, "model_path": str(model_path), "task": task,
                               "labels": list(labels)},
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.pool_size),
        num_gpus=cfg.num_gpus,
        num_cpus=cfg.num_cpus,
        batch_format="numpy",
    )


@BACKENDS.register("vllm")
def vllm_backend(ds: ray.data.Dataset, cfg: EnrichConfig, model_path: str,
                 task: str = "enrich", labels: Sequence[str] = LABELS) -> ray.data.Dataset:
    """vLLM through Ray Data's LLM processor (GPU images with the `gpu` extra only)."""

    return vllm_dataset(ds, cfg, model_path, task, labels)

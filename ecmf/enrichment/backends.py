"""LLM backends for subtitle enrichment: callable classes that Ray Data's `map_batches` runs in an
actor pool, one model per actor. Registered by name in BACKENDS.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ecmf.config import EnrichConfig
from ecmf.enrichment.parse import clean_enrichment
from ecmf.enrichment.prompts import enrichment_prompt
from ecmf.registry import Registry
from ecmf.schema import ENRICH_STATUS, ENRICHED_TEXT, SAMPLE_ID, TEXT

log = logging.getLogger(__name__)

BACKENDS: Registry[type] = Registry("LLM backend")

EMPTY_SUBTITLE = "empty-subtitle"
# Optional description columns passed to the prompt as context when a batch carries them.
CONTEXT_COLUMNS = {"visual": "visual_description", "audio": "audio_description"}


def _as_text(value) -> str:
    """A subtitle cell as str: None and NaN (missing in pandas / Arrow) read as empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _error_status(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())[:200]
    return f"error: {type(exc).__name__}: {msg}"


@BACKENDS.register("transformers")
class TransformersBackend:
    """Greedy batched generation with a transformers causal LM (any device, no vLLM)."""

    def __init__(self, cfg: EnrichConfig, model_path: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        self.cfg = cfg
        self.device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        # Left padding: generation continues every row from the end of its own prompt.
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = "auto" if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model.to(self.device).eval()
        self.chat = self.tokenizer.chat_template is not None
        log.info("enrichment backend: %s on %s (chat template: %s)", model_path, self.device,
                 self.chat)

    def _format(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[str]) -> list[str]:
        """Greedy continuations of `prompts` (new tokens only, special tokens dropped)."""
        texts = [self._format(p) for p in prompts]
        # A chat template already writes the special tokens the model expects.
        enc = self.tokenizer(texts, return_tensors="pt", padding=True,
                             add_special_tokens=not self.chat, return_token_type_ids=False)
        enc = enc.to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, do_sample=False,
                                      max_new_tokens=self.cfg.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _generate_or_fallback(self, prompts: list[str]) -> list[str | Exception]:
        try:
            return self.generate(prompts)
        except Exception as exc:  # a failed batch must not end the job
            log.warning("enrichment batch of %d failed (%s); retrying one by one",
                        len(prompts), _error_status(exc))
        results: list[str | Exception] = []
        for p in prompts:
            try:
                results.extend(self.generate([p]))
            except Exception as exc:
                results.append(exc)
        return results

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [c for c in (SAMPLE_ID, TEXT) if c not in batch]
        if missing:
            raise KeyError(f"enrichment needs columns {missing}; the batch has {sorted(batch)}")
        ids = batch[SAMPLE_ID]
        subtitles = [_as_text(v) for v in batch[TEXT]]
        n = len(subtitles)
        enriched, status = [""] * n, [EMPTY_SUBTITLE] * n
        todo = [i for i, s in enumerate(subtitles) if s.strip()]
        prompts = [enrichment_prompt(subtitles[i], self.cfg.language, self._context(batch, i))
                   for i in todo]
        outputs = self._generate_or_fallback(prompts) if todo else []
        for i, gen in zip(todo, outputs, strict=True):
            if isinstance(gen, Exception):
                # The same fallback text as any other unusable output: the cleaned subtitle.
                enriched[i] = clean_enrichment("", subtitles[i])[0]
                status[i] = _error_status(gen)
                log.warning("enrichment of sample %s failed: %s", ids[i], status[i])
            else:
                enriched[i], status[i] = clean_enrichment(gen, subtitles[i])
        out = dict(batch)
        out[ENRICHED_TEXT] = np.array(enriched, dtype=object)
        out[ENRICH_STATUS] = np.array(status, dtype=object)
        return out

    @staticmethod
    def _context(batch: dict[str, np.ndarray], i: int) -> dict[str, str] | None:
        ctx = {k: _as_text(batch[col][i]) for k, col in CONTEXT_COLUMNS.items() if col in batch}
        return ctx or None

"""LLM text enrichment and label votes: prompts and parsing (pure), the cache, backends
(transformers, vLLM through Ray Data LLM) and the `ecmf enrich` stage.

Import the submodules directly; `backends` loads torch, and the backends load transformers or vLLM.
"""

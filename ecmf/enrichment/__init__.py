"""LLM text enrichment: prompts (pure), output parsing (pure), backends and the Ray Data stage.

Import the submodules directly; `backends` and `pipeline` load torch, transformers and Ray.
"""

"""Corpus readers (MER2025 release layout), media decoding and the demo corpus generator."""

"""Fusion models (ECMF and baselines), registered by name in `ecmf.models.fusion.MODELS`."""

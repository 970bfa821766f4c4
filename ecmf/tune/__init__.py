"""Hyperparameter search with Ray Tune: search spaces (`space`), trials (`trial`), the driver
(`driver`, what `ecmf tune` runs) and its outputs (`report`)."""

"""Training: the per-worker loop, k-fold fitting on Ray Train, metrics, prediction and submission."""

"""Training: the fold stepper, k-fold fitting (a Ray task per fold, or Ray Train DDP), metrics,
prediction and submission."""

"""Semi-supervised learning: label refinement, pseudo-label selection (pure) and rounds over the pool."""

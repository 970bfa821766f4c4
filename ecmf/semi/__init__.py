"""Semi-supervised learning: weak classifiers, label refinement, pseudo-label selection, rounds."""

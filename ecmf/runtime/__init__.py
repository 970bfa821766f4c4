"""The Ray plumbing every stage shares: the session (an embedded local Ray or a cluster), what
the cluster can place (capacity) and progress lines relayed from Ray's workers to the driver."""

"""Feature encoders (registered by name) and the Ray Data extraction pipeline into the store."""

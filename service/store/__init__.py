"""Storage: crash-safe files, the composite per-group batch store, plan and manifest."""

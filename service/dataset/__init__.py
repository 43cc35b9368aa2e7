"""The reference's batch layer: data points, batches, vectorizers, id sets and split containers."""

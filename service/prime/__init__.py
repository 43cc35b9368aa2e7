"""Priming: encoding batches in a pool of worker processes."""

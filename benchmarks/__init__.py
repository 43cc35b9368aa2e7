"""Benchmarks of batchstash: a raw-socket ceiling, local baselines, priming and memory."""

"""Benchmarks: serving latency, throughput, batching, cache and scale (python -m benchmarks.run)."""

"""Experiments built on the library: runs from configs, the demo, comparisons, benchmarks."""

"""Evaluation on any registered benchmark (``benchmarks``): latency / forward passes / memory,
prompt accuracy, Frechet distance, plots."""

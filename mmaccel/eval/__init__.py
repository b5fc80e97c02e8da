"""Evaluation: prompt accuracy, FID, latency / forward-pass / memory benchmarks, plots."""

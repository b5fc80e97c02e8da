"""Sampling functions agree with transformers' logits processors; draws follow p."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from mmaccel.sampling import SamplingConfig, apply_cfg, process_logits, sample, top_k_filter, top_p_filter


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k_matches_transformers(k):
    from transformers.generation.logits_process import TopKLogitsWarper

    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(k))
    expected = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(top_k_filter(logits, k), expected)


@pytest.mark.parametrize("p", [0.3, 0.75, 0.95])
def test_top_p_matches_transformers(p):
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(int(p * 100))) * 2
    expected = TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(torch.isinf(top_p_filter(logits, p)), torch.isinf(expected))


def test_greedy_is_one_hot_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0]])
    assert process_logits(logits, SamplingConfig(do_sample=False)).tolist() == [[0.0, 1.0, 0.0]]
    assert process_logits(logits, SamplingConfig(temperature=0.0)).tolist() == [[0.0, 1.0, 0.0]]


def test_cfg_combines_halves():
    cond, uncond = torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[1.0, 1.0]]])
    guided = apply_cfg(torch.cat([cond, uncond]), 3.0)
    assert guided.tolist() == [[[4.0, -2.0]]]


def test_sample_follows_probabilities_without_sync():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0]).expand(50_000, 5)
    draws = sample(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=5)
    assert counts[4] == 0
    assert chisquare(counts[:4].numpy(), (probs[0, :4] * 50_000).numpy()).pvalue > 0.001

"""The sort-free nucleus filter keeps exactly the reference (full-sort) set, probabilities included."""

from __future__ import annotations

import math

import pytest
import torch

from mmaccel.sampling import (
    SamplingConfig,
    process_logits,
    top_k_filter,
    top_p_filter,
    top_p_filter_radix,
    top_p_filter_sorted,
)

PS = [1e-6, 0.05, 0.3, 0.5, 0.75, 0.9, 0.999, 0.9999999, 1.0]


def reference_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    x = logits.float() / cfg.temperature
    return top_p_filter_sorted(top_k_filter(x, cfg.top_k), cfg.top_p).softmax(-1)


def cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {
        "normal": torch.randn(3, 5, 500, generator=g) * 3,
        "peaked": torch.randn(2, 4, 300, generator=g) * 30,
        "flat": torch.randn(2, 3, 400, generator=g) * 0.01,
        "integer ties": torch.randint(-3, 4, (4, 6, 64), generator=g).float(),
        "all equal": torch.zeros(2, 3, 50),
        "signed zeros": torch.tensor([[[-0.0, 0.0, -0.0, -1.0, 1.0, 1.0]]]),
        "huge and tiny": torch.tensor([[[3e38, -3e38, 1e-40, -1e-40, 0.0, 88.0, -88.0, 87.9]]]),
        "powers of two": torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log(),
        "one dominant": torch.tensor([[[50.0] + [0.0] * 99]]),
    }
    with_inf = torch.randn(2, 4, 200, generator=g) * 2
    with_inf[with_inf < 0.5] = float("-inf")  # what top-k leaves behind
    out["minus inf"] = with_inf
    return out


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("case", list(cases()))
def test_fast_top_p_keeps_the_reference_set(case, p):
    logits = cases()[case]
    fast, ref = top_p_filter_radix(logits, p), top_p_filter_sorted(logits, p)
    assert torch.equal(torch.isinf(fast), torch.isinf(ref)), (case, p)
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("top_p_fn", [top_p_filter_radix, top_p_filter_sorted])
def test_ties_at_the_boundary_are_kept_together(top_p_fn):
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    kept = ~torch.isinf(top_p_fn(logits, 0.7))
    assert kept.tolist() == [[True, True, True, True, False]]
    assert (~torch.isinf(top_p_fn(torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log(), 0.75))).tolist() == [
        [True, True, False, False]
    ]


def test_a_large_vocabulary_takes_the_sort_free_path_with_the_same_set(monkeypatch):
    import mmaccel.sampling as sampling

    logits = torch.randn(2, 3, 9000, generator=torch.Generator().manual_seed(3)) * 3
    expected = top_p_filter_sorted(logits, 0.9)
    monkeypatch.setattr(sampling, "top_p_filter_sorted", lambda *a: pytest.fail("sorted a large vocabulary"))
    assert torch.equal(sampling.top_p_filter(logits, 0.9), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 0.9), (0.7, 20, 0.8), (1.3, 0, 0.3), (0.5, 3, 0.99)]
)
def test_processed_probabilities_equal_the_reference(dtype, temperature, top_k, top_p):
    logits = (torch.randn(2, 9, 1000, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    cfg = SamplingConfig(True, temperature, top_k, top_p)
    assert torch.equal(process_logits(logits, cfg), reference_probs(logits, cfg))


def test_the_reference_equals_transformers_without_ties():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(2)) * 2
    for p in (0.2, 0.6, 0.95):
        expected = TopPLogitsWarper(top_p=p)(None, logits.clone())
        assert torch.equal(torch.isinf(top_p_filter(logits, p)), torch.isinf(expected))


def test_a_wrong_threshold_would_be_caught():
    """The comparison has power: a filter that keeps one token too many differs."""
    logits = cases()["normal"]
    ref = top_p_filter_sorted(logits, 0.5)
    kept = (~torch.isinf(ref)).sum(-1, keepdim=True)
    order = logits.argsort(-1, descending=True)
    one_more = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order.gather(-1, kept), True)
    assert not torch.equal(torch.isinf(ref), torch.isinf(ref) & ~one_more)
    assert math.isfinite(float(top_p_filter(logits, 0.5).max()))

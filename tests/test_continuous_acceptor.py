"""Continuous speculative acceptance: the output follows the target's distribution exactly.

Known Gaussians p (target) and q (draft), drafts x ~ q, many positions at once: the accepted
and resampled values must follow p (Kolmogorov-Smirnov against p's CDF per coordinate, and a
chi-square on the quadrants of a 2-D p), with a close draft, a badly mismatched one and one far
away (every position then goes through the residual loop). The same rule on categorical
distributions is plain speculative sampling (chi-square against p). The softened ratio of the
official runner (kappa = 42) is shown to fail the same test, so the tests can fail.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from mmaccel.acceptors.continuous import ContinuousSpeculative
from mmaccel.acceptors.distributions import Categorical, Gaussian

N = 40_000
ALPHA = 1e-3


def _run(p: Gaussian, q: Gaussian, acceptor: ContinuousSpeculative, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = q.draw(g)
    u = torch.rand(N, generator=g)
    return acceptor.accept(x, q, p, u, g)


def _gaussians(mean_p, std_p, mean_q, std_q) -> tuple[Gaussian, Gaussian]:
    def full(v):
        return torch.tensor(v, dtype=torch.float64).expand(N, len(v)).clone()

    return Gaussian(full(mean_p), full(std_p)), Gaussian(full(mean_q), full(std_q))


def _ks_per_coordinate(values, p: Gaussian) -> list[float]:
    z = ((values - p.mean_NC) / p.std_NC).numpy()
    return [stats.kstest(z[:, c], "norm").pvalue for c in range(z.shape[1])]


def _quadrant_chi2(values, p: Gaussian) -> float:
    """Quadrants of the standardized 2-D value: each holds 1/4 of p's mass."""
    z = (values - p.mean_NC) / p.std_NC
    cell = (z[:, 0] > 0).long() * 2 + (z[:, 1] > 0).long()
    counts = torch.bincount(cell, minlength=4).numpy()
    return stats.chisquare(counts).pvalue


CASES = {
    "close": ([0.0], [1.0], [0.2], [0.9]),
    "mismatched": ([0.0], [0.5], [1.5], [2.0]),
    "narrow-target": ([1.0], [0.05], [1.1], [0.08]),  # the final denoising step is this narrow
    "far-2d": ([0.0, 1.0], [1.0, 0.3], [8.0, -6.0], [0.5, 0.5]),
    "mismatched-2d": ([0.0, 0.0], [1.0, 1.0], [0.7, -0.4], [1.5, 0.6]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_output_follows_the_target_gaussian(case):
    p, q = _gaussians(*CASES[case])
    acc = _run(p, q, ContinuousSpeculative())
    assert torch.isfinite(acc.values).all()
    for pvalue in _ks_per_coordinate(acc.values, p):
        assert pvalue > ALPHA, (case, pvalue)
    if p.mean_NC.shape[1] == 2:
        assert _quadrant_chi2(acc.values, p) > ALPHA
    if case.startswith("far"):  # q has no mass where p has: nothing is kept, everything is redrawn
        assert acc.accepted_N.sum() == 0 and acc.residual_rounds >= 1


def test_acceptance_rate_is_one_minus_total_variation():
    """P(accept) = 1 - TV(p, q); for equal-width 1-D Gaussians TV = 2 Phi(d / 2 sigma) - 1."""
    p, q = _gaussians([0.0], [1.0], [1.0], [1.0])
    acc = _run(p, q, ContinuousSpeculative())
    tv = 2 * stats.norm.cdf(0.5) - 1
    rate = acc.accepted_N.double().mean().item()
    assert abs(rate - (1 - tv)) < 4 * (tv * (1 - tv) / N) ** 0.5


def test_equal_distributions_accept_everything():
    p, _ = _gaussians([0.3, -0.2], [0.7, 0.2], [0, 0], [1, 1])
    acc = _run(p, p, ContinuousSpeculative())
    assert acc.accepted_N.all() and acc.residual_rounds == 0


def test_softened_ratio_is_lossy_and_the_test_sees_it():
    """kappa = 42 (the official runner's temperature) keeps nearly every draft: the output then
    follows q, and the same test rejects it."""
    p, q = _gaussians(*CASES["mismatched"])
    acc = _run(p, q, ContinuousSpeculative(kappa=42.0))
    assert acc.accepted_N.double().mean() > 0.9
    assert min(_ks_per_coordinate(acc.values, p)) < ALPHA
    assert not ContinuousSpeculative(kappa=42.0).lossless and ContinuousSpeculative(kappa=1.0).lossless


def test_residual_cap_raises_instead_of_leaving_a_value_unfilled():
    p, q = _gaussians([0.0], [1.0], [0.0], [1.0 + 1e-7])  # a residual of almost no mass
    acceptor = ContinuousSpeculative(candidates=1, max_rounds=3)
    values = torch.zeros(N, 1, dtype=torch.float64)
    todo = torch.ones(N, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="unfilled"):
        acceptor.fill_residual(values, todo, q, p, torch.Generator().manual_seed(0))


def test_kappa_must_be_positive():
    with pytest.raises(ValueError, match="cspd_kappa"):
        ContinuousSpeculative(kappa=0)


def test_categorical_is_plain_speculative_sampling():
    g = torch.Generator().manual_seed(1)
    V = 6
    p_V = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.07, 0.03], dtype=torch.float64)
    q_V = torch.tensor([0.05, 0.05, 0.1, 0.2, 0.3, 0.3], dtype=torch.float64)
    p, q = Categorical(p_V.expand(N, V).clone()), Categorical(q_V.expand(N, V).clone())
    x = q.draw(g)
    acc = ContinuousSpeculative().accept(x, q, p, torch.rand(N, generator=g, dtype=torch.float64), g)
    counts = torch.bincount(acc.values, minlength=V).double()
    assert stats.chisquare(counts.numpy(), (p_V * N).numpy()).pvalue > ALPHA

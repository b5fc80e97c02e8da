"""LANTERN: the relaxed target's bounds, the sampler's exactness to it, delta = 0 is sjd, errors."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

import mmaccel
from mmaccel.acceptors.lantern import LanternAcceptor, neighbour_table

from .conftest import tiny_lm


def random_case(seed: int, V: int = 12, B: int = 64, K: int = 3, concentration: float = 0.4):
    g = torch.Generator().manual_seed(seed)
    dirichlet = torch.distributions.Dirichlet(torch.full((V,), concentration))
    torch.manual_seed(seed)
    p_BKV, q_BKV = dirichlet.sample((B, K)).double(), dirichlet.sample((B, K)).double()
    codebook = torch.randn(V, 3, generator=g)
    return p_BKV, q_BKV, codebook


@pytest.mark.parametrize("delta", [0.02, 0.1, 0.3])
def test_relaxed_target_is_a_distribution_within_delta_of_p(delta):
    for seed in range(5):
        p, q, codebook = random_case(seed)
        acc = LanternAcceptor(neighbour_table(codebook, 5), delta=delta)
        pt = acc.relaxed_target(p, q)
        assert (pt >= -1e-12).all()
        torch.testing.assert_close(pt.sum(-1), torch.ones_like(pt[..., 0]))
        tv = 0.5 * (pt - p).abs().sum(-1)
        assert tv.max() <= delta + 1e-9
        assert tv.mean() > 0.2 * delta  # it does relax: mass really moves


def test_multiplicative_mode_bounds_the_ratio_pointwise():
    p, q, codebook = random_case(1)
    pt = LanternAcceptor(neighbour_table(codebook, 5), delta=None, lam=2.0).relaxed_target(p, q)
    assert (pt <= 2.0 * p + 1e-12).all()
    torch.testing.assert_close(pt.sum(-1), torch.ones_like(pt[..., 0]))
    assert (pt - p).abs().sum() > 0


def test_one_hot_draft_gives_the_papers_rule():
    """A deterministic draft x: p_tilde(x) = p(x) + the nearest neighbours' mass (within delta),
    those neighbours drop to 0, every other token keeps its probability."""
    V = 6
    codebook = torch.tensor([[0.0], [1.0], [2.5], [4.5], [7.0], [10.0]])  # neighbours of 0: 1, 2, 3, ...
    p = torch.tensor([0.2, 0.05, 0.04, 0.3, 0.01, 0.4], dtype=torch.double)[None, None]
    q = torch.nn.functional.one_hot(torch.tensor([[0]]), V).double()
    pt = LanternAcceptor(neighbour_table(codebook, 3), delta=0.1).relaxed_target(p, q)[0, 0]
    # neighbours of 0 by distance: 1 (0.05), 2 (0.04) -> 0.09 <= 0.1; then 3 (0.3) would exceed
    torch.testing.assert_close(pt, torch.tensor([0.29, 0.0, 0.0, 0.3, 0.01, 0.4], dtype=torch.double))


def test_sampler_is_exact_to_the_relaxed_target_and_within_delta_of_p():
    """The effective per-step distribution, measured: drafts x ~ q, one accept step, the
    first emitted token's empirical law equals p_tilde (chi-square) and is within delta of p."""
    V, N, delta = 8, 200_000, 0.15
    p1, q1, codebook = random_case(3, V=V, B=1, K=1, concentration=0.6)
    p_NTV = torch.cat([p1, torch.full_like(p1, 1 / V)], dim=1).float().expand(N, 2, V)
    q_NKV = q1.float().expand(N, 1, V)
    g = torch.Generator().manual_seed(0)
    drafts_NK = torch.multinomial(q1[0, 0].float(), N, replacement=True, generator=g)[:, None]
    acc = LanternAcceptor(neighbour_table(codebook, 4), delta=delta)
    out = acc.accept(drafts_NK, q_NKV, p_NTV, g)
    first_N = torch.where(out.num_accepted_B > 0, drafts_NK[:, 0], out.next_token_B)
    counts = torch.bincount(first_N, minlength=V).double()
    pt = acc.relaxed_target(p1.float(), q1.float())[0, 0].double()
    keep = pt > 1e-6
    assert counts[~keep].sum() == 0
    assert chisquare(counts[keep], pt[keep] / pt[keep].sum() * N).pvalue > 1e-3
    tv_measured = 0.5 * (counts / N - p1[0, 0]).abs().sum()
    assert tv_measured <= delta + 0.01
    assert 0.5 * (pt - p1[0, 0]).abs().sum() > 0.05  # the bound is not met trivially


def test_delta_zero_is_sjd_token_for_token():
    model = tiny_lm(vocab=16)
    model.codebook = torch.randn(16, 4)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    kw = dict(max_new_tokens=24, do_sample=True, seed=5, window=4)
    sjd = mmaccel.generate(model, ids, "sjd", **kw)
    lantern = mmaccel.generate(model, ids, "lantern", lantern_delta=0.0, lantern_k=4, **kw)
    assert torch.equal(sjd.sequences, lantern.sequences)
    assert sjd.num_forward_passes == lantern.num_forward_passes


def test_lantern_needs_fewer_forwards_than_sjd():
    """Borrowing latent neighbours' mass must raise acceptance (measured: 53 -> 32 forwards)."""
    model = tiny_lm(vocab=64, scale=3.0)
    model.codebook = torch.randn(64, 4)
    ids = torch.tensor([[1, 2, 3]] * 16)
    kw = dict(max_new_tokens=64, do_sample=True, seed=0, window=8)
    sjd = mmaccel.generate(model, ids, "sjd", **kw)
    lantern = mmaccel.generate(model, ids, "lantern", lantern_delta=0.5, lantern_k=32, **kw)
    assert lantern.num_forward_passes < 0.8 * sjd.num_forward_passes


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"lantern_delta": -0.1}, "lantern_delta must be in"),
        ({"lantern_lambda": 0.5}, "lantern_lambda must be >= 1"),
        ({"lantern_delta": 0.1, "lantern_lambda": 2.0}, "not both"),
        ({"lantern_k": 0}, "lantern_k must be an integer >= 1"),
        ({"lantern_k": 99}, "lantern_k must be between 1 and 15"),
    ],
)
def test_bad_options_raise_clear_errors(options, match):
    model = tiny_lm(vocab=16)
    model.codebook = torch.randn(16, 4)
    with pytest.raises(ValueError, match=match):
        mmaccel.generate(model, torch.tensor([[1, 2]]), "lantern", max_new_tokens=4, **options)


def test_model_without_codebook_is_refused():
    with pytest.raises(ValueError, match="needs the image tokenizer's codebook"):
        mmaccel.generate(tiny_lm(vocab=16), torch.tensor([[1, 2]]), "lantern", max_new_tokens=4)


def test_neighbour_table_is_cached_per_codebook_and_respects_offset():
    codebook = torch.randn(10, 2)
    a = neighbour_table(codebook, 3, offset=5, vocab_size=20)
    assert neighbour_table(codebook, 3, offset=5, vocab_size=20) is a
    assert (a[:5] == -1).all() and (a[15:] == -1).all()
    assert ((a[5:15] >= 5) & (a[5:15] < 15)).all()
    assert (a[5:15] != torch.arange(5, 15)[:, None]).all()  # a token is not its own neighbour


def test_paper_rule_is_the_bounded_rule_for_a_deterministic_draft():
    p, _, codebook = random_case(4)
    drafts = torch.randint(0, p.shape[-1], p.shape[:2], generator=torch.Generator().manual_seed(0))
    one_hot = torch.nn.functional.one_hot(drafts, p.shape[-1]).double()
    for kw in [dict(delta=0.1), dict(delta=None, lam=3.0)]:
        acc = LanternAcceptor(neighbour_table(codebook, 5), **kw)
        torch.testing.assert_close(acc.paper_target(p, drafts), acc.relaxed_target(p, one_hot))


def effective_law(acc: LanternAcceptor, p_V: torch.Tensor, q_V: torch.Tensor) -> torch.Tensor:
    """Exact law of the first emitted token of one step with a draft x ~ q (enumerating x)."""
    V = p_V.shape[0]
    drafts = torch.arange(V)[:, None]
    p_NTV = torch.stack([p_V, p_V]).expand(V, 2, V)
    q_NKV = q_V.expand(V, 1, V)
    pt_N1V = (
        acc.paper_target(p_NTV[:, :1], drafts)
        if acc.rule == "paper"
        else acc.relaxed_target(p_NTV[:, :1], q_NKV)
    )
    keep_N = (pt_N1V[:, 0].gather(-1, drafts)[:, 0] / q_V).clamp(max=1)
    resid_NV = (pt_N1V[:, 0] - q_V).clamp_min(0)
    resid_NV = resid_NV / resid_NV.sum(-1, keepdim=True).clamp_min(1e-30)
    law = (q_V * keep_N)[:, None] * torch.eye(V) + (q_V * (1 - keep_N))[:, None] * resid_NV
    return law.sum(0)


def test_paper_rule_can_exceed_delta_with_random_drafts_and_the_bounded_rule_never_does():
    """Why ``bounded`` is the default: enumerate one step exactly on random p, q."""
    worst = {"paper": 0.0, "bounded": 0.0}
    for seed in range(40):
        p, q, codebook = random_case(seed, V=10, B=1, K=1, concentration=0.5)
        for rule in worst:
            acc = LanternAcceptor(neighbour_table(codebook, 6), delta=0.1, rule=rule)
            law = effective_law(acc, p[0, 0], q[0, 0])
            assert abs(float(law.sum()) - 1) < 1e-6
            worst[rule] = max(worst[rule], 0.5 * float((law - p[0, 0]).abs().sum()))
    assert worst["bounded"] <= 0.1 + 1e-6
    assert worst["paper"] > 0.15  # measured here: ~0.3 on these 40 cases


def test_paper_rule_runs_in_generate_and_accepts_more():
    model = tiny_lm(vocab=64, scale=3.0)
    model.codebook = torch.randn(64, 4)
    ids = torch.tensor([[1, 2, 3]] * 16)
    kw = dict(max_new_tokens=64, do_sample=True, seed=0, window=8, lantern_delta=0.2, lantern_k=16)
    bounded = mmaccel.generate(model, ids, "lantern", **kw)
    paper = mmaccel.generate(model, ids, "lantern", lantern_rule="paper", **kw)
    assert paper.num_forward_passes < bounded.num_forward_passes
    with pytest.raises(ValueError, match="lantern_rule must be one of"):
        mmaccel.generate(model, ids, "lantern", lantern_rule="loose", max_new_tokens=4)

"""Acceptors and the coupled redraw on fixed distributions (a mock target with fixed logits)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from mmaccel.acceptors import ExactMatch, SJDAcceptor, SpeculativeSampling
from mmaccel.acceptors.base import Acceptance
from mmaccel.drafters import DraftContext, JacobiDrafter
from mmaccel.drafters.base import Draft
from mmaccel.sampling import sample

N = 40_000
V = 5


def fixed(probs, n=N):
    return torch.tensor(probs, dtype=torch.float32).expand(n, *torch.tensor(probs).shape)


def p_value(tokens, probs):
    counts = torch.bincount(tokens, minlength=len(probs)).double()
    expected = torch.tensor(probs, dtype=torch.float64) * len(tokens)
    keep = expected > 0
    assert counts[~keep].sum() == 0, "emitted a token of probability zero"
    return chisquare(counts[keep].numpy(), expected[keep].numpy()).pvalue


@pytest.mark.parametrize("acceptor_cls", [SpeculativeSampling, SJDAcceptor])
def test_speculative_first_token_distributed_as_p(acceptor_cls):
    g = torch.Generator().manual_seed(0)
    p = [[0.5, 0.2, 0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.1, 0.6]]  # K = 1: target + bonus
    q = [[0.1, 0.1, 0.3, 0.1, 0.4]]
    drafts = sample(fixed(q), g)
    acc = acceptor_cls().accept(drafts, fixed(q), fixed(p), g)
    first = torch.where(acc.num_accepted_B > 0, drafts[:, 0], acc.next_token_B)
    assert p_value(first, p[0]) > 0.001
    # acceptance rate is sum_x min(p, q) = 0.1 + 0.1 + 0.2 + 0.1 + 0 = 0.5
    assert abs(acc.num_accepted_B.float().mean().item() - 0.5) < 0.02
    bonus = acc.next_token_B[acc.num_accepted_B == 1]
    assert p_value(bonus, p[1]) > 0.001


def test_one_hot_q_gives_exact_output_for_any_fixed_draft():
    g = torch.Generator().manual_seed(1)
    p = [[0.3, 0.3, 0.2, 0.2, 0.0], [0.2] * 5]
    drafts = torch.full((N, 1), 4)  # a draft of target probability zero is always rejected
    acc = SJDAcceptor().accept(drafts, F.one_hot(drafts, V).float(), fixed(p), g)
    assert (acc.num_accepted_B == 0).all()
    assert p_value(acc.next_token_B, p[0]) > 0.001
    drafts = torch.full((N, 1), 1)
    acc = SJDAcceptor().accept(drafts, F.one_hot(drafts, V).float(), fixed(p), g)
    first = torch.where(acc.num_accepted_B > 0, drafts[:, 0], acc.next_token_B)
    assert p_value(first, p[0]) > 0.001


def test_exact_match_accepts_run_of_target_draws():
    p = torch.tensor([[[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)  # one-hot: greedy
    drafts = torch.tensor([[1, 2, 2]])
    acc = ExactMatch().accept(drafts, torch.zeros(1, 3, 3), p, None)
    assert acc.num_accepted_B.tolist() == [2] and acc.next_token_B.tolist() == [0]
    acc = ExactMatch().accept(torch.tensor([[1, 2, 0]]), torch.zeros(1, 3, 3), p, None)
    assert acc.num_accepted_B.tolist() == [3] and acc.next_token_B.tolist() == [1]


def test_speculative_rejects_everything_when_q_and_p_disjoint():
    p = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0]]])
    q = torch.tensor([[[0, 1.0, 0]]])
    acc = SpeculativeSampling().accept(torch.tensor([[1]]), q, p, None)
    assert acc.num_accepted_B.tolist() == [0] and acc.next_token_B.tolist() == [0]


def test_coupled_redraw_is_distributed_as_new_p_and_sticky():
    """MC-SJD: keep x ~ q_prev with prob min(1, p/q_prev) else residual: marginal is p."""
    g = torch.Generator().manual_seed(2)
    K = 2
    q_prev = [[0.4, 0.3, 0.1, 0.1, 0.1]] * K
    p_new = [[0.1, 0.2, 0.3, 0.2, 0.2], [0.1, 0.2, 0.3, 0.2, 0.2], [0.2] * 5]
    drafts = sample(fixed(q_prev), g)
    ctx = DraftContext(V, None, g, torch.zeros(N, 8, dtype=torch.long), torch.ones(N, dtype=torch.long))
    zero = torch.zeros(N, dtype=torch.long)
    # all drafts rejected at 0: new window slot 0 inherits old slot 1 (coupled), slot 1 is fresh
    acc = Acceptance(zero, zero)
    coupled = JacobiDrafter(K, "random", coupled=True).update(
        ctx, Draft(drafts, fixed(q_prev)), fixed(p_new), acc
    )
    assert p_value(coupled.tokens_BK[:, 0], p_new[1]) > 0.001
    assert p_value(coupled.tokens_BK[:, 1], p_new[2]) > 0.001
    torch.testing.assert_close(coupled.q_BKV[:, 0], fixed(p_new)[:, 1])
    # coupling keeps the old draft with probability sum_x min(p, q) = 0.1+0.2+0.1+0.1+0.1 = 0.6
    kept = (coupled.tokens_BK[:, 0] == drafts[:, 1]).float().mean().item()
    assert 0.58 < kept < 0.62
    plain = JacobiDrafter(K, "random").update(ctx, Draft(drafts, fixed(q_prev)), fixed(p_new), acc)
    assert (plain.tokens_BK[:, 0] == drafts[:, 1]).float().mean().item() < 0.3


def test_window_shift_and_initialisation():
    """After n accepted drafts, the new window holds Jacobi redraws then initialised slots."""
    K, Vs = 4, 10
    p = F.one_hot(torch.tensor([[1, 2, 3, 4, 5]]), Vs).float()  # greedy target: positions predict 1..5
    drafts = Draft(torch.tensor([[1, 2, 9, 9]]), F.one_hot(torch.tensor([[1, 2, 9, 9]]), Vs).float())
    acc = Acceptance(torch.tensor([2]), torch.tensor([3]))
    history = torch.tensor([[7, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0]])
    ctx = DraftContext(Vs, 2, None, history, torch.tensor([4]))
    horizontal = JacobiDrafter(K, "horizontal").update(ctx, drafts, p, acc)
    assert horizontal.tokens_BK.tolist() == [[4, 5, 5, 5]]
    assert horizontal.q_BKV[0, 2:].argmax(-1).tolist() == [5, 5]
    vertical = JacobiDrafter(K, "vertical").update(ctx, drafts, p, acc)
    # history 7 1 2 3 | window 4 5 _ _: slots at indices 6, 7 copy indices 4, 5 (one row of 2 up)
    assert vertical.tokens_BK.tolist() == [[4, 5, 4, 5]]


def test_a_row_that_emitted_nothing_keeps_its_window_in_place():
    """num_accepted -1 (a ZipAR row held back by the row above): slot j is redrawn from p[j]."""
    K, Vs = 3, 10
    p = F.one_hot(torch.tensor([[4, 5, 6, 7]]), Vs).float()
    drafts = Draft(torch.tensor([[1, 2, 3]]), F.one_hot(torch.tensor([[1, 2, 3]]), Vs).float())
    history = torch.tensor([[7, 1, 2, 0, 0, 0, 0, 0]])
    ctx = DraftContext(Vs, None, None, history, torch.tensor([3]))
    for coupled in (False, True):
        held = JacobiDrafter(K, "random", coupled=coupled).update(
            ctx, drafts, p, Acceptance(torch.tensor([-1]), torch.tensor([2]))
        )
        assert held.tokens_BK.tolist() == [[4, 5, 6]]
        torch.testing.assert_close(held.q_BKV, p[:, :K])

"""Per-step draft lengths for variable drafters (``mmaccel.draft_length``): the ladder, the
covering length of a pinned window, and ``auto``'s choice from measured costs and acceptance."""

from __future__ import annotations

import pytest

from mmaccel import draft_length
from mmaccel.draft_length import LengthPolicy, lengths


def test_lengths_and_covering():
    assert lengths(10) == [0, 1, 2, 4, 8, 10]
    assert lengths(16) == [0, 1, 2, 4, 8, 16]
    covering = LengthPolicy(("covering", object()), 10, adaptive=False).covering
    assert [covering(L) for L in (0, 1, 3, 5, 9, 10, 30)] == [0, 1, 4, 8, 10, 10, 10]


def test_a_pinned_window_verifies_every_real_draft_and_no_more():
    policy = LengthPolicy(("pinned", object()), 10, adaptive=False)
    assert [policy.choose([L], [1]) for L in (0, 2, 7, 10)] == [0, 2, 8, 10]


def run(
    policy: LengthPolicy, cost: dict[int, float], keep: float, steps: int, longest: int = 16
) -> list[int]:
    """``steps`` steps of a simulated drafter whose every draft is ``longest`` long and each draft
    is kept with probability ``keep`` (deterministic: the expected share, rounded per step)."""
    chosen = []
    for i in range(steps):
        k = policy.choose([longest], [1])
        kept = 0
        while kept < k and (i * 7 + kept) % 100 < 100 * keep ** (kept + 1):
            kept += 1
        policy.observe(k, cost[k], [longest], [kept], [1])
        chosen.append(k)
    return chosen


COST = {0: 1.0, 1: 1.15, 2: 1.2, 4: 1.3, 8: 1.5, 16: 1.9}  # a 2-core CPU's step seconds, relative


def test_auto_times_plain_decoding_first_then_stops_drafting_when_drafts_are_never_kept():
    policy = LengthPolicy(("never", object()), 16, adaptive=True)
    chosen = run(policy, COST, keep=0.0, steps=60)
    assert chosen[: draft_length.MIN_TIMED] == [0] * draft_length.MIN_TIMED
    assert chosen[-20:] == [0] * 20
    assert sum(k > 0 for k in chosen) <= 5 * draft_length.MIN_TIMED + 4  # exploration, then no more


def test_auto_drafts_long_when_drafts_are_kept():
    policy = LengthPolicy(("always", object()), 16, adaptive=True)
    chosen = run(policy, COST, keep=0.97, steps=60)
    assert chosen[-20:] == [16] * 20


@pytest.mark.parametrize("longest", [0, 3])
def test_auto_never_verifies_more_than_the_covering_length(longest):
    policy = LengthPolicy(("short", object(), longest), 16, adaptive=True)
    chosen = run(policy, COST, keep=0.97, steps=30, longest=longest)
    assert max(chosen) == policy.covering(longest)


def test_acceptance_is_tracked_per_evidence_level():
    # one-token matches are never kept, three-token matches always are: auto drafts only the latter
    policy = LengthPolicy(("evidence", object()), 16, adaptive=True)
    for i in range(80):
        evidence = 3 if i % 2 else 1
        k = policy.choose([16], [evidence])
        policy.observe(k, COST[k], [16], [k if evidence == 3 else 0], [evidence])
    assert policy.choose([16], [1]) == 0
    assert policy.choose([16], [3]) == 16
    # at batch 2, a row without drafts halves what a long step gains
    assert policy.tokens(16, [16, 0], [3, 0]) == pytest.approx((policy.tokens(16, [16], [3]) + 1) / 2)
    # the call waits for the row with the most tokens left: its drafts alone decide
    assert policy.choose([16, 0], [3, 0], left=[10, 30]) == 0
    assert policy.choose([16, 0], [3, 0], left=[30, 10]) == 16

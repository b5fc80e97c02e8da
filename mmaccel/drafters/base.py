"""The drafter interface and the context the engine hands it.

A drafter proposes ``window`` tokens for positions P+1 .. P+K after the pending token at P,
together with the distribution q each was drawn from (one-hot for deterministic drafts).
After the verify step it receives the target's distributions and the acceptance, and
proposes the next window, which starts right after the new pending token. Its randomness comes
as ``Draws`` (U[0, 1) numbers of the shapes it declares, made before the step), or from a
generator / None outside a step.

Nothing here syncs with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmaccel.acceptors.base import Acceptance
from mmaccel.sampling import Draws, Shapes


@dataclass
class DraftContext:
    """What a drafter may read. ``history_BN[b, :num_generated_B[b]]`` are row b's generated
    tokens so far, the pending token last; the next window starts at index ``num_generated_B``.
    ``prompt_BP[b, :prompt_len_B[b]]``: row b's prompt (real tokens only), for drafters that
    copy from it (None where the caller has none to give)."""

    vocab_size: int
    grid_width: int | None
    generator: torch.Generator | None
    history_BN: torch.Tensor
    num_generated_B: torch.Tensor
    prompt_BP: torch.Tensor | None = None
    prompt_len_B: torch.Tensor | None = None


@dataclass
class Draft:
    tokens_BK: torch.Tensor  # int64 [B, K]
    q_BKV: torch.Tensor | None  # float [B, K, V]: the distribution each token was drawn from (None: one-hot)
    # int64 [B]: the real drafts (a prefix of the window; the rest is filler), for a drafter whose
    # ``variable`` is True; None: all K are real
    length_B: torch.Tensor | None = None
    # int64 [B]: how strong the drafter's evidence for the row's drafts is (a small level, e.g.
    # the matched n-gram's length); acceptance is tracked per level (``mmaccel.draft_length``)
    evidence_B: torch.Tensor | None = None


class Drafter:
    """Proposes blocks of ``window`` tokens (all branches together). Subclasses implement
    ``start``, ``update`` and the shapes of the draws each consumes."""

    window: int = 0
    # whether a step may verify only a prefix of the window (``mmaccel.draft_length``): the drafter
    # reports ``Draft.length_B``, ignores ``p_BTV`` past what it verified, and has no state in the
    # window's slots (each window is recomputed from the context)
    variable: bool = False
    # drafts are deterministic (q one-hot at each draft): the drafter returns ``q_BKV=None`` and
    # the step builds the one-hot q of only the drafts it verifies
    one_hot: bool = False
    # several branches of drafts (``branch_lengths``), laid out branch after branch in the window
    # and verified in one forward (``mmaccel.acceptors.branches``); needs ``one_hot``
    branches: int = 1

    def branch_lengths(self) -> tuple[int, ...]:
        """Drafts in each branch of the window (they add up to ``window``)."""
        return (self.window // self.branches,) * self.branches

    def step_ladder(self) -> list[int] | None:
        """For a ``variable`` drafter: the step lengths (drafts per branch) a step may take;
        None: ``mmaccel.draft_length``'s ladder."""
        return None

    def start_draws(self, B: int, V: int) -> Shapes:
        """U[0, 1) numbers one ``start`` of B rows consumes."""
        return {}

    def update_draws(self, B: int, V: int) -> Shapes:
        """U[0, 1) numbers one ``update`` of B rows consumes."""
        return {}

    def start(self, ctx: DraftContext, pending_B: torch.Tensor, draws: Draws | None = None) -> Draft:
        raise NotImplementedError

    def update(
        self,
        ctx: DraftContext,
        draft: Draft,
        p_BTV: torch.Tensor,
        acc: Acceptance,
        draws: Draws | None = None,
    ) -> Draft:
        """The next window after a verify step that emitted ``acc.num_accepted_B + 1`` tokens per
        row; ``num_accepted_B`` = -1 means the row emitted nothing (a ZipAR row held back by the
        row above) and its window keeps its place."""
        raise NotImplementedError


class NoDraft(Drafter):
    """No drafts: every step verifies only the pending token (plain autoregressive decoding)."""

    window = 0

    def start(self, ctx: DraftContext, pending_B: torch.Tensor, draws: Draws | None = None) -> Draft:
        B = pending_B.shape[0]
        empty_BK = torch.zeros(B, 0, dtype=torch.long, device=pending_B.device)
        return Draft(empty_BK, torch.zeros(B, 0, ctx.vocab_size, device=pending_B.device))

    def update(self, ctx, draft, p_BTV, acc, draws=None) -> Draft:
        return draft

"""The shared acceptor output and the gathers every rule uses.

Inputs of every rule, for one verify step of K drafts:
    drafts_BK   draft tokens at positions P+1 .. P+K (P = the pending token's position)
    q_BKV       the distribution each draft was drawn from (one-hot for deterministic drafts)
    p_BTV       the target's processed distributions, T = K + 1 (the last one is the bonus)
Output: ``Acceptance(num_accepted_B, next_token_B)``: the first ``num_accepted_B`` drafts are
kept and ``next_token_B`` (recovered on rejection, bonus when all are kept) follows them.
Randomness: ``draws`` holds the U[0, 1) numbers the rule declares in ``draws_shapes`` (made
before the step, so a compiled step sees no generator), or is a generator / None for code
outside a step, which then draws them on the spot.

Nothing here syncs with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmaccel.sampling import Draws, Shapes


@dataclass(frozen=True)
class Acceptance:
    num_accepted_B: torch.Tensor  # int64 [B], in 0..K (-1 only for Drafter.update: nothing emitted)
    next_token_B: torch.Tensor  # int64 [B]


class Acceptor:
    """One acceptance rule. Subclasses implement ``draws_shapes`` and ``accept``."""

    name = "acceptor"

    def draws_shapes(self, B: int, K: int, V: int) -> Shapes:
        """The U[0, 1) numbers one ``accept`` of B rows, K drafts, V tokens consumes."""
        raise NotImplementedError

    def accept(
        self,
        drafts_BK: torch.Tensor,
        q_BKV: torch.Tensor,
        p_BTV: torch.Tensor,
        draws: Draws | torch.Generator | None,
    ) -> Acceptance:
        raise NotImplementedError

    def _draws(self, draws, drafts_BK: torch.Tensor, p_BTV: torch.Tensor) -> Draws:
        B, K = drafts_BK.shape
        return Draws.of(draws, self.draws_shapes(B, K, p_BTV.shape[-1]), p_BTV.device)


def leading_true(mask_BK: torch.Tensor) -> torch.Tensor:
    """Length of the run of True at the start of each row (int64 [B])."""
    return mask_BK.long().cumprod(-1).sum(-1)


def at_index(x_BT: torch.Tensor, idx_B: torch.Tensor) -> torch.Tensor:
    """``x_BT[b, idx_B[b]]`` for x of shape [B, T] or [B, T, V] (result [B] or [B, V])."""
    if x_BT.dim() == 2:
        return x_BT.gather(1, idx_B[:, None])[:, 0]
    V = x_BT.shape[-1]
    return x_BT.gather(1, idx_B[:, None, None].expand(-1, 1, V))[:, 0]


def token_prob(probs_BKV: torch.Tensor, tokens_BK: torch.Tensor) -> torch.Tensor:
    """``probs[b, k, tokens[b, k]]`` ([B, K])."""
    return probs_BKV.gather(-1, tokens_BK[..., None])[..., 0]

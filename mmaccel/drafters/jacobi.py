"""Jacobi-window drafter for SJD (arXiv 2410.01699) and coupled SJD (MC-SJD, arXiv 2510.24211).

Owns the window of K drafts and, for each, the distribution q it was drawn from. After a
verify step that kept n drafts and emitted a next token, the window moves to start right
after that token. Position j of the new window either

* had a target distribution p in this forward (j < K - n): it is redrawn from p
  (``coupled=False``, the Jacobi update of SJD), or, when it already held draft x drawn from
  q_prev, coupled to it (``coupled=True``):

      keep x with probability min(1, p(x) / q_prev(x)), else draw from norm(max(0, p - q_prev));

  either way the new draft is distributed as p, so its new q is p and acceptance stays exact;
* or is new (j >= K - n): initialised by ``init`` with a one-hot q:
  ``random`` (uniform token), ``horizontal`` (copy the token to its left), ``vertical`` (copy the
  token one grid row up; needs the grid width; falls back to horizontal on the first row).

Must never: sync with the host or read anything but the context it is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmaccel.acceptors.base import Acceptance, token_prob
from mmaccel.drafters.base import Draft, DraftContext, Drafter
from mmaccel.sampling import Draws, Shapes, normalize_residual, randint_with, sample_with

INITS = ("random", "horizontal", "vertical")


class JacobiDrafter(Drafter):
    def __init__(self, window: int = 16, init: str = "random", coupled: bool = False) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}; got {init!r}")
        self.window, self.init, self.coupled = window, init, coupled

    def start_draws(self, B: int, V: int) -> Shapes:
        return {"init": (B, self.window)} if self.init == "random" else {}

    def update_draws(self, B: int, V: int) -> Shapes:
        K = self.window
        shapes = {"fresh": (B, K, V)}  # the Jacobi redraw of every slot that had a p
        if self.coupled:
            shapes.update(keep=(B, K), residual=(B, K, V))  # the coupling test and its residual draw
        return shapes | self.start_draws(B, V)

    def start(self, ctx: DraftContext, pending_B: torch.Tensor, draws: Draws | None = None) -> Draft:
        B, K = pending_B.shape[0], self.window
        r = Draws.of(draws if draws is not None else ctx.generator, self.start_draws(B, ctx.vocab_size),
                     pending_B.device)  # fmt: skip
        tokens_BK = pending_B[:, None].expand(B, K).clone()
        is_new_BK = torch.ones(B, K, dtype=torch.bool, device=pending_B.device)
        tokens_BK = self._initialise(ctx, tokens_BK, is_new_BK, pending_B, r)
        return Draft(tokens_BK, F.one_hot(tokens_BK, ctx.vocab_size).float())

    def update(
        self,
        ctx: DraftContext,
        draft: Draft,
        p_BTV: torch.Tensor,
        acc: Acceptance,
        draws: Draws | None = None,
    ) -> Draft:
        """The window after a verify step. ``acc.num_accepted_B`` may be -1 for a row that emitted
        nothing this step (a ZipAR row held back by the row above): its window stays where it
        was and every slot is redrawn from its own p."""
        K = self.window
        B, V = p_BTV.shape[0], p_BTV.shape[-1]
        r = Draws.of(draws if draws is not None else ctx.generator, self.update_draws(B, V), p_BTV.device)
        n_B1 = acc.num_accepted_B[:, None]
        # new-window slot j sits where old draft n+1+j and target distribution n+1+j were
        src_BK = n_B1 + 1 + torch.arange(K, device=p_BTV.device)[None]
        has_p_BK = src_BK <= K
        p_new_BKV = p_BTV.gather(1, src_BK.clamp(max=K)[..., None].expand(-1, -1, V))
        fresh_BK = sample_with(p_new_BKV, r["fresh"])
        if self.coupled:
            has_old_BK = src_BK <= K - 1
            old_idx_BK = src_BK.clamp(max=K - 1)
            old_x_BK = draft.tokens_BK.gather(1, old_idx_BK)
            q_old_BKV = draft.q_BKV.gather(1, old_idx_BK[..., None].expand(-1, -1, V))
            keep_BK = r["keep"] * token_prob(q_old_BKV, old_x_BK) < token_prob(p_new_BKV, old_x_BK)
            residual_BKV = normalize_residual((p_new_BKV - q_old_BKV).clamp_min(0), fallback=p_new_BKV)
            redraw_BK = torch.where(keep_BK, old_x_BK, sample_with(residual_BKV, r["residual"]))
            fresh_BK = torch.where(has_old_BK, redraw_BK, fresh_BK)
        # the token left of the first new slot: last redrawn one, else the next token itself
        left_BK1 = torch.cat([acc.next_token_B[:, None], fresh_BK], dim=1)
        last_B = left_BK1.gather(1, (K - n_B1).clamp(min=0, max=K))[:, 0]
        tokens_BK = self._initialise(ctx, fresh_BK, ~has_p_BK, last_B, r)
        q_BKV = torch.where(has_p_BK[..., None], p_new_BKV, F.one_hot(tokens_BK, V).to(p_new_BKV.dtype))
        return Draft(tokens_BK, q_BKV)

    def _initialise(self, ctx, tokens_BK, is_new_BK, last_B, r: Draws) -> torch.Tensor:
        """Fill the new slots of the window by the init strategy."""
        if self.init == "random":
            return torch.where(is_new_BK, randint_with(r["init"], ctx.vocab_size), tokens_BK)
        horizontal_BK = torch.where(is_new_BK, last_B[:, None], tokens_BK)
        if self.init == "horizontal":
            return horizontal_BK
        return self._vertical(ctx, horizontal_BK, is_new_BK)

    def _vertical(self, ctx, tokens_BK, is_new_BK) -> torch.Tensor:
        W, K = ctx.grid_width, self.window
        B, N = ctx.history_BN.shape
        start_B1 = ctx.num_generated_B[:, None].long()
        idx_BK = start_B1 + torch.arange(K, device=tokens_BK.device)[None]
        above_BK = idx_BK - W
        # scratch = history with the window written in place, so "one row up" can fall inside it
        scratch_BN = torch.cat([ctx.history_BN, torch.zeros_like(ctx.history_BN[:, :K])], dim=1)
        for _ in range(math.ceil(K / W)):  # a new slot may copy another new slot W to its left
            scratch_BN = scratch_BN.scatter(1, idx_BK, tokens_BK)
            up_BK = scratch_BN.gather(1, above_BK.clamp(min=0))
            tokens_BK = torch.where(is_new_BK & (above_BK >= 0), up_BK, tokens_BK)
        return tokens_BK

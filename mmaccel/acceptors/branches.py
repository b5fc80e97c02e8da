"""Several deterministic draft branches verified in one forward (tree verification).

A step carries the pending token and G branches of k drafts each, laid out branch after
branch; branch g's token at depth d attends to the pending token and to branch g's tokens at
depths <= d only, and sits at position P + 1 + d (``branch_mask``, ``branch_positions``). So
``p`` at the pending token is the root distribution, and ``p`` at (g, d) is the distribution of
the token after branch g's first d + 1 drafts.

Every draft is a deterministic function of the committed text (q one-hot), so the rule is
multi-draft speculative sampling with one-hot proposals (SpecInfer's sequential rejection):

* root: r = p_root; for g = 0 .. G - 1 whose first token x_g is not an earlier branch's,
  keep x_g (and branch g) with probability r(x_g), else r = norm(r without x_g);
  no branch kept: the next token is drawn from r;
* along the kept branch, depth d >= 1: keep x_{g,d} with probability p_{g,d-1}(x_{g,d}); at the
  first rejection draw from norm(p_{g,d-1} without x_{g,d}); all kept: the bonus from p_{g,k-1}.

Each stage draws exactly from the target's conditional, so the output has the target's law;
greedy (one-hot p) keeps the longest run of argmaxes on the first branch whose first token is
the argmax, i.e. exactly the greedy tokens.

Nothing here syncs with the host.
"""

from __future__ import annotations

import torch

from mmaccel.acceptors.base import Acceptance, at_index, leading_true, token_prob
from mmaccel.sampling import Draws, Shapes, sample_with


def branch_draws(B: int, G: int, k: int, V: int) -> Shapes:
    """The U[0, 1) numbers one branch acceptance consumes."""
    return {"root": (B, G), "u": (B, max(k - 1, 0)), "e": (B, V)}


def branch_mask(G: int, k: int, device: torch.device | str) -> torch.Tensor:
    """``[T, T]`` (T = 1 + G k): who a block token may see inside its block (itself included)."""
    T = 1 + G * k
    idx_T = torch.arange(T, device=device)
    branch_T = torch.where(idx_T > 0, (idx_T - 1).div(max(k, 1), rounding_mode="floor"), -1)
    depth_T = torch.where(idx_T > 0, (idx_T - 1) % max(k, 1), -1)
    same = (branch_T[:, None] == branch_T[None, :]) & (depth_T[None, :] <= depth_T[:, None])
    return same | (idx_T[None, :] == 0)


def branch_positions(G: int, k: int, device: torch.device | str) -> torch.Tensor:
    """``[T]``: offset of each block token's position from the pending token's."""
    idx_T = torch.arange(1 + G * k, device=device)
    return torch.where(idx_T > 0, (idx_T - 1) % max(k, 1) + 1, 0)


def accept_branches(
    tokens_BGk: torch.Tensor, p_BTV: torch.Tensor, draws: Draws
) -> tuple[Acceptance, torch.Tensor]:
    """The kept branch's accepted drafts and next token, and the branch index ``[B]`` (0 when
    no branch was kept). ``p_BTV``: the block's distributions in its layout (module docstring)."""
    B, G, k = tokens_BGk.shape
    V = p_BTV.shape[-1]
    r_BV = p_BTV[:, 0]
    first_BG = tokens_BGk[:, :, 0]
    chosen_B = torch.full((B,), -1, dtype=torch.long, device=p_BTV.device)
    for g in range(G):
        x_B = first_BG[:, g]
        fresh_B = torch.ones_like(x_B, dtype=torch.bool)
        for h in range(g):  # a first token already tried was rejected: its mass is gone from r
            fresh_B &= first_BG[:, h] != x_B
        r_x_B = r_BV.gather(1, x_B[:, None])[:, 0]
        open_B = (chosen_B < 0) & fresh_B
        keep_B = open_B & (draws["root"][:, g] < r_x_B)
        chosen_B = torch.where(keep_B, g, chosen_B)
        drop_B = open_B & ~keep_B
        without_BV = r_BV.scatter(1, x_B[:, None], 0.0)
        without_BV = without_BV / without_BV.sum(-1, keepdim=True).clamp_min(1e-30)
        r_BV = torch.where(drop_B[:, None], without_BV, r_BV)
    kept_B = chosen_B >= 0
    branch_B = chosen_B.clamp(min=0)
    drafts_Bk = tokens_BGk.gather(1, branch_B[:, None, None].expand(-1, 1, k))[:, 0]
    # p after depth d of the kept branch sits at block index 1 + branch * k + d
    idx_Bk = 1 + branch_B[:, None] * k + torch.arange(k, device=p_BTV.device)[None]
    p_BkV = p_BTV.gather(1, idx_Bk[..., None].expand(-1, -1, V))
    deeper_B = leading_true(draws["u"] < token_prob(p_BkV[:, :-1], drafts_Bk[:, 1:]))
    n_B = torch.where(kept_B, 1 + deeper_B, 0)
    # the next token: from r (no branch kept), from p at the kept branch's last kept draft without
    # the rejected draft, or the bonus after all k
    p_n_BV = at_index(p_BkV, (n_B - 1).clamp(min=0))
    rejected_B = drafts_Bk.gather(1, n_B.clamp(max=k - 1)[:, None])[:, 0]
    without_BV = p_n_BV.scatter(1, rejected_B[:, None], 0.0)
    mass_B1 = without_BV.sum(-1, keepdim=True)
    without_BV = torch.where(mass_B1 > 0, without_BV / mass_B1.clamp_min(1e-30), p_n_BV)
    final_BV = torch.where((n_B == k)[:, None], p_n_BV, without_BV)
    final_BV = torch.where(kept_B[:, None], final_BV, r_BV)
    return Acceptance(n_B, sample_with(final_BV, draws["e"])), branch_B

"""Several deterministic draft branches verified in one forward (tree verification).

A step carries the pending token and G branches of ``lengths[g]`` drafts each, laid out branch
after branch; branch g's token at depth d attends to the pending token and to branch g's
tokens at depths <= d only, and sits at position P + 1 + d (``branch_mask``,
``branch_positions``). So ``p`` at the pending token is the root distribution, and ``p`` at
(g, d) is the distribution of the token after branch g's first d + 1 drafts.

Every draft is a deterministic function of the committed text and of earlier forwards (q
one-hot), so the rule is multi-draft speculative sampling with one-hot proposals (SpecInfer's
sequential rejection):

* root: r = p_root; for g = 0 .. G - 1 whose first token x_g is not an earlier branch's,
  keep x_g (and branch g) with probability r(x_g), else r = norm(r without x_g);
  no branch kept: the next token is drawn from r;
* along the kept branch, depth d >= 1: keep x_{g,d} with probability p_{g,d-1}(x_{g,d}); at the
  first rejection draw from norm(p_{g,d-1} without x_{g,d}); all kept: the bonus from p after
  the branch's last draft.

Each stage draws exactly from the target's conditional, so the output has the target's law;
greedy (one-hot p) keeps the longest run of argmaxes on the first branch whose first token is
the argmax, i.e. exactly the greedy tokens. (Branches sharing a first token are not merged
into a tree: the later one is never kept; drafters propose distinct first tokens.)

Nothing here syncs with the host.
"""

from __future__ import annotations

import torch

from mmaccel.acceptors.base import Acceptance, at_index, leading_true, token_prob
from mmaccel.sampling import Draws, Shapes, sample_with


def branch_draws(B: int, lengths: tuple[int, ...], V: int) -> Shapes:
    """The U[0, 1) numbers one branch acceptance consumes."""
    return {"root": (B, len(lengths)), "u": (B, max(lengths) - 1), "e": (B, V)}


def const(values: list[int], device) -> torch.Tensor:
    """int64 tensor of ``values`` made on the device by fills, not by a host-to-device copy (a
    captured CUDA graph may hold no copy from host memory)."""
    return torch.cat([torch.full((1,), v, dtype=torch.long, device=device) for v in values])


def _layout(lengths: tuple[int, ...], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Branch index and depth of every block token (-1 for the pending token)."""
    branch = [-1] + [g for g, n in enumerate(lengths) for _ in range(n)]
    depth = [-1] + [d for n in lengths for d in range(n)]
    return const(branch, device), const(depth, device)


def branch_mask(lengths: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """``[T, T]`` (T = 1 + sum(lengths)): who a block token may see inside its block (itself included)."""
    branch_T, depth_T = _layout(lengths, device)
    same = (branch_T[:, None] == branch_T[None, :]) & (depth_T[None, :] <= depth_T[:, None])
    return same | (branch_T[None, :] < 0)


def branch_positions(lengths: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """``[T]``: offset of each block token's position from the pending token's."""
    return _layout(lengths, device)[1] + 1


def branch_tokens(tokens_BK: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    """``[B, G, max(lengths)]``: each branch's drafts, padded with its last one."""
    offsets = [sum(lengths[:g]) for g in range(len(lengths))]
    idx = [[offsets[g] + min(d, n - 1) for d in range(max(lengths))] for g, n in enumerate(lengths)]
    idx_GK = const([i for row in idx for i in row], tokens_BK.device).view(len(lengths), -1)
    return tokens_BK[:, idx_GK]


def accept_branches(
    tokens_BK: torch.Tensor, lengths: tuple[int, ...], p_BTV: torch.Tensor, draws: Draws
) -> tuple[Acceptance, torch.Tensor, torch.Tensor]:
    """The kept branch's accepted drafts and next token, the branch index ``[B]`` (0 when no
    branch was kept) and its drafts ``[B, max(lengths)]``. ``tokens_BK``: the branches laid out
    one after another; ``p_BTV``: the block's distributions in that layout."""
    B, G, V = tokens_BK.shape[0], len(lengths), p_BTV.shape[-1]
    device = p_BTV.device
    tokens_BGK = branch_tokens(tokens_BK, lengths)
    K = tokens_BGK.shape[2]
    r_BV = p_BTV[:, 0]
    first_BG = tokens_BGK[:, :, 0]
    chosen_B = torch.full((B,), -1, dtype=torch.long, device=device)
    for g in range(G):
        x_B = first_BG[:, g]
        fresh_B = torch.ones_like(x_B, dtype=torch.bool)
        for h in range(g):  # a first token already tried was rejected: its mass is gone from r
            fresh_B &= first_BG[:, h] != x_B
        open_B = (chosen_B < 0) & fresh_B
        keep_B = open_B & (draws["root"][:, g] < r_BV.gather(1, x_B[:, None])[:, 0])
        chosen_B = torch.where(keep_B, g, chosen_B)
        without_BV = r_BV.scatter(1, x_B[:, None], 0.0)
        without_BV = without_BV / without_BV.sum(-1, keepdim=True).clamp_min(1e-30)
        r_BV = torch.where((open_B & ~keep_B)[:, None], without_BV, r_BV)
    kept_B = chosen_B >= 0
    branch_B = chosen_B.clamp(min=0)
    drafts_BK = tokens_BGK.gather(1, branch_B[:, None, None].expand(-1, 1, K))[:, 0]
    length_B = const(list(lengths), device)[branch_B]
    offset_B = const([sum(lengths[:g]) for g in range(G)], device)[branch_B]
    # p after depth d of the kept branch sits at block index 1 + offset + d
    idx_BK = 1 + offset_B[:, None] + torch.arange(K, device=device)[None].minimum(length_B[:, None] - 1)
    p_BKV = p_BTV.gather(1, idx_BK[..., None].expand(-1, -1, V))
    depth_K = torch.arange(1, K, device=device)[None]
    deeper_B = leading_true(
        (draws["u"] < token_prob(p_BKV[:, :-1], drafts_BK[:, 1:])) & (depth_K < length_B[:, None])
    )
    n_B = torch.where(kept_B, 1 + deeper_B, 0)
    # the next token: from r (no branch kept), from p after the last kept draft without the
    # rejected one, or the bonus after the branch's last draft
    p_n_BV = at_index(p_BKV, (n_B - 1).clamp(min=0))
    rejected_B = drafts_BK.gather(1, n_B.clamp(max=K - 1)[:, None])[:, 0]
    without_BV = p_n_BV.scatter(1, rejected_B[:, None], 0.0)
    mass_B1 = without_BV.sum(-1, keepdim=True)
    without_BV = torch.where(mass_B1 > 0, without_BV / mass_B1.clamp_min(1e-30), p_n_BV)
    final_BV = torch.where((n_B == length_B)[:, None], p_n_BV, without_BV)
    final_BV = torch.where(kept_B[:, None], final_BV, r_BV)
    return Acceptance(n_B, sample_with(final_BV, draws["e"])), branch_B, drafts_BK

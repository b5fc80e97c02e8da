"""Prompt-lookup drafter (Saxena 2023, "prompt lookup decoding"; transformers' ``PromptLookupCandidateGenerator``).

Text a model is asked to summarise, rewrite or answer from is full of spans it will copy. The
drafter looks for the last ``n`` tokens of the text so far (prompt + generated, the pending token
last) earlier in that same text, for ``n = ngram_max`` down to ``ngram_min``, and proposes the
``window`` tokens that followed the most recent occurrence of the longest n-gram that matches:

    e* = max{ e < len - 1 : text[e - n + 1 .. e] == text[len - n .. len - 1] },
    draft_k = text[e* + 1 + k],   k = 0 .. window - 1.

Draft slots past the end of the known text, and every slot when nothing matches, hold copies of
the pending token (the window has a fixed size so the step keeps one shape; such slots are
simply rejected unless the model does repeat itself). Each draft is a deterministic function of
the committed text, so its q is one-hot: speculative sampling then keeps it with probability
p(x) and resamples from p without x, which is exact; greedy keeps it iff it is the argmax.

Owns nothing between steps: every window is recomputed from the context. Must never sync with
the host (matching is ``unfold`` + comparisons + a max over positions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmaccel.acceptors.base import Acceptance
from mmaccel.drafters.base import Draft, DraftContext, Drafter
from mmaccel.sampling import Draws


def text_so_far(ctx: DraftContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's prompt followed by its generated tokens, ``[B, P + N]`` (-1 past the end, which
    matches no token), and its length ``[B]``."""
    hist_BN = ctx.history_BN
    B, N = hist_BN.shape
    prompt_BP = ctx.prompt_BP if ctx.prompt_BP is not None else hist_BN[:, :0]
    plen_B = ctx.prompt_len_B if ctx.prompt_len_B is not None else torch.zeros_like(ctx.num_generated_B)
    P = prompt_BP.shape[1]
    i_L = torch.arange(P + N, device=hist_BN.device)[None]
    plen_B1, len_B1 = plen_B.long()[:, None], (plen_B + ctx.num_generated_B).long()[:, None]
    from_prompt_BL = prompt_BP.gather(1, i_L.clamp(max=max(P - 1, 0)).expand(B, -1)) if P else hist_BN[:, :1]
    from_hist_BL = hist_BN.gather(1, (i_L - plen_B1).clamp(0, N - 1))
    text_BL = torch.where(i_L < plen_B1, from_prompt_BL.expand(B, P + N), from_hist_BL)
    return torch.where(i_L < len_B1, text_BL, -1), len_B1[:, 0]


def lookup(text_BL: torch.Tensor, len_B: torch.Tensor, n: int) -> torch.Tensor:
    """Index after the most recent earlier occurrence of each row's last ``n`` tokens (-1: none)."""
    B, L = text_BL.shape
    if n > L - 1:
        return torch.full((B,), -1, dtype=torch.long, device=text_BL.device)
    suffix_Bn = text_BL.gather(1, (len_B[:, None] - n + torch.arange(n, device=text_BL.device)).clamp(min=0))
    windows_BJn = text_BL.unfold(1, n, 1)  # window j covers j .. j + n - 1
    j_J = torch.arange(L - n + 1, device=text_BL.device)
    match_BJ = (windows_BJn == suffix_Bn[:, None]).all(-1) & (j_J[None] + n <= len_B[:, None] - 1)
    match_BJ &= (len_B >= n)[:, None]
    return torch.where(match_BJ, j_J[None] + n, -1).amax(1)


class PromptLookupDrafter(Drafter):
    def __init__(self, window: int = 10, ngram_max: int = 3, ngram_min: int = 1) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min}, {ngram_max}")
        self.window, self.ngram_max, self.ngram_min = window, ngram_max, ngram_min

    def propose(self, ctx: DraftContext, pending_B: torch.Tensor) -> Draft:
        text_BL, len_B = text_so_far(ctx)
        start_B = torch.full_like(len_B, -1)
        for n in range(self.ngram_max, self.ngram_min - 1, -1):  # the longest n-gram that matches wins
            start_B = torch.where(start_B >= 0, start_B, lookup(text_BL, len_B, n))
        idx_BK = start_B[:, None] + torch.arange(self.window, device=text_BL.device)[None]
        known_BK = (start_B[:, None] >= 0) & (idx_BK < len_B[:, None])
        copied_BK = text_BL.gather(1, idx_BK.clamp(0, text_BL.shape[1] - 1))
        tokens_BK = torch.where(known_BK, copied_BK, pending_B[:, None])
        return Draft(tokens_BK, F.one_hot(tokens_BK, ctx.vocab_size).float())

    def start(self, ctx: DraftContext, pending_B: torch.Tensor, draws: Draws | None = None) -> Draft:
        return self.propose(ctx, pending_B)

    def update(self, ctx, draft, p_BTV, acc: Acceptance, draws=None) -> Draft:
        # the step has written the emitted tokens to the history: the pending token is the last
        last_B = ctx.history_BN.gather(1, (ctx.num_generated_B - 1).clamp(min=0)[:, None])[:, 0]
        return self.propose(ctx, last_B)

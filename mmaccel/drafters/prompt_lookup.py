"""Prompt-lookup drafter (Saxena 2023, "prompt lookup decoding"; transformers' ``PromptLookupCandidateGenerator``).

Text a model is asked to summarise, rewrite or answer from is full of spans it will copy. The
drafter looks for the last ``n`` tokens of the text so far (prompt + generated, the pending token
last) earlier in that same text, for ``n = ngram_max`` down to ``ngram_min``, and proposes the
``window`` tokens that followed the most recent occurrence of the longest n-gram that matches:

    e* = max{ e < len - 1 : text[e - n + 1 .. e] == text[len - n .. len - 1] },
    draft_k = text[e* + 1 + k],   k = 0 .. window - 1.

Draft slots past the end of the known text, and every slot when nothing matches, hold copies of
the pending token; ``Draft.length_B`` counts the copied ones, and the step verifies only as many
slots as the longest row copied (``mmaccel.draft_length``), so a step with nothing to copy is a
plain decoding step. Each draft is a deterministic function of the committed text, so its q
is one-hot: speculative sampling then keeps it with probability p(x) and resamples from p
without x, which is exact; greedy keeps it iff it is the argmax.

``branches`` = G > 1 drafts G continuations at once: the best match as above, then the best
match whose continuation starts with a token no earlier branch starts with, and so on; the
step verifies all G in one forward with a tree mask and keeps the longest accepted one
(``mmaccel.acceptors.branches``; exact as well).

Owns nothing between steps: every window is recomputed from the context. Must never sync with
the host (matching is ``unfold`` + comparisons + a max over positions).
"""

from __future__ import annotations

import torch

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


def match_scores(text_BL: torch.Tensor, len_B: torch.Tensor, ngram_max: int, ngram_min: int) -> torch.Tensor:
    """``[B, L]``: for each index s where an earlier occurrence of the text's last n tokens ends
    (at s - 1, before the last token), n (L + 1) + s for the longest such n in ngram_min ..
    ngram_max; -1 elsewhere. The largest score is the longest match, then the most recent."""
    B, L = text_BL.shape
    score_BL = torch.full((B, L), -1, dtype=torch.long, device=text_BL.device)
    for n in range(ngram_min, min(ngram_max, L - 1) + 1):
        suffix_Bn = text_BL.gather(
            1, (len_B[:, None] - n + torch.arange(n, device=text_BL.device)).clamp(min=0)
        )
        windows_BJn = text_BL.unfold(1, n, 1)[:, : L - n]  # window j covers j .. j + n - 1; s = j + n
        s_J = torch.arange(n, L, device=text_BL.device)
        match_BJ = (windows_BJn == suffix_Bn[:, None]).all(-1) & (s_J[None] <= len_B[:, None] - 1)
        match_BJ &= (len_B >= n)[:, None]
        score_BL[:, n:] = torch.where(match_BJ, n * (L + 1) + s_J[None], score_BL[:, n:])
    return score_BL


class PromptLookupDrafter(Drafter):
    variable = True  # a window is as long as the copied continuation (0 when nothing matches)
    one_hot = True

    def __init__(self, window: int = 10, ngram_max: int = 3, ngram_min: int = 1, branches: int = 1) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min}, {ngram_max}")
        if branches < 1:
            raise ValueError(f"branches must be >= 1, got {branches}")
        self.depth, self.ngram_max, self.ngram_min, self.branches = window, ngram_max, ngram_min, branches
        self.window = window * branches

    def propose(self, ctx: DraftContext, pending_B: torch.Tensor) -> Draft:
        text_BL, len_B = text_so_far(ctx)
        score_BL = match_scores(text_BL, len_B, self.ngram_max, self.ngram_min)
        arange_K = torch.arange(self.depth, device=text_BL.device)[None]
        tokens, lengths = [], []
        L = text_BL.shape[1]
        evidence_B = score_BL.amax(1).clamp(min=0) // (L + 1)
        for _ in range(self.branches):  # the best match, then the best whose continuation starts otherwise
            best_B = score_BL.argmax(1)
            start_B = torch.where(score_BL.gather(1, best_B[:, None])[:, 0] >= 0, best_B, -1)
            idx_BK = start_B[:, None] + arange_K
            known_BK = (start_B[:, None] >= 0) & (idx_BK < len_B[:, None])
            copied_BK = text_BL.gather(1, idx_BK.clamp(0, text_BL.shape[1] - 1))
            tokens.append(torch.where(known_BK, copied_BK, pending_B[:, None]))
            lengths.append(known_BK.sum(1))
            first_B = text_BL.gather(1, best_B[:, None])
            score_BL = torch.where(text_BL == first_B, -1, score_BL)
        # evidence: the matched n-gram's length (the first branch's, the best match)
        return Draft(torch.cat(tokens, 1), None, torch.stack(lengths, 1).amax(1), evidence_B)

    def start(self, ctx: DraftContext, pending_B: torch.Tensor, draws: Draws | None = None) -> Draft:
        return self.propose(ctx, pending_B)

    def update(self, ctx, draft, p_BTV, acc: Acceptance, draws=None) -> Draft:
        # the step has written the emitted tokens to the history: the pending token is the last
        last_B = ctx.history_BN.gather(1, (ctx.num_generated_B - 1).clamp(min=0)[:, None])[:, 0]
        return self.propose(ctx, last_B)

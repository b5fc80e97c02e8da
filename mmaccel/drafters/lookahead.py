"""Lookahead drafter (Fu et al. 2024, arXiv 2402.02057, "lookahead decoding"; our formulation).

Each step verifies, in one forward, G candidate n-gram continuations of the pending token
taken from an n-gram pool, and runs one Jacobi iteration of a window of W guesses whose
trajectory feeds the pool. Block layout (``mmaccel.acceptors.branches``): G branches of N - 1
candidate tokens, then the Jacobi window as one more branch of W tokens (it may be kept as well);
every branch sees the pending token and its own earlier tokens.

The Jacobi trajectory is kept as N - 1 levels of W guesses, level N - 2 the newest (the window
fed to the model), every level aligned to the positions after the pending token. After a
forward, y_c = argmax of the target after window token c guesses the position after it, and
the pool receives, for every column j, the diagonal n-gram

    (L_0[j], L_1[j + 1], ..., L_{N-2}[j + N - 2], y[j + N - 2]),

each of its tokens the model's guess given the one before it one iteration earlier. The new
window is (argmax at the pending token, y_0, ..., y_{W-2}); the oldest level is dropped; every
level then moves left by the tokens the step emitted, and slots that enter at the right are
filled with tokens drawn uniformly from the text so far (the paper's initialisation). The
pool also receives every n-gram of the prompt (at ``start``) and of the emitted text. It keeps, per first
token, the G most recent distinct continuations, which are the next step's candidates.

Drafts are deterministic given everything before the step (argmax, pool, draws made before),
so their q is one-hot and the branch acceptance is exact: greedy output is the greedy tokens,
sampled output keeps the target's law. ``variable``: a step is either a full lookahead step or
a plain one (``step_ladder``), chosen by ``mmaccel.draft_length`` under ``window="auto"``.

Owns: the levels and the pool of one call (made at ``start``). Must never sync with the host.
"""

from __future__ import annotations

import torch

from mmaccel.acceptors.base import Acceptance
from mmaccel.drafters.base import Draft, DraftContext, Drafter
from mmaccel.drafters.prompt_lookup import text_so_far
from mmaccel.sampling import Draws, Shapes


class LookaheadDrafter(Drafter):
    variable = True
    one_hot = True

    def __init__(self, n: int = 3, w: int = 4, g: int = 2) -> None:
        if n < 2:
            raise ValueError(f"lookahead_n must be >= 2, got {n}")
        if w < n - 1:
            raise ValueError(f"lookahead_w ({w}) must be >= lookahead_n - 1 ({n - 1})")
        if g < 1:
            raise ValueError(f"lookahead_g must be >= 1, got {g}")
        self.n, self.w, self.g = n, w, g
        self.branches = g + 1
        self.window = g * (n - 1) + w
        self.levels_BLW: torch.Tensor | None = None  # [B, N - 1, W]
        self.pool_BVGn: torch.Tensor | None = None  # [B, V, G, N - 1]
        self.count_BV: torch.Tensor | None = None  # continuations ever stored per first token

    def branch_lengths(self) -> tuple[int, ...]:
        return (self.n - 1,) * self.g + (self.w,)

    def step_ladder(self) -> list[int]:
        return [0, self.w]

    def start_draws(self, B: int, V: int) -> Shapes:
        return {"fill": (B, self.n - 1, self.w)}

    def update_draws(self, B: int, V: int) -> Shapes:
        return {"fill": (B, self.n - 1, self.w)}

    def start(self, ctx: DraftContext, pending_B: torch.Tensor, draws: Draws | None = None) -> Draft:
        B, V, device = pending_B.shape[0], ctx.vocab_size, pending_B.device
        r = Draws.of(draws if draws is not None else ctx.generator, self.start_draws(B, V), device)
        text_BL, len_B = text_so_far(ctx)
        self.levels_BLW = _from_text(text_BL, len_B, r["fill"])
        self.pool_BVGn = torch.zeros(B, V, self.g, self.n - 1, dtype=torch.long, device=device)
        self.count_BV = torch.zeros(B, V, dtype=torch.long, device=device)
        self._fill_from_text(text_BL, len_B)
        return self._draft(pending_B)

    def _fill_from_text(self, text_BL: torch.Tensor, len_B: torch.Tensor) -> None:
        """Fill the empty pool from every n-gram of the text in one pass (a loop of ``_insert``
        over a 500-token prompt took 120 ms): per first token, its G most recently seen distinct
        continuations, the oldest in slot 0, the ring's next victim. (``_insert`` later skips a
        continuation already stored instead of making it the most recent.) Lexicographic order by
        successive stable sorts; no loop over the text."""
        B, L = text_BL.shape
        J, V = max(L - self.n + 1, 0), self.pool_BVGn.shape[1]
        if J == 0:
            return
        grams_BJn = text_BL.unfold(1, self.n, 1)  # n-gram j covers j .. j + n - 1
        valid_BJ = torch.arange(J, device=text_BL.device)[None] + self.n - 1 < len_B[:, None]
        key_BJ = torch.where(valid_BJ, grams_BJn[..., 0], V)  # invalid ones sort last
        # newest first, then by continuation, then by key: equal (key, continuation) runs start
        # at their most recent occurrence
        order_BJ = torch.arange(J - 1, -1, -1, device=text_BL.device).expand(B, J)
        for t in range(self.n - 1, -1, -1):
            column_BJ = key_BJ if t == 0 else grams_BJn[..., t]
            order_BJ = order_BJ.gather(1, column_BJ.gather(1, order_BJ).sort(dim=1, stable=True).indices)
        key_s, gram_s = (
            key_BJ.gather(1, order_BJ),
            grams_BJn.gather(1, order_BJ[..., None].expand(-1, -1, self.n)),
        )
        first_BJ = torch.ones_like(valid_BJ)
        first_BJ[:, 1:] = (gram_s[:, 1:] != gram_s[:, :-1]).any(-1)
        kept_BJ = first_BJ & (key_s < V)
        # the kept ones by key, newest first: rank within the key
        kept_pos_BJ = torch.where(kept_BJ, order_BJ, -1)
        newest_BJ = kept_pos_BJ.sort(dim=1, descending=True, stable=True).indices
        by_key_BJ = newest_BJ.gather(
            1, torch.where(kept_BJ, key_s, V).gather(1, newest_BJ).sort(dim=1, stable=True).indices
        )
        key_k = torch.where(kept_BJ, key_s, V).gather(1, by_key_BJ)
        gram_k = gram_s.gather(1, by_key_BJ[..., None].expand(-1, -1, self.n))
        i_J = torch.arange(J, device=text_BL.device)[None]
        starts_BJ = torch.where(
            torch.cat([torch.ones_like(key_k[:, :1], dtype=torch.bool), key_k[:, 1:] != key_k[:, :-1]], 1),
            i_J,
            0,
        )
        rank_BJ = i_J - starts_BJ.cummax(1).values
        write_BJ = (key_k < V) & (rank_BJ < self.g)
        rows_BJ = torch.arange(B, device=text_BL.device)[:, None].expand(B, J)
        key_w = key_k.clamp(max=V - 1)
        kept_per_key = torch.zeros(B, V, dtype=torch.long, device=text_BL.device)
        kept_per_key.index_put_(
            (rows_BJ[write_BJ], key_w[write_BJ]), torch.ones_like(key_w[write_BJ]), accumulate=True
        )
        slot_BJ = kept_per_key[rows_BJ, key_w] - 1 - rank_BJ
        self.pool_BVGn[rows_BJ[write_BJ], key_w[write_BJ], slot_BJ[write_BJ]] = gram_k[..., 1:][write_BJ]
        self.count_BV.copy_(kept_per_key)

    def update(self, ctx, draft, p_BTV: torch.Tensor, acc: Acceptance, draws: Draws | None = None) -> Draft:
        B, V, device = p_BTV.shape[0], ctx.vocab_size, p_BTV.device
        r = Draws.of(draws if draws is not None else ctx.generator, self.update_draws(B, V), device)
        text_BL, len_B = text_so_far(ctx)
        levels_BLW = self.levels_BLW
        if p_BTV.shape[1] > 1:  # a lookahead step: one more Jacobi iteration, its n-grams to the pool
            start = 1 + self.g * (self.n - 1)
            y_BW = p_BTV[:, start : start + self.w].argmax(-1)
            for j in range(self.w - self.n + 2):
                key_B = levels_BLW[:, 0, j]
                diag = [levels_BLW[:, lv, j + lv] for lv in range(1, self.n - 1)] + [y_BW[:, j + self.n - 2]]
                self._insert(key_B, torch.stack(diag, 1), torch.ones_like(key_B, dtype=torch.bool))
            window_BW = torch.cat([p_BTV[:, 0].argmax(-1)[:, None], y_BW[:, :-1]], 1)
            levels_BLW = torch.cat([levels_BLW[:, 1:], window_BW[:, None]], 1)
        # every level moves left by the tokens emitted; new slots come from the text
        emitted_B = (acc.num_accepted_B + 1).clamp(min=0)
        idx_W = torch.arange(self.w, device=device)[None] + emitted_B[:, None]
        moved_BLW = levels_BLW.gather(2, idx_W.clamp(max=self.w - 1)[:, None].expand_as(levels_BLW))
        fill_BLW = _from_text(text_BL, len_B, r["fill"])
        self.levels_BLW = torch.where((idx_W < self.w)[:, None], moved_BLW, fill_BLW)
        most = self.w + 1 if p_BTV.shape[1] > 1 else 1  # a plain step emits one token
        for i in range(most):  # the n-grams that end at an emitted token
            self._add_text_ngram(text_BL, len_B, len_B - 1 - i, i < emitted_B)
        last_B = text_BL.gather(1, (len_B - 1)[:, None])[:, 0]
        return self._draft(last_B)

    def _draft(self, pending_B: torch.Tensor) -> Draft:
        """The pool's continuations of the pending token, then the Jacobi window."""
        B = pending_B.shape[0]
        rows_B = torch.arange(B, device=pending_B.device)
        cands_BGn = self.pool_BVGn[rows_B, pending_B]
        filled_BG = (
            torch.arange(self.g, device=pending_B.device)[None] < self.count_BV[rows_B, pending_B][:, None]
        )
        cands_BGn = torch.where(filled_BG[..., None], cands_BGn, pending_B[:, None, None])
        tokens_BK = torch.cat([cands_BGn.reshape(B, -1), self.levels_BLW[:, -1]], 1)
        # evidence: how many pool candidates there are (0: only the Jacobi window's guesses)
        return Draft(tokens_BK, None, torch.full_like(pending_B, self.w), filled_BG.sum(1))

    def _add_text_ngram(self, text_BL, len_B, end_B, valid_B=None) -> None:
        """The n-gram of the text ending at index ``end_B``, if it lies inside the text."""
        idx_Bn = end_B[:, None] - self.n + 1 + torch.arange(self.n, device=text_BL.device)[None]
        ok_B = (idx_Bn[:, 0] >= 0) & (end_B < len_B)
        if valid_B is not None:
            ok_B &= valid_B
        gram_Bn = text_BL.gather(1, idx_Bn.clamp(0, text_BL.shape[1] - 1))
        self._insert(gram_Bn[:, 0], gram_Bn[:, 1:], ok_B)

    def _insert(self, key_B: torch.Tensor, value_Bn: torch.Tensor, ok_B: torch.Tensor) -> None:
        """Store ``value`` as a continuation of ``key`` (ring of G per key; a stored one is not repeated)."""
        rows_B = torch.arange(key_B.shape[0], device=key_B.device)
        key_B = key_B.clamp(min=0)
        stored_BGn = self.pool_BVGn[rows_B, key_B]
        count_B = self.count_BV[rows_B, key_B]
        filled_BG = torch.arange(self.g, device=key_B.device)[None] < count_B[:, None]
        known_B = ((stored_BGn == value_Bn[:, None]).all(-1) & filled_BG).any(-1)
        write_B = ok_B & ~known_B & (value_Bn >= 0).all(-1)
        slot_B = count_B % self.g
        old_Bn = stored_BGn[rows_B, slot_B]
        self.pool_BVGn[rows_B, key_B, slot_B] = torch.where(write_B[:, None], value_Bn, old_Bn)
        self.count_BV[rows_B, key_B] = count_B + write_B.long()


def _from_text(text_BL: torch.Tensor, len_B: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Tokens drawn uniformly from each row's text (``u``: U[0, 1) of the output's shape)."""
    B = text_BL.shape[0]
    idx = (u * len_B.view(B, *([1] * (u.dim() - 1)))).long().clamp(min=0)
    idx = torch.minimum(idx, (len_B - 1).view(B, *([1] * (u.dim() - 1))))
    return text_BL.gather(1, idx.reshape(B, -1)).view(u.shape)

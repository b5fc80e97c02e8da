"""Exact-match acceptance (Jacobi decoding; Santilli et al. 2023, Song et al. 2021).

The target draws its own token y_i ~ p_i at every position of the block (argmax when greedy);
draft d_i is kept while it equals y_i:

    n = max{ m : d_i == y_i for all i < m },   next token = y_n.

Since y_i is exactly what plain decoding would draw given the (correct) prefix, the output is
distributed exactly as autoregressive sampling; greedy output equals greedy decoding token
for token.
"""

from __future__ import annotations

from mmaccel.acceptors.base import Acceptance, Acceptor, at_index, leading_true
from mmaccel.sampling import sample_with


class ExactMatch(Acceptor):
    name = "exact"

    def draws_shapes(self, B, K, V):
        return {"e": (B, K + 1, V)}  # the target's own draw at every position of the block

    def accept(self, drafts_BK, q_BKV, p_BTV, draws) -> Acceptance:
        y_BT = sample_with(p_BTV, self._draws(draws, drafts_BK, p_BTV)["e"])
        K = drafts_BK.shape[1]
        n_B = leading_true(drafts_BK == y_BT[:, :K])
        return Acceptance(n_B, at_index(y_BT, n_B))

"""Speculative sampling (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023).

Draft x_i was drawn from q_i. With u_i ~ U[0, 1), keep x_i while

    u_i < min(1, p_i(x_i) / q_i(x_i)),

and at the first rejection i = n draw the next token from the residual

    p'(x) = norm(max(0, p_n(x) - q_n(x))),

or, when all K drafts are kept, the bonus token from p_K. The output is distributed exactly
as sampling from p, whatever q is, provided x_i ~ q_i.
"""

from __future__ import annotations

import torch

from mmaccel.acceptors.base import Acceptance, Acceptor, at_index, leading_true, token_prob
from mmaccel.sampling import normalize_residual, sample, uniform


class SpeculativeSampling(Acceptor):
    name = "speculative"

    def accept(self, drafts_BK, q_BKV, p_BTV, generator) -> Acceptance:
        B, K = drafts_BK.shape
        p_x = token_prob(p_BTV[:, :K], drafts_BK)
        q_x = token_prob(q_BKV, drafts_BK)
        u_BK = uniform((B, K), p_BTV, generator)
        n_B = leading_true(u_BK * q_x < p_x)
        # q past the last draft is zero, so the residual at n = K is the bonus distribution p_K
        q_pad_BTV = torch.cat([q_BKV, torch.zeros_like(p_BTV[:, :1])], dim=1)
        p_n, q_n = at_index(p_BTV, n_B), at_index(q_pad_BTV, n_B)
        p_prime = normalize_residual((p_n - q_n).clamp_min(0), fallback=p_n)
        return Acceptance(n_B, sample(p_prime, generator))

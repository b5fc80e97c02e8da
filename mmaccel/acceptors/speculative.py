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
from mmaccel.sampling import exponential, normalize_residual, sample_with


class SpeculativeSampling(Acceptor):
    name = "speculative"

    def draws_shapes(self, B, K, V):
        return {"u": (B, K), "e": (B, V)}  # the ratio tests; the residual (or bonus) draw

    def accept(self, drafts_BK, q_BKV, p_BTV, draws) -> Acceptance:
        r = self._draws(draws, drafts_BK, p_BTV)
        if p_BTV.is_cuda and _triton():  # the same rule fused into one kernel pass over the window
            from mmaccel.kernels.speculative import speculative_accept_triton

            return Acceptance(
                *speculative_accept_triton(p_BTV, q_BKV, drafts_BK, r["u"], exponential(r["e"]))
            )
        K = drafts_BK.shape[1]
        p_x = token_prob(p_BTV[:, :K], drafts_BK)
        q_x = token_prob(q_BKV, drafts_BK)
        n_B = leading_true(r["u"] * q_x < p_x)
        # q past the last draft is zero, so the residual at n = K is the bonus distribution p_K
        q_pad_BTV = torch.cat([q_BKV, torch.zeros_like(p_BTV[:, :1])], dim=1)
        p_n, q_n = at_index(p_BTV, n_B), at_index(q_pad_BTV, n_B)
        p_prime = normalize_residual((p_n - q_n).clamp_min(0), fallback=p_n)
        return Acceptance(n_B, sample_with(p_prime, r["e"]))


def _triton() -> bool:
    """Whether the optional Triton kernels (``mmaccel.kernels``) can run; the torch path always can."""
    try:
        from mmaccel.kernels.speculative import triton_available
    except ImportError:
        return False
    return triton_available()

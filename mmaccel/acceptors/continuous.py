"""Continuous speculative sampling (CSpD; Wang et al. 2024, arXiv 2411.11925), made exact.

Draft value x_i was drawn from q_i (the draft head's final denoising-step Gaussian); p_i is the
target head's final-step Gaussian at the same position. With u_i ~ U[0, 1), keep x_i iff

    u_i < min(1, p_i(x_i) / q_i(x_i)),

computed from the exact log densities; otherwise draw x_i from the residual

    p'_i(x) = norm(max(0, p_i(x) - q_i(x)))

by rejection from p_i: y ~ p_i is kept with probability max(0, 1 - q_i(y) / p_i(y)) (that is
p'_i(y) / (p_i(y) / Z) with Z the residual's mass), repeated until every rejected position holds
a value. The output is distributed exactly as p_i whatever q_i is, provided x_i ~ q_i; the
positions are judged independently, which is exact when the p_i are independent given what the
target saw (true of one MAR forward: its positions are sampled independently given its input).

Where the official runner differs (``spec_decode/spec_decode_runner.py``): it divides both
exponents by a temperature kappa = 42, which accepts almost everything and makes the output
follow the draft, not the target; it scores the draft's mean (its t = 0 step adds no noise) as
if drawn from the Gaussian; and after 100 failed residual draws it leaves the token at zero.
Here kappa is an explicit, lossy option (``kappa=None``: exact), the draft value is a draw from
q, and the residual loop runs until every position is filled (the cap only raises).

Works on any ``Distribution`` (``Categorical`` too: then it is plain speculative sampling).
Owns: the rule. Must never: return an unfilled position. The residual loop syncs with the host
once per round (its number of rounds is random), so it runs outside captured steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmaccel.acceptors.distributions import Distribution, Gaussian

MAX_RESIDUAL_ROUNDS = 10_000  # a safety net: at the default 16 candidates, a residual of mass < 1e-5


@dataclass(frozen=True)
class ContinuousAcceptance:
    """What one acceptance of N drafted positions produced."""

    values: torch.Tensor  # [N, ...] the accepted draft or the residual draw, per position
    accepted_N: torch.Tensor  # bool: the draft value was kept
    residual_rounds: int  # rounds of the residual loop (0 when everything was accepted)


class ContinuousSpeculative:
    """``min(1, p/q)`` acceptance with an exact residual (or, with ``kappa``, the softened ratio).

    ``kappa``: None (exact) or a number > 0 that divides both Gaussians' standardized distances
    in the ratio, as the official runner's ``temperature`` does (lossy: the output then leans to
    the draft; 1 equals exact). ``candidates``: residual proposals drawn per rejected position
    per round.
    """

    name = "cspd"

    def __init__(
        self, kappa: float | None = None, candidates: int = 16, max_rounds: int = MAX_RESIDUAL_ROUNDS
    ):
        if kappa is not None and not kappa > 0:
            raise ValueError(f"cspd_kappa must be > 0 (or None for exact acceptance), got {kappa!r}")
        self.kappa, self.candidates, self.max_rounds = kappa, candidates, max_rounds

    @property
    def lossless(self) -> bool:
        return self.kappa is None or self.kappa == 1

    def log_ratio(self, x: torch.Tensor, q: Distribution, p: Distribution) -> torch.Tensor:
        """log p(x) - log q(x) ([N]); with ``kappa`` the distances are divided by kappa."""
        if self.lossless:
            return p.log_prob(x) - q.log_prob(x)
        if not (isinstance(p, Gaussian) and isinstance(q, Gaussian)):
            raise ValueError("cspd_kappa applies to Gaussian (continuous) tokens only")
        # log kappa and 2 pi cancel in the difference: the normalisers keep p's and q's own widths,
        # as in the official ratio
        soft_p = Gaussian(p.mean_NC, p.std_NC * self.kappa).log_prob(x)
        soft_q = Gaussian(q.mean_NC, q.std_NC * self.kappa).log_prob(x)
        return soft_p - soft_q

    def accept(
        self,
        x: torch.Tensor,  # [N, ...] draft values, x_i ~ q_i
        q: Distribution,
        p: Distribution,
        u_N: torch.Tensor,  # U[0, 1) per position
        generator: torch.Generator | None,
    ) -> ContinuousAcceptance:
        accepted_N = u_N.log() < self.log_ratio(x, q, p)
        values = x.clone()
        rounds = self.fill_residual(values, ~accepted_N, q, p, generator)
        return ContinuousAcceptance(values, accepted_N, rounds)

    def fill_residual(
        self,
        values: torch.Tensor,
        todo_N: torch.Tensor,  # bool: positions to draw from the residual
        q: Distribution,
        p: Distribution,
        generator: torch.Generator | None,
    ) -> int:
        """Write a draw of norm(max(0, p - q)) into ``values`` at every position of ``todo_N``;
        returns the rounds used. Raises if ``max_rounds`` rounds leave a position unfilled."""
        rounds = 0
        todo_idx = todo_N.nonzero()[:, 0]
        M = self.candidates
        while todo_idx.numel():
            if rounds >= self.max_rounds:
                raise RuntimeError(
                    f"continuous speculative sampling: {todo_idx.numel()} residual draw(s) unfilled after "
                    f"{rounds} rounds of {M} candidates (the residual max(0, p - q) has almost no mass, "
                    "so p and q are nearly equal there); this is a safety net, please report it"
                )
            rounds += 1
            p_r, q_r = p.take(todo_idx).repeat(M), q.take(todo_idx).repeat(M)
            y = p_r.draw(generator)  # [n * M, ...]: M candidates per position, consecutive
            keep = 1 - (q_r.log_prob(y) - p_r.log_prob(y)).exp()  # p'(y) / (p(y) / Z), clamped below
            u = torch.rand(keep.shape, generator=generator, device=keep.device, dtype=keep.dtype)
            hit_nM = (u < keep).view(-1, M)
            found_n = hit_nM.any(1)
            first_n = hit_nM.int().argmax(1)  # the first kept candidate: they are i.i.d., any rule is exact
            pick = y.view(todo_idx.numel(), M, *y.shape[1:])[torch.arange(todo_idx.numel()), first_n]
            values[todo_idx[found_n]] = pick[found_n].to(values.dtype)
            todo_idx = todo_idx[~found_n]
        return rounds

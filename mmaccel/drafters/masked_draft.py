"""The draft model of continuous speculative decoding (CSpD, arXiv 2411.11925).

A smaller masked-set model of the same token space runs the schedule steps of a block one at a
time, each on its own copy of the tokens so far plus its earlier drafts of the block (its
condition vectors see them; the target's verify forward does not), with the decode's shared
chain noise (trajectory alignment) and final-step noise: ``x = mean_q + std_q * z0``. It returns
the block's values and the Gaussians q they were drawn from, in the order of the target's verify
step (``masked_set.predict`` over ``orders[:, bounds[b]:bounds[a]]``: the last step's set first).

Owns: the draft model's condition and its steps. Must never: write the decode's tokens (the
acceptor's output does), or draw random numbers (all noise comes from ``masked_set.Noise``).
"""

from __future__ import annotations

import torch

from mmaccel.acceptors.distributions import Gaussian
from mmaccel.masked_set import MaskedSetModel, Noise, Schedule, gather_BK, predict


class MaskedSetDrafter:
    """Drafts blocks of MAR steps with ``model`` (its own class embedding and guidance rows)."""

    name = "draft-model"

    def __init__(self, model: MaskedSetModel) -> None:
        self.model = model
        self.cond: torch.Tensor | None = None

    def begin(self, labels_B: torch.Tensor, guided: bool) -> None:
        """Start a decode of ``labels_B``."""
        self.cond = self.model.condition(labels_B, guided)

    def draft(
        self,
        tokens_BLC: torch.Tensor,
        known_BL: torch.Tensor,
        schedule: Schedule,
        a: int,
        b: int,
        noise: Noise,
        cfg: float,
        temperature: float,
    ) -> tuple[torch.Tensor, Gaussian]:
        """Run schedule steps ``a .. b-1``; returns the values ``[B, K, C]`` and their q (``[B * K]``)."""
        B, C = tokens_BLC.shape[0], tokens_BLC.shape[-1]
        tokens_BLC, known_BL = tokens_BLC.clone(), known_BL.clone()
        xs, means, stds = [], [], []
        for k in range(a, b):
            idx_BK = noise.orders_BL[:, schedule.bounds[k + 1] : schedule.bounds[k]]
            q = predict(self.model, tokens_BLC, known_BL, self.cond, idx_BK, noise, schedule.guidance(cfg, k),
                        temperature)  # fmt: skip
            x_BKC = q.sample_with(gather_BK(noise.z0_BLC, idx_BK).reshape(-1, C)).view(B, -1, C)
            tokens_BLC.scatter_(1, idx_BK[..., None].expand(-1, -1, C), x_BKC)
            known_BL.scatter_(1, idx_BK, True)
            xs.append(x_BKC)
            means.append(q.mean_NC.view(B, -1, C))
            stds.append(q.std_NC.view(B, -1, C))
        # the verify step lists the block's positions from the last step's set to the first's
        x_BKC = torch.cat(xs[::-1], dim=1)
        q = Gaussian(
            torch.cat(means[::-1], dim=1).reshape(-1, C), torch.cat(stds[::-1], dim=1).reshape(-1, C)
        )
        return x_BKC, q

"""Per-position distributions as an acceptor sees them: score a value, draw a value.

A verify step hands an acceptor one distribution object per drafted position instead of a
probability table, so that the same speculative rule runs on discrete tokens (``Categorical``:
probabilities over a vocabulary) and on continuous tokens (``Gaussian``: the final denoising
step of a diffusion head, as in MAR, with a diagonal covariance). Every object holds N
positions in its leading dimension and offers:

    log_prob(x)         log density (continuous) or log probability (discrete) of x, [N]
    draw(generator)     one value per position, drawn with ``generator``
    take(index_N)       the positions ``index_N`` (boolean or integer index) as a new object

Owns: the two distributions and their arithmetic. Must never: hold model state or sync with the
host (``draw`` and ``log_prob`` are tensor ops; the caller decides when to look at values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

_LOG_2PI = math.log(2 * math.pi)


@runtime_checkable
class Distribution(Protocol):
    """N independent per-position distributions (see the module docstring)."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...

    def draw(self, generator: torch.Generator | None) -> torch.Tensor: ...

    def take(self, index_N: torch.Tensor) -> Distribution: ...


@dataclass(frozen=True)
class Gaussian:
    """Diagonal Gaussians N(mean_NC, diag(std_NC^2)), one per position (a value is a C-vector)."""

    mean_NC: torch.Tensor
    std_NC: torch.Tensor

    def log_prob(self, x_NC: torch.Tensor) -> torch.Tensor:
        """log N(x; mean, std^2), summed over the C dimensions ([N])."""
        z_NC = (x_NC - self.mean_NC) / self.std_NC
        return -(0.5 * z_NC.square() + self.std_NC.log() + 0.5 * _LOG_2PI).sum(-1)

    def sample_with(self, z_NC: torch.Tensor) -> torch.Tensor:
        """``mean + std * z`` for standard normal ``z`` given by the caller (shared noise)."""
        return self.mean_NC + self.std_NC * z_NC

    def draw(self, generator: torch.Generator | None) -> torch.Tensor:
        z_NC = torch.randn(self.mean_NC.shape, generator=generator, device=self.mean_NC.device,
                           dtype=self.mean_NC.dtype)  # fmt: skip
        return self.sample_with(z_NC)

    def take(self, index_N: torch.Tensor) -> Gaussian:
        return Gaussian(self.mean_NC[index_N], self.std_NC[index_N])

    def repeat(self, n: int) -> Gaussian:
        """Each position ``n`` times in a row (``[N * n]``: position i at rows i*n .. i*n + n - 1)."""
        return Gaussian(self.mean_NC.repeat_interleave(n, 0), self.std_NC.repeat_interleave(n, 0))

    @staticmethod
    def cat(parts: list[Gaussian]) -> Gaussian:
        return Gaussian(torch.cat([p.mean_NC for p in parts]), torch.cat([p.std_NC for p in parts]))


@dataclass(frozen=True)
class Categorical:
    """Categorical distributions over a vocabulary of V tokens, one per position (a value is an id)."""

    probs_NV: torch.Tensor

    def log_prob(self, x_N: torch.Tensor) -> torch.Tensor:
        return self.probs_NV.gather(-1, x_N[:, None].long())[:, 0].log()

    def draw(self, generator: torch.Generator | None) -> torch.Tensor:
        return torch.multinomial(self.probs_NV, 1, generator=generator)[:, 0]

    def take(self, index_N: torch.Tensor) -> Categorical:
        return Categorical(self.probs_NV[index_N])

    def repeat(self, n: int) -> Categorical:
        return Categorical(self.probs_NV.repeat_interleave(n, 0))

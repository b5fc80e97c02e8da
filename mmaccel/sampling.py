"""Pure sampling functions: classifier-free guidance, temperature, top-k, top-p, draws.

Owns: turning target logits into the processed distribution ``p`` every acceptor compares
against, drawing from a distribution without a host sync (``argmax(p / E)``, E ~ Exp(1),
which picks i with probability p_i), and ``Draws``: the named U[0, 1) numbers one step
consumes. A step never calls a random-number generator itself: its draws are made in one op
before it (``torch.compile(fullgraph=True)`` refuses a ``torch.Generator`` argument, and a
captured CUDA graph would replay the same numbers), and every rule turns uniforms into what it
needs (E = -log U is Exp(1); floor(U * V) is uniform on 0..V-1). Same seed, same draws, same
output, compiled or not.

Must never: call ``.item()``/``.tolist()`` or branch on tensor values; keep global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How logits become the target distribution.

    ``do_sample=False`` (or ``temperature == 0``) makes the target one-hot at the argmax, so
    every acceptor reduces to greedy exact match. ``cfg_scale`` applies to a doubled batch
    (conditional rows first, unconditional rows second): ``l = l_u + s * (l_c - l_u)``.
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float | None = None

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


def apply_cfg(logits_2BTV: torch.Tensor, scale: float) -> torch.Tensor:
    """Guided logits ``[B, T, V]`` from conditional rows ``[:B]`` and unconditional ``[B:]``."""
    cond, uncond = logits_2BTV.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits (and ties with the k-th); ``k <= 0`` keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest top set whose probability reaches ``p``."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    # drop a token when the mass strictly before it already reaches p (the top token always stays)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Target probabilities (float32) after guidance-free processing; one-hot when greedy."""
    logits = logits.float()
    if cfg.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / cfg.temperature
    logits = top_k_filter(logits, cfg.top_k)
    logits = top_p_filter(logits, cfg.top_p)
    return logits.softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs[..., V]`` (no host sync): ``argmax(p / E)``, E ~ Exp(1)."""
    e = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / e).argmax(-1)


def exponential(u: torch.Tensor) -> torch.Tensor:
    """Exp(1) numbers from U[0, 1) numbers: ``-log U`` (U = 0 is kept finite)."""
    return -torch.log(u.clamp_min(1e-38))


def sample_with(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``sample`` with its randomness given: ``u`` (U[0, 1), the shape of ``probs``) -> one draw per row."""
    return (probs / exponential(u).to(probs.dtype)).argmax(-1)


def randint_with(u: torch.Tensor, high: int) -> torch.Tensor:
    """Uniform integers in ``0 .. high - 1`` from U[0, 1) numbers (int64)."""
    return (u * high).long().clamp(max=high - 1)


Shapes = dict[str, tuple[int, ...]]


class Draws:
    """The U[0, 1) numbers one step consumes, by name (``draws["u"]``, ``draws.sub("accept")``).

    Made in one generator call before the step (``Draws.plan_size`` numbers, cut into named
    views by ``Draws.split``), or on demand from a generator for code that runs outside a step
    (tests, prefill): ``Draws.of(generator, shapes, device)``.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def sub(self, prefix: str) -> Draws:
        """The draws named ``prefix/...``, with the prefix removed."""
        cut = len(prefix) + 1
        return Draws({k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + "/")})

    @staticmethod
    def plan_size(shapes: Shapes) -> int:
        return sum(math.prod(shape) for shape in shapes.values())

    @staticmethod
    def split(flat_N: torch.Tensor, shapes: Shapes) -> Draws:
        """Named views of one flat tensor of ``plan_size(shapes)`` uniforms."""
        out, start = {}, 0
        for name, shape in shapes.items():
            n = math.prod(shape)
            out[name] = flat_N[start : start + n].view(shape)
            start += n
        return Draws(out)

    @staticmethod
    def draw(shapes: Shapes, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
        """The flat uniforms of one step: ONE generator call."""
        return torch.rand(Draws.plan_size(shapes), device=device, generator=generator)

    @staticmethod
    def of(source: Draws | torch.Generator | None, shapes: Shapes, device: torch.device | str) -> Draws:
        """``source`` as given when it is already ``Draws``, else fresh draws from the generator."""
        if isinstance(source, Draws):
            return source
        return Draws.split(Draws.draw(shapes, source, device), shapes)


def prefixed(groups: dict[str, Shapes]) -> Shapes:
    """``{"accept": {"u": ...}}`` -> ``{"accept/u": ...}`` (one plan for several consumers)."""
    return {f"{g}/{name}": shape for g, shapes in groups.items() for name, shape in shapes.items()}


def normalize_residual(residual: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``residual / sum(residual)``; where the residual is all zero use ``fallback`` instead.

    The residual max(0, p - q) is zero only when p == q, in which case rejection has
    probability zero and any fallback is never used for an accepted draw.
    """
    mass = residual.sum(-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp_min(1e-30), fallback)

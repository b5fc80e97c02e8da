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
    """Nucleus filter: keep the smallest top set whose probability reaches ``p``, with every
    token tied with its least likely member (the set is then independent of how ties sort).

    Vocabularies above ``_RADIX_MIN_VOCAB`` take ``top_p_filter_radix`` (a full-vocabulary sort at
    every position of a verify block cost more than the model's forward); smaller ones take
    ``top_p_filter_sorted``, which is faster there. Both keep the same set."""
    if logits.shape[-1] > _RADIX_MIN_VOCAB:
        return top_p_filter_radix(logits, p)
    return top_p_filter_sorted(logits, p)


def top_p_filter_radix(logits: torch.Tensor, p: float) -> torch.Tensor:
    """``top_p_filter`` without a sort: the threshold is found by a radix select on the float32
    bit patterns of the logits, ``_RADIX_BITS`` at a time, each pass a probability histogram of
    the candidates left. Exactly ``top_p_filter_sorted``'s kept set, up to the rounding of the
    cumulative mass at the boundary (both sum float64 masses from the top, in different groupings)."""
    if p >= 1.0:
        return logits
    x_NV = logits.float().reshape(-1, logits.shape[-1])
    probs_NV = x_NV.softmax(-1, dtype=torch.float64)  # masses in float64: see top_p_filter_sorted
    key_NV = _order_key(x_NV)
    ukey_NV = key_NV.long() + (1 << 31)  # unsigned order, where digits are plain bit fields
    N = x_NV.shape[0]
    prefix_N = torch.zeros(N, dtype=torch.int64, device=logits.device)  # key bits decided so far
    above_N = torch.zeros(N, dtype=probs_NV.dtype, device=logits.device)  # mass of keys above the prefix
    mass_NV = probs_NV
    shift = 32
    for bits in _RADIX_BITS:
        shift -= bits
        digit_NV = (ukey_NV >> shift) & ((1 << bits) - 1)
        hist_ND = torch.zeros(N, 1 << bits, dtype=probs_NV.dtype, device=logits.device)
        hist_ND.scatter_add_(1, digit_NV, mass_NV)
        # reach[d]: mass of every key whose digit here is >= d (and whose higher digits are the prefix)
        reach_ND = above_N[:, None] + hist_ND.flip(-1).cumsum(-1).flip(-1)
        d_N = ((reach_ND >= p).sum(-1) - 1).clamp(min=0)  # the largest digit that still reaches p
        above_N = torch.cat([reach_ND, above_N[:, None]], dim=1).gather(1, (d_N + 1)[:, None])[:, 0]
        prefix_N = (prefix_N << bits) | d_N
        mass_NV = torch.where(digit_NV == d_N[:, None], mass_NV, 0.0)
    # the prefix is the threshold as an unsigned key; back to the signed order of ``key_NV``
    threshold_N1 = (prefix_N - (1 << 31)).to(torch.int32)[:, None]
    keep_NV = key_NV >= threshold_N1
    return logits.masked_fill(~keep_NV.view(logits.shape), float("-inf"))


_RADIX_BITS = (11, 11, 10)  # 32 bits in three histogram passes of at most 2048 bins
# vocabularies up to this size take the sort (measured on 2 CPU cores: [20000, 4, 64] 0.46 s by sort
# against 24 s by histograms; [40, 1, 4096] 12.6 against 14.3 ms; [1, 17, 49152] 82 against 37 ms)
_RADIX_MIN_VOCAB = 8192


def _order_key(x: torch.Tensor) -> torch.Tensor:
    """int32 keys ordered (as signed integers) like the float32 values of ``x``; -0.0 counts as
    +0.0. Negative floats have their magnitude bits flipped, so larger magnitude sorts lower."""
    b = (x.float() + 0.0).view(torch.int32)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


def top_p_filter_sorted(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Reference nucleus filter by a full sort: the tokens down to the first one at which the
    cumulative probability reaches ``p``, and every token tied with it."""
    if p >= 1.0:
        return logits
    sorted_logits, _ = torch.sort(logits.float(), dim=-1, descending=True)
    # float64 masses: float32 rounding of a sum near p would make the set depend on summation order
    cum = sorted_logits.softmax(-1, dtype=torch.float64).cumsum(-1)
    last = ((cum < p).sum(-1, keepdim=True)).clamp(max=logits.shape[-1] - 1)
    threshold = sorted_logits.gather(-1, last)
    return logits.masked_fill(logits.float() < threshold, float("-inf"))


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

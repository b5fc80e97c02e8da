"""Masked-set decoding of continuous tokens (the MAR family) in the shared core, and CSpD.

A masked-set model (MAR, Li et al. 2024, arXiv 2406.11838) generates a sequence of continuous
tokens in a random order: at each of ``num_iter`` steps one bidirectional forward over the
tokens known so far gives a condition vector per unknown position, and a diffusion head samples
the tokens of this step's set from it. The sets follow MaskGIT's cosine schedule (after step k,
``floor(L cos(pi/2 (k+1)/num_iter))`` tokens stay unknown, at least one fewer each step, none
after the last) and guidance follows MAR's linear schedule (``1 + (cfg - 1) (L - unknown) / L``).

Here a decode is a list of **verify steps**, each covering consecutive schedule steps ``a .. b-1``:
the target runs ONE forward over what is known before step a and samples the union of those
steps' sets. ``ar`` covers one schedule step per verify step (plain MAR with the target alone).
CSpD (Wang et al. 2024, arXiv 2411.11925) is a drafter plus an acceptor on the same loop: after
``prefill_steps`` target-only steps, the draft model (``drafters.masked_draft``) runs the
``gamma`` steps of a block one by one, and the target checks the block's values in one forward
with ``acceptors.continuous.ContinuousSpeculative`` against its own final-step Gaussians.

**The law of the output.** Each token is the last step of its head's denoising chain, a draw
``x = mean + std * z0`` from the final-step Gaussian (the official sampler returns the mean at
t = 0; we add that step's noise so the token has a density). All noise of the chain (x_T and
every intermediate step) is drawn once per position and shared by the target and the draft
(trajectory alignment). With exact acceptance (``kappa=None``) the output of ``cspd`` follows
exactly the target MAR decoding with the verify steps' schedule (the target alone, one set per
verify step: the block's sets merged, each token guided at the scale of the step that reveals
it), given the shared trajectory noise and so also marginally.
The draft changes which values come out, never their law. Tested in ``tests/test_masked_set.py``.

Owns: the schedule, the noise plan, the verify loop and its statistics. Must never: import a
model family (models come in through ``MaskedSetModel``), or leave a token unfilled.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from mmaccel.acceptors.continuous import ContinuousSpeculative
from mmaccel.acceptors.distributions import Gaussian


@runtime_checkable
class MaskedSetModel(Protocol):
    """A class-conditional masked-set model with a per-token Gaussian final head step.

    ``condition(labels_B, guided)`` -> ``[B or 2B, D]`` (the unconditional rows second);
    ``conditions(tokens_BLC, known_BL, cond)`` -> ``[B', L, Dz]``: ONE forward, condition
    vectors for every position; ``head(z_NDz, x_T_NC, inter_SNC, temperature, cfg)`` ->
    ``Gaussian`` of the head's last denoising step (``[N]`` or, with guidance, the first half
    of the doubled rows), its chain driven by the given noise (``inter`` has ``head_steps - 1``
    steps); ``cfg`` is a number (1: no guidance) or a tensor ``[N // 2, 1]``, one scale per row.
    """

    seq_len: int
    token_dim: int
    head_steps: int

    def condition(self, labels_B: torch.Tensor, guided: bool) -> torch.Tensor: ...

    def conditions(
        self, tokens_BLC: torch.Tensor, known_BL: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor: ...

    def head(self, z_ND: torch.Tensor, x_T_NC: torch.Tensor, inter_SNC: torch.Tensor, temperature: float,
             cfg: float | torch.Tensor) -> Gaussian: ...  # fmt: skip


@dataclass(frozen=True)
class Schedule:
    """MAR's reveal schedule for ``seq_len`` tokens in ``num_iter`` steps.

    ``bounds[k] .. bounds[k+1]`` (descending): step k reveals ``orders[:, bounds[k+1]:bounds[k]]``;
    ``unknown[k]``: the unknown count after step k as MAR computes it (>= 1, used for guidance).
    """

    seq_len: int
    num_iter: int
    bounds: tuple[int, ...]
    unknown: tuple[int, ...]

    @staticmethod
    def cosine(seq_len: int, num_iter: int) -> Schedule:
        bounds, unknown, prev = [seq_len], [], seq_len
        for k in range(num_iter):
            m = math.floor(seq_len * math.cos(math.pi / 2 * (k + 1) / num_iter))
            m = max(1, min(prev - 1, m))
            unknown.append(m)
            prev = 0 if k == num_iter - 1 else m
            bounds.append(prev)
        return Schedule(seq_len, num_iter, tuple(bounds), tuple(unknown))

    def guidance(self, cfg: float, k: int) -> float:
        """MAR's linear guidance at step k (1 at the start, approaching ``cfg`` at the end)."""
        return 1 + (cfg - 1) * (self.seq_len - self.unknown[k]) / self.seq_len

    def block_guidance(self, cfg: float, a: int, b: int, device: Any = None) -> torch.Tensor:
        """Per position of steps ``a .. b-1`` (in the order ``orders[:, bounds[b]:bounds[a]]``:
        the last step's set first), the guidance of the step that reveals it ([K])."""
        return torch.cat([torch.full((self.bounds[k] - self.bounds[k + 1],), self.guidance(cfg, k), device=device)
                          for k in range(b - 1, a - 1, -1)])  # fmt: skip


def verify_plan(num_iter: int, gamma: int = 1, prefill_steps: int = 0) -> list[tuple[int, int, bool]]:
    """The verify steps ``(a, b, drafted)`` of a decode: ``prefill_steps`` single steps by the
    target alone, then blocks of ``gamma`` schedule steps (the last may be shorter), drafted when
    the decode has a drafter (a trailing block of one step is not: drafting it saves nothing). ``verify_plan(n)``: plain MAR, n single steps."""
    plan = [(k, k + 1, False) for k in range(min(prefill_steps, num_iter))]
    k = len(plan)
    while k < num_iter:
        b = min(k + gamma, num_iter)
        # a trailing block of one step (gamma > 1) costs the target a forward either way: no draft
        plan.append((k, b, b - k > 1 or gamma == 1))
        k = b
    return plan


@dataclass
class Noise:
    """Every random number of a decode that is drawn up front: the order, the shared chain noise
    (``x_T`` and ``inter``: one per position, for both models), the final-step noise ``z0``
    and the acceptance uniforms ``u``."""

    orders_BL: torch.Tensor
    x_T_BLC: torch.Tensor
    inter_SBLC: torch.Tensor
    z0_BLC: torch.Tensor
    u_BL: torch.Tensor

    @staticmethod
    def draw(B: int, L: int, C: int, head_steps: int, generator: torch.Generator, device: Any) -> Noise:
        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, device=device)

        orders = torch.rand(B, L, generator=generator, device=device).argsort(1)
        x_T, inter = randn(B, L, C), randn(max(head_steps - 1, 0), B, L, C)
        z0, u = randn(B, L, C), torch.rand(B, L, generator=generator, device=device)
        return Noise(orders, x_T, inter, z0, u)


def check_pair(target: MaskedSetModel, draft: MaskedSetModel) -> None:
    """A CSpD draft must make the target's tokens: ValueError naming what differs."""
    for what, meaning in (("token_dim", "token dimension"), ("seq_len", "sequence length"),
                          ("head_steps", "head sampling steps (the shared denoising noise needs equal chains)")):  # fmt: skip
        t, d = getattr(target, what), getattr(draft, what)
        if t != d:
            raise ValueError(f"the draft model's {meaning} is {d}, the target's {t}: CSpD needs a draft of the "
                             "target's own tokens")  # fmt: skip


def gather_BK(x_BL: torch.Tensor, idx_BK: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, k]]`` for x of shape [B, L, ...] -> [B, K, ...]."""
    extra = x_BL.shape[2:]
    return x_BL.gather(1, idx_BK.view(*idx_BK.shape, *([1] * len(extra))).expand(*idx_BK.shape, *extra))


def predict(
    model: MaskedSetModel,
    tokens_BLC: torch.Tensor,
    known_BL: torch.Tensor,
    cond: torch.Tensor,
    idx_BK: torch.Tensor,
    noise: Noise,
    cfg: float | torch.Tensor,
    temperature: float,
) -> Gaussian:
    """One forward of ``model`` over what ``known_BL`` marks, then its head's final-step Gaussians
    at the positions ``idx_BK`` (``[B * K]`` rows, row-major), chains driven by ``noise``.
    ``cfg``: one guidance scale, or one per position of ``idx_BK``'s columns ([K])."""
    B, K = idx_BK.shape
    guided = cond.shape[0] == 2 * B
    if guided:
        tokens_BLC, known_BL = torch.cat([tokens_BLC, tokens_BLC]), torch.cat([known_BL, known_BL])
    z_BLD = model.conditions(tokens_BLC, known_BL, cond)
    rows_idx = torch.cat([idx_BK, idx_BK]) if guided else idx_BK
    z_ND = gather_BK(z_BLD, rows_idx).reshape(-1, z_BLD.shape[-1])
    C = noise.x_T_BLC.shape[-1]
    x_T = gather_BK(noise.x_T_BLC, idx_BK).reshape(B * K, C)
    S = noise.inter_SBLC.shape[0]  # one gather for every chain step
    inter = noise.inter_SBLC.gather(2, idx_BK[None, :, :, None].expand(S, B, K, C)).reshape(S, B * K, C)
    if guided:
        x_T, inter = torch.cat([x_T, x_T]), torch.cat([inter, inter], dim=1)
    if torch.is_tensor(cfg):
        cfg = cfg[None].expand(B, K).reshape(-1, 1) if guided else 1.0
    return model.head(z_ND, x_T, inter, temperature, cfg if guided else 1.0)


@dataclass
class MaskedSetOutput:
    """What one masked-set decode produced."""

    tokens_BLC: torch.Tensor
    num_forward_passes: int  # target forwards (one per verify step)
    forwards: dict[str, int]  # per model role: "target", and "draft" under cspd
    latency_s: float
    drafted: int = 0  # draft values checked by the target (per image)
    accepted: float = 0.0  # of which kept (per image, averaged over the batch)
    acceptance_per_verify: list[float] = field(default_factory=list)  # over the batch, per checked block
    residual_rounds: int = 0  # the most rounds one residual draw needed

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def decode_masked(
    target: MaskedSetModel,
    labels_B: torch.Tensor,
    *,
    num_iter: int,
    cfg: float = 1.0,
    temperature: float = 1.0,
    seed: int | None = None,
    plan: list[tuple[int, int, bool]] | None = None,
    drafter: Any = None,
    acceptor: ContinuousSpeculative | None = None,
    progress: bool = False,
) -> MaskedSetOutput:
    """Decode one token sequence per label with ``target`` along ``plan`` (default: one verify
    step per schedule step, i.e. plain MAR), drafting blocks with ``drafter`` (a
    ``drafters.masked_draft.MaskedSetDrafter``) checked by ``acceptor`` when given. Without a
    drafter, a verify step of several schedule steps samples their merged set from the target.

    ``cfg``: MAR's guidance scale (1 = none); ``temperature``: the head's noise scale.
    """
    device = labels_B.device
    B, L, C = labels_B.shape[0], target.seq_len, target.token_dim
    schedule = Schedule.cosine(L, num_iter)
    plan = plan or verify_plan(num_iter)
    if drafter is not None:
        check_pair(target, drafter.model)
        acceptor = acceptor or ContinuousSpeculative()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    t0 = time.perf_counter()
    noise = Noise.draw(B, L, C, target.head_steps, generator, device)
    tokens_BLC = torch.zeros(B, L, C, device=device)
    known_BL = torch.zeros(B, L, dtype=torch.bool, device=device)
    cond = target.condition(labels_B, guided=cfg != 1.0)
    out = MaskedSetOutput(tokens_BLC, 0, {"target": 0}, 0.0)
    if drafter is not None:
        out.forwards["draft"] = 0
        drafter.begin(labels_B, cfg != 1.0)
    kept: list[torch.Tensor] = []  # per checked block: the share of draft values kept
    sizes: list[int] = []  # and its values per image
    for a, b, in_block in tqdm(plan, desc="masked-set decode", disable=not progress, leave=False):
        # the sets of steps a .. b-1 are contiguous in the order: step k holds bounds[k+1]:bounds[k]
        idx_BK = noise.orders_BL[:, schedule.bounds[b] : schedule.bounds[a]]
        drafted = in_block and drafter is not None
        if drafted:
            x_BKC, q = drafter.draft(tokens_BLC, known_BL, schedule, a, b, noise, cfg, temperature)
            out.forwards["draft"] += b - a
        # each position guided at the scale of the step that reveals it, as the draft (and ar) did
        g = schedule.block_guidance(cfg, a, b, device) if b - a > 1 else schedule.guidance(cfg, a)
        p = predict(target, tokens_BLC, known_BL, cond, idx_BK, noise, g, temperature)
        out.forwards["target"] += 1
        if drafted:
            u_N = gather_BK(noise.u_BL, idx_BK).reshape(-1)
            acc = acceptor.accept(x_BKC.reshape(-1, C), q, p, u_N, generator)
            values_NC = acc.values
            kept.append(acc.accepted_N.float().mean())  # read once, after the loop
            sizes.append(idx_BK.shape[1])
            out.residual_rounds = max(out.residual_rounds, acc.residual_rounds)
        else:
            values_NC = p.sample_with(gather_BK(noise.z0_BLC, idx_BK).reshape(-1, C))
        tokens_BLC.scatter_(1, idx_BK[..., None].expand(-1, -1, C), values_NC.view(B, -1, C))
        known_BL.scatter_(1, idx_BK, True)
    out.acceptance_per_verify = torch.stack(kept).tolist() if kept else []
    out.drafted = sum(sizes)
    out.accepted = sum(rate * k for rate, k in zip(out.acceptance_per_verify, sizes, strict=True))
    out.num_forward_passes = out.forwards["target"]
    out.latency_s = time.perf_counter() - t0
    return out

"""Kernel-versus-reference checks for ``mmaccel.kernels`` on random and edge-case inputs.

Owns: the case lists (shapes, distributions with exact zeros, one-hot and equal q, ties, half
precision, strided views) and the comparison of each Triton kernel with its pure-torch
reference for the SAME random numbers. Used by ``tests/test_kernels.py`` on CPU under the
Triton interpreter, and runnable on a GPU machine:

    python -m mmaccel.kernels.check all --device cuda
    TRITON_INTERPRET=1 python -m mmaccel.kernels.check speculative      # CPU, interpreter

Must never: set ``TRITON_INTERPRET`` itself (it must be set before triton is imported, by the
caller), or be imported by the engine.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator

import torch

from mmaccel.kernels.lantern import neighbour_mass_reference, neighbour_mass_triton, used_from_count
from mmaccel.kernels.speculative import speculative_accept_reference, speculative_accept_triton

SPEC_KINDS = ("independent", "close", "onehot", "equal", "q_zero", "ties", "half", "strided")
SPEC_K = (0, 1, 4, 16)
SPEC_V = {16: None, 1000: 256, 16384: None}  # vocab -> block_v (None: the default tile)


def _probs(logits: torch.Tensor, keep: int | None = None) -> torch.Tensor:
    """softmax(logits), with all but the ``keep`` largest entries exactly zero (top-k)."""
    if keep is not None and keep < logits.shape[-1]:
        kth = logits.topk(keep, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(-1)


def _draw(probs_NV: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flat = probs_NV.reshape(-1, probs_NV.shape[-1])
    return torch.multinomial(flat, 1, generator=g).reshape(probs_NV.shape[:-1])


def speculative_case(kind: str, B: int, K: int, V: int, seed: int) -> dict[str, torch.Tensor]:
    """Inputs ``p_BTV, q_BKV, drafts_BK, u_BK, e_BV`` (CPU) for one named kind of case."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 + 4.0 * torch.rand((), generator=g)
    logits_BTV = torch.randn(B, K + 1, V, generator=g) * scale
    keep = max(2, V // 8) if kind in ("equal", "q_zero", "onehot") else None
    p_BTV = _probs(logits_BTV, keep)
    u_BK = torch.rand(B, K, generator=g)
    e_BV = torch.empty(B, V).exponential_(generator=g)
    if kind == "independent":
        q_BKV = _probs(torch.randn(B, K, V, generator=g) * scale)
        drafts_BK = _draw(q_BKV, g)
    elif kind in ("close", "half", "strided"):  # an SJD-like draft: q near p, so runs of accepts
        q_BKV = _probs(logits_BTV[:, :K] + 0.5 * torch.randn(B, K, V, generator=g))
        drafts_BK = _draw(q_BKV, g)
    elif kind == "onehot":  # deterministic drafts (a new Jacobi slot), taken from p or at random
        drafts_BK = torch.where(torch.rand(B, K, generator=g) < 0.7, _draw(p_BTV[:, :K], g),
                                torch.randint(0, V, (B, K), generator=g))  # fmt: skip
        q_BKV = torch.nn.functional.one_hot(drafts_BK, V).float()
    elif kind == "equal":  # q == p: reject only at a zero-probability draft, residual 0 -> p_n
        q_BKV = p_BTV[:, :K].clone()
        drafts_BK = _draw(q_BKV, g)
        zero_BK = _draw(torch.where(q_BKV == 0, 1.0, 0.0), g) if K else drafts_BK
        drafts_BK = torch.where(torch.rand(B, K, generator=g) < 0.3, zero_BK, drafts_BK)
    elif kind == "q_zero":  # drafts not from q: q(x) = 0 keeps x iff p(x) > 0
        q_BKV = _probs(torch.randn(B, K, V, generator=g) * scale, max(2, V // 8))
        drafts_BK = torch.randint(0, V, (B, K), generator=g)
        u_BK[:, ::2] = 0.0  # u = 0 keeps x iff p(x) > 0 as well
    elif kind == "ties":  # p uniform on a few tokens spread over the vocabulary blocks, E tied
        support_BTV = torch.zeros(B, K + 1, V)
        for j in (V - 1, V // 2, V // 3, 1):
            support_BTV[..., j] = 1.0
        p_BTV = support_BTV / support_BTV.sum(-1, keepdim=True)
        drafts_BK = torch.zeros(B, K, dtype=torch.long)  # p(0) = 0: rejected, residual = p_0 - q_0
        q_BKV = torch.nn.functional.one_hot(drafts_BK, V).float() * 0.5 + p_BTV[:, :K] * 0.5
        e_BV = torch.randint(1, 3, (B, V), generator=g).float()  # E in {1, 2}: many equal keys
        e_BV[0] = 1.0
        if B > 1:
            e_BV[1, V // 2] = 0.0  # a zero E: that residual token wins with key +inf
    else:
        raise ValueError(f"unknown speculative case kind {kind!r}")
    case = {"p_BTV": p_BTV, "q_BKV": q_BKV, "drafts_BK": drafts_BK, "u_BK": u_BK, "e_BV": e_BV}
    if kind == "half":
        case["p_BTV"], case["q_BKV"] = p_BTV.bfloat16(), q_BKV.half()
    if kind == "strided":  # views of larger buffers, as a caller slicing p_BTV would pass them
        case["p_BTV"] = torch.cat([p_BTV, p_BTV], dim=1)[:, : K + 1]
        case["e_BV"] = e_BV.t().contiguous().t()
        case["u_BK"] = torch.stack([u_BK, u_BK], dim=-1)[..., 0]
    return case


def speculative_cases(
    seeds: int = 1, quick: bool = False
) -> Iterator[tuple[str, dict[str, torch.Tensor], int | None]]:
    """(name, inputs, block_v) for every kind x K x V, ``seeds`` times with B cycling 1..6.

    ``quick`` (for the slow interpreter) runs every kind x K once, the vocabulary cycling so
    that each kind and each K still meets every V.
    """
    vocabs = list(SPEC_V)
    grid = itertools.product(range(seeds), enumerate(SPEC_KINDS), enumerate(SPEC_K), vocabs)
    for i, (s, (a, kind), (c, K), V) in enumerate(grid):
        if quick and V != vocabs[(a + c + s) % len(vocabs)]:
            continue
        B = 1 + (i * 5 + s) % 6
        yield f"{kind} B={B} K={K} V={V} seed={s}", speculative_case(kind, B, K, V, 1000 * s + i), SPEC_V[V]


def check_speculative(device: str = "cpu", seeds: int = 1, quick: bool = False) -> tuple[int, list[str]]:
    """Run the cases through kernel and reference: (cases run, mismatch descriptions)."""
    failures, n_cases = [], 0
    for name, case, block_v in speculative_cases(seeds, quick):
        case = {key: t.to(device) for key, t in case.items()}
        n_ref, tok_ref = speculative_accept_reference(**case)
        n_tri, tok_tri = speculative_accept_triton(**case, block_v=block_v)
        n_cases += 1
        if not (torch.equal(n_ref, n_tri) and torch.equal(tok_ref, tok_tri)):
            failures.append(f"{name}: n {n_ref.tolist()} vs {n_tri.tolist()}, "
                            f"token {tok_ref.tolist()} vs {tok_tri.tolist()}")  # fmt: skip
    return n_cases, failures


def random_neighbours(V: int, k: int, seed: int, holes: bool) -> torch.Tensor:
    """``[V, k]`` nearest neighbours of a random codebook over tokens 2 .. V-1 (rows 0, 1: -1);
    ``holes`` also blanks random slots anywhere in a row, which a real table never does."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(V - 2, 4, generator=g)
    dist = torch.cdist(codes, codes).fill_diagonal_(float("inf"))
    table = torch.full((V, k), -1, dtype=torch.long)
    table[2:] = dist.topk(k, dim=-1, largest=False).indices + 2
    if holes:
        table[torch.rand(V, k, generator=g) < 0.2] = -1
    return table


def lantern_cases() -> Iterator[tuple[str, torch.Tensor, torch.Tensor, object, dict[str, int]]]:
    """(name, p_BKV, neighbours_VK, budget, tiling) covering deltas, lambdas, tables and tiles."""
    budgets = (("delta=0", 0.0), ("delta=0.01", 0.01), ("delta=0.2", 0.2), ("delta=1", 1.0),
               ("lam=1.5", 1.5), ("lam=4", 4.0))  # fmt: skip
    shapes = ((2, 1, 16, 3, {}), (3, 4, 16, 1, {}), (1, 3, 1000, 8, {"block_v": 256}),
              (1, 2, 1000, 40, {"block_v": 256, "block_j": 8}))  # fmt: skip
    for i, ((B, K, V, k, tiling), (bname, b)) in enumerate(itertools.product(shapes, budgets)):
        holes = i % 2 == 1
        g = torch.Generator().manual_seed(i)
        logits_BKV = torch.randn(B, K, V, generator=g) * (1 + 4 * torch.rand((), generator=g))
        p_BKV = _probs(logits_BKV, V // 2 if i % 3 == 0 else None)  # some exact zeros
        if i % 4 == 1:
            p_BKV = p_BKV.half()
        budget = (b - 1) * p_BKV.float()[..., None] if bname.startswith("lam") else b
        name = f"B={B} K={K} V={V} k={k} {bname} holes={holes} {p_BKV.dtype}"
        yield name, p_BKV, random_neighbours(V, k, i, holes), budget, tiling


def check_lantern(device: str = "cpu") -> tuple[int, list[str]]:
    """Kernel vs reference: m to float32 rounding, ``used`` exactly except where a positive prefix
    sum is within rounding of the budget (module docstring of ``mmaccel.kernels.lantern``)."""
    failures, n_cases = [], 0
    for name, p_BKV, nbr_Vk, budget, tiling in lantern_cases():
        p_BKV, nbr_Vk = p_BKV.to(device), nbr_Vk.to(device)
        budget = budget.to(device) if isinstance(budget, torch.Tensor) else budget
        used_ref, m_ref = neighbour_mass_reference(p_BKV, nbr_Vk, budget)
        n_used, m_tri = neighbour_mass_triton(p_BKV, nbr_Vk, budget, **tiling)
        n_cases += 1
        c_ref = (p_BKV.float()[..., nbr_Vk.clamp(min=0)] * (nbr_Vk >= 0)).cumsum(-1)
        # a float32 sum of k terms >= 0 is off by at most ~k ulps of itself (zero sums are exact), so
        # summation order can flip c <= budget only that close to the budget
        edge = ((c_ref - budget).abs() <= nbr_Vk.shape[1] * 2.0**-22 * c_ref) & (c_ref > 0)
        wrong = (used_from_count(n_used, nbr_Vk.shape[1]) != used_ref) & ~edge
        if wrong.any() or not torch.allclose(m_tri, m_ref, rtol=1e-5, atol=1e-7):
            failures.append(f"{name}: {int(wrong.sum())} used entries differ, "
                            f"max |m diff| {float((m_tri - m_ref).abs().max()):.3g}")  # fmt: skip
    return n_cases, failures


def main(argv: list[str] | None = None) -> int:
    """CLI: run the chosen check groups, print one line per group and each mismatch."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", default=["all"], choices=["all", "speculative", "lantern"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=1, help="repeats of the speculative case grid")
    parser.add_argument("--quick", action="store_true", help="a smaller speculative grid (interpreter)")
    args = parser.parse_args(argv)
    groups = ("speculative", "lantern") if "all" in args.groups else args.groups
    bad = 0
    for group in groups:
        if group == "speculative":
            n, failures = check_speculative(args.device, args.seeds, args.quick)
        else:
            n, failures = check_lantern(args.device)
        print(f"{group}: {n} cases, {len(failures)} mismatches")
        for line in failures:
            print("  MISMATCH", line)
        bad += len(failures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""LANTERN neighbour mass (Jang et al. 2024, arXiv 2410.03355; LANTERN++ arXiv 2502.06352).

The hot part of ``LanternAcceptor.relaxed_target``: for every position and every vocabulary
entry x, walk x's k nearest codebook neighbours y_1 .. y_k (closest first) and take their target
mass while the running total stays within budget:

    c_j(x)    = p(y_1) + ... + p(y_j)           (a neighbour index -1 means none: p = 0)
    used_j(x) = c_j(x) <= budget(x)             budget = delta, or (lambda - 1) * p(x)
    m(x)      = sum_j p(y_j) * used_j(x)

Written twice: the pure-torch reference (``LanternAcceptor._neighbour_mass`` as
``relaxed_target`` applies it, in float32) and a Triton kernel. Since p >= 0 the prefix sums
never decrease, so ``used`` is a prefix along k: the kernel returns its length
``n_used_BKV`` (``used_from_count`` expands it) and m = c at the last used neighbour. A -1
slot adds nothing, so it counts as used exactly when the reference says so.

Floating point: the reference's ``cumsum`` accumulates in float64 on CPU and float32 on CUDA;
the kernel accumulates in float32 (a block scan). Where c_j(x) lies within float32 rounding
of the budget the two may disagree on ``used_j(x)``; everywhere else they agree, and m agrees
to float32 rounding.

Owns: the reference, the kernel and the dispatcher. Must never: sync with the host, or import
anything of ``mmaccel`` beyond torch.
"""

from __future__ import annotations

import torch

from mmaccel.kernels.speculative import _next_pow2, triton_available

try:  # optional at run time: the reference path always works
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None

Budget = float | torch.Tensor  # delta, or a per-entry tensor broadcastable to [..., V, 1]


def _check(p_BKV: torch.Tensor, neighbours_VK: torch.Tensor, budget: Budget) -> None:
    V = p_BKV.shape[-1]
    if neighbours_VK.dim() != 2 or neighbours_VK.shape[0] != V:
        raise ValueError(f"neighbours_VK must be [V={V}, k], got {tuple(neighbours_VK.shape)}")
    if isinstance(budget, torch.Tensor) and budget.dim() > 0 and budget.shape[-1] != 1:
        raise ValueError(f"a budget tensor must end in a size-1 neighbour axis ([..., V, 1]), got "
                         f"{tuple(budget.shape)}")  # fmt: skip


def neighbour_mass_reference(
    p_BKV: torch.Tensor,  # [B, K, V] target distributions (any leading dims)
    neighbours_VK: torch.Tensor,  # [V, k] nearest codebook neighbours, closest first; -1 = none
    budget: Budget,  # delta (float) or e.g. (lam - 1) * p_BKV[..., None]  ([B, K, V, 1])
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(used_BKVk bool [B, K, V, k], m_BKV float32 [B, K, V])`` in pure torch (module docstring)."""
    _check(p_BKV, neighbours_VK, budget)
    p_BKV = p_BKV.float()
    budget = budget.float() if isinstance(budget, torch.Tensor) else budget
    valid_Vk = neighbours_VK >= 0
    p_nbr_BKVk = p_BKV[..., neighbours_VK.clamp(min=0)] * valid_Vk
    used_BKVk = p_nbr_BKVk.cumsum(-1) <= budget
    return used_BKVk, (p_nbr_BKVk * used_BKVk).sum(-1)


def used_from_count(n_used_BKV: torch.Tensor, k: int) -> torch.Tensor:
    """The ``used`` mask ``[..., V, k]`` from the prefix lengths ``n_used[..., V]``."""
    return torch.arange(k, device=n_used_BKV.device) < n_used_BKV[..., None]


if triton is not None:

    @triton.jit
    def _neighbour_mass_kernel(
        p_ptr, nbr_ptr, budget_ptr, m_ptr, n_used_ptr,
        V, k, budget_scalar,
        sp_r, sp_v, sn_v, sn_k, sb_r, sb_v,
        BUDGET_IS_TENSOR: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_J: tl.constexpr,
    ):  # fmt: skip
        """Program (row, v-block): tiles of [BLOCK_V tokens, BLOCK_J neighbours], scanned along j."""
        row = tl.program_id(0).to(tl.int64)
        offs_v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        in_v = offs_v < V
        p_row = p_ptr + row * sp_r
        if BUDGET_IS_TENSOR:
            budget = tl.load(budget_ptr + row * sb_r + offs_v * sb_v, mask=in_v, other=0.0).to(tl.float32)
        else:
            budget = tl.zeros([BLOCK_V], tl.float32) + budget_scalar
        carry = tl.zeros([BLOCK_V], tl.float32)  # c_j at the end of the previous tile
        m = tl.zeros([BLOCK_V], tl.float32)
        n_used = tl.zeros([BLOCK_V], tl.int32)
        for j0 in range(0, k, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            in_tile = in_v[:, None] & (offs_j < k)[None, :]
            # each token's neighbours are contiguous in the [V, k] table: rows of the tile coalesce
            nbr = tl.load(nbr_ptr + offs_v[:, None] * sn_v + offs_j[None, :] * sn_k, mask=in_tile, other=-1)
            p_nbr = tl.load(p_row + nbr.to(tl.int64) * sp_v, mask=in_tile & (nbr >= 0), other=0.0)
            c = carry[:, None] + tl.cumsum(p_nbr.to(tl.float32), axis=1)
            used = in_tile & (c <= budget[:, None])
            n_used += tl.sum(used.to(tl.int32), axis=1)
            # c never decreases along j, so the mass taken is c at the last used neighbour
            m = tl.maximum(m, tl.max(tl.where(used, c, 0.0), axis=1))
            carry = tl.max(c, axis=1)
        out = row * V + offs_v
        tl.store(m_ptr + out, m, mask=in_v)
        tl.store(n_used_ptr + out, n_used, mask=in_v)


def neighbour_mass_triton(
    p_BKV: torch.Tensor,  # [B, K, V] (any leading dims)
    neighbours_VK: torch.Tensor,  # [V, k], int32 or int64, -1 = none
    budget: Budget,  # float, or a tensor broadcastable to [B, K, V, 1]
    *,
    block_v: int = 128,
    block_j: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n_used_BKV int32, m_BKV float32)`` by one Triton launch, grid ``(B*K, cdiv(V, block_v))``.

    ``used = used_from_count(n_used_BKV, k)`` reproduces the reference's mask. Runs on CUDA, or
    on CPU under ``TRITON_INTERPRET=1`` (set before triton imports).
    """
    if triton is None:
        raise RuntimeError("neighbour_mass_triton needs triton; use neighbour_mass_reference")
    _check(p_BKV, neighbours_VK, budget)
    lead, V, k = p_BKV.shape[:-1], p_BKV.shape[-1], neighbours_VK.shape[1]
    p_RV = p_BKV.reshape(-1, V)
    R = p_RV.shape[0]
    m_RV = torch.empty(R, V, dtype=torch.float32, device=p_BKV.device)
    n_used_RV = torch.empty(R, V, dtype=torch.int32, device=p_BKV.device)
    if R == 0 or V == 0 or k == 0:  # nothing to take: all zero
        return n_used_RV.zero_().reshape(*lead, V), m_RV.zero_().reshape(*lead, V)
    if isinstance(budget, torch.Tensor):
        # broadcast views keep stride 0 (no copy); only a dtype change materialises
        budget_RV = budget.float().broadcast_to((*lead, V, 1))[..., 0].reshape(R, V)
        scalar = 0.0
    else:
        budget_RV, scalar = p_RV, float(budget)  # the pointer is never read
    block_j = block_j or min(32, _next_pow2(k))
    grid = (R, triton.cdiv(V, block_v))
    _neighbour_mass_kernel[grid](
        p_RV, neighbours_VK, budget_RV, m_RV, n_used_RV,
        V, k, scalar,
        *p_RV.stride(), *neighbours_VK.stride(), *budget_RV.stride(),
        BUDGET_IS_TENSOR=isinstance(budget, torch.Tensor), BLOCK_V=block_v, BLOCK_J=block_j,
    )  # fmt: skip
    return n_used_RV.reshape(*lead, V), m_RV.reshape(*lead, V)


def neighbour_mass(
    p_BKV: torch.Tensor,  # [B, K, V]
    neighbours_VK: torch.Tensor,  # [V, k]
    budget: Budget,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(used_BKVk, m_BKV)`` as the reference returns them: the Triton kernel on CUDA tensors
    when triton imports, the pure-torch reference otherwise (the default on CPU)."""
    if p_BKV.is_cuda and triton_available():
        n_used_BKV, m_BKV = neighbour_mass_triton(p_BKV, neighbours_VK, budget)
        return used_from_count(n_used_BKV, neighbours_VK.shape[1]), m_BKV
    return neighbour_mass_reference(p_BKV, neighbours_VK, budget)

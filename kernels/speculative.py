"""Fused speculative-sampling acceptance (Leviathan et al. 2023, arXiv 2211.17192; SJD).

The rule of ``mmaccel.acceptors.speculative.SpeculativeSampling``, written twice: a pure-torch
reference and ONE Triton kernel launch doing the whole step. For K drafts x_i ~ q_i and the
target's T = K + 1 distributions p_0 .. p_K, with u_i ~ U[0, 1) and E_v ~ Exp(1):

    keep x_i while  u_i * q_i(x_i) < p_i(x_i)          (u < min(1, p/q), no division; q(x) = 0 keeps
                                                      x iff p(x) > 0, p(x) = 0 always rejects)
    n      = number of leading keeps                   (0 .. K)
    r(v)   = max(0, p_n(v) - q_n(v)),  q_K := 0        (so at n = K, r is the bonus p_K)
    next   = argmax_v key(r, v),  key(r, v) = r(v) / E_v if r(v) > 0 else -1
             and if r is all zero (p_n == q_n, rejection had probability 0) the same draw from p_n

argmax(r / E) picks v with probability r(v) / sum(r), so the residual is never normalised.
Zero-mass entries get key -1 rather than 0 / E: a zero-probability token can never win, even
if an E underflows to 0 (torch's CPU ``exponential_`` can return exactly 0; r / 0 would be NaN,
which ``torch.argmax`` would pick). Ties go to the lowest index (``torch.argmax``'s rule).
Everything is computed in float32 whatever the input dtype.

Random inputs (the caller draws them, so both paths consume the same numbers):
    u_BK  float [B, K]  U[0, 1), one per draft (``torch.rand``)
    e_BV  float [B, V]  Exp(1) > 0, one per vocabulary entry for the single residual/bonus draw
          (``torch.empty(B, V).exponential_()``). Drawing u then e from one generator is exactly
          the stream ``SpeculativeSampling.accept`` consumes (``uniform`` then ``sample``).

Owns: the reference, the kernel, and the dispatcher. Must never: sync with the host (the only
Python branches are on shapes, dtypes and devices), or import anything of ``mmaccel`` beyond
torch, so that the engine can be restructured without touching the kernels.
"""

from __future__ import annotations

import torch

try:  # optional at run time: the reference path always works
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None


def triton_available() -> bool:
    """Whether Triton imports (the kernels then run on CUDA tensors)."""
    return triton is not None


def _check_shapes(p_BTV, q_BKV, drafts_BK, u_BK, e_BV) -> tuple[int, int, int]:
    if p_BTV.dim() != 3:
        raise ValueError(f"p_BTV must be [B, K + 1, V], got {tuple(p_BTV.shape)}")
    B, T, V = p_BTV.shape
    K = T - 1
    expected = {"q_BKV": (q_BKV, (B, K, V)), "drafts_BK": (drafts_BK, (B, K)),
                "u_BK": (u_BK, (B, K)), "e_BV": (e_BV, (B, V))}  # fmt: skip
    for name, (x, shape) in expected.items():
        if tuple(x.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} (p_BTV is {tuple(p_BTV.shape)}), got {tuple(x.shape)}"
            )
    return B, K, V


def _draw_key(mass_BV: torch.Tensor, e_BV: torch.Tensor) -> torch.Tensor:
    """``mass / E`` where mass > 0, else -1: argmax of it draws from norm(mass)."""
    return torch.where(mass_BV > 0, mass_BV / e_BV, -1.0)


def speculative_accept_reference(
    p_BTV: torch.Tensor,  # [B, K + 1, V] target distributions (the last is the bonus)
    q_BKV: torch.Tensor,  # [B, K, V] the distribution each draft was drawn from
    drafts_BK: torch.Tensor,  # [B, K] draft token ids (int)
    u_BK: torch.Tensor,  # [B, K] U[0, 1)
    e_BV: torch.Tensor,  # [B, V] Exp(1)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative acceptance in pure torch: ``(num_accepted_B, next_token_B)``, both int64.

    ``num_accepted_B[b]`` leading drafts are kept and ``next_token_B[b]`` (recovered from the
    residual on rejection, the bonus draw when all K are kept) follows them (module docstring).
    """
    B, K, V = _check_shapes(p_BTV, q_BKV, drafts_BK, u_BK, e_BV)
    p_BTV, q_BKV, u_BK, e_BV = p_BTV.float(), q_BKV.float(), u_BK.float(), e_BV.float()
    x_BK1 = drafts_BK.long()[..., None]
    p_x_BK = p_BTV[:, :K].gather(-1, x_BK1)[..., 0]
    q_x_BK = q_BKV.gather(-1, x_BK1)[..., 0]
    n_B = (u_BK * q_x_BK < p_x_BK).long().cumprod(-1).sum(-1)
    # q past the last draft is zero, so at n = K the residual is the bonus distribution p_K
    q_pad_BTV = torch.cat([q_BKV, torch.zeros_like(p_BTV[:, :1])], dim=1)
    idx_B1V = n_B[:, None, None].expand(B, 1, V)
    p_n_BV = p_BTV.gather(1, idx_B1V)[:, 0]
    r_BV = (p_n_BV - q_pad_BTV.gather(1, idx_B1V)[:, 0]).clamp_min(0)
    from_r_B = _draw_key(r_BV, e_BV).argmax(-1)
    from_p_B = _draw_key(p_n_BV, e_BV).argmax(-1)
    return n_B, torch.where((r_BV > 0).any(-1), from_r_B, from_p_B)


if triton is not None:

    @triton.jit
    def _speculative_accept_kernel(
        p_ptr, q_ptr, x_ptr, u_ptr, e_ptr, n_out_ptr, tok_out_ptr,
        K, V,
        sp_b, sp_t, sp_v, sq_b, sq_k, sq_v, sx_b, sx_k, su_b, su_k, se_b, se_v,
        BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        """One program per row b: ratio test over the window, then one sweep over V."""
        b = tl.program_id(0).to(tl.int64)

        # 1. the ratio test for all K drafts at once; n = index of the first rejection (K if none)
        offs_k = tl.arange(0, BLOCK_K)
        in_k = offs_k < K
        x = tl.load(x_ptr + b * sx_b + offs_k * sx_k, mask=in_k, other=0).to(tl.int64)
        ok_x = in_k & (x >= 0) & (x < V)  # an out-of-range draft reads nothing and is rejected
        p_x = tl.load(p_ptr + b * sp_b + offs_k * sp_t + x * sp_v, mask=ok_x, other=0.0).to(tl.float32)
        q_x = tl.load(q_ptr + b * sq_b + offs_k * sq_k + x * sq_v, mask=ok_x, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + b * su_b + offs_k * su_k, mask=in_k, other=1.0).to(tl.float32)
        rejected = in_k & ~(u * q_x < p_x)
        n = tl.min(tl.where(rejected, offs_k, K), axis=0)
        tl.store(n_out_ptr + b, n.to(tl.int64))

        # 2. residual (or bonus) draw: running argmax of r / E over V in blocks, kept in registers;
        #    the fallback draw from p_n rides along so that no second sweep is needed
        has_q = n < K
        p_row = p_ptr + b * sp_b + n.to(tl.int64) * sp_t
        q_row = q_ptr + b * sq_b + n.to(tl.int64) * sq_k
        e_row = e_ptr + b * se_b
        best_r = tl.full((), float("-inf"), tl.float32)
        best_p = tl.full((), float("-inf"), tl.float32)
        idx_r = tl.full((), 0, tl.int64)
        idx_p = tl.full((), 0, tl.int64)
        for v0 in range(0, V, BLOCK_V):
            offs_v = v0 + tl.arange(0, BLOCK_V)
            in_v = offs_v < V
            p = tl.load(p_row + offs_v * sp_v, mask=in_v, other=0.0).to(tl.float32)
            q = tl.load(q_row + offs_v * sq_v, mask=in_v & has_q, other=0.0).to(tl.float32)
            e = tl.load(e_row + offs_v * se_v, mask=in_v, other=1.0).to(tl.float32)
            r = tl.maximum(p - q, 0.0)
            # div_rn: IEEE division like torch (Triton's default fp32 "/" is approximate on GPU)
            key_r = tl.where(in_v, tl.where(r > 0, tl.math.div_rn(r, e), -1.0), float("-inf"))
            key_p = tl.where(in_v, tl.where(p > 0, tl.math.div_rn(p, e), -1.0), float("-inf"))
            m_r, i_r = tl.max(key_r, axis=0, return_indices=True, return_indices_tie_break_left=True)
            m_p, i_p = tl.max(key_p, axis=0, return_indices=True, return_indices_tie_break_left=True)
            # strictly greater: an equal key in a later block has a higher index and loses the tie
            up_r = m_r > best_r
            up_p = m_p > best_p
            idx_r = tl.where(up_r, v0 + i_r.to(tl.int64), idx_r)
            idx_p = tl.where(up_p, v0 + i_p.to(tl.int64), idx_p)
            best_r = tl.where(up_r, m_r, best_r)
            best_p = tl.where(up_p, m_p, best_p)
        # best_r >= 0 exactly when some r > 0 (a positive r / E is >= 0 even if it underflows)
        tl.store(tok_out_ptr + b, tl.where(best_r >= 0, idx_r, idx_p))


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def speculative_accept_triton(
    p_BTV: torch.Tensor,  # [B, K + 1, V]
    q_BKV: torch.Tensor,  # [B, K, V]
    drafts_BK: torch.Tensor,  # [B, K]
    u_BK: torch.Tensor,  # [B, K]
    e_BV: torch.Tensor,  # [B, V]
    *,
    block_v: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference rule as ONE Triton launch, grid ``(B,)``: same outputs for the same u, e.

    ``block_v`` (a power of two) is the vocabulary tile swept per loop iteration; the default
    is ``min(2048, next_pow2(V))``. Inputs may be fp32 / fp16 / bf16 and strided; arithmetic
    is fp32. Runs on CUDA, or on CPU under ``TRITON_INTERPRET=1`` (set before triton imports).
    """
    if triton is None:
        raise RuntimeError("speculative_accept_triton needs triton; use speculative_accept_reference")
    B, K, V = _check_shapes(p_BTV, q_BKV, drafts_BK, u_BK, e_BV)
    block_v = block_v or min(2048, _next_pow2(V))
    if block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of two, got {block_v}")
    n_B = torch.empty(B, dtype=torch.int64, device=p_BTV.device)
    tok_B = torch.empty(B, dtype=torch.int64, device=p_BTV.device)
    if B == 0:
        return n_B, tok_B
    if K == 0:  # nothing of q, drafts or u is read; hand the kernel real pointers all the same
        q_BKV, drafts_BK, u_BK = p_BTV, p_BTV[:, 0, :1], p_BTV[:, 0, :1]
    _speculative_accept_kernel[(B,)](
        p_BTV, q_BKV, drafts_BK, u_BK, e_BV, n_B, tok_B,
        K, V,
        *p_BTV.stride(), *q_BKV.stride(), *drafts_BK.stride(), *u_BK.stride(), *e_BV.stride(),
        BLOCK_K=_next_pow2(max(K, 1)), BLOCK_V=block_v, num_warps=num_warps or (8 if block_v >= 2048 else 4),
    )  # fmt: skip
    return n_B, tok_B


def speculative_accept(
    p_BTV: torch.Tensor,  # [B, K + 1, V]
    q_BKV: torch.Tensor,  # [B, K, V]
    drafts_BK: torch.Tensor,  # [B, K]
    u_BK: torch.Tensor,  # [B, K]
    e_BV: torch.Tensor,  # [B, V]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num_accepted_B, next_token_B)``: the Triton kernel on CUDA tensors when triton imports,
    the pure-torch reference otherwise (the default on CPU)."""
    if p_BTV.is_cuda and triton_available():
        return speculative_accept_triton(p_BTV, q_BKV, drafts_BK, u_BK, e_BV)
    return speculative_accept_reference(p_BTV, q_BKV, drafts_BK, u_BK, e_BV)

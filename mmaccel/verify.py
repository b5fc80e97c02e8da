"""The shared verify step: propose -> one target forward -> accept -> commit/rollback.

Owns: one step of every raster method as ONE function of tensors: run the target once over
``[pending, drafts]``, turn logits into the processed target ``p`` (guidance first, so
acceptance sees the guided distribution), let the acceptor decide, write the emitted tokens to
the history, commit the kept prefix to the cache (the rejected tail is rolled back simply by
not counting it), and move the drafter on. Every method is a drafter plus an acceptor driven
by this step. Its only input that changes from step to step is the flat tensor of U[0, 1)
draws (made before the step with the call's generator); everything else it reads and writes
lives in ``DecodeState``, the context and the cache, at fixed addresses, and is updated in
place. That is what lets ``CompiledStep`` compile the whole step as one graph
(``torch.compile(fullgraph=True)``) or capture it as one CUDA graph.

Must never: sync with the host (the generate loop may, once per iteration), call a random
number generator, or rebind a state tensor (write into it instead).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from mmaccel.acceptors import Acceptor
from mmaccel.acceptors.branches import accept_branches, branch_draws, branch_mask, branch_positions
from mmaccel.cache import StaticKVCache
from mmaccel.drafters import Draft, DraftContext, Drafter
from mmaccel.models import CausalLM
from mmaccel.sampling import Draws, SamplingConfig, Shapes, apply_cfg, prefixed, process_logits


@dataclass
class DecodeState:
    """Per-row decoding state; every field is a device tensor, written in place by each step."""

    pending_B: torch.Tensor  # token emitted last, not yet in the cache
    num_generated_B: torch.Tensor  # int64: tokens emitted so far (pending included)
    done_B: torch.Tensor  # bool
    steps_B: torch.Tensor  # int64: verify steps while active (per-row forward passes)
    emitted_hist_T: torch.Tensor  # int64 [block + 1]: steps that emitted k tokens
    draft_tokens_BK: torch.Tensor  # int64: the drafts the next step verifies
    draft_q_BKV: torch.Tensor  # float: the distribution each draft was drawn from ([B, 0, V]: one-hot)
    token_forward_BN: torch.Tensor  # int64: which forward committed each generated token
    forwards_1: torch.Tensor  # int64 [1]: verify forwards so far (the prefill is forward 0)
    draft_len_B: torch.Tensor  # int64: real drafts in the window (``Draft.length_B``; else K)

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]


def target_probs(logits_BTV: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Processed target distribution; the doubled CFG batch is combined first."""
    if sampling.cfg_scale is not None:
        logits_BTV = apply_cfg(logits_BTV, sampling.cfg_scale)
    return process_logits(logits_BTV, sampling)


def is_eos(tokens: torch.Tensor, eos_ids: tuple[int, ...]) -> torch.Tensor:
    """Where ``tokens`` is one of ``eos_ids`` (compared one id at a time: no tensor is built from
    the ids, so a captured step holds no host-to-device copy)."""
    out = torch.zeros_like(tokens, dtype=torch.bool)
    for eos in eos_ids:
        out = out | (tokens == eos)
    return out


def cfg_rows(x_B: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Repeat per-row values for the unconditional half of a CFG batch."""
    return torch.cat([x_B, x_B]) if sampling.cfg_scale is not None else x_B


def step_draws(drafter: Drafter, acceptor: Acceptor, B: int, V: int, k: int | None = None) -> Shapes:
    """Every U[0, 1) number one verify step of B rows with ``k`` drafts (default: the window)
    consumes, by consumer."""
    k = drafter.window if k is None else k
    accept = (
        branch_draws(B, drafter.branches, k, V)
        if drafter.branches > 1 and k
        else acceptor.draws_shapes(B, k, V)
    )
    return prefixed({"accept": accept, "draft": drafter.update_draws(B, V)})


def verify_step(
    lm: CausalLM,
    cache: StaticKVCache,
    drafter: Drafter,
    acceptor: Acceptor,
    sampling: SamplingConfig,
    state: DecodeState,
    ctx: DraftContext,
    max_new_tokens: int,
    eos_ids: tuple[int, ...],
    k: int | None,
    draws_N: torch.Tensor,  # [plan size] U[0, 1), cut by ``step_draws``
) -> None:
    """One verify step for all rows, in place on ``cache``, ``state`` and ``ctx.history_BN``.

    ``k``: verify only the first k drafts of the window (a ``variable`` drafter's step length,
    ``mmaccel.draft_length``); None: all of them. Rows already done are still run (shapes stay
    static) but emit and commit nothing.
    """
    B, G, V = state.pending_B.shape[0], drafter.branches, ctx.vocab_size
    K = drafter.window if k is None else k
    tokens_BGK = state.draft_tokens_BK.view(B, G, -1)[:, :, :K]
    draws = Draws.split(draws_N, step_draws(drafter, acceptor, B, V, K))
    tokens_BT = torch.cat([state.pending_B[:, None], tokens_BGK.reshape(B, G * K)], dim=1)
    T = tokens_BT.shape[1]
    slots_BT = cache.slots(T)
    if G > 1 and K:  # branches: each sees the pending token and its own drafts, at its own depths
        pos_BT = slots_BT[:, :1] + branch_positions(G, K, slots_BT.device)[None]
        mask_BTS = cache.attn_mask(
            T, branch_mask(G, K, slots_BT.device)[None].expand(slots_BT.shape[0], -1, -1)
        )
        logits = lm.forward(cfg_rows(tokens_BT, sampling), pos_BT, cache, slots_BT, mask_BTS)
    else:
        logits = lm.forward(cfg_rows(tokens_BT, sampling), slots_BT, cache, slots_BT, cache.attn_mask(T))
    p_BTV = target_probs(logits, sampling)
    if G > 1 and K:
        acc, branch_B = accept_branches(tokens_BGK, p_BTV, draws.sub("accept"))
        tokens_BK = tokens_BGK.gather(1, branch_B[:, None, None].expand(-1, 1, K))[:, 0]
        # the kept branch's entries move to the slots right after the pending token
        depth_1K = torch.arange(1, K + 1, device=slots_BT.device)[None]
        branch_all = cfg_rows(branch_B, sampling)[:, None]
        cache.move(slots_BT[:, :1] + branch_all * K + depth_1K, slots_BT[:, :1] + depth_1K)
        q_BKV = None
    else:
        tokens_BK = tokens_BGK[:, 0]
        q_BKV = F.one_hot(tokens_BK, V).to(p_BTV.dtype) if drafter.one_hot else state.draft_q_BKV[:, :K]
        acc = acceptor.accept(tokens_BK, q_BKV, p_BTV, draws.sub("accept"))

    # emitted this step: the n kept drafts, then the next token
    arange_T = torch.arange(K + 1, device=tokens_BT.device)[None]
    next_B1 = acc.next_token_B[:, None]
    emitted_BT = torch.where(
        arange_T < acc.num_accepted_B[:, None], torch.cat([tokens_BK, next_B1], 1), next_B1
    )
    count_B = torch.minimum(acc.num_accepted_B + 1, max_new_tokens - state.num_generated_B)
    hit_eos_B = torch.zeros_like(state.done_B)
    if eos_ids:
        is_eos_BT = is_eos(emitted_BT, eos_ids) & (arange_T < count_B[:, None])
        hit_eos_B = is_eos_BT.any(1)
        count_B = torch.where(hit_eos_B, is_eos_BT.int().argmax(1) + 1, count_B)
    was_done_B = state.done_B.clone()
    count_B = torch.where(was_done_B, 0, count_B)

    # history: emitted[i] goes to index num_generated + i for i < count (the rest to a scratch slot)
    N = ctx.history_BN.shape[1]
    keep_BT = arange_T < count_B[:, None]
    idx_BT = torch.where(keep_BT, state.num_generated_B[:, None] + arange_T, N - 1).clamp(max=N - 1)
    ctx.history_BN.scatter_(1, idx_BT, torch.where(keep_BT, emitted_BT, ctx.history_BN.gather(1, idx_BT)))
    state.forwards_1.add_(1)
    state.token_forward_BN.scatter_(
        1, idx_BT, torch.where(keep_BT, state.forwards_1, state.token_forward_BN.gather(1, idx_BT))
    )

    # the pending token and the n kept drafts enter the cache; the rejected tail is rolled back
    cache.commit(cfg_rows(count_B, sampling))
    last_B = emitted_BT.gather(1, (count_B - 1).clamp(min=0)[:, None])[:, 0]
    state.pending_B.copy_(torch.where(count_B > 0, last_B, state.pending_B))
    state.num_generated_B.add_(count_B)  # ctx.num_generated_B is this tensor: the drafter sees the new count
    state.done_B.copy_(was_done_B | hit_eos_B | (state.num_generated_B >= max_new_tokens))
    state.steps_B.add_((~was_done_B).long())
    state.emitted_hist_T.scatter_add_(0, count_B, (~was_done_B).long())
    nxt = drafter.update(ctx, Draft(tokens_BK, q_BKV), p_BTV, acc, draws.sub("draft"))
    state.draft_tokens_BK.copy_(nxt.tokens_BK)
    if nxt.q_BKV is not None:
        state.draft_q_BKV.copy_(nxt.q_BKV)
    if nxt.length_B is not None:
        state.draft_len_B.copy_(nxt.length_B)

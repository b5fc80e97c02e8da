"""The shared verify step: propose -> one target forward -> accept -> commit/rollback.

Owns: one step of every method: run the target once over ``[pending, drafts]``, turn logits
into the processed target ``p`` (guidance first, so acceptance sees the guided
distribution), let the acceptor decide, write the emitted tokens to the history, commit the
kept prefix to the cache (the rejected tail is rolled back simply by not counting it), and
move the drafter on. Every method is a drafter plus an acceptor driven by this step.

Must never: sync with the host (the generate loop may, once per iteration).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmaccel.acceptors import Acceptor
from mmaccel.cache import StaticKVCache
from mmaccel.compiled import CompiledStep
from mmaccel.drafters import Draft, DraftContext, Drafter
from mmaccel.sampling import SamplingConfig, apply_cfg, process_logits


@dataclass
class DecodeState:
    """Per-row decoding state; every field is a device tensor of leading size B."""

    pending_B: torch.Tensor  # token emitted last, not yet in the cache
    num_generated_B: torch.Tensor  # int64: tokens emitted so far (pending included)
    done_B: torch.Tensor  # bool
    steps_B: torch.Tensor  # int64: verify steps while active (per-row forward passes)
    emitted_hist_T: torch.Tensor  # int64 [block + 1]: steps that emitted k tokens


def target_probs(logits_BTV: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Processed target distribution; the doubled CFG batch is combined first."""
    if sampling.cfg_scale is not None:
        logits_BTV = apply_cfg(logits_BTV, sampling.cfg_scale)
    return process_logits(logits_BTV, sampling)


def cfg_rows(x_B: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Repeat per-row values for the unconditional half of a CFG batch."""
    return torch.cat([x_B, x_B]) if sampling.cfg_scale is not None else x_B


def verify_step(
    step: CompiledStep,
    cache: StaticKVCache,
    drafter: Drafter,
    acceptor: Acceptor,
    draft: Draft,
    state: DecodeState,
    ctx: DraftContext,
    sampling: SamplingConfig,
    max_new_tokens: int,
    eos_token_id: int | None,
) -> Draft:
    """One verify step for all rows; updates ``cache``, ``state`` and ``ctx``; returns the next draft.

    Rows already done are still run (shapes stay static) but emit and commit nothing.
    """
    K = draft.tokens_BK.shape[1]
    tokens_BT = torch.cat([state.pending_B[:, None], draft.tokens_BK], dim=1)
    p_BTV = target_probs(step(cfg_rows(tokens_BT, sampling)), sampling)
    acc = acceptor.accept(draft.tokens_BK, draft.q_BKV, p_BTV, ctx.generator)

    # emitted this step: the n kept drafts, then the next token
    arange_T = torch.arange(K + 1, device=tokens_BT.device)[None]
    next_B1 = acc.next_token_B[:, None]
    emitted_BT = torch.where(
        arange_T < acc.num_accepted_B[:, None], torch.cat([draft.tokens_BK, next_B1], 1), next_B1
    )
    count_B = torch.minimum(acc.num_accepted_B + 1, max_new_tokens - state.num_generated_B)
    hit_eos_B = torch.zeros_like(state.done_B)
    if eos_token_id is not None:
        is_eos_BT = (emitted_BT == eos_token_id) & (arange_T < count_B[:, None])
        hit_eos_B = is_eos_BT.any(1)
        count_B = torch.where(hit_eos_B, is_eos_BT.int().argmax(1) + 1, count_B)
    was_done_B = state.done_B
    count_B = torch.where(was_done_B, 0, count_B)

    # history: emitted[i] goes to index num_generated + i for i < count
    N = ctx.history_BN.shape[1]
    idx_BT = (state.num_generated_B[:, None] + arange_T).clamp(max=N - 1)
    keep_BT = arange_T < count_B[:, None]
    ctx.history_BN.scatter_(1, idx_BT, torch.where(keep_BT, emitted_BT, ctx.history_BN.gather(1, idx_BT)))

    # the pending token and the n kept drafts enter the cache; the rejected tail is rolled back
    cache.commit(cfg_rows(count_B, sampling))
    last_B = emitted_BT.gather(1, (count_B - 1).clamp(min=0)[:, None])[:, 0]
    state.pending_B = torch.where(count_B > 0, last_B, state.pending_B)
    state.num_generated_B = state.num_generated_B + count_B
    ctx.num_generated_B = state.num_generated_B
    state.done_B = was_done_B | hit_eos_B | (state.num_generated_B >= max_new_tokens)
    state.steps_B = state.steps_B + (~was_done_B).long()
    state.emitted_hist_T.scatter_add_(0, count_B, (~was_done_B).long())
    return drafter.update(ctx, draft, p_BTV, acc)

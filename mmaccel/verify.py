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
from mmaccel.acceptors.branches import accept_branches, branch_draws, branch_mask, branch_positions, const
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
    draft_evidence_B: torch.Tensor  # int64: the drafts' evidence level (``Draft.evidence_B``; else 0)

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


def step_lengths(drafter: Drafter, k: int | None) -> tuple[int, ...]:
    """Drafts per branch a step of length ``k`` verifies (None: the whole window); a single
    entry when the step is one chain (one branch, or no drafts at all)."""
    full = drafter.branch_lengths()
    lengths = full if k is None else tuple(min(k, n) for n in full)
    return lengths if min(lengths) > 0 else lengths[:1]


def step_size(drafter: Drafter, k: int | None) -> int:
    """Tokens one verify step of length ``k`` carries (the pending token included)."""
    return 1 + sum(step_lengths(drafter, k))


def _step_drafts(drafter: Drafter, window_BK: torch.Tensor, lengths: tuple[int, ...]) -> torch.Tensor:
    """The drafts a step verifies: each branch's first ``lengths[g]`` of the window (a slice for
    one chain; an index made on the device for branches: a captured step copies nothing from the
    host)."""
    full = drafter.branch_lengths()
    if len(lengths) == 1:
        return window_BK[:, : lengths[0]]
    if lengths == full:
        return window_BK
    index = [sum(full[:g]) + d for g, n in enumerate(lengths) for d in range(n)]
    return window_BK[:, const(index, window_BK.device)]


def step_draws(drafter: Drafter, acceptor: Acceptor, B: int, V: int, k: int | None = None) -> Shapes:
    """Every U[0, 1) number one verify step of B rows with ``k`` drafts per branch (default:
    the window) consumes, by consumer."""
    lengths = step_lengths(drafter, k)
    accept = branch_draws(B, lengths, V) if len(lengths) > 1 else acceptor.draws_shapes(B, lengths[0], V)
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

    ``k``: verify only the first k drafts of each branch of the window (a ``variable`` drafter's
    step length, ``mmaccel.draft_length``); None: all of them. Several branches are verified
    together (``mmaccel.acceptors.branches``). Rows already done are still run (shapes stay
    static) but emit and commit nothing.
    """
    B, V = state.pending_B.shape[0], ctx.vocab_size
    lengths = step_lengths(drafter, k)
    branched = len(lengths) > 1
    drafts_BK = _step_drafts(drafter, state.draft_tokens_BK, lengths)
    draws = Draws.split(draws_N, step_draws(drafter, acceptor, B, V, k))
    tokens_BT = torch.cat([state.pending_B[:, None], drafts_BK], dim=1)
    T = tokens_BT.shape[1]
    slots_BT = cache.slots(T)
    if branched:  # each branch sees the pending token and its own drafts, at its own depths
        pos_BT = slots_BT[:, :1] + branch_positions(lengths, slots_BT.device)[None]
        block_BTT = branch_mask(lengths, slots_BT.device)[None].expand(slots_BT.shape[0], -1, -1)
        logits = lm.forward(
            cfg_rows(tokens_BT, sampling), pos_BT, cache, slots_BT, cache.attn_mask(T, block_BTT)
        )
    else:
        logits = lm.forward(cfg_rows(tokens_BT, sampling), slots_BT, cache, slots_BT, cache.attn_mask(T))
    p_BTV = target_probs(logits, sampling)
    if branched:
        acc, branch_B, tokens_BK = accept_branches(drafts_BK, lengths, p_BTV, draws.sub("accept"))
        # the kept branch's entries move to the slots right after the pending token
        K = tokens_BK.shape[1]
        depth_1K = torch.arange(1, K + 1, device=slots_BT.device)[None]
        offset_B1 = cfg_rows(const([sum(lengths[:g]) for g in range(len(lengths))], slots_BT.device)[branch_B],
                             sampling)[:, None]  # fmt: skip
        src_BK = (slots_BT[:, :1] + offset_B1 + depth_1K).clamp(max=cache.capacity - 1)
        cache.move(src_BK, slots_BT[:, :1] + depth_1K)
        q_BKV = None
    else:
        tokens_BK, K = drafts_BK, drafts_BK.shape[1]
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
    if nxt.evidence_B is not None:
        state.draft_evidence_B.copy_(nxt.evidence_B)

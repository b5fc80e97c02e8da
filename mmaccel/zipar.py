"""ZipAR spatial next-set decoding (He et al. 2024, arXiv 2412.04062), alone or with a per-row window.

A raster image of H rows x W columns is decoded by several *streams* at once: row r + 1
starts once row r holds ``zipar_window`` (w) tokens, and from then on every active row
advances in the same forward. Token (r, c) keeps its true position P + rW + c (P = prompt
length) for RoPE while its cache slot is simply the next free one, so slots and positions
are separate (every cached slot records its position in ``slot_pos_BS``).

What a query sees (our rule; the official LlamaGen code lets queries see empty slots):
cached tokens whose position is at most its own (rows below it are decoded but are *later*
in raster order, so they are hidden) and, inside the block, its own stream's earlier
entries plus the other streams' pending tokens that come strictly before it.

Starting a row. Token (r + 1, 0) is predicted from position (r, W - 1), which is not decoded
yet; as in the official code a stand-in takes that position: row r's latest token. The
stand-in is queried but never committed. When row r finishes, its last token is written
("flushed") in the next forward. With w >= W the stand-in is the true token (r, W - 1) and
the schedule is plain raster decoding: ZipAR then equals ``ar`` in distribution.

Schedule (plain ZipAR, one token per row per forward): forwards = (H - 1) * min(w, W) + W,
prefill included. A per-row window (``zipar+sjd``, ``zipar+lantern``) gives each stream its
own Jacobi drafts, verified by the method's acceptor in the same forward; a row may then
advance several tokens, but never to within w - 1 columns of the row above (so every token
sees at least as much of the row above as in plain ZipAR).
Streams that would sit idle are used: a row waiting to start (the row above holds 1..w-1
tokens) already joins the forward behind a stand-in, refining its drafts and emitting nothing,
and a row held back by the row above keeps its window where it is.

Streams are slots s = 0..S-1 with S = min(H, ceil(W / w) + 1); stream s serves rows
r = s (mod S) in turn. Everything below is tensor arithmetic: no host sync inside a step.

Must never: let a query see an undecoded slot or a later raster position; commit a stand-in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mmaccel.acceptors import Acceptance, Acceptor
from mmaccel.cache import StaticKVCache
from mmaccel.drafters import Draft, DraftContext, Drafter
from mmaccel.models import CausalLM
from mmaccel.sampling import Draws, SamplingConfig, Shapes, prefixed
from mmaccel.verify import DecodeState, cfg_rows, target_probs


def zipar_forward_passes(rows: int, width: int, window: int) -> int:
    """Forwards of plain ZipAR on a ``rows x width`` grid (prefill counted)."""
    return (rows - 1) * min(window, width) + width


def num_streams(rows: int, width: int, window: int) -> int:
    return min(rows, math.ceil(width / min(window, width)) + 1)


@dataclass
class ZipARLayout:
    rows: int  # H
    width: int  # W
    window: int  # w, clamped to W
    streams: int  # S
    drafts: int  # K per stream


class ZipARRunner:
    """Decodes one batch with ZipAR; ``zipar_step(runner, draws_N)`` is one forward of every
    active stream. Every tensor it reads and writes lives here, in ``state`` or in the cache, at
    a fixed address (the step is compiled or captured whole)."""

    def __init__(
        self,
        layout: ZipARLayout,
        cache: StaticKVCache,
        drafter: Drafter,
        acceptor: Acceptor,
        sampling: SamplingConfig,
        ctx: DraftContext,
        state: DecodeState,
        prompt_lens_R: torch.Tensor,  # [cache rows] prompt length (= position of image token 0)
        lm: CausalLM,
    ) -> None:
        self.L, self.cache, self.drafter, self.acceptor, self.lm = layout, cache, drafter, acceptor, lm
        self.sampling, self.ctx, self.state = sampling, ctx, state
        B, dev = state.num_generated_B.shape[0], cache.device
        H, S, K, V = layout.rows, layout.streams, layout.drafts, ctx.vocab_size
        self.B = B
        self.count_BH = torch.zeros(B, H, dtype=torch.long, device=dev)
        self.count_BH[:, 0] = 1  # the prefill emitted token (0, 0)
        self.cached_BH = torch.zeros(B, H, dtype=torch.long, device=dev)
        self.prompt_B = prompt_lens_R[:B].long()
        self.prompt_R = prompt_lens_R.long()
        # every committed slot's position: prompt slots hold positions 0..P-1
        self.slot_pos_RS = torch.arange(cache.capacity, device=dev)[None].repeat(cache.lens_B.shape[0], 1)
        self.stream_row_BS = torch.full(
            (B, S), -1, dtype=torch.long, device=dev
        )  # -1: every window starts anew
        self.draft_tokens_NK = torch.zeros(B * S, K, dtype=torch.long, device=dev)
        self.draft_q_NKV = torch.zeros(B * S, K, V, device=dev)

    def draws_shapes(self) -> Shapes:
        """The U[0, 1) numbers one step consumes (every stream's window restart, acceptance, update)."""
        N, K, V = self.B * self.L.streams, self.L.drafts, self.ctx.vocab_size
        return prefixed({"start": self.drafter.start_draws(N, V), "accept": self.acceptor.draws_shapes(N, K, V),
                         "draft": self.drafter.update_draws(N, V)})  # fmt: skip

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a step writes."""
        c = self.cache
        return [self.count_BH, self.cached_BH, self.slot_pos_RS, self.stream_row_BS, self.draft_tokens_NK,
                self.draft_q_NKV, *self.state.tensors(), self.ctx.history_BN, c.lens_B, *c.k, *c.v]  # fmt: skip

    # ---- schedule -------------------------------------------------------------------------
    def _assign(self) -> tuple[torch.Tensor, ...]:
        """Row of each stream and its status (normal / stand-in / flush / idle masks)."""
        H, W, w, S = self.L.rows, self.L.width, self.L.window, self.L.streams
        dev = self.count_BH.device
        J = math.ceil(H / S)
        rows_SJ = torch.arange(S, device=dev)[:, None] + S * torch.arange(J, device=dev)[None]
        exists_SJ = rows_SJ < H
        rows_c = rows_SJ.clamp(max=H - 1)
        finished_BH = (self.count_BH == W) & (self.cached_BH == W)
        open_BSJ = ~finished_BH[:, rows_c] & exists_SJ
        j_BS = torch.where(open_BSJ.any(-1), open_BSJ.int().argmax(-1), J - 1)
        row_BS = rows_c[torch.arange(S, device=dev)[None], j_BS]
        has_row_BS = open_BSJ.any(-1)
        count_BS = self.count_BH.gather(1, row_BS)
        cached_BS = self.cached_BH.gather(1, row_BS)
        above_BS = self.count_BH.gather(1, (row_BS - 1).clamp(min=0))
        startable_BS = (row_BS == 0) | (above_BS >= w)
        live_BS = has_row_BS & startable_BS
        standin_BS = live_BS & (count_BS == 0)
        # a row waiting for the row above uses its idle stream to refine its drafts (nothing emitted)
        warm_BS = has_row_BS & ~startable_BS & (count_BS == 0) & (above_BS >= 1) & (self.L.drafts > 0)
        flush_BS = live_BS & (count_BS == W) & (cached_BS == W - 1)
        normal_BS = live_BS & (count_BS > 0) & (count_BS < W)
        # room this step: to the row end, and never closer than w - 1 columns to the row above
        above_done_BS = (row_BS == 0) | (above_BS == W)
        cap_BS = torch.where(above_done_BS, W, above_BS - w + 1) - count_BS
        allow_BS = torch.where(normal_BS | standin_BS, torch.minimum(W - count_BS, cap_BS).clamp(min=0), 0)
        return row_BS, count_BS, above_BS, normal_BS, standin_BS, warm_BS, flush_BS, allow_BS

    # ---- one forward ----------------------------------------------------------------------
    def step(self, draws_N: torch.Tensor) -> None:
        H, W, S, K = self.L.rows, self.L.width, self.L.streams, self.L.drafts
        B, dev, V = self.B, self.count_BH.device, self.ctx.vocab_size
        draws = Draws.split(draws_N, self.draws_shapes())
        row_BS, count_BS, above_BS, normal_BS, standin_BS, warm_BS, flush_BS, allow_BS = self._assign()
        hist_BN = self.ctx.history_BN
        next_BS = row_BS * W + count_BS  # history index of the row's next token
        # a stand-in copies the latest token of the row above
        pend_idx_BS = torch.where(standin_BS | warm_BS, (row_BS - 1).clamp(min=0) * W + above_BS, next_BS) - 1
        pend_idx_BS = pend_idx_BS.clamp(min=0)
        pending_BS = hist_BN.gather(1, pend_idx_BS)
        active_BS = normal_BS | standin_BS | warm_BS | flush_BS

        # drafts: restart the window of streams that moved to a new row
        sctx = self._stream_ctx(next_BS)
        restart_N = (row_BS != self.stream_row_BS).reshape(-1)
        fresh = self.drafter.start(sctx, pending_BS.reshape(-1), draws.sub("start"))
        draft = Draft(torch.where(restart_N[:, None], fresh.tokens_BK, self.draft_tokens_NK),
                      torch.where(restart_N[:, None, None], fresh.q_BKV, self.draft_q_NKV))  # fmt: skip
        self.stream_row_BS.copy_(row_BS)
        drafts_BSK = draft.tokens_BK.view(B, S, K)

        # the block: per stream [pending, drafts], with true positions
        T1 = K + 1
        tokens_BST = torch.cat([pending_BS[..., None], drafts_BSK], -1)
        offs_T = torch.arange(T1, device=dev)
        max_pos = self.prompt_B[:, None, None] + H * W - 1
        pos_BST = (self.prompt_B[:, None, None] + next_BS[..., None] - 1 + offs_T).clamp(max=max_pos)
        pos_BST = torch.where(active_BS[..., None], pos_BST, 0)
        tokens_BT, pos_BT = tokens_BST.reshape(B, S * T1), pos_BST.reshape(B, S * T1)
        block_BTT = self._block_mask(pos_BST, active_BS)

        rep = lambda x: cfg_rows(x, self.sampling)  # noqa: E731
        pos_RT = rep(pos_BT) - rep(self.prompt_B)[:, None] + self.prompt_R[:, None]
        slots_RT = self.cache.slots(S * T1)
        mask_RTS = self.cache.attn_mask(S * T1, rep(block_BTT))
        committed_RS = torch.arange(self.cache.capacity, device=dev)[None] < self.cache.lens_B.long()[:, None]
        visible_RTS = ~committed_RS[:, None] | (self.slot_pos_RS[:, None, :] <= pos_RT[..., None])
        logits = self.lm.forward(rep(tokens_BT), pos_RT, self.cache, slots_RT, mask_RTS & visible_RTS)
        p_NTV = target_probs(logits, self.sampling).view(B * S, T1, V)

        acc = self.acceptor.accept(draft.tokens_BK, draft.q_BKV, p_NTV, draws.sub("accept"))
        n_BS = acc.num_accepted_B.view(B, S)
        emit_BS = torch.minimum(n_BS + 1, allow_BS)
        emitted_BST = torch.where(offs_T < n_BS[..., None], torch.cat([drafts_BSK, acc.next_token_B.view(B, S, 1)], -1),
                                  acc.next_token_B.view(B, S, 1))  # fmt: skip
        # history and counts
        write_BST = offs_T < emit_BS[..., None]
        scratch = hist_BN.shape[1] - 1  # past the image: entries not written all go here
        idx_BST = torch.where(write_BST, next_BS[..., None] + offs_T, scratch)
        hist_BN.scatter_(1, idx_BST.reshape(B, -1),
                         torch.where(write_BST, emitted_BST, hist_BN.gather(1, idx_BST.reshape(B, -1)).view(B, S, T1))
                         .reshape(B, -1))  # fmt: skip
        st = self.state
        st.forwards_1.add_(1)
        st.token_forward_BN.scatter_(1, idx_BST.reshape(B, -1), st.forwards_1.expand(B, S * T1))
        self.count_BH.scatter_add_(1, row_BS, emit_BS)

        # commit: pending + emitted drafts (normal), emitted drafts only (stand-in), pending (flush)
        keep_BST = torch.where(normal_BS[..., None], offs_T < emit_BS[..., None], False)
        keep_BST |= standin_BS[..., None] & (offs_T >= 1) & (offs_T < emit_BS[..., None])
        keep_BST |= flush_BS[..., None] & (offs_T == 0)
        self.cached_BH.scatter_add_(1, row_BS, keep_BST.sum(-1))
        self._compact(rep(keep_BST.reshape(B, -1)), pos_RT)

        # stats
        was_done_B = st.done_B.clone()
        total_B = emit_BS.sum(1)
        st.num_generated_B.copy_(self.count_BH.sum(1))
        st.done_B.copy_(st.num_generated_B >= H * W)
        st.steps_B.add_((~was_done_B).long())
        st.emitted_hist_T.scatter_add_(
            0, total_B.clamp(max=st.emitted_hist_T.shape[0] - 1), (~was_done_B).long()
        )

        # the drafter moves each stream's window past what it emitted; a stream that emitted
        # nothing (held back by the row above) keeps its window in place (num_accepted -1)
        last_BS = emitted_BST.gather(2, (emit_BS - 1).clamp(min=0)[..., None])[..., 0]
        acc2 = Acceptance(
            (emit_BS - 1).reshape(-1), torch.where(emit_BS > 0, last_BS, pending_BS).reshape(-1)
        )
        nxt = self.drafter.update(self._stream_ctx(next_BS + emit_BS), draft, p_NTV, acc2, draws.sub("draft"))
        self.draft_tokens_NK.copy_(nxt.tokens_BK)
        self.draft_q_NKV.copy_(nxt.q_BKV)

    # ---- helpers --------------------------------------------------------------------------
    def _stream_ctx(self, next_BS: torch.Tensor) -> DraftContext:
        S = self.L.streams
        c = self.ctx
        return DraftContext(c.vocab_size, c.grid_width, c.generator, c.history_BN.repeat_interleave(S, 0),
                            next_BS.reshape(-1))  # fmt: skip

    def _block_mask(self, pos_BST: torch.Tensor, active_BS: torch.Tensor) -> torch.Tensor:
        """In-block visibility ``[B, S*T1, S*T1]`` (query, key)."""
        B, S, T1 = pos_BST.shape
        dev = pos_BST.device
        s_T = torch.arange(S, device=dev).repeat_interleave(T1)
        i_T = torch.arange(T1, device=dev).repeat(S)
        pos_BT = pos_BST.reshape(B, -1)
        act_BT = active_BS.repeat_interleave(T1, 1)
        same = (s_T[:, None] == s_T[None, :]) & (i_T[None, :] <= i_T[:, None])
        other_pending = (s_T[:, None] != s_T[None, :]) & (i_T[None, :] == 0)
        before_BTT = pos_BT[:, None, :] < pos_BT[:, :, None]
        return same[None] | (other_pending[None] & before_BTT & act_BT[:, None, :] & act_BT[:, :, None])

    def _compact(self, keep_RT: torch.Tensor, pos_RT: torch.Tensor) -> None:
        """Move the kept block entries (in order) to the front of the block; commit them."""
        cache = self.cache
        T = keep_RT.shape[1]
        order_RT = torch.sort((~keep_RT).int(), dim=1, stable=True).indices
        src_RT = cache.lens_B.long()[:, None] + order_RT
        dst_RT = cache.slots(T)
        for buf in (*cache.k, *cache.v):
            R, Hh, _, D = buf.shape
            moved = buf.gather(2, src_RT[:, None, :, None].expand(R, Hh, T, D))
            buf.scatter_(2, dst_RT[:, None, :, None].expand(R, Hh, T, D), moved)
        self.slot_pos_RS.scatter_(1, dst_RT, pos_RT.gather(1, order_RT))
        cache.commit(keep_RT.sum(1))


def zipar_step(runner: ZipARRunner, draws_N: torch.Tensor) -> None:
    """One ZipAR forward of every active stream (a plain function: what ``CompiledStep`` compiles)."""
    runner.step(draws_N)

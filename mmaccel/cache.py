"""Static key/value cache with an explicit per-row fill length.

Owns: preallocated K/V buffers for every layer, the fill length of each row (``lens_B``,
int32 on the cache's device) and the attention mask derived from it.

The record of how much of a row is valid is ``lens_B`` and nothing else: entries beyond a
row's length may hold stale drafts and are never read, because every mask is built from
``lens_B``. So rollback is one assignment to ``lens_B`` and commit is one addition. Writes go
to explicit slots; a block of T new tokens of row b is written at slots
``lens_B[b] .. lens_B[b] + T - 1``.

Must never: infer occupancy from the data, reallocate during generation, or sync with the host.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Preallocated K/V buffers ``[B, H, S, D]`` per layer with per-row fill lengths.

    Args:
        num_layers: number of attention layers.
        batch: rows.
        num_kv_heads: key/value heads per layer.
        capacity: slots per row (S); must cover prompt + new tokens + one draft block.
        head_dim: D.
        dtype, device: of the K/V buffers.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch, num_kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lens_B = torch.zeros(batch, dtype=torch.int32, device=device)
        self.capacity = capacity
        self.batch = batch

    @property
    def device(self) -> torch.device:
        return self.lens_B.device

    def slots(self, num_tokens: int) -> torch.Tensor:
        """Slots ``[B, T]`` where the next block of ``num_tokens`` tokens of each row goes."""
        arange_T = torch.arange(num_tokens, device=self.device, dtype=torch.int64)
        return self.lens_B.long()[:, None] + arange_T[None, :]

    def attn_mask(self, num_tokens: int, block_mask_BTT: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask ``[B, T, S]`` (True = may attend) for a block written at ``slots(T)``.

        A query sees every committed slot (``s < lens_B``) and, inside its own block, the
        block positions allowed by ``block_mask_BTT`` (default: causal, itself included).
        """
        T = num_tokens
        slot_S = torch.arange(self.capacity, device=self.device, dtype=torch.int64)
        lens_B11 = self.lens_B.long()[:, None, None]
        committed_BTS = (slot_S[None, None, :] < lens_B11).expand(-1, T, -1)
        rel_B1S = slot_S[None, None, :] - lens_B11  # slot position relative to the block start
        in_block_B1S = (rel_B1S >= 0) & (rel_B1S < T)
        if block_mask_BTT is None:
            t_1T1 = torch.arange(T, device=self.device)[None, :, None]
            block_BTS = in_block_B1S & (rel_B1S <= t_1T1)
        else:
            idx_BTS = rel_B1S.clamp(0, T - 1).expand(-1, T, -1)
            block_BTS = in_block_B1S & torch.gather(block_mask_BTT, 2, idx_BTS)
        return committed_BTS | block_BTS

    def update(
        self, layer: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor, slots_BT: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a block's keys/values at ``slots_BT`` of ``layer``; return the whole layer."""
        B, H, T, D = k_BHTD.shape
        idx_BHTD = slots_BT[:, None, :, None].expand(B, H, T, D)
        self.k[layer].scatter_(2, idx_BHTD, k_BHTD.to(self.k[layer].dtype))
        self.v[layer].scatter_(2, idx_BHTD, v_BHTD.to(self.v[layer].dtype))
        return self.k[layer], self.v[layer]

    def move(self, src_BT: torch.Tensor, dst_BT: torch.Tensor) -> None:
        """Copy every layer's entries at slots ``src_BT`` to slots ``dst_BT`` (same row; the
        sources are read before anything is written)."""
        B, H, _, D = self.k[0].shape
        src, dst = (x[:, None, :, None].expand(B, H, x.shape[1], D) for x in (src_BT, dst_BT))
        for buf in (*self.k, *self.v):
            buf.scatter_(2, dst, buf.gather(2, src))

    def commit(self, num_B: torch.Tensor) -> None:
        """Mark the first ``num_B`` tokens of the block just written as valid."""
        self.lens_B += num_B.to(torch.int32)

    def rollback(self, lens_B: torch.Tensor) -> None:
        """Return every row to an earlier fill length (one assignment; data is left alone)."""
        self.lens_B.copy_(lens_B)

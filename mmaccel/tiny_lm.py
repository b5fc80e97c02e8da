"""A small Llama-style causal LM implementing the ``CausalLM`` protocol.

Owns: the reference implementation of the protocol (explicit tokens, positions, slots, cache
and mask; RoPE indexed by position, K/V written at slots) used by the tests and as the
template that model families follow.

Must never: keep hidden state between calls or build its own mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.cache import StaticKVCache


@dataclass(frozen=True)
class TinyLMConfig:
    vocab_size: int = 32
    dim: int = 32
    n_layers: int = 2
    n_heads: int = 2
    max_seq_len: int = 256
    rope_base: float = 10000.0
    grid_width: int | None = None


def rope_table(positions: int, head_dim: int, base: float) -> torch.Tensor:
    """cos/sin table ``[positions, head_dim // 2, 2]`` for rotary embeddings."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), inv_freq)
    return torch.stack([angles.cos(), angles.sin()], dim=-1).float()


def apply_rope(x_BHTD: torch.Tensor, rope_BT_D2: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) by the angle of each token's position."""
    x = x_BHTD.float().unflatten(-1, (-1, 2))
    cos, sin = rope_BT_D2[:, None, :, :, 0], rope_BT_D2[:, None, :, :, 1]
    out = torch.stack([x[..., 0] * cos - x[..., 1] * sin, x[..., 0] * sin + x[..., 1] * cos], dim=-1)
    return out.flatten(-2).type_as(x_BHTD)


class _Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads = layer, cfg.n_heads
        self.attn_norm = nn.RMSNorm(cfg.dim)
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.ffn_norm = nn.RMSNorm(cfg.dim)
        self.w1 = nn.Linear(cfg.dim, 4 * cfg.dim, bias=False)
        self.w2 = nn.Linear(4 * cfg.dim, cfg.dim, bias=False)

    def forward(self, x_BTC, rope, cache: StaticKVCache, slots_BT, mask_B1TS):
        B, T, C = x_BTC.shape
        q, k, v = self.wqkv(self.attn_norm(x_BTC)).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        k_all, v_all = cache.update(self.layer, k, v, slots_BT)
        y = F.scaled_dot_product_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), attn_mask=mask_B1TS)
        x_BTC = x_BTC + self.wo(y.transpose(1, 2).reshape(B, T, C))
        return x_BTC + self.w2(F.gelu(self.w1(self.ffn_norm(x_BTC))))


class TinyLM(nn.Module):
    """Llama-like decoder (RMSNorm, RoPE, GELU MLP) speaking the engine's protocol."""

    family = "tiny-lm"

    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.max_seq_len, self.grid_width = cfg.vocab_size, cfg.max_seq_len, cfg.grid_width
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(_Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.register_buffer(
            "rope", rope_table(cfg.max_seq_len, cfg.dim // cfg.n_heads, cfg.rope_base), persistent=False
        )

    def new_cache(self, batch: int, capacity: int) -> StaticKVCache:
        p = self.head.weight
        head_dim = self.cfg.dim // self.cfg.n_heads
        return StaticKVCache(
            self.cfg.n_layers, batch, self.cfg.n_heads, capacity, head_dim, p.dtype, p.device
        )

    def forward(self, tokens_BT, pos_BT, cache, slots_BT, mask_BTS):
        rope = self.rope[pos_BT.clamp(0, self.max_seq_len - 1)]
        x_BTC = self.embed(tokens_BT)
        for block in self.blocks:
            x_BTC = block(x_BTC, rope, cache, slots_BT, mask_BTS[:, None])
        return self.head(self.norm(x_BTC)).float()

    def full_logits(self, tokens_BT: torch.Tensor) -> torch.Tensor:
        """Logits of a whole sequence without a persistent cache (reference for tests)."""
        B, T = tokens_BT.shape
        cache = self.new_cache(B, T)
        pos_BT = torch.arange(T, device=tokens_BT.device).expand(B, T)
        return self.forward(tokens_BT, pos_BT, cache, cache.slots(T), cache.attn_mask(T))

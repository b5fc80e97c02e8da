"""Convolutional encoder and decoder of the VAR VQ-VAE (the latent-diffusion "vq-f16" design
used by FoundationVision/VAR ``models/basic_vae.py``), written so official weights load key
for key.

Owns: ``Encoder`` (image ``[B, in_channels, H, W]`` -> latent ``[B, z_channels, H/2^n, W/2^n]``)
and ``Decoder`` (the reverse), with their ResNet blocks, single-head self-attention blocks and
2x resamplers. Layout, as official: GroupNorm eps 1e-6, SiLU, downsampling by a stride-2 conv
after zero padding one pixel right/bottom, upsampling by nearest 2x then a 3x3 conv, attention
only at the lowest resolution (``using_sa``) and in the middle (``using_mid_sa``). The
decoder's ``up`` list is indexed by resolution level (``up[0]`` is the finest), though it runs
from the coarsest.

Must never: quantize (``vqvae.py`` does) or hold anything but weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.image_ar.var.config import VQVAEConfig


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """``shortcut(x) + conv2(drop(silu(norm2(conv1(silu(norm1(x)))))))``; 1x1 shortcut iff widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, 1, 0) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x_BCHW) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels, fused 1x1 ``qkv`` conv (rows q | k | v)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, 1, 0)
        self.proj_out = nn.Conv2d(channels, channels, 1, 1, 0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        qkv_B3CN = self.qkv(self.norm(x_BCHW)).reshape(B, 3, C, H * W)
        q_BNC, k_BNC, v_BNC = (t.transpose(1, 2) for t in qkv_B3CN.unbind(1))
        # default SDPA scale 1/sqrt(C) is the official w_ratio
        h_BNC = F.scaled_dot_product_attention(q_BNC, k_BNC, v_BNC)
        return x_BCHW + self.proj_out(h_BNC.transpose(1, 2).reshape(B, C, H, W))


class Downsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution: ``block`` and ``attn`` lists plus an optional resampler (official names)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)


class _Mid(nn.Module):
    def __init__(self, channels: int, cfg: VQVAEConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        self.block_1 = ResnetBlock(channels, channels, cfg.dropout, g)
        self.attn_1 = AttnBlock(channels, g) if cfg.using_mid_sa else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, cfg.dropout, g)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _run_level(level: _Level, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """Image ``[B, in_channels, H, W]`` in [-1, 1] -> latent ``[B, z_channels, H / d, W / d]``."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        ch, mult, g = cfg.ch, cfg.ch_mult, cfg.norm_groups
        n = len(mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = ch
        for i in range(n):
            block_out = ch * mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if i == n - 1 and cfg.using_sa:
                    attns.append(AttnBlock(block_in, g))
            level = _Level(blocks, attns)
            if i != n - 1:
                level.downsample = Downsample2x(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in, cfg)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_BCHW)
        for i, level in enumerate(self.down):
            h = _run_level(level, h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent ``[B, z_channels, h, w]`` -> image ``[B, in_channels, h * d, w * d]`` (not clamped)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        ch, mult, g = cfg.ch, cfg.ch_mult, cfg.norm_groups
        n = len(mult)
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, cfg)
        levels: list[_Level] = []
        for i in reversed(range(n)):  # built coarse to fine, stored fine to coarse
            block_out = ch * mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if i == n - 1 and cfg.using_sa:
                    attns.append(AttnBlock(block_in, g))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample2x(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, 3, 1, 1)

    def forward(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BCHW))
        for i in reversed(range(len(self.up))):
            h = _run_level(self.up[i], h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

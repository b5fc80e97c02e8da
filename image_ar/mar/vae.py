"""The KL-regularised autoencoder MAR generates in (Li et al. 2024, "Autoregressive Image
Generation without Vector Quantization", Sec. 5: the "KL-16" tokenizer of LDM, Rombach et al.
2022), written so the official LTH14/mar ``models/vae.py`` checkpoints (``kl16.ckpt``) load key
for key.

Owns: ``KLVAEConfig`` and the ``KL16`` preset (the official ``AutoencoderKL(embed_dim=16,
ch_mult=(1, 1, 2, 2, 4))``), ``AutoencoderKL`` (``encoder`` -> ``quant_conv`` -> posterior;
``post_quant_conv`` -> ``decoder``), ``DiagonalGaussianDistribution`` and ``load_official_kl``.

Layout, as official (LDM's): GroupNorm eps 1e-6 (32 groups officially; ``norm_groups`` lets a
narrow model use fewer), SiLU, ResNet blocks with a 1x1 ``nin_shortcut`` iff widths differ and
no time embedding, downsampling by a stride-2 conv after zero padding right/bottom, nearest 2x
upsampling then a 3x3 conv. Attention is single-head with *separate* 1x1 ``q``, ``k``, ``v``
convs (VAR's ``vae_blocks.AttnBlock`` fuses them into ``qkv``, so only its ResNet blocks and
resamplers are reused here), after every block of a level whose resolution is in
``attn_resolutions`` (encoder; the official decoder gets none, ``decoder_attn_resolutions``)
and always in the middle. The encoder emits ``2 * embed_dim`` channels (mean | logvar).

Must never: scale latents (MAR's trainer multiplies by its latent scale, 0.2325 for kl16),
load non-strictly, unpickle arbitrary objects, or print.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmaccel.image_ar.checkpoint import check_state_dict, read_checkpoint
from mmaccel.image_ar.var.vae_blocks import Downsample2x, ResnetBlock, Upsample2x


@dataclass(frozen=True)
class KLVAEConfig:
    """Constructor arguments of the official ``Encoder`` / ``Decoder`` / ``AutoencoderKL``.

    ``embed_dim`` is both ``z_channels`` and the latent width (the official passes one value to
    both); latents are ``[B, embed_dim, resolution / 2^(len(ch_mult) - 1), ...]``."""

    embed_dim: int = 16
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    decoder_attn_resolutions: tuple[int, ...] = ()
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    norm_groups: int = 32
    use_variational: bool = True

    @property
    def stride(self) -> int:
        """Pixels per latent cell along a side (MAR's ``vae_stride``)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.stride


KL16 = KLVAEConfig()  # official kl16: AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class AttnBlock(nn.Module):
    """``x + proj_out(softmax(q k^T / sqrt(C)) v)`` over the pixels, separate 1x1 ``q, k, v``."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        h_BCHW = self.norm(x_BCHW)
        q_BNC, k_BNC, v_BNC = (
            conv(h_BCHW).reshape(B, C, H * W).transpose(1, 2) for conv in (self.q, self.k, self.v)
        )
        o_BNC = F.scaled_dot_product_attention(q_BNC, k_BNC, v_BNC)  # default scale 1/sqrt(C), as official
        return x_BCHW + self.proj_out(o_BNC.transpose(1, 2).reshape(B, C, H, W))


class _Level(nn.Module):
    """One resolution: official ``block`` / ``attn`` lists (+ ``downsample`` / ``upsample``)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, cfg: KLVAEConfig) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, cfg.dropout, cfg.norm_groups)
        self.attn_1 = AttnBlock(channels, cfg.norm_groups)
        self.block_2 = ResnetBlock(channels, channels, cfg.dropout, cfg.norm_groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image ``[B, in_channels, R, R]`` in [-1, 1] -> moments ``[B, 2 * embed_dim, R / s, R / s]``."""

    def __init__(self, cfg: KLVAEConfig) -> None:
        super().__init__()
        ch, mult, g, n = cfg.ch, cfg.ch_mult, cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in, res = ch, cfg.resolution
        for i in range(n):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * mult[i], cfg.dropout, g))
                block_in = ch * mult[i]
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(block_in, g))
            level = _Level(blocks, attns)
            if i != n - 1:
                level.downsample = Downsample2x(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in, cfg)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.embed_dim, 3, 1, 1)  # double_z

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_BCHW)
        for i, level in enumerate(self.down):
            h = level.run(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latent ``[B, embed_dim, r, r]`` -> image ``[B, out_ch, r * s, r * s]`` (not clamped). ``up`` is
    indexed by level (``up[0]`` the finest) and run from the coarsest, as official."""

    def __init__(self, cfg: KLVAEConfig) -> None:
        super().__init__()
        ch, mult, g, n = cfg.ch, cfg.ch_mult, cfg.norm_groups, len(cfg.ch_mult)
        block_in, res = ch * mult[-1], cfg.latent_size
        self.conv_in = nn.Conv2d(cfg.embed_dim, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, cfg)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * mult[i], cfg.dropout, g))
                block_in = ch * mult[i]
                if res in cfg.decoder_attn_resolutions:
                    attns.append(AttnBlock(block_in, g))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample2x(block_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, 1, 1)

    def forward(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BCHW))
        for i in reversed(range(len(self.up))):
            h = self.up[i].run(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussianDistribution:
    """``N(mean, exp(logvar))`` per latent element from moments ``[B, 2C, h, w]`` (mean | logvar),
    logvar clamped to [-30, 20] as official."""

    def __init__(self, moments_B2Chw: torch.Tensor) -> None:
        self.mean, logvar = moments_B2Chw.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """``KL(q || N(0, I))`` summed over ``[C, h, w]``: ``0.5 * sum(mean^2 + var - 1 - logvar)``, ``[B]``."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class AutoencoderKL(nn.Module):
    """The official ``AutoencoderKL``: ``encode`` -> posterior, ``decode`` latent -> image."""

    def __init__(self, cfg: KLVAEConfig = KL16) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        mult = 2 if cfg.use_variational else 1
        self.quant_conv = nn.Conv2d(2 * cfg.embed_dim, mult * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)

    def encode(self, x_BCHW: torch.Tensor) -> DiagonalGaussianDistribution:
        moments = self.quant_conv(self.encoder(x_BCHW))
        if not self.cfg.use_variational:  # official: unit logvar (std e^0.5), as its code does
            moments = torch.cat((moments, torch.ones_like(moments)), 1)
        return DiagonalGaussianDistribution(moments)

    def decode(self, z_BChw: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_BChw))


def load_official_kl(
    src: str | os.PathLike | Mapping[str, torch.Tensor],
    cfg: KLVAEConfig = KL16,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> AutoencoderKL:
    """An ``AutoencoderKL`` (eval mode) from an official checkpoint (a torch pickle whose
    ``"model"`` holds the state dict, read weights-only; or a raw state dict / safetensors file).

    Raises ValueError naming every missing, unexpected or misshapen key (the official loads with
    ``strict=False`` and prints them; silently random layers are worse here).
    """
    obj = src if isinstance(src, Mapping) else read_checkpoint(src)
    source = "state dict" if isinstance(src, Mapping) else f"checkpoint {os.fspath(src)}"
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} holds no state dict of tensors")
    with torch.device("meta"):
        model = AutoencoderKL(cfg)
    check_state_dict(model, obj, source)
    model.load_state_dict({k: v.to(dtype) for k, v in obj.items()}, assign=True)
    return model.to(device=device).eval()

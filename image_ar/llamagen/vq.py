"""LlamaGen VQ image tokenizer (VQ-16 / VQ-8; taming-style conv encoder/decoder with an
l2-normalised codebook), written here so official ``vq_ds16_*.pt`` weights load key for key.

Owns: ``VQConfig`` and ``VQ_PRESETS`` (official sizes plus the tiny one trained here),
the encoder, decoder and vector quantizer, ``encode`` (image -> raster code ids) and
``decode_codes`` (code ids -> image). Images are ``[B, 3, H, W]`` in [-1, 1]; the grid is
``H / 2 ** (len(encoder_ch_mult) - 1)`` per side; ids are row-major over that grid.

Nearest code (official): with ``codebook_l2_norm`` both the latent vector and every codebook
row are l2-normalised before ``argmin |z|^2 + |e|^2 - 2 z.e``, and decoding reads the
normalised rows.

Must never: train anything itself (no losses here) or update ``codebook_used`` outside
training code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VQConfig:
    """Sizes of a LlamaGen VQ model.

    Field names follow the official ``ModelArgs`` (``vq_model.py``); ``ch``,
    ``num_res_blocks`` and ``norm_groups`` are official constructor defaults of
    ``Encoder``/``Decoder``/``Normalize`` (128, 2, 32) made configurable for tiny models.
    ``codebook_show_usage`` adds the official ``quantize.codebook_used`` buffer (65536 rows).
    """

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    dropout: float = 0.0
    ch: int = 128
    num_res_blocks: int = 2
    norm_groups: int = 32
    in_channels: int = 3
    out_channels: int = 3

    @property
    def downsample(self) -> int:
        """Pixels per code along each side."""
        return 2 ** (len(self.encoder_ch_mult) - 1)


VQ_PRESETS: dict[str, VQConfig] = {
    "VQ-16": VQConfig(),
    "VQ-8": VQConfig(encoder_ch_mult=(1, 2, 2, 4), decoder_ch_mult=(1, 2, 2, 4)),
    # 64x64 Shapes-T2I images -> 16x16 codes (downsample 4); trained here, not official
    "VQ-tiny": VQConfig(
        codebook_size=1024,
        ch=32,
        encoder_ch_mult=(1, 2, 2),
        decoder_ch_mult=(1, 2, 2),
        num_res_blocks=1,
        z_channels=64,
    ),
}


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice plus a skip; a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, c_in: int, c_out: int, cfg: VQConfig) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.norm_groups, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(cfg.norm_groups, c_out, eps=1e-6)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x_BCHW)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = self.nin_shortcut(x_BCHW) if hasattr(self, "nin_shortcut") else x_BCHW
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with 1x1-conv q, k, v and output."""

    def __init__(self, c: int, cfg: VQConfig) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_groups, c, eps=1e-6)
        self.q, self.k, self.v = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        h = self.norm(x_BCHW)
        q_B1NC, k_B1NC, v_B1NC = (m(h).flatten(2).transpose(1, 2)[:, None] for m in (self.q, self.k, self.v))
        y_B1NC = F.scaled_dot_product_attention(q_B1NC, k_B1NC, v_B1NC)  # scale C ** -0.5, as official
        return x_BCHW + self.proj_out(y_B1NC[:, 0].transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero padding one pixel on the right and bottom only."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution: ``res`` blocks, ``attn`` after each (deepest level only), resampler."""

    def __init__(
        self, c_in: int, c_out: int, n_res: int, with_attn: bool, resample: str | None, cfg: VQConfig
    ) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(c_in if j == 0 else c_out, c_out, cfg) for j in range(n_res))
        self.attn = nn.ModuleList(AttnBlock(c_out, cfg) for _ in range(n_res if with_attn else 0))
        if resample == "down":
            self.downsample = Downsample(c_out)
        elif resample == "up":
            self.upsample = Upsample(c_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j, res in enumerate(self.res):
            h = res(h)
            if len(self.attn):
                h = self.attn[j](h)
        if hasattr(self, "downsample"):
            h = self.downsample(h)
        if hasattr(self, "upsample"):
            h = self.upsample(h)
        return h


def _mid(c: int, cfg: VQConfig) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c, cfg), AttnBlock(c, cfg), ResnetBlock(c, c, cfg)])


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        mult, n = cfg.encoder_ch_mult, len(cfg.encoder_ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        widths = [cfg.ch] + [cfg.ch * m for m in mult]
        self.conv_blocks = nn.ModuleList(
            _Level(
                widths[i], widths[i + 1], cfg.num_res_blocks, i == n - 1, None if i == n - 1 else "down", cfg
            )
            for i in range(n)
        )
        self.mid = _mid(widths[-1], cfg)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_BCHW)
        for block in [*self.conv_blocks, *self.mid]:
            h = block(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        mult, n = cfg.decoder_ch_mult, len(cfg.decoder_ch_mult)
        c = cfg.ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _mid(c, cfg)
        levels = []
        for i_level in reversed(range(n)):  # deepest first; one more res block than the encoder
            c_out = cfg.ch * mult[i_level]
            levels.append(
                _Level(c, c_out, cfg.num_res_blocks + 1, i_level == n - 1, "up" if i_level else None, cfg)
            )
            c = c_out
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, c, eps=1e-6)
        self.conv_out = nn.Conv2d(c, cfg.out_channels, 3, padding=1)

    def forward(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z_BCHW)
        for block in [*self.mid, *self.conv_blocks]:
            h = block(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Codebook ``embedding`` (+ the official ``codebook_used`` buffer when enabled)."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.l2_norm = cfg.codebook_l2_norm
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
            if self.l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        if cfg.codebook_show_usage:
            self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self) -> torch.Tensor:
        """The rows codes decode to ``[K, D]`` (l2-normalised when configured)."""
        w_KD = self.embedding.weight
        return F.normalize(w_KD, dim=-1) if self.l2_norm else w_KD

    def nearest(self, z_BDHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Code ids ``[B, H*W]`` (row-major) and the quantised latent ``[B, D, H, W]``.

        The latent carries a straight-through gradient (``z + (z_q - z).detach()``).
        """
        B, D, H, W = z_BDHW.shape
        z_ND = z_BDHW.permute(0, 2, 3, 1).reshape(-1, D)
        if self.l2_norm:
            z_ND = F.normalize(z_ND, dim=-1)
        e_KD = self.codebook()
        dist_NK = z_ND.pow(2).sum(1, keepdim=True) + e_KD.pow(2).sum(1) - 2 * z_ND @ e_KD.t()
        idx_N = dist_NK.argmin(dim=1)
        zq_ND = z_ND + (e_KD[idx_N] - z_ND).detach()
        return idx_N.view(B, H * W), zq_ND.view(B, H, W, D).permute(0, 3, 1, 2)

    def lookup(self, indices_BN: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Latent ``[B, D, h, w]`` of row-major code ids ``[B, h*w]``."""
        h, w = grid
        return self.codebook()[indices_BN].view(indices_BN.shape[0], h, w, -1).permute(0, 3, 1, 2)


class VQModel(nn.Module):
    """Encoder -> ``quant_conv`` -> quantizer -> ``post_quant_conv`` -> decoder."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    def encode_latent(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latent ``[B, codebook_embed_dim, h, w]``."""
        return self.quant_conv(self.encoder(img_BCHW))

    def encode(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """Row-major code ids ``[B, h*w]`` of images in [-1, 1]."""
        return self.quantize.nearest(self.encode_latent(img_BCHW))[0]

    def decode_latent(self, zq_BDHW: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` (about [-1, 1]) from a quantised latent."""
        return self.decoder(self.post_quant_conv(zq_BDHW))

    def decode_codes(self, indices_BN: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Images from code ids ``[B, h*w]``; ``grid=(h, w)`` defaults to a square."""
        if grid is None:
            side = round(indices_BN.shape[1] ** 0.5)
            grid = (side, side)
        if grid[0] * grid[1] != indices_BN.shape[1]:
            raise ValueError(f"grid {grid} does not hold {indices_BN.shape[1]} codes")
        return self.decode_latent(
            self.quantize.lookup(indices_BN.long(), grid).to(self.post_quant_conv.weight.dtype)
        )

    def forward(self, img_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, code ids and the pre-quantisation latent (for training code)."""
        z_BDHW = self.encode_latent(img_BCHW)
        idx_BN, zq_BDHW = self.quantize.nearest(z_BDHW)
        return self.decode_latent(zq_BDHW), idx_BN, z_BDHW

"""VAR and multi-scale VQ-VAE configurations and the official model sizes, as data.

Owns: ``VQVAEConfig`` (the constructor arguments of the official ``VQVAE`` / ``VectorQuantizer2``
and the ``ddconfig`` it hard-codes), ``VARConfig`` (the official ``VAR`` constructor as called
by ``build_vae_var``), the derived sizes every module reads (token counts per scale, the
sequence length ``L``), ``VQVAE_PRESETS``, ``VAR_PRESETS`` and ``check_compatible``.

Source: FoundationVision/VAR ``models/__init__.py`` (``build_vae_var``), ``models/vqvae.py``,
``models/quant.py``, ``models/var.py``; the 512px sizes from ``utils/arg_util.py`` (``--pn=512``)
and the README's d36-s training line (``--saln=1``).

Must never: import torch modules or build a model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PATCH_NUMS_256: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512: tuple[int, ...] = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def _check_patch_nums(patch_nums: tuple[int, ...], owner: str) -> None:
    if len(patch_nums) < 2:
        # the official CFG ramp and Phi choice divide by (number of scales - 1)
        raise ValueError(f"{owner}.patch_nums needs at least 2 scales, got {patch_nums}")
    if any(b <= a for a, b in zip(patch_nums[:-1], patch_nums[1:], strict=True)) or patch_nums[0] < 1:
        raise ValueError(f"{owner}.patch_nums must be positive and strictly increasing, got {patch_nums}")


@dataclass(frozen=True)
class VQVAEConfig:
    """Sizes of a VAR multi-scale VQ-VAE.

    Args:
        vocab_size: codebook rows (official ``V``).
        z_channels: latent / code width (official ``Cvae``).
        ch, ch_mult, num_res_blocks, dropout, in_channels, using_sa, using_mid_sa: the
            encoder/decoder ``ddconfig`` (official: hard-coded ``ch_mult=(1, 1, 2, 2, 4)``,
            2 res blocks, 3 input channels, self-attention at the lowest resolution and in the
            middle).
        norm_groups: GroupNorm groups (official: fixed 32); configurable so tiny test models
            with fewer than 32 channels can be built.
        beta: commitment-loss weight (training only).
        using_znorm: nearest code by cosine instead of Euclidean distance.
        quant_conv_ks: kernel of ``quant_conv`` / ``post_quant_conv``.
        quant_resi: Phi mix ratio r: ``phi(h) = (1 - r) h + r conv(h)``; ``|r| <= 1e-6`` means
            identity (no Phi weights at all).
        share_quant_resi: 0 = one Phi per scale, 1 = one shared Phi, k > 1 = k Phi layers
            picked by the scale's position in [0, 1] (official default 4).
        default_qresi_counts: Phi layers when ``share_quant_resi == 0`` (0 = one per scale).
        patch_nums: token-map side per scale, small to large (official ``v_patch_nums``);
            the last one is the latent grid side.
    """

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    dropout: float = 0.0
    in_channels: int = 3
    using_sa: bool = True
    using_mid_sa: bool = True
    norm_groups: int = 32
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    default_qresi_counts: int = 0
    patch_nums: tuple[int, ...] = PATCH_NUMS_256

    def __post_init__(self) -> None:
        _check_patch_nums(self.patch_nums, "VQVAEConfig")

    @property
    def Cvae(self) -> int:
        return self.z_channels

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        """Image side the quantizer's last scale covers."""
        return self.patch_nums[-1] * self.downsample


@dataclass(frozen=True)
class VARConfig:
    """Sizes of a VAR transformer.

    Args:
        depth, embed_dim, num_heads, mlp_ratio: blocks, width C (= condition width D), heads,
            FFN width ``round(C * mlp_ratio)``.
        num_classes: classes; the class table has one more row, the null class
            ``num_classes`` used for CFG and label dropout.
        vocab_size, Cvae: the VQ-VAE's codebook rows and code width (must match the VQ-VAE).
        patch_nums: scales, small to large (must equal the VQ-VAE's).
        norm_eps: LayerNorm epsilon.
        shared_aln: one AdaLN projection shared by all blocks (``shared_ada_lin``) plus a
            learned per-block offset ``ada_gss``, instead of an ``ada_lin`` per block.
        attn_l2_norm: l2-normalised queries and keys with a learned per-head scale
            (``scale_mul_1H11``, clamped at log 100); otherwise scale ``0.25 / sqrt(head_dim)``.
        cond_drop_rate: label dropout to the null class in training (CFG).
        drop_path_rate: stochastic depth at the last block (training only).
    """

    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    vocab_size: int = 4096
    Cvae: int = 32
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True
    cond_drop_rate: float = 0.1
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        _check_patch_nums(self.patch_nums, "VARConfig")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def L(self) -> int:
        """Tokens over all scales (680 for the 256px scales)."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def first_l(self) -> int:
        """Tokens of the first scale (start-of-sequence positions)."""
        return self.patch_nums[0] ** 2

    @property
    def begin_ends(self) -> tuple[tuple[int, int], ...]:
        """``(begin, end)`` sequence positions of each scale."""
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return tuple(out)


def var_preset(depth: int, **overrides) -> VARConfig:
    """The ``build_vae_var`` sizes for a depth: width 64 * depth, heads = depth,
    drop path 0.1 * depth / 24, l2-normalised attention, 1000 classes, label dropout 0.1."""
    cfg = VARConfig(depth=depth, embed_dim=64 * depth, num_heads=depth, drop_path_rate=0.1 * depth / 24)
    return replace(cfg, **overrides)


VQVAE_PRESETS: dict[str, VQVAEConfig] = {
    # vae_ch160v4096z32.pth, as built by build_vae_var for 256px
    "vae_ch160v4096z32": VQVAEConfig(),
    # the same weights quantizing with the 512px scales (VAR-d36-s)
    "vae_ch160v4096z32-512": VQVAEConfig(patch_nums=PATCH_NUMS_512),
}

VAR_PRESETS: dict[str, VARConfig] = {
    "d16": var_preset(16),
    "d20": var_preset(20),
    "d24": var_preset(24),
    "d30": var_preset(30),
    # var_d36.pth: 512px scales and shared AdaLN (README "d36-s"); its file was not inspected
    "d36": var_preset(36, shared_aln=True, patch_nums=PATCH_NUMS_512),
}


def check_compatible(var_cfg: VARConfig, vae_cfg: VQVAEConfig) -> None:
    """Raise ``ValueError`` if the transformer cannot run on this VQ-VAE's tokens.

    The scales, the vocabulary and the code width must agree.
    """
    problems = []
    if tuple(var_cfg.patch_nums) != tuple(vae_cfg.patch_nums):
        problems.append(f"patch_nums: VAR {tuple(var_cfg.patch_nums)} vs VQ-VAE {tuple(vae_cfg.patch_nums)}")
    if var_cfg.vocab_size != vae_cfg.vocab_size:
        problems.append(f"vocab_size: VAR {var_cfg.vocab_size} vs VQ-VAE {vae_cfg.vocab_size}")
    if var_cfg.Cvae != vae_cfg.z_channels:
        problems.append(f"code width: VAR Cvae {var_cfg.Cvae} vs VQ-VAE z_channels {vae_cfg.z_channels}")
    if problems:
        raise ValueError("VAR and VQ-VAE configs do not match: " + "; ".join(problems))

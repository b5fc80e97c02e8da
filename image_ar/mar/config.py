"""MAR configuration and the official model sizes, as data.

Owns: ``MARConfig`` (the constructor arguments of the official ``MAR``, with the LayerNorm
epsilon of its ``mar_*`` presets as a number), ``MAR_PRESETS`` (the released MAR-B/L/H: the
transformer sizes of ``mar_base`` / ``mar_large`` / ``mar_huge`` and the Diffusion Loss MLP
sizes their README evaluation commands pass) and the derived sizes (``seq_len``,
``token_embed_dim``).

Source: LTH14/mar ``models/mar.py`` (``MAR.__init__``, ``mar_base`` / ``mar_large`` /
``mar_huge``), ``main_mar.py`` (how the model is built from arguments) and ``README.md``.

Must never: import torch modules or build a model (``model.build_mar`` does).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class MARConfig:
    """Sizes and training knobs of a MAR model (official argument names and defaults).

    Args:
        img_size, vae_stride, patch_size: the image side, pixels per VAE latent cell and latent
            cells per token side; the token grid is ``img_size // vae_stride // patch_size``
            on each side.
        encoder_embed_dim, encoder_depth, encoder_num_heads: the MAE encoder.
        decoder_embed_dim, decoder_depth, decoder_num_heads: the MAE decoder.
        mlp_ratio: hidden width of every block's MLP over its width.
        norm_eps: epsilon of the blocks' and final LayerNorms (the official presets pass
            ``partial(nn.LayerNorm, eps=1e-6)``; ``z_proj_ln`` always uses 1e-6).
        vae_embed_dim: channels of a VAE latent cell.
        mask_ratio_min: lower end of the training mask ratio, drawn from a normal centred at
            1.0 with std 0.25 truncated to ``[mask_ratio_min, 1]``.
        label_drop_prob: training probability of replacing the class embedding by
            ``fake_latent`` (the unconditional embedding used by CFG).
        class_num: number of classes.
        attn_dropout, proj_dropout: dropout on attention weights and after each projection.
        buffer_size: leading positions holding the class embedding.
        diffloss_d, diffloss_w: residual blocks and width of the Diffusion Loss MLP.
        num_sampling_steps: respacing of the 1000-step diffusion for sampling, official string
            form (``"100"``; comma-separated section counts allowed).
        diffusion_batch_mul: how many noise draws per token in the training loss.
        grad_checkpointing: recompute block activations in the backward pass.
    """

    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    encoder_embed_dim: int = 1024
    encoder_depth: int = 16
    encoder_num_heads: int = 16
    decoder_embed_dim: int = 1024
    decoder_depth: int = 16
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    vae_embed_dim: int = 16
    mask_ratio_min: float = 0.7
    label_drop_prob: float = 0.1
    class_num: int = 1000
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    buffer_size: int = 64
    diffloss_d: int = 3
    diffloss_w: int = 1024
    num_sampling_steps: str = "100"
    diffusion_batch_mul: int = 4
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.img_size % (self.vae_stride * self.patch_size):
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of vae_stride * patch_size "
                f"({self.vae_stride} * {self.patch_size})"
            )
        for width, heads, part in (
            (self.encoder_embed_dim, self.encoder_num_heads, "encoder"),
            (self.decoder_embed_dim, self.decoder_num_heads, "decoder"),
        ):
            if width % heads:
                raise ValueError(f"{part}_embed_dim {width} is not a multiple of {part}_num_heads {heads}")
        if not 0.0 <= self.mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must lie in [0, 1], got {self.mask_ratio_min}")

    @property
    def seq_h(self) -> int:
        """Token rows (= token columns)."""
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_len(self) -> int:
        """Tokens per image."""
        return self.seq_h * self.seq_h

    @property
    def token_embed_dim(self) -> int:
        """Channels of one token: a ``patch_size x patch_size`` block of latent cells."""
        return self.vae_embed_dim * self.patch_size**2

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (``from_dict`` inverts it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MARConfig:
        """A config from ``to_dict`` output; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MARConfig fields: {', '.join(unknown)}")
        return cls(**{k: str(v) if k == "num_sampling_steps" else v for k, v in d.items()})


def _preset(width: int, depth: int, heads: int, diffloss_d: int, diffloss_w: int) -> MARConfig:
    return MARConfig(
        encoder_embed_dim=width, encoder_depth=depth, encoder_num_heads=heads,
        decoder_embed_dim=width, decoder_depth=depth, decoder_num_heads=heads,
        diffloss_d=diffloss_d, diffloss_w=diffloss_w,
    )  # fmt: skip


MAR_PRESETS: dict[str, MARConfig] = {
    # mar_base / mar_large / mar_huge transformer sizes; the Diffusion Loss MLP of the released
    # checkpoints (README: MAR-B 6 x 1024, MAR-L 8 x 1280, MAR-H 12 x 1536)
    "mar_base": _preset(768, 12, 12, 6, 1024),
    "mar_large": _preset(1024, 16, 16, 8, 1280),
    "mar_huge": _preset(1280, 20, 16, 12, 1536),
}


def mar_preset(name: str, **overrides: Any) -> MARConfig:
    """A released model's config with some fields replaced (e.g. ``num_sampling_steps``)."""
    if name not in MAR_PRESETS:
        raise ValueError(f"unknown MAR preset {name!r}; known: {', '.join(MAR_PRESETS)}")
    return replace(MAR_PRESETS[name], **overrides)

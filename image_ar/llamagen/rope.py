"""2D rotary position embedding of LlamaGen, computed from positions on the fly.

Owns: the angles of the official ``precompute_freqs_cis_2d`` table and their application
with the official pairing. The table is never stored: it is cheap to compute from
``pos_BT``, and computing it in float32 each call keeps it exact whatever dtype the model is
cast to (the official table is a plain float32 attribute, not a buffer).

The official table, for head dim D, grid G and L condition slots:
    half = D // 2;  f_i = 1 / base ** (2 i / half)  for i in [0, D // 4)
    image token n = r * G + c (row r, column c) has angles  [r f_0 .. r f_{D/4-1}, c f_0 .. c f_{D/4-1}]
    rows stored as (cos, sin);  the L condition rows are all ZERO (cos = 0 and sin = 0),
    so condition queries and keys are multiplied by zero. That is what official checkpoints
    were trained with; we reproduce it rather than "fix" it.
Pairing: pair j rotates (x[2j], x[2j+1]) by angle j (interleaved, complex-number style).

Must never: cache tables on modules or depend on the model's dtype.
"""

from __future__ import annotations

import torch

from mmaccel.image_ar.llamagen.config import GPTConfig


def rope_frequencies(head_dim: int, base: float, device: torch.device | str | None = None) -> torch.Tensor:
    """The ``head_dim // 4`` float32 frequencies shared by the row and the column halves."""
    half = head_dim // 2
    exponents = torch.arange(0, half, 2, device=device)[: half // 2].float() / half
    return 1.0 / (base**exponents)


def rope_2d(pos_BT: torch.Tensor, cfg: GPTConfig) -> torch.Tensor:
    """(cos, sin) ``[B, T, head_dim // 2, 2]`` float32 for sequence positions ``pos_BT``.

    Positions ``< cls_token_num`` (condition slots) get zeros, as in the official table;
    positions past the grid are clamped to its last token (the official table would raise).
    """
    L, G = cfg.cls_token_num, cfg.grid_size
    freqs_F = rope_frequencies(cfg.head_dim, cfg.rope_base, pos_BT.device)
    idx_BT = (pos_BT.long() - L).clamp(0, cfg.block_size - 1)
    row_BT1 = (idx_BT // G).float()[..., None]
    col_BT1 = (idx_BT % G).float()[..., None]
    angles_BTP = torch.cat([row_BT1 * freqs_F, col_BT1 * freqs_F], dim=-1)
    cs_BTP2 = torch.stack([angles_BTP.cos(), angles_BTP.sin()], dim=-1)
    return cs_BTP2 * (pos_BT >= L)[..., None, None]


def rope_2d_table(cfg: GPTConfig) -> torch.Tensor:
    """The whole table ``[cls_token_num + block_size, head_dim // 2, 2]`` (as official)."""
    pos_1T = torch.arange(cfg.max_seq_len)[None]
    return rope_2d(pos_1T, cfg)[0]


def apply_rope_2d(x_BHTD: torch.Tensor, rope_BTP2: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` in float32 and cast back (official arithmetic)."""
    x_BHTP2 = x_BHTD.float().unflatten(-1, (-1, 2))
    x0, x1 = x_BHTP2[..., 0], x_BHTP2[..., 1]
    cos_B1TP, sin_B1TP = rope_BTP2[:, None, ..., 0], rope_BTP2[:, None, ..., 1]
    out_BHTP2 = torch.stack([x0 * cos_B1TP - x1 * sin_B1TP, x1 * cos_B1TP + x0 * sin_B1TP], dim=-1)
    return out_BHTP2.flatten(-2).type_as(x_BHTD)

"""What one Shapes-T2I training batch is made of, as functions of ``(seed, step)``.

Owns: the epoch-wise shuffled data order (``batch_indices``), the per-row draws of CFG dropout
(``cfg_drop``) and of cells-only rows (``cells_only``), and the per-token loss weights
(``object_weights``: object and reveal tokens). ``mmaccel.image_ar.train_t2i`` calls them every step;
a resumed run therefore takes the same batches as an uninterrupted one.

Must never: read test-split scenes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mmaccel.image_ar.shapes import object_token_mask, parse_caption, reveal_token_mask


def batch_indices(data_pos: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """Dataset rows for samples ``data_pos .. data_pos + batch - 1`` of the epoch-wise shuffled stream."""
    pos_B = torch.arange(data_pos, data_pos + batch)
    epoch_B, offset_B = pos_B // n, pos_B % n
    out_B = torch.empty(batch, dtype=torch.long)
    for epoch in epoch_B.unique().tolist():  # a batch spans at most a few epochs
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        here_B = epoch_B == epoch
        out_B[here_B] = perm[offset_B[here_B]]
    return out_B


def _row_draws(generator_seed: int, batch: int, p: float) -> torch.Tensor:
    """Bool ``[batch]``, each True with probability ``p``, from a generator seeded ``generator_seed``."""
    return torch.rand(batch, generator=torch.Generator().manual_seed(generator_seed)) < p


def cfg_drop(step: int, batch: int, p: float, seed: int) -> torch.Tensor:
    """Bool ``[batch]``: rows whose caption is replaced by the null caption at ``step``."""
    return _row_draws(seed * 7_919 + step + 1, batch, p)


def cells_only(step: int, batch: int, p: float, seed: int) -> torch.Tensor | None:
    """Bool ``[batch]``: rows that see their caption only through the cell map at ``step``
    (None when ``p`` is 0; drawn independently of ``cfg_drop``)."""
    return None if p == 0.0 else _row_draws(seed * 6_007 + step + 104_729, batch, p)


def object_weights(
    captions: Sequence[str], weight: float, grid: int, reveal_weight: float = 1.0, reveal_rows: int = 3
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """None when both weights are 1; else a function from item indices ``[B]`` to loss weights
    ``[B, grid * grid]``: ``weight`` where the token's patch holds an object pixel,
    ``reveal_weight`` on ``shapes.reveal_token_mask`` (the larger where both apply), 1
    elsewhere (the masks are made once, as bools; a batch's weights per step)."""
    if weight == 1.0 and reveal_weight == 1.0:
        return None
    for name, value in (("object_loss_weight", weight), ("reveal_loss_weight", reveal_weight)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    masks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for text in captions:
        if text not in masks:
            scene = parse_caption(text)
            masks[text] = (
                torch.from_numpy(object_token_mask(scene, grid)),
                torch.from_numpy(reveal_token_mask(scene, grid, reveal_rows)),
            )
    object_ND = torch.stack([masks[text][0] for text in captions])
    reveal_ND = torch.stack([masks[text][1] for text in captions])

    def weights_of(idx_B: torch.Tensor) -> torch.Tensor:
        w_BN = torch.ones(idx_B.shape[0], object_ND.shape[1])
        w_BN = torch.where(object_ND[idx_B], torch.maximum(w_BN, torch.tensor(weight)), w_BN)
        return torch.where(reveal_ND[idx_B], torch.maximum(w_BN, torch.tensor(reveal_weight)), w_BN)

    return weights_of

"""The learning-rate schedule and data order every trainer of ``image_ar`` shares.

Owns: ``lr_at`` (linear warm-up, then cosine decay) and ``batch_indices`` (an epoch-wise
shuffled order seeded by ``(seed, epoch)``), so a training resumed at any step sees the same
rates and batches as one that never stopped. Each takes the trainer's own config, read by
attribute (``lr``, ``warmup_steps``, ``steps``, ``min_lr_ratio``; ``batch_size``, ``seed``).

Must never: hold state, or draw from a global generator.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_at(step: int, cfg: Any) -> float:
    """Linear warm-up to ``cfg.lr`` over ``cfg.warmup_steps``, then cosine down to
    ``cfg.lr * cfg.min_lr_ratio`` at ``cfg.steps`` (held there after it)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def batch_indices(step: int, n: int, cfg: Any) -> torch.Tensor:
    """Rows (of ``n``) of global step ``step``: epoch ``e``'s order is a permutation seeded by
    ``(cfg.seed, e)``; the last partial batch of an epoch is dropped."""
    per_epoch = max(1, n // cfg.batch_size)
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    return order[i * cfg.batch_size : (i + 1) * cfg.batch_size]

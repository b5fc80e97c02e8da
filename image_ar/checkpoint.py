"""Crash-safe saving for training checkpoints and pre-tokenized datasets.

Owns: ``save_atomic``. A run killed mid-save (a session ending, an out-of-memory kill) must
leave the previous file intact, since every training script resumes from what it finds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through ``path`` + ``.tmp`` and a rename: never a half-written ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)

"""Crash-safe saving for training checkpoints and pre-tokenized datasets.

Owns: ``save_atomic`` and ``save_safetensors``. A run killed mid-save (a session ending, an
out-of-memory kill) must leave the previous file intact, since every training script resumes from
what it finds; exported weights must be readable by whoever the umask says may read them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through ``path`` + ``.tmp`` and a rename: never a half-written ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, then the mode the umask gives any other new file.

    ``save_file`` already writes through a temporary file and a rename (so it never leaves half a
    file), but that temporary file is created 0600 whatever the umask, so weights exported on a
    shared machine were unreadable to its other users; this gives them ``0666 & ~umask``.
    """
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata is not None else None)
    os.chmod(path, 0o666 & ~_umask())

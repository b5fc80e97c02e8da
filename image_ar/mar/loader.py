"""Load official MAR checkpoints (``pretrained_models/mar/mar_*/checkpoint-last.pth``) into
``MAR``.

Owns: reading a file (``.safetensors``, or a torch pickle with ``weights_only=True``) or taking
a mapping, choosing the weights inside it, stripping wrapper prefixes (``module.``,
``_orig_mod.``), checking names and shapes against the model with messages that name every
problem, and casting to the requested dtype.

The official ``misc.save_model`` writes ``{"model", "model_ema", "optimizer", "epoch",
"scaler", "args"}``; ``model_ema`` is a full state dict with the same keys as ``model`` (the
model's state dict with every parameter replaced by its EMA), and the official evaluation
samples with it. ``args`` is an ``argparse.Namespace``, which the weights-only unpickler is
allowed to build. A ``.safetensors`` file or a raw torch state dict holds one state dict.

Must never: unpickle arbitrary objects (no ``weights_only=False``), load non-strictly, or print.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from mmaccel.image_ar.checkpoint import check_state_dict, read_checkpoint
from mmaccel.image_ar.mar.config import MARConfig
from mmaccel.image_ar.mar.model import MAR, build_mar

log = logging.getLogger(__name__)

StateSource = str | os.PathLike | Mapping[str, Any]
CHECKPOINT_KEYS = ("model_ema", "model")
_PREFIXES = ("module.", "_orig_mod.")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def load_mar_state_dict(src: StateSource, key: str = "model_ema") -> dict[str, torch.Tensor]:
    """The tensors of a MAR checkpoint, prefixes removed.

    Args:
        src: a path (``.safetensors`` or torch pickle) or what such a file holds.
        key: which weights of an official checkpoint dict: ``"model_ema"`` or ``"model"``;
            ignored for a file or mapping that is itself a state dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, no ``key`` entry, or no state dict of tensors inside.
    """
    if key not in CHECKPOINT_KEYS:
        raise ValueError(f"key must be one of {CHECKPOINT_KEYS}, got {key!r}")
    source = "state dict" if isinstance(src, Mapping) else f"checkpoint {os.fspath(src)}"
    obj = src if isinstance(src, Mapping) else read_checkpoint(src, safe_globals=(argparse.Namespace,))
    if not _is_state_dict(obj):
        if not isinstance(obj, Mapping) or key not in obj:
            found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{source} has no {key!r} entry and is not a state dict; found {found}")
        obj = obj[key]
        if not _is_state_dict(obj):
            raise ValueError(f"{source}: entry {key!r} is not a state dict of tensors")
    out = {}
    for name, tensor in obj.items():
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        out[name] = tensor
    return out


def load_official_mar(
    src: StateSource,
    config: MARConfig,
    key: str = "model_ema",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> MAR:
    """An official MAR checkpoint (file or mapping) as a ``MAR`` in eval mode.

    ``key`` picks the EMA weights (default, what the official evaluation uses) or the raw
    ones. Any missing, unexpected or misshapen key raises ``ValueError`` naming it.
    """
    source = "state dict" if isinstance(src, Mapping) else f"checkpoint {os.fspath(src)}"
    sd = load_mar_state_dict(src, key)
    with torch.device("meta"):  # no random init of weights about to be overwritten
        model = build_mar(config)
    check_state_dict(model, sd, source)
    model = model.to_empty(device=device)
    model.load_state_dict(sd, strict=True)
    model = model.to(dtype)
    log.info("loaded MAR from %s[%s] (%d tensors, %s)", source, key, len(sd), dtype)
    return model.eval()

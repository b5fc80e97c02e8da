"""Load official LlamaGen GPT and VQ checkpoints into the models of this package.

Owns: reading a file (``.safetensors``, or a torch pickle with ``weights_only=True``),
unwrapping the official containers, normalising key names, checking names and shapes
against the model with messages that name the problem, and casting to the requested dtype.

Containers seen in the official code: DDP training checkpoints ``{"model", "optimizer",
"steps", "args", ["ema"]}`` (``args`` is an ``argparse.Namespace``, which we allow-list for
the weights-only unpickler), DeepSpeed ``{"module": ...}``, ``{"state_dict": ...}``, and raw
FSDP ``consolidated.pth`` state dicts. Keys may carry ``module.`` / ``_orig_mod.`` prefixes;
older GPT checkpoints may carry a ``freqs_cis`` table and sampler caches may leak
``kv_cache`` buffers; these are recomputed here and dropped.

Must never: unpickle arbitrary objects (no ``weights_only=False``), load with
``strict=False`` silently, or print.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mmaccel.image_ar.checkpoint import check_state_dict, read_checkpoint
from mmaccel.image_ar.llamagen.config import GPTConfig
from mmaccel.image_ar.llamagen.gpt import GPT
from mmaccel.image_ar.llamagen.vq import VQConfig, VQModel

log = logging.getLogger(__name__)

# Looked up in this order, like the official samplers (model, then DeepSpeed, then plain).
CONTAINER_KEYS = ("model", "module", "state_dict", "ema", "model_ema")
_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 10


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def unwrap_state_dict(
    obj: Any, source: str = "checkpoint", container_key: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensor dict inside an official container, keys normalised.

    Args:
        obj: what was read from the file.
        source: name used in error messages.
        container_key: take this entry (e.g. "ema") instead of the automatic choice
            (``CONTAINER_KEYS`` in order, else ``obj`` itself when it is all tensors).
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict")
    if container_key is not None:
        if container_key not in obj:
            raise ValueError(
                f"{source} has no {container_key!r} entry; it has {sorted(map(str, obj))[:_MAX_LISTED]}"
            )
        sd = obj[container_key]
    else:
        sd = next((obj[k] for k in CONTAINER_KEYS if k in obj and isinstance(obj[k], Mapping)), obj)
    if not _is_state_dict(sd):
        raise ValueError(
            f"{source} holds no state dict of tensors (looked for {', '.join(CONTAINER_KEYS)} or a raw "
            f"dict of tensors); top-level keys: {sorted(map(str, obj))[:_MAX_LISTED]}"
        )
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        for prefix in _PREFIXES:  # DDP / DeepSpeed / torch.compile wrappers
            name = name.removeprefix(prefix)
        if name == "freqs_cis" or ".kv_cache." in name:
            continue  # recomputed, never learned
        out[name] = tensor
    return out


def load_state_dict(path: str | os.PathLike, container_key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or torch checkpoint, unwrapped and keys normalised.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupted or truncated, holds objects a weights-only load
            refuses, or holds no state dict.
    """
    return unwrap_state_dict(
        read_checkpoint(path, safe_globals=(argparse.Namespace,)),
        source=f"checkpoint {os.fspath(path)}",
        container_key=container_key,
    )


def _materialise(
    build: type[nn.Module],
    cfg: Any,
    sd: Mapping[str, torch.Tensor],
    source: str,
    dtype: torch.dtype,
    device: Any,
) -> Any:
    # build on the meta device: no random init of weights we are about to overwrite
    with torch.device("meta"):
        model = build(cfg)
    check_state_dict(model, sd, source)
    model = model.to_empty(device=device).to(dtype)
    model.load_state_dict(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}, strict=True
    )
    log.info("loaded %s from %s (%d tensors, %s)", type(model).__name__, source, len(sd), dtype)
    return model.eval()


def load_gpt(
    path: str | os.PathLike,
    config: GPTConfig,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    container_key: str | None = None,
) -> GPT:
    """An official LlamaGen GPT checkpoint as a ``GPT`` in eval mode, weights cast to ``dtype``."""
    sd = load_state_dict(path, container_key)
    return _materialise(GPT, config, sd, f"checkpoint {os.fspath(path)}", dtype, device)


def load_vq(
    path: str | os.PathLike,
    config: VQConfig,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    container_key: str | None = None,
) -> VQModel:
    """An official LlamaGen VQ checkpoint as a ``VQModel`` in eval mode, weights cast to ``dtype``."""
    sd = load_state_dict(path, container_key)
    return _materialise(VQModel, config, sd, f"checkpoint {os.fspath(path)}", dtype, device)

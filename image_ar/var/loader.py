"""Load official VAR transformer and VQ-VAE checkpoints (``var_d*.pth``,
``vae_ch160v4096z32.pth``) into the models of this package.

Owns: reading a file (``.safetensors``, or a torch pickle with ``weights_only=True``) or taking
a state dict, stripping wrapper prefixes (``module.``, ``_orig_mod.``), checking names and
shapes against the model with messages that name every problem, checking that a transformer
and a VQ-VAE fit together before reading anything, and casting to the requested dtype.

Official files are raw state dicts (the official demo loads them with ``strict=True``); the
training checkpoints ``ar-ckpt-*.pth`` nest them under ``trunk["trainer"]["var_wo_ddp"]`` /
``["vae_local"]``, which is unwrapped too. One tolerance copied from the official
``VQVAE.load_state_dict``: ``quantize.ema_vocab_hit_SV`` (a training statistic of code usage
per scale) may have a different number of scales; the model then keeps its own zeros.

Must never: unpickle arbitrary objects (no ``weights_only=False``), load non-strictly beyond the
tolerance above, or print.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mmaccel.image_ar.checkpoint import check_state_dict, read_checkpoint
from mmaccel.image_ar.var.config import VARConfig, VQVAEConfig, check_compatible
from mmaccel.image_ar.var.model import VAR
from mmaccel.image_ar.var.vqvae import VQVAE

log = logging.getLogger(__name__)

StateSource = str | os.PathLike | Mapping[str, torch.Tensor]
_PREFIXES = ("module.", "_orig_mod.")
_TRAINER_KEYS = ("var_wo_ddp", "vae_local")
_EMA_HITS = "quantize.ema_vocab_hit_SV"


def load_state_dict(src: StateSource, trainer_key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file or state dict, unwrapped, wrapper prefixes removed.

    Args:
        src: a path (``.safetensors`` or torch pickle) or a mapping of tensors.
        trainer_key: for training checkpoints, which model to take from ``["trainer"]``
            (``"var_wo_ddp"`` or ``"vae_local"``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, or no state dict of tensors inside.
    """
    source = "state dict" if isinstance(src, Mapping) else f"checkpoint {os.fspath(src)}"
    obj = src if isinstance(src, Mapping) else read_checkpoint(src)
    if isinstance(obj, Mapping) and isinstance(obj.get("trainer"), Mapping):
        trainer = obj["trainer"]
        key = trainer_key or next((k for k in _TRAINER_KEYS if k in trainer), None)
        if key not in trainer:
            raise ValueError(f"{source}: trainer checkpoint has no {key!r}; it has {sorted(trainer)}")
        obj = trainer[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} holds no state dict of tensors")
    out = {}
    for name, tensor in obj.items():
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        out[name] = tensor
    return out


def _materialise(build: type[nn.Module], cfg: Any, sd: dict[str, torch.Tensor], source: str, dtype, device):
    with torch.device("meta"):  # no random init of weights about to be overwritten
        model = build(cfg)
    other_hits = (
        build is VQVAE
        and _EMA_HITS in sd
        and sd[_EMA_HITS].ndim == 2
        and sd[_EMA_HITS].shape != model.quantize.ema_vocab_hit_SV.shape
        and sd[_EMA_HITS].shape[1] == cfg.vocab_size  # only the number of scales may differ
    )
    check_state_dict(model, sd, source, tolerate_shape=(_EMA_HITS,) if other_hits else ())
    model = model.to_empty(device=device)
    if other_hits:
        log.info("%s: %s has shape %s; keeping zeros", source, _EMA_HITS, tuple(sd[_EMA_HITS].shape))
        sd = dict(sd, **{_EMA_HITS: torch.zeros(model.quantize.ema_vocab_hit_SV.shape)})
    model.load_state_dict(sd, strict=True)
    model = model.to(dtype)
    log.info("loaded %s from %s (%d tensors, %s)", type(model).__name__, source, len(sd), dtype)
    return model.eval()


def _source(src: StateSource) -> str:
    return "state dict" if isinstance(src, Mapping) else f"checkpoint {os.fspath(src)}"


def load_vqvae(
    src: StateSource,
    config: VQVAEConfig,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> VQVAE:
    """An official VAR VQ-VAE checkpoint (file or state dict) as a ``VQVAE`` in eval mode."""
    return _materialise(VQVAE, config, load_state_dict(src, "vae_local"), _source(src), dtype, device)


def load_var(
    src: StateSource,
    config: VARConfig,
    vqvae: VQVAE | VQVAEConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> VAR:
    """An official VAR checkpoint (file or state dict) as a ``VAR`` in eval mode.

    With ``vqvae`` (a model or its config), their scales, vocabulary and code width are
    checked first: a mismatch raises ``ValueError`` before the file is read.
    """
    if vqvae is not None:
        check_compatible(config, vqvae.cfg if isinstance(vqvae, VQVAE) else vqvae)
    return _materialise(VAR, config, load_state_dict(src, "var_wo_ddp"), _source(src), dtype, device)


def load_vae_var(
    vae_src: StateSource,
    var_src: StateSource,
    vae_config: VQVAEConfig,
    var_config: VARConfig,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[VQVAE, VAR]:
    """Both models of a VAR pair (the order of the official ``build_vae_var``); their configs
    are checked against each other before anything is read."""
    check_compatible(var_config, vae_config)
    vae = load_vqvae(vae_src, vae_config, dtype, device)
    return vae, load_var(var_src, var_config, vae_config, dtype, device)

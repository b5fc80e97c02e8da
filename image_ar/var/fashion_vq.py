"""The VAR multi-scale VQ-VAE trained here on Fashion-MNIST 32x32: its config format and loader.

Owns: the path of the shipped weights (``image_ar/weights/fashion_vqvae.safetensors``, written
by ``mmaccel.image_ar.var.train_vqvae``), reading and writing a ``VQVAEConfig`` as json (the
weights carry theirs in the safetensors metadata, so a file rebuilds its own model),
``load_fashion_vqvae``, ``reconstruct``, ``evaluate_reconstructions`` and ``to_uint8`` (the model's output back to
Fashion-MNIST uint8 pixels; ``fashion.data.to_float`` makes its inputs ``[B, 1, 32, 32]`` in
[-1, 1]). One grayscale channel in and out (``in_channels = 1``), as the Fashion classifier reads.

The model is the official VAR ``VQVAE`` (``vqvae.py``) at a small size; its state-dict keys are
the official ones, so ``load_vqvae`` reads the file with the same strict checks.

Must never: train, download anything, or print.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmaccel.image_ar.fashion.data import to_float
from mmaccel.image_ar.var.config import VQVAEConfig
from mmaccel.image_ar.var.vqvae import VQVAE

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "fashion_vqvae.safetensors"
TRAIN_COMMAND = "python -m mmaccel.image_ar.var.train_vqvae"
_TUPLE_FIELDS = ("ch_mult", "patch_nums")


def config_to_dict(cfg: VQVAEConfig) -> dict[str, Any]:
    """Every field of ``cfg`` as json data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(values: dict[str, Any]) -> VQVAEConfig:
    """A ``VQVAEConfig`` from json data (``config_to_dict``'s output, or a recipe's ``model``);
    ValueError naming unknown keys."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(VQVAEConfig)})
    if unknown:
        raise ValueError(f"unknown VQVAEConfig key(s) {unknown}")
    values = {k: tuple(v) if k in _TUPLE_FIELDS else v for k, v in values.items()}
    return VQVAEConfig(**values)


def read_config(path: str | os.PathLike) -> VQVAEConfig:
    """The ``VQVAEConfig`` stored in a weights file's safetensors metadata (key ``vqvae_config``)."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "vqvae_config" not in meta:
        raise ValueError(f"{path}: no vqvae_config in its metadata (not written by train_vqvae?)")
    return config_from_dict(json.loads(meta["vqvae_config"]))


def load_fashion_vqvae(
    path: str | os.PathLike = WEIGHTS,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> VQVAE:
    """The shipped (or a given) Fashion-MNIST VQ-VAE in eval mode.

    FileNotFoundError naming the training command when the file is absent; ValueError when it
    lacks its config or its tensors do not fit it.
    """
    from mmaccel.image_ar.var.loader import load_vqvae

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST VQ-VAE weights not found at {path}; train them from the repository root "
            f"with `{TRAIN_COMMAND}` (recipe image_ar/configs/fashion_vqvae_recipe.json)"
        )
    return load_vqvae(path, read_config(path), dtype=dtype, device=device).eval()


def to_uint8(img_N1HW: torch.Tensor) -> torch.Tensor:
    """Model output ``[N, 1, H, W]`` (or ``[N, C, H, W]``: channels averaged) in [-1, 1] -> uint8
    ``[N, H, W]``, rounded and clamped (what the Fashion classifier and PIL take)."""
    x = img_N1HW.float().mean(dim=1)
    return x.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def reconstruct(model: VQVAE, images_NHW: np.ndarray | torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Quantize and decode uint8 ``[N, H, W]`` images through every scale: uint8 ``[N, H, W]``."""
    p = next(model.parameters())
    out = []
    for i in range(0, len(images_NHW), batch):
        x_N1HW = to_float(images_NHW[i : i + batch]).to(device=p.device, dtype=p.dtype)
        out.append(to_uint8(model.img_to_reconstructed_img(x_N1HW, last_one=True)).cpu())
    return torch.cat(out) if out else torch.zeros(0, *images_NHW.shape[1:], dtype=torch.uint8)


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate_reconstructions(
    model: VQVAE, images_NHW: np.ndarray, labels_N: np.ndarray, batch: int = 500, per_scale_n: int = 1000
) -> dict[str, Any]:
    """How well ``model`` reconstructs uint8 ``images_NHW`` through every scale (rounded to uint8).

    Returns ``mse`` (on [0, 1] pixels) and ``psnr`` (mean over images), ``psnr_per_scale`` (the
    image after each scale, over the first ``per_scale_n`` images), codebook ``usage`` (fraction
    of codes some scale chose, and per scale), and the shipped Fashion classifier's accuracy on
    the originals and on the reconstructions (``labels_N`` the truth), overall and per class,
    how often its two predictions agree, and which classifier file judged (sha256 prefix).
    """
    from mmaccel.image_ar.fashion.classifier import WEIGHTS as CLASSIFIER
    from mmaccel.image_ar.fashion.classifier import load_classifier, predict
    from mmaccel.image_ar.fashion.data import CLASS_NAMES

    model.eval()
    S, V = len(model.cfg.patch_nums), model.cfg.vocab_size
    used_SV = torch.zeros(S, V, dtype=torch.bool)
    recs, scale_mse_S = [], torch.zeros(S)
    for i in range(0, len(images_NHW), batch):
        ref_NHW = torch.from_numpy(np.array(images_NHW[i : i + batch]))  # a copy: splits are read-only
        idx_list = model.img_to_idxBl(to_float(ref_NHW))
        for si, idx_Bl in enumerate(idx_list):
            used_SV[si, idx_Bl.flatten()] = True
        if i < per_scale_n:  # every partial sum: what the image looks like after each scale
            take = min(len(ref_NHW), per_scale_n - i)
            imgs = [to_uint8(im) for im in model.idxBl_to_img(idx_list, same_shape=True, last_one=False)]
            for si, im in enumerate(imgs):
                scale_mse_S[si] += (
                    ((im[:take].float() - ref_NHW[:take].float()) / 255).pow(2).mean((1, 2)).sum()
                )
            recs.append(imgs[-1])
        else:
            recs.append(to_uint8(model.idxBl_to_img(idx_list, last_one=True)))
    rec_NHW, ref_NHW = torch.cat(recs), torch.from_numpy(np.array(images_NHW))
    mse_N = ((rec_NHW.float() - ref_NHW.float()) / 255).pow(2).mean((1, 2))
    n_scale = min(per_scale_n, len(images_NHW))
    net, truth_N = load_classifier(), torch.as_tensor(np.array(labels_N))
    pred_orig_N, pred_rec_N = predict(net, ref_NHW), predict(net, rec_NHW)

    def per_class(pred_N: torch.Tensor) -> dict[str, float]:
        return {name: round(float((pred_N == truth_N)[truth_N == k].float().mean()), 4)
                for k, name in enumerate(CLASS_NAMES) if bool((truth_N == k).any())}  # fmt: skip

    return {
        "n": len(images_NHW),
        "mse": round(float(mse_N.mean()), 6),
        "psnr": round(float(_psnr(mse_N).mean()), 3),
        "psnr_per_scale": [round(float(_psnr(m / n_scale)), 3) for m in scale_mse_S],
        "per_scale_n": n_scale,
        "usage": round(float(used_SV.any(0).float().mean()), 4),
        "usage_per_scale": [round(float(u), 4) for u in used_SV.float().mean(1)],
        "classifier_accuracy_originals": round(float((pred_orig_N == truth_N).float().mean()), 4),
        "classifier_accuracy_reconstructions": round(float((pred_rec_N == truth_N).float().mean()), 4),
        "classifier_agreement": round(float((pred_orig_N == pred_rec_N).float().mean()), 4),
        "classifier_per_class_originals": per_class(pred_orig_N),
        "classifier_per_class_reconstructions": per_class(pred_rec_N),
        "classifier_sha256": hashlib.sha256(CLASSIFIER.read_bytes()).hexdigest()[:16],
    }

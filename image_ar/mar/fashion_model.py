"""The ``fashion-mar`` image model: the shipped Fashion-MNIST MAR pair as one loadable model.

Owns: ``FashionMARPair`` (the target MAR, the draft MAR and their KL VAE, trained here on
Fashion-MNIST 32x32) implementing ``mmaccel.images.MaskedSetImageModel``: prompts are class
names (``"sneaker"``, ``"ankle boot"``, ...), tokens are 4-channel latent cells of an 8x8 grid
(64 per image), decoded by the VAE after undoing the latent scale; ``load_fashion_mar_pair``
(the ``mmaccel.image_models`` entry point) reading ``image_ar/weights`` (``load_fashion_mar``:
one MAR; the trainer ``train_mar`` writes them). Under ``method="ar"``
the target decodes alone; under ``method="cspd"`` the draft proposes and the target verifies.

Must never: decode tokens itself (``mmaccel.masked_set`` does), or download anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmaccel.image_ar.fashion.data import CLASS_NAMES, class_labels
from mmaccel.image_ar.mar.masked_model import MARMaskedSet
from mmaccel.image_ar.mar.train_kl_vae import WEIGHTS as VAE_WEIGHTS
from mmaccel.image_ar.mar.train_kl_vae import load_fashion_kl_vae
from mmaccel.image_ar.var.fashion_vq import to_uint8
from mmaccel.masked_set import check_pair

NAME = "fashion-mar"
# default guidance, temperature, steps, head steps and each method's best options on this pair
# (measured: docs/benchmarks/fashion_mar/README.md)
DEFAULTS = VAE_WEIGHTS.parent / "fashion_mar_defaults.json"


def weights_path(preset: str) -> Path:
    """The shipped weights of the ``target`` or ``draft`` MAR (``train_mar`` writes them)."""
    return VAE_WEIGHTS.parent / f"fashion_mar_{preset}.safetensors"


def load_fashion_mar(path: str | os.PathLike) -> tuple[torch.nn.Module, float]:
    """A shipped Fashion MAR (eval mode, float32) and the latent scale it was trained with."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from mmaccel.image_ar.mar.config import MARConfig
    from mmaccel.image_ar.mar.model import build_mar

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    model = build_mar(MARConfig.from_dict(json.loads(meta["mar_config"])))
    model.load_state_dict({k: v.float() for k, v in load_file(os.fspath(path)).items()})
    return model.eval(), float(meta["latent_scale"])


class FashionMARPair:
    """Target MAR + draft MAR + KL VAE, for ``generate_image``.

    ``default_guidance``: MAR's ``cfg`` (reached at the last step by the linear schedule);
    ``head_steps``: the diffusion head's sampling steps of both models (they must be equal:
    the draft's chain shares the target's noise).
    """

    name = NAME
    class_names = CLASS_NAMES  # the prompts it understands

    def __init__(
        self,
        target: torch.nn.Module,
        draft: torch.nn.Module | None,
        vae: torch.nn.Module,
        latent_scale: float,
        default_guidance: float = 3.0,
        default_temperature: float = 1.0,
        default_num_iter: int = 16,
        head_steps: int | None = None,
        method_defaults: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.target = MARMaskedSet(target)
        self.draft = MARMaskedSet(draft) if draft is not None else None
        if head_steps is not None:
            for m in (self.target, self.draft):
                if m is not None:
                    m.set_head_steps(head_steps)
        if self.draft is not None:
            check_pair(self.target, self.draft)
        self.vae, self.latent_scale = vae.eval(), float(latent_scale)
        self.num_image_tokens = self.target.seq_len
        self.default_guidance = default_guidance
        self.default_temperature = default_temperature
        self.default_num_iter = default_num_iter
        self.method_defaults = dict(method_defaults or {})

    def labels(self, prompts: list[str]) -> torch.Tensor:
        """Class ids ``[B]`` of class-name prompts; ValueError naming the prompt and the ten classes."""
        return class_labels(prompts)

    @torch.no_grad()
    def decode_tokens(self, tokens_BLC: torch.Tensor) -> list[Image.Image]:
        """Tokens ``[B, seq_len, token_dim]`` (scaled latents) -> grayscale PIL images."""
        latents = self.target.mar.unpatchify(tokens_BLC.float()) / self.latent_scale
        arr = to_uint8(self.vae.decode(latents).clamp(-1, 1)).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a.reshape(a.shape[-2:])), mode="L") for a in arr]


def _paths() -> tuple[Path, Path, Path]:
    return VAE_WEIGHTS, weights_path("target"), weights_path("draft")


def load_fashion_mar_pair(device: str | torch.device = "cpu") -> FashionMARPair:
    """The shipped ``fashion-mar`` pair (fp16 weights, run in float32 on ``device``)."""
    for path in _paths():
        if not path.exists():
            raise FileNotFoundError(
                f"fashion-mar weights missing: {path}; they ship with the package (reinstall), or retrain them "
                "with `python -m mmaccel.image_ar.mar.train_kl_vae` and `python -m mmaccel.image_ar.mar.train_mar "
                "--preset target|draft`"
            )
    vae, stats = load_fashion_kl_vae()
    target, scale = load_fashion_mar(weights_path("target"))
    draft, draft_scale = load_fashion_mar(weights_path("draft"))
    if abs(scale - stats["latent_scale"]) > 1e-6 * scale or abs(draft_scale - scale) > 1e-6 * scale:
        raise ValueError(f"fashion-mar: latent scales differ (VAE {stats['latent_scale']}, target {scale}, "
                         f"draft {draft_scale}): the MARs were trained on another VAE")  # fmt: skip
    defaults = json.loads(DEFAULTS.read_text()) if DEFAULTS.exists() else {}
    return FashionMARPair(
        target.to(device),
        draft.to(device),
        vae.to(device),
        scale,
        default_guidance=float(defaults.get("default_guidance", 3.0)),
        default_temperature=float(defaults.get("default_temperature", 1.0)),
        default_num_iter=int(defaults.get("default_num_iter", 16)),
        head_steps=defaults.get("head_steps"),
        method_defaults=defaults.get("method_defaults"),
    )


def weights_present() -> bool:
    """Whether the three shipped files exist (tests of the shipped pair skip otherwise)."""
    return all(p.exists() for p in _paths())

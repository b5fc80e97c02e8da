"""The ``fashion-var`` image model: the shipped Fashion-MNIST VAR pair as one loadable model.

Owns: ``FashionVARPair`` (the large VAR, the small VAR and their multi-scale VQ-VAE, trained
here on Fashion-MNIST) implementing ``mmaccel.images.NextScaleImageModel``: prompts are class
names (``"sneaker"``, ``"ankle boot"``, ...) turned into class ids, and the summed latent of
the last scale is decoded to 32x32 grayscale pictures; ``load_fashion_var_pair`` (the
``mmaccel.image_models`` entry point) reading ``image_ar/weights``. Under ``method="ar"`` the
large model decodes every scale; under ``method="code"`` the large one drafts the small scales
and the small one refines the rest (CoDe).

Must never: decode tokens itself (``mmaccel.next_scale`` does), or download anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmaccel.image_ar.fashion.data import CLASS_NAMES, class_labels
from mmaccel.image_ar.var.fashion_vq import WEIGHTS as VQ_WEIGHTS
from mmaccel.image_ar.var.fashion_vq import load_fashion_vqvae, to_uint8
from mmaccel.image_ar.var.model import VAR
from mmaccel.image_ar.var.train_var import WEIGHTS, load_fashion_var
from mmaccel.image_ar.var.vqvae import VQVAE

NAME = "fashion-var"
# default guidance and temperature, and each method's best options on this pair (measured:
# docs/benchmarks/fashion_var/README.md)
DEFAULTS = WEIGHTS["large"].parent / "fashion_var_defaults.json"


class FashionVARPair:
    """Large VAR (``var``, the drafter) + small VAR (``refiner``) + VQ-VAE, for ``generate_image``.

    ``default_guidance``: the guidance scale at the last scale (``l_u + s (l_c - l_u)``, ramped
    from 1 at the first scale; VAR's official ``cfg`` is ``s - 1``).
    """

    name = NAME
    class_names = CLASS_NAMES  # the prompts it understands

    def __init__(
        self,
        var: VAR,
        refiner: VAR | None,
        vqvae: VQVAE,
        default_guidance: float = 3.0,
        default_temperature: float = 1.0,
        method_defaults: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.var, self.vqvae = var.eval(), vqvae.eval()
        self.refiner = refiner.eval() if refiner is not None else None
        self.num_image_tokens = sum(pn * pn for pn in var.patch_nums)
        self.default_guidance = default_guidance
        self.default_temperature = default_temperature
        self.method_defaults = dict(method_defaults or {})

    def labels(self, prompts: list[str]) -> torch.Tensor:
        """Class ids ``[B]`` of class-name prompts; ValueError naming the prompt and the ten classes."""
        return class_labels(prompts)

    @torch.no_grad()
    def decode_latent(self, f_hat: torch.Tensor) -> list[Image.Image]:
        """The summed latent ``[B, Cvae, h, w]`` of the last scale -> grayscale PIL images."""
        arr = to_uint8(self.vqvae.fhat_to_img(f_hat)).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a), mode="L") for a in arr]

    @torch.no_grad()
    def decode(self, tokens_BN: torch.Tensor) -> list[Image.Image]:
        """Every scale's code ids, concatenated ``[B, num_image_tokens]`` -> PIL images."""
        bounds = np.cumsum([0] + [pn * pn for pn in self.var.patch_nums])
        idx = [tokens_BN[:, a:b].long() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        arr = to_uint8(self.vqvae.idxBl_to_img(idx, same_shape=True, last_one=True)).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a), mode="L") for a in arr]


def load_fashion_var_pair(device: str | torch.device = "cpu") -> FashionVARPair:
    """The shipped ``fashion-var`` pair (fp16 weights, run in float32 on ``device``)."""
    for path in (VQ_WEIGHTS, WEIGHTS["large"], WEIGHTS["small"]):
        if not path.exists():
            raise FileNotFoundError(
                f"fashion-var weights missing: {path}; they ship with the package (reinstall), or retrain them "
                "with `python -m mmaccel.image_ar.var.train_vqvae` and `python -m mmaccel.image_ar.var.train_var "
                "--preset large|small`"
            )
    defaults = json.loads(DEFAULTS.read_text()) if DEFAULTS.exists() else {}
    return FashionVARPair(
        load_fashion_var("large", device=device),
        load_fashion_var("small", device=device),
        load_fashion_vqvae(device=device),
        default_guidance=float(defaults.get("default_guidance", 3.0)),
        default_temperature=float(defaults.get("default_temperature", 1.0)),
        method_defaults=defaults.get("method_defaults"),
    )


def weights_present() -> bool:
    """Whether the three shipped files exist (tests of the shipped pair skip otherwise)."""
    return all(Path(p).exists() for p in (VQ_WEIGHTS, WEIGHTS["large"], WEIGHTS["small"]))

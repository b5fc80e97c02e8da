"""The embedded default text-to-image model (``shapes-t2i``) as an ``mmaccel`` image model.

Owns: ``ShapesT2IPipeline`` (caption encoder + LlamaGen t2i GPT + VQ tokenizer) implementing
``mmaccel.images.ImageModel``: prompts -> condition embeddings bound into a ``ConditionedGPT``
(conditional rows first, the null caption's rows after them when guidance is on), and image
tokens -> PIL images; ``load_default`` (the ``mmaccel.image_models`` entry point) reading the
shipped weights from ``image_ar/weights``.

Must never: decode tokens itself (the engine does), download anything, or fail on a prompt
outside the grammar (unknown words are dropped, with a warning).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmaccel.image_ar.llamagen.engine import ConditionedGPT
from mmaccel.image_ar.llamagen.vq import VQModel
from mmaccel.image_ar.shapes import parse_caption
from mmaccel.images import ConditionedPrompts

WEIGHTS_DIR = Path(__file__).parent / "weights"
T2I_WEIGHTS, VQ_WEIGHTS = WEIGHTS_DIR / "shapes_t2i.safetensors", WEIGHTS_DIR / "vq_tiny.safetensors"
# the options each method runs with on this model unless the user names others (measured best)
METHOD_DEFAULTS = WEIGHTS_DIR / "shapes_t2i_method_defaults.json"
# tokens per verify step per method and window at the default sampling (acceptance_profile.py)
ACCEPTANCE = WEIGHTS_DIR / "shapes_t2i_acceptance.json"


class ShapesT2IPipeline:
    """Caption encoder + GPT + VQ as one text-to-image model for ``mmaccel.generate_image``."""

    name = "shapes-t2i"

    def __init__(
        self,
        t2i,
        vq: VQModel,
        default_guidance: float = 1.0,
        default_temperature: float = 1.0,
        method_defaults: dict[str, dict[str, Any]] | None = None,
        acceptance_profile: dict[str, Any] | None = None,
    ) -> None:
        self.t2i, self.vq = t2i.eval(), vq.eval()
        self.gpt = t2i.gpt
        self.num_image_tokens = self.gpt.cfg.block_size
        self.grid = self.gpt.grid_width
        self.default_guidance = default_guidance
        self.default_temperature = default_temperature
        # each method's best setting measured on this model (docs/benchmarks/README.md)
        self.method_defaults = dict(method_defaults or {})
        # tokens per verify step per method and window at the default sampling (window="auto")
        self.acceptance_profile = acceptance_profile
        with torch.no_grad():  # held once, so LANTERN's neighbour table is built once per model
            self.codebook = vq.quantize.codebook().detach().clone()

    @torch.no_grad()
    def condition(self, prompts: list[str], guidance: bool) -> ConditionedPrompts:
        cond_BLC, unknown = self.t2i.encode_captions(prompts)
        warnings = []
        for i, (prompt, words) in enumerate(zip(prompts, unknown, strict=True)):
            if words:
                warnings.append(
                    f"prompt {i}: words outside the Shapes-T2I vocabulary were ignored: {', '.join(words)}"
                )
            else:
                try:
                    parse_caption(prompt)
                except ValueError as err:
                    warnings.append(
                        f"prompt {i} is outside the Shapes-T2I grammar ({err}); generating anyway"
                    )
        B = len(prompts)
        if guidance:
            cond_BLC = torch.cat([cond_BLC, self.t2i.null_cond_embs(B).to(cond_BLC)])
        lm = ConditionedGPT(self.gpt, cond_BLC, self.codebook.to(cond_BLC.device), self.acceptance_profile)
        ids = lm.placeholder_ids(B)
        return ConditionedPrompts(lm, ids, ids if guidance else None, tuple(warnings))

    @torch.no_grad()
    def decode(self, tokens_BN: torch.Tensor) -> list[Image.Image]:
        device = next(self.vq.parameters()).device
        img_BCHW = self.vq.decode_codes(tokens_BN.to(device).long(), grid=(self.grid, self.grid))
        arr = ((img_BCHW.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def load_default(device: str | torch.device = "cpu") -> ShapesT2IPipeline:
    """The shipped default model (fp16 weights, run in float32 on ``device``)."""
    from mmaccel.image_ar.t2i_model import ShapesT2IModel
    from mmaccel.image_ar.train_vq import load_trained_vq

    for path in (T2I_WEIGHTS, VQ_WEIGHTS):
        if not path.exists():
            raise FileNotFoundError(
                f"default model weights missing: {path}; they ship with the package (reinstall), or retrain "
                "them with image_ar/train_vq.py and image_ar/train_t2i.py"
            )
    vq = load_trained_vq(VQ_WEIGHTS).to(device)
    t2i = ShapesT2IModel.load(T2I_WEIGHTS).to(device)
    meta = json.loads(T2I_WEIGHTS.with_suffix(".json").read_text())
    return ShapesT2IPipeline(
        t2i,
        vq,
        default_guidance=float(meta.get("default_guidance", 1.0)),
        default_temperature=float(meta.get("default_temperature", 1.0)),
        method_defaults={k: v for k, v in json.loads(METHOD_DEFAULTS.read_text()).items() if k != "about"},
        acceptance_profile=json.loads(ACCEPTANCE.read_text()) if ACCEPTANCE.exists() else None,
    )

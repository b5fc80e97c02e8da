"""VAR (FoundationVision/VAR): next-scale prediction transformer and multi-scale VQ-VAE,
official layout.

Owns: the public names of the family. ``VAR`` gives teacher-forced logits (``forward``) and the
per-scale engine hook (``forward_scale`` over a ``StaticKVCache``); ``VQVAE`` turns images into
index maps per scale and back; ``autoregressive_infer_cfg`` is the reference sampler;
``load_var`` / ``load_vqvae`` read official checkpoints. Must never import engine internals
beyond the cache.
"""

from mmaccel.image_ar.var.config import (
    PATCH_NUMS_256,
    PATCH_NUMS_512,
    VAR_PRESETS,
    VQVAE_PRESETS,
    VARConfig,
    VQVAEConfig,
    check_compatible,
    var_preset,
)
from mmaccel.image_ar.var.loader import (
    check_state_dict,
    load_state_dict,
    load_vae_var,
    load_var,
    load_vqvae,
)
from mmaccel.image_ar.var.model import VAR
from mmaccel.image_ar.var.sample import (
    GrowingKVCache,
    VARSample,
    autoregressive_infer_cfg,
    sample_with_top_k_top_p,
)
from mmaccel.image_ar.var.vqvae import VQVAE, VectorQuantizer2

__all__ = [
    "PATCH_NUMS_256",
    "PATCH_NUMS_512",
    "VAR",
    "VARConfig",
    "VARSample",
    "VAR_PRESETS",
    "VQVAE",
    "VQVAEConfig",
    "VQVAE_PRESETS",
    "GrowingKVCache",
    "VectorQuantizer2",
    "autoregressive_infer_cfg",
    "check_compatible",
    "check_state_dict",
    "load_state_dict",
    "load_vae_var",
    "load_var",
    "load_vqvae",
    "sample_with_top_k_top_p",
    "var_preset",
]

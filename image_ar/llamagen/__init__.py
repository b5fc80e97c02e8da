"""LlamaGen (FoundationVision/LlamaGen): GPT image generator and VQ tokenizer, official layout.

Owns: the public names of the family. ``GPT`` speaks the engine protocol
(``mmaccel.models.CausalLM``); ``VQModel`` turns images into code grids and back;
``load_gpt`` / ``load_vq`` read official checkpoints. Must never import engine internals
beyond the protocol and the cache.
"""

from mmaccel.image_ar.llamagen.config import GPT_PRESETS, GPTConfig, gpt_preset
from mmaccel.image_ar.llamagen.gpt import GPT, condition_padding_mask
from mmaccel.image_ar.llamagen.loader import (
    check_state_dict,
    load_gpt,
    load_state_dict,
    load_vq,
    unwrap_state_dict,
)
from mmaccel.image_ar.llamagen.rope import apply_rope_2d, rope_2d, rope_2d_table
from mmaccel.image_ar.llamagen.vq import VQ_PRESETS, VQConfig, VQModel

__all__ = [
    "GPT",
    "GPT_PRESETS",
    "GPTConfig",
    "VQ_PRESETS",
    "VQConfig",
    "VQModel",
    "apply_rope_2d",
    "check_state_dict",
    "condition_padding_mask",
    "gpt_preset",
    "load_gpt",
    "load_state_dict",
    "load_vq",
    "rope_2d",
    "rope_2d_table",
    "unwrap_state_dict",
]

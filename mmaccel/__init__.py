"""mmaccel: fast decoding for autoregressive image, text and audio generators.

Public API: ``generate`` (any supported model, any method), ``generate_image`` / ``load_model``
(text-to-image, the embedded default model unless told otherwise), the method configs, and the
building blocks (``StaticKVCache``, ``CompiledStep``, acceptors, drafters).
"""

from mmaccel.cache import StaticKVCache
from mmaccel.compiled import CompiledStep
from mmaccel.generate import GenerateOutput, generate
from mmaccel.images import ImageOutput, available_models, generate_image, load_model
from mmaccel.methods import METHODS, ARConfig, JacobiConfig
from mmaccel.sampling import SamplingConfig

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ARConfig",
    "CompiledStep",
    "GenerateOutput",
    "ImageOutput",
    "available_models",
    "generate_image",
    "load_model",
    "JacobiConfig",
    "SamplingConfig",
    "StaticKVCache",
    "generate",
]

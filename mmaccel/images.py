"""``mmaccel.generate_image`` and ``mmaccel.load_model``: text-to-image through the engine.

Owns: the ``ImageModel`` interface a next-token (raster) image family implements (turn prompts
into a condition-bound ``CausalLM`` plus prompt ids, and decode image tokens to pictures), the
``NextScaleImageModel`` interface of a next-scale (VAR) family (prompts -> class ids, a
target VAR, an optional refiner for CoDe, decoding of the last scale's latent), the
``MaskedSetImageModel`` interface of a masked-set family of continuous tokens (MAR: prompts ->
class ids, a target, an optional CSpD draft, decoding of tokens), the discovery of named models
through the ``mmaccel.image_models`` entry-point group (families register themselves; the core
never imports one by name), prompt validation, and the call into ``mmaccel.generate`` (raster)
or the family paths of ``mmaccel.image_families`` (next-scale, masked-set) with guidance
applied by the engine.

Must never: decode tokens outside the engine or import a model family directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from mmaccel.generate import GenerateOutput, generate
from mmaccel.inputs import check_sampling
from mmaccel.methods import (
    CoDeConfig,
    CSpDConfig,
    MethodConfig,
    not_masked,
    not_raster,
    resolve_method,
)
from mmaccel.models import CausalLM

log = logging.getLogger(__name__)
DEFAULT_MODEL = "shapes-t2i"
ENTRY_POINT_GROUP = "mmaccel.image_models"


@dataclass(frozen=True)
class ConditionedPrompts:
    """What an image model hands the engine for a batch of prompts."""

    lm: CausalLM  # bound to the condition of every row (conditional rows first, then unconditional)
    input_ids: torch.Tensor  # [B, L] prompt ids (placeholders where the condition is an embedding)
    uncond_input_ids: torch.Tensor | None  # [B, L'] when guidance is on
    warnings: tuple[str, ...] = ()


@runtime_checkable
class ImageModel(Protocol):
    """A text-to-image family as seen by ``generate_image``."""

    name: str
    num_image_tokens: int
    default_guidance: float
    default_temperature: float

    def condition(self, prompts: list[str], guidance: bool) -> ConditionedPrompts: ...

    def decode(self, tokens_BN: torch.Tensor) -> list[Image.Image]: ...


@runtime_checkable
class NextScaleImageModel(Protocol):
    """A class-conditional next-scale (VAR) family as seen by ``generate_image``.

    ``var``: the model that decodes every scale under ``ar`` (the drafter under CoDe);
    ``refiner``: the small model of a CoDe pair, or None; ``vqvae``: their multi-scale tokenizer.
    ``num_image_tokens``: tokens of all scales together.
    """

    name: str
    num_image_tokens: int
    default_guidance: float
    default_temperature: float
    var: Any
    refiner: Any
    vqvae: Any

    def labels(self, prompts: list[str]) -> torch.Tensor: ...

    def decode_latent(self, f_hat: torch.Tensor) -> list[Image.Image]: ...


@runtime_checkable
class MaskedSetImageModel(Protocol):
    """A class-conditional masked-set (MAR) family of continuous tokens, as seen by ``generate_image``.

    ``target``: the model ``ar`` decodes with (a ``mmaccel.masked_set.MaskedSetModel``);
    ``draft``: the smaller model of a CSpD pair, or None; ``default_num_iter``: MAR steps.
    """

    name: str
    num_image_tokens: int
    default_guidance: float
    default_temperature: float
    default_num_iter: int
    target: Any
    draft: Any

    def labels(self, prompts: list[str]) -> torch.Tensor: ...

    def decode_tokens(self, tokens_BLC: torch.Tensor) -> list[Image.Image]: ...


# Optional on an ImageModel: ``method_defaults: dict[str, dict[str, Any]]``, the options of each
# method validated as best on this model (applied by ``mmaccel.methods.resolve_method(..., model=)``).


@dataclass
class ImageOutput:
    """Result of ``generate_image(..., return_output=True)``."""

    images: list[Image.Image]
    num_forward_passes: int
    num_tokens: int
    latency_s: float
    tokens: torch.Tensor  # [B, num_image_tokens]
    generate_output: GenerateOutput
    peak_cache_mb: float | None = None  # next-scale models: the largest K/V cache held at one time


def available_models() -> list[str]:
    """Names of the image models installed (entry points of ``mmaccel.image_models``)."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


@lru_cache(maxsize=4)
def _load_named(name: str) -> ImageModel:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()()
    raise ValueError(
        f"unknown model {name!r}; available models: {', '.join(available_models()) or 'none installed'}"
    )


def load_model(name: str = DEFAULT_MODEL) -> ImageModel | NextScaleImageModel | MaskedSetImageModel:
    """Load (once per process) the image model registered under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model must be a model name such as {DEFAULT_MODEL!r}, got {name!r}")
    return _load_named(name)


def _check_prompts(prompt: str | list[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list | tuple) or not prompts:
        raise TypeError(
            f"prompt must be a string or a non-empty list of strings, got {type(prompt).__name__}"
        )
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} must be a string, got {type(p).__name__}")
        if not p.strip():
            raise ValueError(f"prompt {i} is empty")
    return list(prompts)


def generate_image(
    prompt: str | list[str],
    method: str | MethodConfig = "ar",
    *,
    model: str | ImageModel | NextScaleImageModel = DEFAULT_MODEL,
    seed: int | None = None,
    guidance_scale: float | None = None,
    temperature: float | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    return_output: bool = False,
    compile: str = "auto",
    progress: bool = False,
    **method_options: Any,
) -> Image.Image | list[Image.Image] | ImageOutput:
    """Generate an image per prompt with ``method`` (``ar``, ``jacobi``, ``sjd``, ``sjd-coupled``, ...).

    On a next-scale (VAR) model (e.g. ``model="fashion-var"``, prompts are class names such as
    ``"sneaker"``) the methods are ``ar`` (the large model decodes every scale, one forward per
    scale) and ``code`` (collaborative decoding: option ``draft_scales``, the scales the large
    model draws before the small one takes over). On a masked-set (MAR) model of continuous
    tokens (e.g. ``model="fashion-mar"``) they are ``ar`` (the target alone, option ``num_iter``)
    and ``cspd`` (continuous speculative decoding: options ``gamma``, ``prefill_ratio``,
    ``num_iter``, ``cspd_kappa``); ``guidance_scale`` is MAR's ``cfg`` (linear schedule) and
    ``temperature`` its diffusion head's noise scale.

    Args:
        prompt: a prompt or a list of prompts (one image each, generated as one batch).
        model: a registered model name (default: the embedded Shapes-T2I model), an
            ``ImageModel`` or a ``NextScaleImageModel``.
        seed: same seed, same method, same images.
        guidance_scale: classifier-free guidance (``l_u + s (l_c - l_u)``); default: the model's.
            1 disables guidance. On a next-scale model ``s`` is the last scale's, ramped from 1 at
            the first scale as in VAR (whose ``cfg`` is ``s - 1``).
        temperature: softmax temperature of the target distribution; default: the model's
            (``ImageModel.default_temperature``, picked on tuning prompts for the embedded model).
        top_k, top_p: the rest of the target distribution every method is verified against.
        compile: how the verify step runs (``mmaccel.generate``): ``auto`` (default), ``eager``,
            ``compile`` or ``cudagraph``.
        return_output: return an ``ImageOutput`` with statistics instead of the image(s).
        method_options: e.g. ``window=16``, ``init="vertical"``. Options not given take the
            model's validated best setting for the method where it ships one
            (``ImageModel.method_defaults``; ``mmaccel.methods.method_defaults(name, model)``
            lists what a method runs with), else the method's own defaults.

    Returns:
        A PIL image for a single prompt string, a list for a list, or an ``ImageOutput``.
    """
    prompts = _check_prompts(prompt)
    check_sampling(1, 1.0 if temperature is None else temperature, top_k, top_p, None)
    if guidance_scale is not None and (not isinstance(guidance_scale, int | float) or guidance_scale < 0):
        raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
    image_model = load_model(model) if isinstance(model, str) else model
    from mmaccel.image_families import ImageCall, generate_masked, generate_scales

    call = ImageCall((prompts, method, method_options, seed, guidance_scale, temperature),
                     (top_k, top_p, compile, progress, return_output, isinstance(prompt, str)))  # fmt: skip
    if isinstance(image_model, MaskedSetImageModel):
        return generate_masked(image_model, call)
    resolve_method(method, method_options)  # bad methods and options fail before any work
    if method == "cspd" or isinstance(method, CSpDConfig):
        family = "next-scale" if isinstance(image_model, NextScaleImageModel) else "next-token"
        raise ValueError(not_masked(getattr(image_model, "name", None), family))
    if isinstance(image_model, NextScaleImageModel):
        return generate_scales(image_model, call)
    if not isinstance(image_model, ImageModel):
        raise TypeError(f"model must be a model name or an mmaccel ImageModel, got {type(model).__name__}")
    if method == "code" or isinstance(method, CoDeConfig):
        raise ValueError(not_raster(image_model.name))
    # the method as configured for this model: its shipped best options, under the user's
    config = resolve_method(method, method_options, model=image_model)
    scale = image_model.default_guidance if guidance_scale is None else float(guidance_scale)
    temperature = image_model.default_temperature if temperature is None else float(temperature)
    t0 = time.perf_counter()
    cond = image_model.condition(prompts, guidance=scale != 1.0)
    for warning in cond.warnings:
        log.warning(warning)
    out = generate(
        cond.lm,
        cond.input_ids,
        config,
        max_new_tokens=image_model.num_image_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        cfg_scale=scale if scale != 1.0 else None,
        uncond_input_ids=cond.uncond_input_ids if scale != 1.0 else None,
        compile=compile,
        progress=progress,
    )
    images = image_model.decode(out.new_tokens)
    if not return_output:
        return images[0] if isinstance(prompt, str) else images
    return ImageOutput(
        images=images,
        num_forward_passes=out.num_forward_passes,
        num_tokens=image_model.num_image_tokens,
        latency_s=time.perf_counter() - t0,
        tokens=out.new_tokens,
        generate_output=out,
    )

"""The family paths of ``mmaccel.generate_image``: next-scale (VAR) and masked-set (MAR) models.

Owns: decoding a class-conditional next-scale pair (``ar`` / CoDe through
``mmaccel.next_scale``) and a masked-set pair of continuous tokens (``ar`` / CSpD through
``mmaccel.masked_set``) for ``generate_image``, and turning their statistics into an
``ImageOutput``. ``generate_image`` validates the call and picks the path.

Must never: import a model family (the models arrive through the protocols of ``mmaccel.images``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from mmaccel.generate import GenerateOutput
from mmaccel.images import DEFAULT_MODEL, ImageOutput, MaskedSetImageModel, NextScaleImageModel
from mmaccel.methods import (
    NEXT_SCALE_METHODS,
    CoDeConfig,
    CSpDConfig,
    MethodConfig,
    resolve_masked_method,
    resolve_method,
)


@dataclass(frozen=True)
class ImageCall:
    """The arguments of one ``generate_image`` call, as a family path reads them."""

    request: tuple[list[str], str | MethodConfig, dict[str, Any], int | None, float | None, float | None]
    # prompts, method, method_options, seed, guidance_scale, temperature
    run: tuple[int, float, str, bool, bool, bool]  # top_k, top_p, compile, progress, return_output, single


def draft_scales_of(config: CoDeConfig, model: NextScaleImageModel) -> int:
    """The scales the large model of ``model`` draws under ``config``: its ``draft_scales``, or
    when that is None (and the model ships no default) half of the scales, rounded up."""
    if config.draft_scales is not None:
        return config.draft_scales
    return (len(model.var.patch_nums) + 1) // 2


def generate_scales(
    model: NextScaleImageModel, call: ImageCall
) -> Image.Image | list[Image.Image] | ImageOutput:
    """``generate_image`` on a next-scale model: ``ar`` or CoDe through ``mmaccel.next_scale``."""
    prompts, method, method_options, seed, guidance_scale, temperature = call.request
    top_k, top_p, compile, progress, return_output, single = call.run
    from mmaccel.next_scale import decode_scales

    name = method if isinstance(method, str) else method.name
    if name not in NEXT_SCALE_METHODS:
        raise ValueError(
            f"model {model.name!r} predicts the next scale (VAR); the methods that run on it are "
            f"{', '.join(NEXT_SCALE_METHODS)} (ar: one forward per scale; code: collaborative decoding, option "
            f"draft_scales); got {name!r}, which decodes next-token models such as {DEFAULT_MODEL!r}"
        )
    config = resolve_method(method, method_options, model=model)
    draft_scales = refiner = None
    S = len(model.var.patch_nums)
    if isinstance(config, CoDeConfig):
        if model.refiner is None:
            raise ValueError(f"method 'code' needs a refiner (the small model of a VAR pair); model {model.name!r} "
                             "has none; use method='ar'")  # fmt: skip
        draft_scales = draft_scales_of(config, model)
        if not 1 <= draft_scales <= S - 1:
            raise ValueError(f"draft_scales must be in 1..{S - 1} (model {model.name!r} has {S} scales), "
                             f"got {draft_scales}")  # fmt: skip
        config = dataclasses.replace(config, draft_scales=draft_scales)
        refiner = model.refiner
    scale = model.default_guidance if guidance_scale is None else float(guidance_scale)
    temperature = model.default_temperature if temperature is None else float(temperature)
    t0 = time.perf_counter()
    labels_B = model.labels(prompts)
    out = decode_scales(model.var, model.vqvae, labels_B, cfg=scale - 1.0, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, refiner=refiner, draft_scales=draft_scales, compile=compile,
                        progress=progress)  # fmt: skip
    images = model.decode_latent(out.f_hat)
    if not return_output:
        return images[0] if single else images
    B, tokens_BN = len(prompts), torch.cat(out.tokens, dim=1)
    histogram = [0] * (max(t.shape[1] for t in out.tokens) + 1)
    for t in out.tokens:  # every forward emits a whole scale per image
        histogram[t.shape[1]] += B
    gen = GenerateOutput(
        sequences=tokens_BN,
        new_tokens=tokens_BN,
        num_tokens=torch.full((B,), tokens_BN.shape[1]),
        num_forward_passes=out.num_forward_passes,
        forward_passes_per_row=torch.full((B,), out.num_forward_passes),
        accepted_histogram=histogram,
        latency_s=out.latency_s,
        method=config,
        extras={"forwards": out.forwards, "f_hat": out.f_hat},
    )
    return ImageOutput(images, out.num_forward_passes, model.num_image_tokens, time.perf_counter() - t0, tokens_BN,
                       gen, out.peak_cache_mb)  # fmt: skip


def generate_masked(
    model: MaskedSetImageModel, call: ImageCall
) -> Image.Image | list[Image.Image] | ImageOutput:
    """``generate_image`` on a masked-set (MAR) model: ``ar`` or CSpD through ``mmaccel.masked_set``."""
    prompts, method, method_options, seed, guidance_scale, temperature = call.request
    top_k, top_p, compile, progress, return_output, single = call.run
    from mmaccel.acceptors.continuous import ContinuousSpeculative
    from mmaccel.drafters.masked_draft import MaskedSetDrafter
    from mmaccel.masked_set import Schedule, check_pair, decode_masked, verify_plan

    config = resolve_masked_method(method, method_options, model=model, model_name=model.name)
    if top_k or top_p != 1.0:
        raise ValueError(f"top_k and top_p filter a vocabulary; model {model.name!r} has continuous tokens "
                         f"(got top_k={top_k}, top_p={top_p}); use temperature")  # fmt: skip
    if compile not in ("auto", "eager"):
        raise ValueError(f"compile={compile!r}: masked-set (MAR) decoding runs eagerly (each step has its own "
                         "shapes); use compile='auto' or 'eager'")  # fmt: skip
    num_iter = config.num_iter or model.default_num_iter
    L = model.target.seq_len
    if num_iter > L:
        raise ValueError(f"num_iter must be <= {L} (model {model.name!r} has {L} tokens, one step reveals >= 1), "
                         f"got {num_iter}")  # fmt: skip
    plan = drafter = acceptor = None
    if isinstance(config, CSpDConfig):
        if model.draft is None:
            raise ValueError(
                f"method 'cspd' needs a draft model; model {model.name!r} has none; use method='ar'"
            )
        check_pair(model.target, model.draft)
        plan = verify_plan(num_iter, config.gamma, round(config.prefill_ratio * num_iter))
        drafter, acceptor = MaskedSetDrafter(model.draft), ContinuousSpeculative(config.cspd_kappa)
    scale = model.default_guidance if guidance_scale is None else float(guidance_scale)
    temperature = model.default_temperature if temperature is None else float(temperature)
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 on model {model.name!r} (the head's noise scale), got {temperature}"
        )
    t0 = time.perf_counter()
    labels_B = model.labels(prompts)
    out = decode_masked(model.target, labels_B, num_iter=num_iter, cfg=scale, temperature=temperature, seed=seed,
                        plan=plan, drafter=drafter, acceptor=acceptor, progress=progress)  # fmt: skip
    images = model.decode_tokens(out.tokens_BLC)
    if not return_output:
        return images[0] if single else images
    B = len(prompts)
    plan = plan or verify_plan(num_iter)
    histogram = [0] * (L + 1)
    bounds = Schedule.cosine(L, num_iter).bounds
    for a, b, _ in plan:  # every target forward emits the sets of its steps, per image
        histogram[bounds[a] - bounds[b]] += B
    gen = GenerateOutput(
        sequences=out.tokens_BLC,
        new_tokens=out.tokens_BLC,
        num_tokens=torch.full((B,), L),
        num_forward_passes=out.num_forward_passes,
        forward_passes_per_row=torch.full((B,), out.num_forward_passes),
        accepted_histogram=histogram,
        latency_s=out.latency_s,
        method=dataclasses.replace(config, num_iter=num_iter),
        extras={"forwards": out.forwards, "acceptance_rate": out.acceptance_rate, "drafted": out.drafted,
                "accepted": out.accepted, "acceptance_per_verify": out.acceptance_per_verify,
                "residual_rounds": out.residual_rounds},
    )  # fmt: skip
    return ImageOutput(images, out.num_forward_passes, L, time.perf_counter() - t0, out.tokens_BLC, gen)

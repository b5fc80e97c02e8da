"""Next-scale decoding (the VAR family) in the shared core, and collaborative decoding (CoDe).

A next-scale model predicts a whole scale of tokens (1x1, 2x2, ... of a multi-scale VQ-VAE's
residual pyramid) per forward, attending block-causally to every earlier scale. Here each
scale is ONE step: forward over the scale's positions (writing its K/V into a static cache at
fixed slots), classifier-free guidance with VAR's ramp (``s_k = 1 + cfg * k / (S - 1)`` at
scale k of S: ``l_u + s_k (l_c - l_u)``), logit processing and sampling through
``mmaccel.sampling`` with uniforms drawn before the step, then the tokenizer's residual update
of ``f_hat`` and the next scale's input, all into tensors at fixed addresses. The step of each
scale is a ``CompiledStep`` whose bucket is the scale's (rows, tokens) shape.

``method="ar"`` on a VAR model is this, one forward per scale (the baseline). CoDe
(``draft_scales=N``; Chen et al. 2024, arXiv 2411.17787): the drafter (the large model)
decodes scales ``0 .. N-1`` in a cache sized to them; that cache is freed; the refiner (the small model) prefills
scales ``0 .. N`` (the drafter's tokens fix their inputs) in one forward, samples scale N
from its own logits and decodes the rest. Each model has its own cache and the same number
of forwards as plain decoding, but the large scales (most of the tokens) run on the small model.

Owns: the scale loop, its per-scale steps and statistics. Must never: call a generator inside
a step, sync with the host inside a step, or grow a cache by concatenation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from mmaccel.compiled import CompiledStep, record_compiled, record_eager, resolve_mode
from mmaccel.sampling import Draws, SamplingConfig, process_logits, sample_with


@dataclass
class ScaleOutput:
    """What one next-scale decode produced."""

    tokens: list[torch.Tensor]  # per scale, [B, pn * pn] code ids (row-major)
    f_hat: torch.Tensor  # [B, Cvae, H, H] accumulated residual features (decode with the VQ-VAE)
    num_forward_passes: int  # forwards of any model (a CoDe prefill counts as one)
    forwards: dict[str, int]  # per model role ("target", or "drafter" / "refiner")
    latency_s: float
    peak_cache_mb: float  # the largest K/V cache held at one time


class _ScaleState:
    """The fixed-address tensors a decode writes: the residual sum and the next scale's input."""

    def __init__(self, B: int, Cvae: int, H: int, dtype: torch.dtype, device: torch.device) -> None:
        self.f_hat = torch.zeros(B, Cvae, H, H, dtype=dtype, device=device)


def _guidance(si: int, num_scales: int, cfg: float) -> float:
    """VAR's ramp: the guidance scale of scale ``si`` (1 at the first, ``1 + cfg`` at the last)."""
    return 1.0 + cfg * si / max(num_scales - 1, 1)


def scale_step(
    var: Any,
    quant: Any,
    cache: Any,
    state: _ScaleState,
    sampling: SamplingConfig,
    cond_BD: torch.Tensor,
    si: int,
    start: int,
    guided: bool,
    x_BTC: torch.Tensor,
    flat_N: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode scale ``si`` (positions ``start .. start + pn^2 - 1``) whose transformer input is
    ``x_BTC`` (every cache row) with the uniforms ``flat_N`` (``scale_draws``); returns (tokens
    ``[B, pn^2]``, the next scale's features ``[B, pn'^2, Cvae]``, or ``f_hat`` flattened after
    the last scale). Writes the cache and ``state.f_hat``."""
    stop = start + x_BTC.shape[1]
    slots_BT, mask_BTS = var.cache_step_inputs(cache, start, stop)
    logits_BTV = var.forward_scale(x_BTC, cond_BD, cache, slots_BT, mask_BTS)
    cache.commit(torch.full_like(cache.lens_B, stop - start))
    u_BTV = Draws.split(flat_N, scale_draws(state, x_BTC.shape[1], logits_BTV.shape[-1]))["u"]
    return _sample_scale(var, quant, state, sampling, logits_BTV, si, guided, u_BTV)


def scale_draws(state: _ScaleState, tokens: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """The uniforms one scale of ``tokens`` tokens per image consumes: one per vocabulary entry
    (``sample_with``)."""
    return {"u": (state.f_hat.shape[0], tokens, vocab)}


def _cfg_of(sampling: SamplingConfig) -> float:
    return sampling.cfg_scale or 0.0


def decode_scales(
    var: Any,
    vqvae: Any,
    labels_B: torch.Tensor,
    *,
    cfg: float = 1.5,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    seed: int | None = None,
    refiner: Any = None,
    draft_scales: int | None = None,
    compile: str = "auto",
    progress: bool = False,
) -> ScaleOutput:
    """Sample one image per label, scale by scale (``ar``), or with CoDe when ``refiner`` and
    ``draft_scales`` are given.

    Args:
        var: the next-scale transformer (the drafter under CoDe); ``vqvae`` its tokenizer.
        labels_B: class ids ``[B]`` (the model's null class is added for guidance).
        cfg: guidance strength at the last scale (VAR's ramp; 0 = no guidance, no doubled batch).
        temperature, top_k, top_p, do_sample: the distribution each scale is sampled from.
        seed: same seed, same tokens (compiled or not).
        refiner, draft_scales: CoDe: ``var`` decodes scales ``0 .. draft_scales - 1``, the
            refiner the rest (``1 <= draft_scales <= num_scales - 1``).
        compile: ``auto``, ``eager``, ``compile`` or ``cudagraph`` (``mmaccel.generate``).

    Raises:
        ValueError: ``draft_scales`` out of range or given without a refiner (or the
            reverse), a refiner whose scales / vocabulary differ from the drafter's, a label
            outside ``0 .. num_classes - 1``.
    """
    t0 = time.perf_counter()
    S = len(var.patch_nums)
    if (refiner is None) != (draft_scales is None):
        raise ValueError("CoDe needs both a refiner and draft_scales (or neither, for plain decoding)")
    if draft_scales is not None:
        if (
            isinstance(draft_scales, bool)
            or not isinstance(draft_scales, int)
            or not 1 <= draft_scales <= S - 1
        ):
            raise ValueError(f"draft_scales must be an integer in 1..{S - 1} (the model has {S} scales), "
                             f"got {draft_scales!r}")  # fmt: skip
        if tuple(refiner.patch_nums) != tuple(var.patch_nums) or refiner.cfg.vocab_size != var.cfg.vocab_size:
            raise ValueError(
                "the refiner must share the drafter's scales and vocabulary (one VQ-VAE for both)"
            )
    labels_B = torch.as_tensor(labels_B, dtype=torch.long)
    if labels_B.ndim != 1 or labels_B.numel() == 0:
        raise ValueError(
            f"labels must be a non-empty 1-D tensor of class ids, got shape {tuple(labels_B.shape)}"
        )
    bad = [int(x) for x in labels_B if not 0 <= int(x) < var.num_classes]
    if bad:
        raise ValueError(f"class ids must be in 0..{var.num_classes - 1}, got {bad[:5]}")
    device = var.head.weight.device
    labels_B = labels_B.to(device)
    B, guided = labels_B.shape[0], cfg != 0
    sampling = SamplingConfig(do_sample, temperature, top_k, top_p, float(cfg) if guided else None)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    quant = vqvae.quantize
    H = var.patch_nums[-1]
    state = _ScaleState(B, var.Cvae, H, torch.promote_types(var.head.weight.dtype, torch.float32), device)
    V = var.cfg.vocab_size

    roles = (
        ["target"] * S if refiner is None else ["drafter"] * draft_scales + ["refiner"] * (S - draft_scales)
    )
    models = {"target": var, "drafter": var, "refiner": refiner}
    forwards = {role: 0 for role in dict.fromkeys(roles)}
    tokens: list[torch.Tensor] = []
    feats: list[torch.Tensor | None] = [None]  # features input to scale k (k >= 1), kept for a CoDe prefill
    caches: dict[str, Any] = {}
    peak_mb = 0.0
    next_BTCv = None
    bar = tqdm(total=S, disable=not progress, desc="mmaccel scales", unit="scale")
    with torch.inference_mode():
        for si in range(S):
            role = roles[si]
            model = models[role]
            start, stop = var.begin_ends[si]
            if role not in caches:
                if role == "refiner":
                    caches.pop("drafter", None)  # the hand-over: the drafter's cache is freed here
                # the drafter only ever holds scales 0 .. N-1: its cache is sized to them
                capacity = var.begin_ends[draft_scales - 1][1] if role == "drafter" else model.L
                caches[role] = model.new_cache(2 * B if guided else B, capacity)
                peak_mb = max(peak_mb, _cache_mb(caches.values()))
            cache = caches[role]
            labels_all = (
                torch.cat([labels_B, torch.full_like(labels_B, model.num_classes)]) if guided else labels_B
            )
            cond_BD = model.condition(labels_all)
            if role == "refiner" and si == draft_scales:
                # one prefill over scales 0 .. N: the drafter's tokens fix every input up to scale N
                x_BTC = _prefill_input(model, cond_BD, feats[1:], guided)
                logits_BTV = _prefill(model, cache, x_BTC, cond_BD, stop)
                tok, next_BTCv = _sample_scale(model, quant, state, sampling, logits_BTV[:, start:stop], si, guided,
                                               Draws.of(generator, {"u": (B, stop - start, V)}, device)["u"])  # fmt: skip
                forwards[role] += 1
            else:
                x_BTC = (
                    model.first_scale_input(cond_BD)
                    if si == 0
                    else _expand(model.scale_input(next_BTCv, start), guided)
                )
                tok, next_BTCv = _run_step(model, quant, cache, state, sampling, cond_BD, si, start, guided, x_BTC,
                                           generator, device, compile)  # fmt: skip
                forwards[role] += 1
            tokens.append(tok)
            feats.append(next_BTCv)
            bar.update(1)
    bar.close()
    return ScaleOutput(
        tokens, state.f_hat, sum(forwards.values()), forwards, time.perf_counter() - t0, peak_mb
    )


def _expand(x_BTC: torch.Tensor, guided: bool) -> torch.Tensor:
    return x_BTC.repeat(2, 1, 1) if guided else x_BTC


def _cache_mb(caches) -> float:
    return sum(t.numel() * t.element_size() for c in caches for t in (*c.k, *c.v)) / 2**20


def _run_step(
    model, quant, cache, state, sampling, cond_BD, si, start, guided, x_BTC, generator, device, mode
):
    """One scale as a ``CompiledStep`` (bucket: this scale's rows and tokens), shared per kind
    across calls."""
    rows, T = x_BTC.shape[:2]
    shapes = scale_draws(state, T, model.cfg.vocab_size)
    kind = ("scale_step", id(model), id(quant), sampling, si, rows, cache.capacity, str(device))
    args = (model, quant, cache, state, sampling, cond_BD, si, start, guided)
    step = CompiledStep(scale_step, [(rows, T)], resolve_mode(mode, device, kind), args=args, kind=kind,
                        fallback=mode == "auto")  # fmt: skip
    t0 = time.perf_counter()
    out = step(x_BTC, Draws.draw(shapes, generator, device), bucket=(rows, T))
    if mode == "auto" and step.mode == "eager":
        record_eager(kind, time.perf_counter() - t0, 1)
    elif mode == "auto" and step.mode == "compile" and not step.compiled_in_call:
        record_compiled(kind, time.perf_counter() - t0, 1)
    return out


def _prefill_input(model, cond_BD, feats: Sequence[torch.Tensor], guided: bool) -> torch.Tensor:
    """The refiner's input for scales ``0 .. N``: its own first-scale input, then the features of
    scales ``1 .. N`` (``feats``, fixed by the drafter's tokens)."""
    x0 = model.first_scale_input(cond_BD)
    return torch.cat(
        [x0, _expand(model.scale_input(torch.cat(list(feats), dim=1), model.first_l), guided)], dim=1
    )


def _prefill(model, cache, x_BTC, cond_BD, stop) -> torch.Tensor:
    slots_BT, mask_BTS = model.cache_step_inputs(cache, 0, stop)
    logits = model.forward_scale(x_BTC, cond_BD, cache, slots_BT, mask_BTS)
    cache.commit(torch.full_like(cache.lens_B, stop))
    return logits


def _sample_scale(model, quant, state, sampling, logits_BTV, si, guided, u_BTV):
    S, pn = len(model.patch_nums), model.patch_nums[si]
    if guided:
        s = _guidance(si, S, _cfg_of(sampling))
        cond, uncond = logits_BTV.chunk(2, dim=0)
        logits_BTV = uncond + s * (cond - uncond)
    tokens_BT = sample_with(process_logits(logits_BTV, sampling), u_BTV)
    B = tokens_BT.shape[0]
    h_BChw = quant.embedding(tokens_BT).transpose(1, 2).reshape(B, -1, pn, pn)
    f_hat, next_BChw = quant.get_next_autoregressive_input(si, S, state.f_hat, h_BChw)
    state.f_hat.copy_(f_hat)
    return tokens_BT, next_BChw.reshape(B, next_BChw.shape[1], -1).transpose(1, 2)

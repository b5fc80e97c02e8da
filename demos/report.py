"""One comparison of the demo: ``ar`` and a method on the same prompt, seed and model, and its statistics.

Owns: ``compare`` (the image of each run, then a few timed runs of each, interleaved, whose
median wall-clock is the one reported) and the statistics the page and the API return: on a
raster model forward passes and the tokens each accepted; on a next-scale (VAR) pair forward
passes per model role, which model drew each scale, and the peak K/V cache of each run with
the reduction; on a masked-set (MAR) pair forward passes of the target and the draft model,
the acceptance rate (overall and per checked block) and what each target forward revealed
(``verify_steps``). What the page says about them is ``demos.texts`` (re-exported here).

Must never: decode tokens itself (everything goes through ``mmaccel.generate_image``), import
gradio, or call a single wall-clock sample a speed-up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import mmaccel
from demos.inputs import Request, config_options, option_names
from demos.models import (
    BASELINE,
    MASKED_ROLE_WORDS,
    ROLE_WORDS,
    is_class_conditional,
    is_masked_set,
    is_next_scale,
    patch_nums,
    resolve_for,
)
from demos.texts import (  # re-exported: the page's words live in demos.texts
    about_markdown,
    fidelity,
    intro_markdown,
    model_fidelity,
    options_text,
    scales_markdown,
    summary_markdown,
    timing_words,
    verify_markdown,
    what_it_does,
)
from mmaccel.images import ImageOutput
from mmaccel.masked_set import Schedule, verify_plan
from mmaccel.methods import LOSSLESS, CSpDConfig, MaskedARConfig

__all__ = [
    "BASELINE", "BUDGET_S", "LOSSLESS", "REPEATS", "Comparison", "about_markdown", "compare", "fidelity",
    "intro_markdown", "options_text", "ran_window", "scale_roles", "scales_markdown", "summary_markdown",
    "timing_words", "verify_markdown", "verify_steps", "what_it_does",
]  # fmt: skip

# Timed runs of each method after the run whose image is shown (that run is the warm-up), and
# the time a request aims to stay within: fewer repeats (at least one) when they would not fit.
REPEATS = 3
BUDGET_S = 15.0


@dataclass
class Comparison:
    """Both runs of one request, their timed repeats, and the statistics the page and API report."""

    request: Request
    baseline: ImageOutput
    accelerated: ImageOutput
    stats: dict[str, Any]


def ran_window(out: ImageOutput) -> int | None:
    """The drafts per step a run used (with ``window="auto"``, the number chosen); None for a
    method without a draft window."""
    config = out.generate_output.method
    return config.window if "window" in option_names(config.name) else None


def scale_roles(out: ImageOutput) -> list[str]:
    """The model role that drew each scale of a next-scale run (``target``, or ``drafter``s then
    ``refiner``s): each role's forwards, in the order they ran, draw one scale each (the
    refiner's prefill over the drafter's scales draws the scale after them)."""
    forwards = out.generate_output.extras["forwards"]
    return [role for role, n in forwards.items() for _ in range(n)]


def _scale_stats(out: ImageOutput) -> dict[str, Any]:
    """What a next-scale run reports instead of the tokens each forward accepted."""
    forwards = dict(out.generate_output.extras["forwards"])
    by_model = {words: 0 for words in ("large model", "small model")}
    for role, n in forwards.items():
        by_model[ROLE_WORDS[role]] += n
    return {
        "forwards": forwards,  # per model role, as mmaccel.next_scale counts them
        "forwards_by_model": by_model,
        "scale_models": [ROLE_WORDS[role] for role in scale_roles(out)],  # which model drew each scale
        "peak_cache_mb": round(out.peak_cache_mb, 4),  # the largest K/V cache held at one time
    }


def verify_steps(out: ImageOutput) -> list[dict[str, Any]] | None:
    """What each target forward of a masked-set (MAR) run did, in order: ``tokens`` revealed,
    schedule ``steps`` covered, whether the draft model ``drafted`` them, and the share of drafted
    values ``accepted`` (None where none were drafted).

    Rebuilt from the config that ran with ``mmaccel.masked_set``'s own schedule and plan, then
    checked against what the library counted (its forwards, its tokens-per-forward histogram, its
    checked blocks): None, and no view, if they disagree.
    """
    gen = out.generate_output
    config, extras, L = gen.method, gen.extras, out.num_tokens
    n = config.num_iter
    cspd = isinstance(config, CSpDConfig)
    plan = verify_plan(n, config.gamma, round(config.prefill_ratio * n)) if cspd else verify_plan(n)
    bounds = Schedule.cosine(L, n).bounds
    sizes = [bounds[a] - bounds[b] for a, b, _ in plan]
    drafted = [cspd and in_block for _, _, in_block in plan]
    per_block = list(extras.get("acceptance_per_verify", []))
    histogram = [0] * len(gen.accepted_histogram)
    for k in sizes:
        histogram[k] += len(out.images)
    if (
        len(plan) != out.num_forward_passes
        or histogram != list(gen.accepted_histogram)
        or sum(drafted) != len(per_block)
    ):
        return None
    blocks = iter(per_block)
    return [
        {"tokens": k, "steps": b - a, "drafted": d, "accepted": round(next(blocks), 4) if d else None}
        for k, (a, b, _), d in zip(sizes, plan, drafted, strict=True)
    ]


def _masked_stats(out: ImageOutput) -> dict[str, Any]:
    """What a masked-set (MAR) run reports: forwards per model, its steps, and under CSpD the acceptance."""
    extras = out.generate_output.extras
    forwards = dict(extras["forwards"])
    stats: dict[str, Any] = {
        "forwards": forwards,  # per model role, as mmaccel.masked_set counts them
        "forwards_by_model": {MASKED_ROLE_WORDS[role]: n for role, n in forwards.items()},
        "num_iter": out.generate_output.method.num_iter,
    }
    if extras.get("acceptance_rate") is not None:
        stats["acceptance_rate"] = round(extras["acceptance_rate"], 4)  # drafted values kept, per image
        stats["drafted"], stats["accepted"] = extras["drafted"], round(extras["accepted"], 3)
        stats["acceptance_per_verify"] = [round(a, 4) for a in extras["acceptance_per_verify"]]
    steps = verify_steps(out)
    if steps is not None:
        stats["verify_steps"] = steps
    return stats


def _run_stats(out: ImageOutput, timed: list[ImageOutput]) -> dict[str, Any]:
    timed_s = [t.latency_s for t in timed]
    stats = {
        "forward_passes": out.num_forward_passes,
        "tokens_per_forward": round(out.num_tokens / out.num_forward_passes, 3),
        "wall_clock_s": round(statistics.median(timed_s), 4),  # median of the timed repeats
        "wall_clock_runs_s": [round(t, 4) for t in timed_s],
        "first_run_s": round(out.latency_s, 4),  # the warm-up run, whose image is shown
    }
    forward_N = out.generate_output.token_forward_index
    if forward_N is not None:  # raster: the forward that committed each token
        stats["accepted_per_forward"] = np.bincount(
            forward_N[0].numpy(), minlength=out.num_forward_passes
        ).tolist()
    elif isinstance(out.generate_output.method, CSpDConfig | MaskedARConfig):  # masked-set: continuous tokens
        stats.update(_masked_stats(out))
    else:  # next-scale: every forward draws a whole scale
        stats.update(_scale_stats(out))
    if ran_window(out) is not None:
        stats["window"] = ran_window(out)  # of the run whose image is shown
        stats["wall_clock_windows"] = [ran_window(t) for t in timed]  # auto may re-choose per run
    return stats


def compare(
    request: Request,
    model: Any,
    progress: Callable[[float, str], None] | None = None,
    repeats: int = REPEATS,
    budget_s: float = BUDGET_S,
) -> Comparison:
    """``ar`` and the request's method: one run each for the images (it also warms up), then up
    to ``repeats`` timed runs of each, interleaved so slow spells of a shared CPU hit both alike.

    Fewer repeats (at least one) when the first runs show that ``repeats`` would take the
    request past ``budget_s`` seconds; the statistics say how many were timed. Same seed, same
    model and the same options in every run, so the repeats redraw the same images (but with
    ``window="auto"`` before the window is kept: each run's window is in the statistics).
    ``model``: a raster ``ImageModel``, a next-scale (VAR) pair or a masked-set (MAR) pair; on
    a MAR pair a ``num_iter`` the request names runs ``ar`` too, so both take as many steps.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    config = resolve_for(request.method, request.options, model)  # bad options fail first
    masked = is_masked_set(model)
    same_steps = {"num_iter": request.options["num_iter"]} if masked and "num_iter" in request.options else {}
    runs = [(BASELINE, same_steps), (request.method, request.options)]
    t0 = time.perf_counter()

    def run(method: str, options: dict[str, Any], fraction: float, label: str) -> ImageOutput:
        if progress is not None:
            progress(fraction, label)
        return mmaccel.generate_image(
            request.prompt, method, model=model, seed=request.seed, return_output=True, **options
        )

    shown = [
        run(method, options, 0.4 * i / len(runs), f"run {i + 1} of {len(runs)}: {method}")
        for i, (method, options) in enumerate(runs)
    ]
    pair_s = sum(out.latency_s for out in shown)
    left_s = budget_s - (time.perf_counter() - t0)
    n = max(1, min(repeats, int(left_s // pair_s)))
    timed: dict[str, list[ImageOutput]] = {BASELINE: [], "accelerated": []}
    total = n * len(runs)
    for r in range(n):
        for j, (key, (method, options)) in enumerate(zip(timed, runs, strict=True)):
            k = r * len(runs) + j
            label = f"timing {k + 1} of {total}: {method} (repeat {r + 1} of {n})"
            timed[key].append(run(method, options, 0.4 + 0.6 * k / total, label))
    baseline, accelerated = shown
    next_scale = is_next_scale(model)
    if next_scale or masked:  # the config the run used: draft_scales / num_iter filled in by the library
        config = accelerated.generate_output.method
    lossless, note = model_fidelity(config, model)
    median = {key: statistics.median(t.latency_s for t in outs) for key, outs in timed.items()}
    stats = {
        "model": model.name,
        "prompt": request.prompt,
        "seed": request.seed,
        "method": request.method,
        "options": config_options(config),
        "options_named": dict(request.options),
        "lossless": lossless,
        "fidelity": note,
        "num_tokens": accelerated.num_tokens,
        BASELINE: _run_stats(baseline, timed[BASELINE]),
        "accelerated": _run_stats(accelerated, timed["accelerated"]),
        "speedup_forward_passes": round(baseline.num_forward_passes / accelerated.num_forward_passes, 3),
        "speedup_wall_clock": round(median[BASELINE] / median["accelerated"], 3),
        "wall_clock_repeats": n,
        # a class-conditional model takes class names, checked before anything ran: nothing to warn about
        "prompt_warnings": []
        if is_class_conditional(model)
        else list(model.condition([request.prompt], guidance=False).warnings),
    }
    if masked:
        stats["family"] = "masked-set"
        stats["baseline_options"] = dict(same_steps)  # what ar ran with beyond its defaults
    if next_scale:
        peak = stats[BASELINE]["peak_cache_mb"], stats["accelerated"]["peak_cache_mb"]
        stats["scales"] = list(patch_nums(model))  # the side of each scale
        stats["peak_cache_reduction_pct"] = round(100 * (1 - peak[1] / peak[0]), 1)
    return Comparison(request, baseline, accelerated, stats)

"""One comparison of the demo: ``ar`` and a method on the same prompt, seed and model, and what it says.

Owns: ``compare`` (the image of each run, then a few timed runs of each, interleaved, whose
median wall-clock is the one reported), the statistics the page and the API return, ``fidelity``
(what a method's output has in common with ``ar``'s, stated exactly: same distribution for a
lossless method, a bound or no bound for a lossy one), and the texts the page shows from them:
its title and promise (``intro_markdown``), the note on each method (``about_markdown``) and the
summary of a comparison (``summary_markdown``).

Must never: decode tokens itself (everything goes through ``mmaccel.generate_image``), import
gradio, or call a single wall-clock sample a speed-up.
"""

from __future__ import annotations

import html
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import mmaccel
from demos.inputs import Request, config_options, option_names
from mmaccel.images import ImageModel, ImageOutput
from mmaccel.methods import DESCRIPTIONS, LANTERN_DEFAULT_DELTA, LOSSLESS, JacobiConfig, resolve_method

BASELINE = "ar"
# Timed runs of each method after the run whose image is shown (that run is the warm-up), and
# the time a request aims to stay within: fewer repeats (at least one) when they would not fit.
REPEATS = 3
BUDGET_S = 15.0
SAME_DISTRIBUTION = (
    "it samples exactly the distribution `ar` samples. The same seed gives it the same image every "
    "time, but usually not the picture `ar` draws with that seed (the two spend the random numbers "
    "differently); over many seeds the two are alike in distribution."
)
MEASURED = " How far the images move from `ar`'s is measured (docs/benchmarks), not promised."


def what_it_does(method: str) -> str:
    """The library's description of ``method`` without its lossless/lossy tag (``fidelity`` says that)."""
    text = DESCRIPTIONS.get(method, "")
    head, sep, tail = text.rpartition("; ")
    return head if sep and tail.startswith(("lossless", "lossy")) else text


def _lantern(config: Any) -> tuple[bool, str]:
    lam, delta, rule = config.lantern_lambda, config.lantern_delta, config.lantern_rule
    if (lam is not None and lam == 1) or (lam is None and delta == 0):
        return (
            True,
            "Lossless: with no relaxation (lantern_delta 0 or lantern_lambda 1) it is `sjd`, so "
            + SAME_DISTRIBUTION,
        )
    if lam is not None:
        bound = f"p~(x) <= {lam:g} p(x) for every token"
    else:
        bound = f"total-variation distance <= {delta if delta is not None else LANTERN_DEFAULT_DELTA:g} from `ar`'s"
    if rule == "bounded":
        return False, f"Lossy, bounded: every step samples a relaxed distribution with {bound}."
    return False, (
        f"Lossy: lantern_rule=paper relaxes each draft on its own ({bound} per draft), but with random "
        "drafts a step's distance from `ar` can exceed that: the bound is not guaranteed."
    )


def fidelity(config: Any, grid_width: int) -> tuple[bool | None, str]:
    """(lossless?, what the output has in common with ``ar``'s) for a resolved method config on a
    ``grid_width``-wide raster model; None for a method the demo knows nothing about."""
    name = config.name
    if name == BASELINE:
        return True, "The baseline: plain autoregressive sampling."
    if name in LOSSLESS:
        return True, "Lossless: " + SAME_DISTRIBUTION
    if not isinstance(config, JacobiConfig):
        return None, f"How close it is to `ar`: see its description ({DESCRIPTIONS.get(name, 'none')})."
    zipar = getattr(config, "zipar_window", None)
    relaxed = name in ("lantern", "zipar+lantern")
    lossless, text = _lantern(config) if relaxed else (True, "Lossless: " + SAME_DISTRIBUTION)
    if zipar is None:
        unbounded = not lossless and config.lantern_rule == "paper"
        return lossless, text + (MEASURED if unbounded else "")
    if zipar >= grid_width:
        return (
            lossless,
            f"zipar_window {zipar} >= the grid width {grid_width}, so rows run in raster order as in `ar`. {text}",
        )
    zip_text = (
        f"Lossy, no bound: a row starts once the row above holds {zipar} of its {grid_width} tokens, so its "
        "tokens are drawn without seeing the rest of that row (`ar` sees it)."
    )
    if relaxed:
        kind, _, detail = text.partition(": ")  # "Lossy, bounded: every step ..." -> the detail
        return False, f"{zip_text} On top of that, LANTERN's acceptance ({kind.lower()}): {detail}{MEASURED}"
    if name != "zipar":
        zip_text += " The per-row SJD window adds no further loss."
    return False, zip_text + MEASURED


def about_markdown(name: str, model: ImageModel) -> str:
    """What the method does and how its output relates to ``ar``'s, with its default options."""
    _, note = fidelity(resolve_method(name, {}, model=model), math.isqrt(model.num_image_tokens))
    return f"**{name}**: {what_it_does(name)}.\n\n**Compared with `{BASELINE}`:** {note}"


def intro_markdown(choices: list[str], model: ImageModel) -> str:
    """The page's title and what it promises: same seed and method, same image; lossless, same
    distribution (not the same picture); lossy, close, with the bound stated per method."""
    side = math.isqrt(model.num_image_tokens)
    kinds: dict[bool | None, list[str]] = {True: [], False: [], None: []}
    for name in choices:
        kinds[fidelity(resolve_method(name, {}, model=model), side)[0]].append(f"`{name}`")
    return (
        "# mmaccel: sampling an image model in fewer forward passes\n"
        f"Type a prompt, pick a method, and compare it with plain autoregressive decoding (`{BASELINE}`) "
        f"on the embedded {model.name} model ({side}x{side} = {model.num_image_tokens} image tokens). "
        "**The same seed with the same method always gives the same image** (with `window=auto`, once "
        "the window is chosen: a method's first requests may try a few; the summary names the one each "
        "run used). "
        f"`{BASELINE}` and a lossless method ({', '.join(kinds[True])}) sample the same distribution, "
        "not the same picture: for one seed their images usually differ. "
        f"Lossy methods ({', '.join(kinds[False])}) sample a distribution close to `{BASELINE}`'s; "
        "the note under the method picker says how close (its bound, or that it has none)."
    )


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


def _run_stats(out: ImageOutput, timed: list[ImageOutput]) -> dict[str, Any]:
    forward_N = out.generate_output.token_forward_index[0].numpy()
    timed_s = [t.latency_s for t in timed]
    stats = {
        "forward_passes": out.num_forward_passes,
        "tokens_per_forward": round(out.num_tokens / out.num_forward_passes, 3),
        "accepted_per_forward": np.bincount(forward_N, minlength=out.num_forward_passes).tolist(),
        "wall_clock_s": round(statistics.median(timed_s), 4),  # median of the timed repeats
        "wall_clock_runs_s": [round(t, 4) for t in timed_s],
        "first_run_s": round(out.latency_s, 4),  # the warm-up run, whose image is shown
    }
    if ran_window(out) is not None:
        stats["window"] = ran_window(out)  # of the run whose image is shown
        stats["wall_clock_windows"] = [ran_window(t) for t in timed]  # auto may re-choose per run
    return stats


def compare(
    request: Request,
    model: ImageModel,
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
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    config = resolve_method(request.method, request.options, model=model)  # bad options fail first
    runs = [(BASELINE, {}), (request.method, request.options)]
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
    lossless, note = fidelity(config, math.isqrt(model.num_image_tokens))
    median = {key: statistics.median(t.latency_s for t in outs) for key, outs in timed.items()}
    stats = {
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
        "prompt_warnings": list(model.condition([request.prompt], guidance=False).warnings),
    }
    return Comparison(request, baseline, accelerated, stats)


def timing_words(n: int) -> str:
    """How the reported wall-clock was measured: ``median of 3 timed runs`` or one noisy sample."""
    if n > 1:
        return f"the median of {n} timed runs of each method"
    return "a single timed run of each method (one noisy sample: more did not fit the time budget)"


def options_text(stats: dict[str, Any]) -> str:
    """``window=auto (default, chose 4), init=vertical (default)``: what the method ran with,
    with the window ``auto`` chose (and, if the timed runs chose others, theirs)."""
    named, m, parts = stats["options_named"], stats["accelerated"], []
    for k, v in stats["options"].items():
        notes = [] if k in named else ["default"]
        if k == "window" and v == "auto" and "window" in m:
            timed = m["wall_clock_windows"]
            notes.append(
                f"chose {m['window']}"
                if all(w == m["window"] for w in timed)
                else f"chose {m['window']} for the image; the timed runs used {', '.join(map(str, timed))}"
            )
        parts.append(f"{k}={v}" + (f" ({', '.join(notes)})" if notes else ""))
    return ", ".join(parts)


def summary_markdown(c: Comparison) -> str:
    """The table and notes under the images."""
    s, name = c.stats, c.request.method
    a, m, n = s[BASELINE], s["accelerated"], s["wall_clock_repeats"]
    opts = options_text(s)
    timed = f"median of {n} timed runs" if n > 1 else "1 timed run"
    rows = [
        f"| | `{BASELINE}` (baseline) | `{name}` |",
        "|---|---:|---:|",
        f"| forward passes | {a['forward_passes']} | {m['forward_passes']} |",
        f"| tokens per forward | {a['tokens_per_forward']:.2f} | {m['tokens_per_forward']:.2f} |",
        f"| wall-clock, {timed} | {a['wall_clock_s']:.2f} s | {m['wall_clock_s']:.2f} s |",
    ]
    ratio = s["speedup_wall_clock"]
    notes = [
        f"**{s['speedup_forward_passes']:.2f}x fewer forward passes** than `{BASELINE}` "
        f"({a['forward_passes']} / {m['forward_passes']}; exact, the same on any machine).",
        f"Wall-clock ratio `{BASELINE}` / `{name}`: {ratio:.2f}x"
        + (" (below 1: the method was slower here)" if ratio < 1 else "")
        + f", from {timing_words(n)} after one warm-up run, seed fixed. This CPU is shared "
        "with other requests, so wall-clock is noisy; the forward-pass count is not.",
        f"`{name}` ran with {opts or 'no options'}.",
        f"**Compared with `{BASELINE}`:** {s['fidelity']}",
        f"{s['num_tokens']} image tokens, seed {s['seed']}.",
    ]
    notes += [f"Note: {html.escape(w)}" for w in s["prompt_warnings"]]
    return "\n".join(rows) + "\n\n" + "\n\n".join(notes)

"""What the demo's page says: its introduction, the note on each method, the summary of a comparison.

Owns: ``fidelity`` (what a method's output has in common with ``ar``'s, stated exactly: the
same distribution for a lossless method, a bound or no bound for a lossy one, and for ``code``
which scales follow the small model rather than the large one), the page's title and promise
(``intro_markdown``, per model), the note under the method picker (``about_markdown``), the
summary under the images (``summary_markdown``: forward passes and wall-clock; on a next-scale
(VAR) pair forward passes per model and the peak K/V cache of each run; on a masked-set (MAR)
pair forward passes of the target and the draft model and the acceptance rate), the line on which
model drew each scale (``scales_markdown``) and the line on what each target forward of a MAR run
revealed (``verify_markdown``).

Must never: run, time or load anything; it words results it is given (``demos.report``), and
never calls a single wall-clock sample a speed-up or says more than is true.
"""

from __future__ import annotations

import dataclasses
import html
from typing import TYPE_CHECKING, Any

from demos.models import BASELINE, describe, grid_side, is_masked_set, is_next_scale, patch_nums, resolve_for
from mmaccel.image_families import draft_scales_of
from mmaccel.masked_set import verify_plan
from mmaccel.methods import (
    DESCRIPTIONS,
    LANTERN_DEFAULT_DELTA,
    LOSSLESS,
    CoDeConfig,
    CSpDConfig,
    JacobiConfig,
)

if TYPE_CHECKING:
    from demos.report import Comparison

TITLE = "# mmaccel: accelerated sampling of image models, side by side with plain decoding\n"
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


def _sides(pns: tuple[int, ...]) -> str:
    return f"{pns[0]}x{pns[0]}" if len(pns) == 1 else f"{pns[0]}x{pns[0]} to {pns[-1]}x{pns[-1]}"


def _scales(n: int) -> str:
    return "scale" if n == 1 else f"{n} scales"


def _code_fidelity(draft_scales: int | None, pns: tuple[int, ...] | None) -> str:
    if draft_scales is None or pns is None:
        return (
            "Lossy, no bound: the large model draws the first draft_scales scales, as under `ar`; the small "
            "model draws the rest, so those follow the small model's distribution, not the large model's that "
            "`ar` samples." + MEASURED
        )
    N, S, total = draft_scales, len(pns), sum(p * p for p in pns)
    small = sum(p * p for p in pns[N:])
    rest = "the last scale" if S - N == 1 else f"the other {S - N}"
    return (
        f"Lossy, no bound: the first {_scales(N)} of {S} ({_sides(pns[:N])}) come from the large model, "
        f"as under `ar`; the small model draws {rest} ({_sides(pns[N:])}: {small} of the {total} "
        "tokens), which follow the small model's distribution, not the large model's that `ar` samples."
        + MEASURED
    )


def fidelity(config: Any, grid_width: int, scales: tuple[int, ...] | None = None) -> tuple[bool | None, str]:
    """(lossless?, what the output has in common with ``ar``'s) for a resolved method config on a
    ``grid_width``-wide raster model, or for ``code`` on a next-scale model whose scales have the
    sides ``scales``; None for a method the demo knows nothing about."""
    name = config.name
    if name == BASELINE:
        return True, "The baseline: plain autoregressive sampling."
    if isinstance(config, CoDeConfig):
        return False, _code_fidelity(config.draft_scales, scales)
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


def cspd_fidelity(config: CSpDConfig, default_num_iter: int) -> tuple[bool, str]:
    """(lossless?, what the output has in common with ``ar``'s) for CSpD on a masked-set (MAR) pair
    (``num_iter`` None: ``default_num_iter``)."""
    if config.cspd_kappa is not None:
        return False, (
            f"Lossy, no bound: cspd_kappa {config.cspd_kappa:g} softens the acceptance ratio, so more draft values "
            "are kept than exact acceptance would keep, and the image follows the draft model more than the target "
            "model that `ar` samples." + MEASURED
        )
    n = config.num_iter or default_num_iter
    checks = len(verify_plan(n, config.gamma, round(config.prefill_ratio * n)))
    exact = (
        "each drafted value is kept with probability min(1, p/q) of the two models' Gaussian densities and "
        "the others are redrawn exactly from the residual, so the draft model changes which values come out, "
        "never their distribution"
    )
    if checks == n:  # every check covers one step: ar's own schedule
        return (
            True,
            f"Lossless: {exact}; with one step per check it samples exactly the distribution `ar` samples.",
        )
    return False, (
        f"Exact acceptance on a coarser schedule: {exact}. But the target checks the {config.gamma} steps of a "
        f"block in one forward, so the images follow the target model with each block's sets revealed as one "
        f"({checks} sets instead of `ar`'s {n}), not exactly `ar`'s distribution." + MEASURED
    )


def model_fidelity(config: Any, model: Any) -> tuple[bool | None, str]:
    """``fidelity`` of a resolved method config on ``model`` (raster, next-scale or masked-set)."""
    if is_masked_set(model):
        if isinstance(config, CSpDConfig):
            return cspd_fidelity(config, model.default_num_iter)
        return fidelity(config, 0)
    if is_next_scale(model):
        if isinstance(config, CoDeConfig):
            config = dataclasses.replace(config, draft_scales=draft_scales_of(config, model))
        return fidelity(config, 0, patch_nums(model))
    return fidelity(config, grid_side(model))


def about_markdown(name: str, model: Any) -> str:
    """What the method does and how its output relates to ``ar``'s, with its default options."""
    _, note = model_fidelity(resolve_for(name, {}, model), model)
    return f"**{name}**: {what_it_does(name)}.\n\n**Compared with `{BASELINE}`:** {note}"


def _scales_intro(model: Any) -> str:
    return (
        TITLE + f"Pick a class, and compare collaborative decoding (`code`) with plain next-scale decoding "
        f"(`{BASELINE}`) on {describe(model)}. Under `{BASELINE}` the large model draws every scale, one "
        "forward each. Under `code` the large model draws the first scales and the small model the later, "
        "larger ones: as many forwards in all, but those of the small model cost less, and its K/V cache is "
        "smaller. **The same seed with the same method always gives the same image.** `code` is lossy: the "
        "scales the small model draws follow its distribution, not the large model's; the note under the "
        "method picker says which scales."
    )


def _masked_intro(model: Any) -> str:
    return (
        TITLE + f"Pick a class, and compare continuous speculative decoding (`cspd`) with plain masked-set "
        f"decoding (`{BASELINE}`) on {describe(model)}. Under `{BASELINE}` the target model reveals the image's "
        "latent cells in a few sets, one forward per set. Under `cspd` the smaller draft model runs `gamma` "
        "steps and the target checks them all in one forward, keeping each drafted value with probability "
        "min(1, p/q) of the two models' Gaussian densities and redrawing the others exactly: fewer target "
        "forwards, plus the draft model's cheaper ones. **The same seed with the same method always gives the "
        "same image.** With exact acceptance (cspd_kappa empty) `cspd` samples the target model, with each "
        "checked block's sets revealed as one set; cspd_kappa makes it lossy. The note under the method picker "
        "says what that means for the options shown."
    )


def intro_markdown(choices: list[str], model: Any) -> str:
    """The page's title and what it promises: same seed and method, same image; lossless, same
    distribution (not the same picture); lossy, close, with the bound stated per method."""
    if is_next_scale(model):
        return _scales_intro(model)
    if is_masked_set(model):
        return _masked_intro(model)
    side = grid_side(model)
    kinds: dict[bool | None, list[str]] = {True: [], False: [], None: []}
    for name in choices:
        kinds[fidelity(resolve_for(name, {}, model), side)[0]].append(f"`{name}`")
    return (
        TITLE
        + f"Type a prompt, pick a method, and compare it with plain autoregressive decoding (`{BASELINE}`) "
        f"on the embedded {model.name} model ({side}x{side} = {model.num_image_tokens} image tokens). "
        "**The same seed with the same method always gives the same image** (with `window=auto`, once "
        "the window is chosen: a method's first requests may try a few; the summary names the one each "
        "run used). "
        f"`{BASELINE}` and a lossless method ({', '.join(kinds[True])}) sample the same distribution, "
        "not the same picture: for one seed their images usually differ. "
        f"Lossy methods ({', '.join(kinds[False])}) sample a distribution close to `{BASELINE}`'s; "
        "the note under the method picker says how close (its bound, or that it has none)."
    )


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


def _seconds(t: float) -> str:
    return f"{t:.2f} s" if t >= 0.1 else f"{t * 1000:.1f} ms"


def _span(sides: list[int]) -> str:
    return _sides(tuple(sides))


def scales_markdown(c: Comparison) -> str:
    """Which model drew each scale in both runs, in one line (next-scale comparisons only)."""
    s, parts = c.stats, []
    sides = s["scales"]
    for label, key in ((BASELINE, BASELINE), (c.request.method, "accelerated")):
        drew = s[key]["scale_models"]
        runs = [
            (who, [side for side, w in zip(sides, drew, strict=True) if w == who])
            for who in dict.fromkeys(drew)
        ]
        parts.append(f"`{label}`: " + ", ".join(f"the {who} {_span(got)}" for who, got in runs))
    return "**Which model drew each scale** (one forward per scale): " + "; ".join(parts) + "."


def _scales_summary(c: Comparison) -> str:
    """The table and notes under the images of a next-scale (VAR) comparison."""
    s, name = c.stats, c.request.method
    a, m, n = s[BASELINE], s["accelerated"], s["wall_clock_repeats"]
    timed = f"median of {n} timed runs" if n > 1 else "1 timed run"
    large, small = ([r["forwards_by_model"][who] for r in (a, m)] for who in ("large model", "small model"))
    rows = [
        f"| | `{BASELINE}` (baseline) | `{name}` |",
        "|---|---:|---:|",
        f"| forward passes, large model (`code`'s drafter) | {large[0]} | {large[1]} |",
        f"| forward passes, small model (`code`'s refiner) | {small[0]} | {small[1]} |",
        f"| wall-clock, {timed} | {_seconds(a['wall_clock_s'])} | {_seconds(m['wall_clock_s'])} |",
        f"| peak K/V cache | {a['peak_cache_mb']:.3g} MB | {m['peak_cache_mb']:.3g} MB |",
    ]
    cut, ratio = s["peak_cache_reduction_pct"], s["speedup_wall_clock"]
    sides, drew = s["scales"], m["scale_models"]
    handed = [side for side, who in zip(sides, drew, strict=True) if who == "small model"]
    cache = (
        f"**{cut:g}% less peak K/V cache** with `{name}`"
        if cut > 0
        else f"No less peak K/V cache with `{name}`"
    )
    notes = [
        f"{cache} ({a['peak_cache_mb']:.3g} MB under `{BASELINE}`, {m['peak_cache_mb']:.3g} MB under `{name}`): "
        "the largest K/V cache held at one time, from the caches' sizes, not timed. Under `code` the large "
        "model's cache holds only the scales it draws and is freed before the small model's fills.",
        f"Forward passes: {a['forward_passes']} under `{BASELINE}`, {m['forward_passes']} under `{name}`: "
        f"`{name}` does not save forwards. "
        + (
            f"It hands the last {_scales(len(handed))} ({_span(handed)}: {sum(x * x for x in handed)} of the "
            f"{s['num_tokens']} tokens) to the small model, whose forwards cost less; its first forward reads "
            "the large model's scales and draws the next one."
            if handed
            else "The large model drew every scale."
        ),
        f"Wall-clock ratio `{BASELINE}` / `{name}`: {ratio:.2f}x"
        + (" (below 1: the method was slower here)" if ratio < 1 else "")
        + f", from {timing_words(n)} after one warm-up run, seed fixed. This CPU is shared with other "
        "requests, so wall-clock is noisy; forward passes and cache sizes are not.",
        f"`{name}` ran with {options_text(s) or 'no options'}.",
        f"**Compared with `{BASELINE}`:** {s['fidelity']}",
        f"{s['num_tokens']} image tokens in {len(sides)} scales, class “{html.escape(s['prompt'])}”, seed {s['seed']}.",
    ]
    return "\n".join(rows) + "\n\n" + "\n\n".join(notes)


def verify_markdown(c: Comparison) -> str:
    """What each target forward revealed in both runs of a masked-set (MAR) comparison, in one line."""
    s, parts = c.stats, []
    for label, key in ((BASELINE, BASELINE), (c.request.method, "accelerated")):
        steps = s[key].get("verify_steps") or []
        drafted = [v for v in steps if v["drafted"]]
        text = f"`{label}`: {s[key]['forward_passes']} target forwards"
        if drafted:
            kept = sum(v["accepted"] * v["tokens"] for v in drafted) / max(
                sum(v["tokens"] for v in drafted), 1
            )
            text += (
                f", {len(steps) - len(drafted)} by the target alone, {len(drafted)} checking a block the draft model "
                f"drew ({kept:.0%} of those tokens kept from the draft)"
            )
        parts.append(text)
    return (
        "**What each target forward revealed** (box width: its tokens; under `cspd` the part kept from the "
        "draft model is shaded): " + "; ".join(parts) + "."
    )


def _masked_summary(c: Comparison) -> str:
    """The table and notes under the images of a masked-set (MAR) comparison."""
    s, name = c.stats, c.request.method
    a, m, n = s[BASELINE], s["accelerated"], s["wall_clock_repeats"]
    timed = f"median of {n} timed runs" if n > 1 else "1 timed run"
    target, draft = ([r["forwards"].get(role, 0) for r in (a, m)] for role in ("target", "draft"))
    rate = m.get("acceptance_rate")
    kept = "–" if rate is None else f"{rate:.1%} ({m['accepted']:g} of {m['drafted']} per image)"
    rows = [
        f"| | `{BASELINE}` (baseline) | `{name}` |",
        "|---|---:|---:|",
        f"| forward passes, target model | {target[0]} | {target[1]} |",
        f"| forward passes, draft model | {draft[0]} | {draft[1]} |",
        f"| drafted values kept (acceptance) | – | {kept} |",
        f"| wall-clock, {timed} | {_seconds(a['wall_clock_s'])} | {_seconds(m['wall_clock_s'])} |",
    ]
    ratio, fewer = s["speedup_wall_clock"], s["speedup_forward_passes"]
    forwards = (
        f"**{fewer:.2f}x fewer target forward passes** than `{BASELINE}` ({target[0]} / {target[1]}; exact, the "
        "same on any machine)"
        if fewer > 1
        else f"No fewer target forward passes than `{BASELINE}` ({target[0]} / {target[1]})"
    )
    notes = [
        forwards
        + (
            f"; `{name}` also ran the draft model {draft[1]} times, whose forwards cost less."
            if draft[1]
            else "."
        ),
        f"Wall-clock ratio `{BASELINE}` / `{name}`: {ratio:.2f}x"
        + (" (below 1: the method was slower here)" if ratio < 1 else "")
        + f", from {timing_words(n)} after one warm-up run, seed fixed. This CPU is shared with other "
        "requests, so wall-clock is noisy; forward passes are not.",
        f"`{name}` ran with {options_text(s) or 'no options'}"
        + (
            f"; `{BASELINE}` with {', '.join(f'{k}={v}' for k, v in s['baseline_options'].items())} too, so both take "
            "as many steps."
            if s.get("baseline_options")
            else "."
        ),
    ]
    if m.get("acceptance_per_verify"):
        notes.append(
            "Acceptance per checked block, in order: "
            + ", ".join(f"{x:.2f}" for x in m["acceptance_per_verify"])
            + "."
        )
    notes += [
        f"**Compared with `{BASELINE}`:** {s['fidelity']}",
        f"{s['num_tokens']} latent cells (continuous tokens), {a['num_iter']} steps under `{BASELINE}`, "
        f"class “{html.escape(s['prompt'])}”, seed {s['seed']}.",
    ]
    return "\n".join(rows) + "\n\n" + "\n\n".join(notes)


def summary_markdown(c: Comparison) -> str:
    """The table and notes under the images."""
    if "scales" in c.stats:
        return _scales_summary(c)
    if c.stats.get("family") == "masked-set":
        return _masked_summary(c)
    s, name = c.stats, c.request.method
    a, m, n = s[BASELINE], s["accelerated"], s["wall_clock_repeats"]
    opts = options_text(s)
    timed = f"median of {n} timed runs" if n > 1 else "1 timed run"
    rows = [
        f"| | `{BASELINE}` (baseline) | `{name}` |",
        "|---|---:|---:|",
        f"| forward passes | {a['forward_passes']} | {m['forward_passes']} |",
        f"| tokens per forward | {a['tokens_per_forward']:.2f} | {m['tokens_per_forward']:.2f} |",
        f"| wall-clock, {timed} | {_seconds(a['wall_clock_s'])} | {_seconds(m['wall_clock_s'])} |",
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

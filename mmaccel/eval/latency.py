"""Latency benchmark: forward passes, tokens per forward, wall-clock, memory, ratio vs ``ar``.

Owns: timing ``generate_image`` for several methods on one model and one prompt set, in one
process, after a warm-up run of every method, with runs interleaved across methods so that
drift in machine load hits all of them alike; medians over repeats; speed-up is always
``median(ar) / median(method)`` from the same run.

Usage: ``python -m mmaccel.eval.latency --methods ar,sjd,sjd-coupled:init=vertical --batch 4``

Must never: assert on timings, or compare against a baseline measured in another run.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mmaccel.eval.common import MethodSpec, PeakMemory, markdown_table, median, parse_methods

log = logging.getLogger(__name__)


@dataclass
class LatencyRow:
    method: str
    forward_passes: float  # median over images of target forwards spent on that image
    tokens_per_forward: float
    latency_s: float  # median wall-clock of one call (one batch)
    images_per_s: float
    speedup_vs_ar: float
    peak_mem_mb: float

    HEADERS = ("method", "forward passes (median/image)", "tokens/forward", "wall-clock median (s)",
               "images/s", "speed-up vs ar", "peak memory (MB)")  # fmt: skip

    def cells(self) -> tuple:
        return (self.method, self.forward_passes, self.tokens_per_forward, self.latency_s, self.images_per_s,
                self.speedup_vs_ar, self.peak_mem_mb)  # fmt: skip


def measure_latency(
    methods: Sequence[MethodSpec],
    prompts: Sequence[str],
    model="shapes-t2i",
    repeats: int = 3,
    seed: int = 0,
    guidance_scale: float | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> list[LatencyRow]:
    """Median statistics per method over ``repeats`` calls on ``prompts`` (one batch per call)."""
    from mmaccel.images import generate_image

    if not any(m.name == "ar" for m in methods):
        methods = [MethodSpec("ar"), *methods]  # every speed figure is a ratio against ar
    runs: dict[str, list] = {m.label: [] for m in methods}

    def call(m: MethodSpec, s: int):
        return generate_image(list(prompts), m.name, model=model, seed=s, guidance_scale=guidance_scale,
                              return_output=True, **m.options)  # fmt: skip

    for m in methods:  # warm-up: first-call allocations, lazy loading, kernel selection
        call(m, seed)
    with tqdm(total=repeats * len(methods), desc="latency", disable=not progress) as bar:
        for r in range(repeats):
            for m in methods:
                with PeakMemory(device) as mem:
                    out = call(m, seed + r)
                runs[m.label].append((out, mem.peak_mb))
                bar.update()
    ar_latency = median([o.latency_s for o, _ in runs["ar"]])
    rows = []
    for m in methods:
        outs = runs[m.label]
        nfe = median([float(x) for o, _ in outs for x in o.generate_output.forward_passes_per_row])
        lat = median([o.latency_s for o, _ in outs])
        rows.append(LatencyRow(m.label, nfe, outs[0][0].num_tokens / nfe, lat, len(prompts) / lat,
                               ar_latency / lat, max(p for _, p in outs)))  # fmt: skip
    return rows


def format_rows(rows: Sequence[LatencyRow]) -> str:
    return markdown_table(LatencyRow.HEADERS, [r.cells() for r in rows])


def default_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` held-out (test-split) Shapes-T2I captions."""
    from image_ar.shapes import ShapesT2I

    data = ShapesT2I(n, seed=seed, split="test")
    from image_ar.shapes import caption

    return [caption(data.scene(i)) for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mmaccel eval latency", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ar,sjd,sjd-coupled", help="e.g. ar,sjd:window=8,init=vertical")
    parser.add_argument("--model", default="shapes-t2i")
    parser.add_argument("--batch", type=int, default=4, help="prompts per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    rows = measure_latency(parse_methods(args.methods), default_prompts(args.batch, args.seed), args.model,
                           args.repeats, args.seed, args.guidance_scale)  # fmt: skip
    print(f"model {args.model}, batch {args.batch}, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(format_rows(rows))


if __name__ == "__main__":
    main()

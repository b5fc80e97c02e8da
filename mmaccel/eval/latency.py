"""Latency benchmark: forward passes, tokens per forward, wall-clock, memory, ratio vs ``ar``.

Owns: timing ``generate_image`` for several methods on one model and one prompt set, in one
process, through ``runner.run_chunks`` (the prompt set cut into seeded chunks of ``batch``,
exactly as ``eval compare`` cuts it, so both report the same forward passes), after a warm-up
run of every method, with calls interleaved across methods so that drift in machine load hits
all of them alike; medians over chunks and repeats (repeats re-time the same seeds); speed-up
is always ``median(ar) / median(method)`` from the same run.

Usage: ``mmaccel eval latency --methods ar,sjd,sjd-coupled:init=vertical --prompts 8 --batch 8``
(prompts and model from ``--benchmark``, default ``shapes-t2i``), or on a masked-set (MAR) pair
``mmaccel eval latency --model fashion-mar --methods ar,cspd:gamma=4`` (adds the draft model's
forwards and the acceptance rate)

Must never: assert on timings, or compare against a baseline measured in another run.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mmaccel.eval.common import MethodSpec, markdown_table, parse_methods
from mmaccel.eval.runner import make_runs, plan_chunks, run_chunks
from mmaccel.eval.summary import speed_stats

__all__ = ["LatencyRow", "format_rows", "measure_latency", "main"]
log = logging.getLogger(__name__)


@dataclass
class LatencyRow:
    method: str
    forward_passes: float  # median over images of target forwards spent on that image
    tokens_per_forward: float
    latency_s: float  # median wall-clock of one call (one chunk)
    images_per_s: float
    speedup_vs_ar: float
    peak_mem_mb: float
    forward_passes_per_prompt: list[int]  # in prompt order (not a table column)
    # a run that drafts values and checks them (CSpD on a masked-set pair), else None / empty:
    acceptance_rate: float | None = None  # median over calls of the share of drafted values kept
    draft_forwards: float | None = None  # median over calls of the draft model's forwards
    acceptance_per_verify: list[float] = field(default_factory=list)  # per checked block (not a column)

    HEADERS = ("method", "forward passes (median/image)", "tokens/forward", "wall-clock median (s)",
               "images/s", "speed-up vs ar", "peak memory (MB)")  # fmt: skip
    DRAFT_HEADERS = ("draft forwards (median/image)", "acceptance (median/call)")

    def cells(self) -> tuple:
        return (self.method, self.forward_passes, self.tokens_per_forward, self.latency_s, self.images_per_s,
                self.speedup_vs_ar, self.peak_mem_mb)  # fmt: skip

    def draft_cells(self) -> tuple:
        return tuple("-" if v is None else v for v in (self.draft_forwards, self.acceptance_rate))


def measure_latency(
    methods: Sequence[MethodSpec],
    prompts: Sequence[str],
    model: Any = None,
    repeats: int = 3,
    seed: int = 0,
    guidance_scale: float | None = None,
    temperature: float | None = None,
    compile: str = "best",
    device: str = "cpu",
    progress: bool = True,
    batch: int | None = None,
    warmup: bool = True,
) -> list[LatencyRow]:
    """Median statistics per method over ``repeats`` passes over ``prompts`` in chunks of
    ``batch`` (default: all prompts in one call) on ``model`` (a registered name or an
    ``ImageModel``; None: the library's default); ``ar`` is added when missing."""
    runs = make_runs(methods)
    chunks = plan_chunks(len(prompts), batch or len(prompts))
    results = run_chunks(runs, prompts, chunks, model=model, seed=seed, guidance_scale=guidance_scale,
                         temperature=temperature, compile=compile, repeats=repeats, warmup=warmup, device=device, progress=progress,
                         desc="latency")  # fmt: skip
    ar_rows = [r for r in results if r.label == "ar"]
    rows = []
    for run in runs:
        s = speed_stats([r for r in results if r.label == run.label], ar_rows)
        rows.append(LatencyRow(run.label, s["nfe_median"], s["tokens_per_forward"], s["latency_median_s"],
                               s["images_per_s"], s["speedup_vs_ar"], s["peak_mem_mb"],
                               s["forward_passes_per_prompt"], s.get("acceptance_rate"),
                               s.get("draft_forwards_median"), s.get("acceptance_per_verify", [])))  # fmt: skip
    return rows


def format_rows(rows: Sequence[LatencyRow]) -> str:
    """The latency table; with the draft model's forwards and the acceptance rate when a run drafts."""
    if not any(r.acceptance_rate is not None or r.draft_forwards is not None for r in rows):
        return markdown_table(LatencyRow.HEADERS, [r.cells() for r in rows])
    return markdown_table(
        LatencyRow.HEADERS + LatencyRow.DRAFT_HEADERS, [r.cells() + r.draft_cells() for r in rows]
    )


def main(argv: list[str] | None = None) -> int:
    """``mmaccel eval latency``: the latency table of the benchmark's prompts; 2 on a bad argument."""
    from mmaccel.eval.benchmarks import benchmark_for
    from mmaccel.eval.commands import add_run_arguments

    parser = argparse.ArgumentParser(prog="mmaccel eval latency", description=__doc__.splitlines()[0])
    add_run_arguments(parser, prompts=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    args.prompts = args.prompts or args.batch  # default: one call of --batch prompts per method
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    try:
        bench = benchmark_for(args.benchmark, args.model)
        model = args.model or bench.model
        rows = measure_latency(parse_methods(args.methods), bench.prompts(args.prompts, args.prompt_seed), model,
                               args.repeats, args.seed, args.guidance_scale, args.temperature, compile=args.compile, batch=args.batch,
                               warmup=args.warmup)  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        print(f"mmaccel eval latency: error: {err}", file=sys.stderr)
        return 2
    print(f"benchmark {bench.name}, model {model}, {args.prompts} prompts (prompt seed {args.prompt_seed}) in "
          f"batches of {args.batch}, seed {args.seed}, {args.repeats} repeats, {platform.machine()} CPU, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Compare several methods on one prompt set: speed beside quality, as a table, JSON and plots.

Owns: ``eval compare`` (and its narrower forms ``eval fid`` and ``eval accuracy``, and the
alias ``eval t2i``): generate the benchmark's prompts with every method through
``runner.run_chunks`` (seeded chunks, sharded over the processes of ``accelerate launch`` or
``torchrun``, gathered on the main process), then per method: prompt accuracy (the
benchmark's checker, in the columns it declares, with 95% binomial intervals where it gives
their counts), Frechet distance against the benchmark's real images with a named feature
network, forward passes per image and their ratio to ``ar``, tokens per
forward, the accepted-tokens-per-step histogram, and wall-clock per call with its ratio to
``ar`` from the same run; for a run that drafts and checks (CSpD on a masked-set pair such as
``fashion-mar``) also the draft model's forwards and the acceptance rate (per call and per
checked block, medians over calls). ``--noise-floor`` adds ``ar`` with other seeds: how far a lossless
method may drift by chance alone. The main process writes ``results.md``, ``results.json``,
``speed_quality.png``, ``accepted_histogram.png`` and sample grids into ``--out``.
``eval fid`` / ``eval accuracy`` also score a folder of images (``--images DIR``).

Usage: ``mmaccel eval compare --methods ar,sjd,sjd-coupled:init=vertical --prompts 200``
(``--benchmark NAME`` picks the prompt set, checker and FD reference; default ``shapes-t2i``, or
the one meant for ``--model``: ``--model fashion-mar --methods ar,cspd:gamma=4,cspd:gamma=8``)

Must never: reuse a baseline from another run, or hide a method's failure to reach a target.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmaccel.eval.benchmarks import (
    DEFAULT_BENCHMARK,
    AccuracyColumn,
    Benchmark,
    benchmark_for,
    load_benchmark,
    metrics_of,
)
from mmaccel.eval.common import MethodSpec, markdown_table, parse_methods
from mmaccel.eval.runner import (
    gather_results,
    in_prompt_order,
    make_runs,
    plan_chunks,
    process_state,
    resolve_model,
    run_chunks,
    shard,
)
from mmaccel.eval.summary import FDReference, fd_column, fd_reference, summarise

log = logging.getLogger(__name__)
ALL_METRICS = ("speed", "accuracy", "fd")
# entries of a histogram line in results.md: a masked-set step may emit any number of tokens up to
# the image's, so every non-empty count is listed up to here (the JSON holds them all)
MAX_HISTOGRAM_ENTRIES = 24


@dataclass
class Comparison:
    """Everything the main process knows after a comparison."""

    summary: dict[str, dict[str, Any]]  # per run label
    meta: dict[str, Any]
    prompts: list[str]
    images: dict[str, list[Image.Image]]  # per run label, in prompt order
    accuracy_columns: tuple[AccuracyColumn, ...] = ()  # how the benchmark shows its accuracy


def compare(
    methods: Sequence[MethodSpec],
    prompts: Sequence[str],
    *,
    batch: int = 8,
    seed: int = 0,
    model: Any = None,
    benchmark: str | Benchmark = DEFAULT_BENCHMARK,
    guidance_scale: float | None = None,
    temperature: float | None = None,
    compile: str = "best",
    metrics: Sequence[str] = ALL_METRICS,
    fd_ref: FDReference | None = None,
    noise_floor: bool = False,
    warmup: bool = True,
    cpu: bool = False,
    progress: bool = True,
) -> Comparison | None:
    """Run every method over ``prompts`` (this process's share of the chunks) and score them.

    ``model``: a registered name or an ``ImageModel`` (None: ``benchmark``'s model).
    ``benchmark`` scores accuracy; FD is against ``fd_ref`` (``summary.fd_reference``).
    Returns the comparison on the main process and None on the others.
    """
    bench = load_benchmark(benchmark)
    metrics_of(bench, [m for m in metrics if m == "accuracy"], strict=True)  # fail before generating
    if "fd" in metrics and fd_ref is None:
        raise ValueError("metric 'fd' needs an FDReference (summary.fd_reference)")
    model = bench.model if model is None else model
    state = process_state(cpu)
    runs = make_runs(methods, noise_floor)
    chunks = shard(plan_chunks(len(prompts), batch), state.process_index, state.num_processes)
    image_model = resolve_model(model, state.device)
    results = run_chunks(runs, prompts, chunks, model=image_model, seed=seed, guidance_scale=guidance_scale,
                         temperature=temperature, compile=compile, warmup=warmup, device=state.device, progress=progress and state.is_local_main_process,
                         desc=f"compare (process {state.process_index + 1}/{state.num_processes})", state=state)  # fmt: skip
    results = gather_results(results, state)
    if not state.is_main_process:
        return None
    labels = [r.label for r in runs]
    summary = summarise(
        results, labels, prompts, metrics=metrics, fd_ref=fd_ref, benchmark=bench, progress=progress
    )
    device = state.device
    meta = {
        "benchmark": bench.name,
        "model": model if isinstance(model, str) else getattr(model, "name", type(model).__name__),
        "prompts": len(prompts), "batch": batch, "seed": seed,
        "guidance": image_model.default_guidance if guidance_scale is None else guidance_scale,
        "temperature": image_model.default_temperature if temperature is None else temperature,
        "processes": state.num_processes, "threads_per_process": torch.get_num_threads(),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU",
        "torch": torch.__version__,
    }  # fmt: skip
    if fd_ref is not None and "fd" in metrics:
        meta["fd"] = {"extractor": fd_ref.name, "real_images": fd_ref.real, "real_seed": fd_ref.real_seed,
                      "stats": str(fd_ref.stats_path)}  # fmt: skip
    images = {label: [im for r in in_prompt_order(results, label) for im in r.images] for label in labels}
    return Comparison(summary, meta, list(prompts), images, bench.accuracy_columns)


def _ci(p: float, n: float) -> float:
    return 1.96 * math.sqrt(max(p * (1 - p), 1e-9) / max(n, 1))


def _accuracy_cell(column: AccuracyColumn):
    if column.n_key is None:
        return lambda s: s[column.key]
    return lambda s: f"{s[column.key]:.3f} ± {_ci(s[column.key], s[column.n_key]):.3f}"


def to_markdown(
    summary: dict[str, dict[str, Any]], meta: dict[str, Any], accuracy_columns: Sequence[AccuracyColumn] = ()
) -> str:
    """The results table (columns for the metrics present; accuracy as the benchmark's
    ``accuracy_columns``, default one plain ``accuracy`` column) and the per-method histograms."""
    first = next(iter(summary.values()))
    fd = fd_column(summary)
    headers, cols = ["method"], []
    accuracy_columns = tuple(accuracy_columns) or (AccuracyColumn("accuracy", "accuracy"),)
    if "accuracy" in first:
        headers += [c.header for c in accuracy_columns]
        cols += [_accuracy_cell(c) for c in accuracy_columns]
    if fd:
        headers.append(fd[1])
        cols.append(lambda s: s[fd[0]])
    if "nfe_median" in first:
        headers += ["NFE/image (median)", "NFE vs ar", "tokens/forward", "wall-clock/call (s)", "wall-clock vs ar",
                    "peak memory (MB)"]  # fmt: skip
        cols += [lambda s: s["nfe_median"], lambda s: s["nfe_ratio_vs_ar"], lambda s: s["tokens_per_forward"],
                 lambda s: s["latency_median_s"], lambda s: s["wall_clock_ratio_vs_ar"],
                 lambda s: s["peak_mem_mb"]]  # fmt: skip
    if any("acceptance_rate" in s or "draft_forwards_median" in s for s in summary.values()):
        # runs that draft and check (CSpD on a masked-set pair); "-" for the others (ar)
        headers += ["draft forwards/image (median)", "acceptance (median/call)"]
        cols += [lambda s: s.get("draft_forwards_median", "-"), lambda s: s.get("acceptance_rate", "-")]
    rows = [[label, *(c(s) for c in cols)] for label, s in summary.items()]
    head = ", ".join(
        f"{k} {'model default' if v is None else v}" for k, v in meta.items() if not isinstance(v, dict)
    )
    text = f"{head}\n\n{markdown_table(headers, rows)}\n"
    if "accuracy" in first and any(c.n_key for c in accuracy_columns):
        text += "\n(± is the 95% binomial interval.)\n"
    if "accepted_histogram" in first:
        lines = []
        for label, s in summary.items():
            h, total = s["accepted_histogram"], sum(s["accepted_histogram"]) or 1
            shown = [(k, c) for k, c in enumerate(h) if c]
            lines.append(
                f"- `{label}`: "
                + ", ".join(f"{k}: {c / total:.3f}" for k, c in shown[:MAX_HISTOGRAM_ENTRIES])
                + (", ..." if len(shown) > MAX_HISTOGRAM_ENTRIES else "")
            )
        text += "\nTokens emitted per verify step (fraction of steps):\n\n" + "\n".join(lines) + "\n"
    if any(s.get("config") for s in summary.values()):
        text += (
            "\nWhat ran (options not named take the model's method defaults):\n\n"
            + "\n".join(f"- `{label}`: `{s['config']}`" for label, s in summary.items() if s.get("config"))
            + "\n"
        )
    return text


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_")


def grid(images: Sequence[Image.Image], cols: int = 8) -> Image.Image:
    """Images pasted left to right, top to bottom."""
    w, h = images[0].size
    out = Image.new("RGB", (min(cols, len(images)) * w, math.ceil(len(images) / cols) * h), "white")
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * w, (i // cols) * h))
    return out


def write_outputs(
    comp: Comparison, out: Path, grid_images: int = 16, save_images: bool = False
) -> list[Path]:
    """``results.md``, ``results.json``, the plots, sample grids and (optionally) every image
    with its ``prompts.txt`` (a folder ``eval accuracy --images`` reads back)."""
    from mmaccel.eval.plots import plot_histograms, plot_speed_quality

    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(comp.summary, comp.meta, comp.accuracy_columns)
    written = [out / "results.md", out / "results.json"]
    written[0].write_text(md)
    written[1].write_text(
        json.dumps({"meta": comp.meta, "prompts": comp.prompts, "summary": comp.summary}, indent=1)
    )
    written += [p for p in (plot_speed_quality(comp.summary, out / "speed_quality.png"),
                            plot_histograms(comp.summary, out / "accepted_histogram.png")) if p]  # fmt: skip
    for label, images in comp.images.items():
        if grid_images > 0:
            written.append(out / f"samples_{_slug(label)}.png")
            grid(images[:grid_images]).save(written[-1])
        if save_images:
            folder = out / "images" / _slug(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(images):
                im.save(folder / f"{i:05d}.png")
            (folder / "prompts.txt").write_text("\n".join(comp.prompts) + "\n")
            written.append(folder)
    return written


def score_folder(folder: Path, metrics: Sequence[str], fd_ref: FDReference | None, prompt_file: Path | None = None,
                 benchmark: str | Benchmark = DEFAULT_BENCHMARK) -> dict[str, Any]:  # fmt: skip
    """Accuracy (``benchmark``'s checker) and/or FD of the ``*.png`` images of ``folder`` (sorted
    by name); accuracy pairs them with the lines of ``prompt_file`` (default ``folder/prompts.txt``)."""
    from mmaccel.eval.summary import accuracy, frechet

    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise ValueError(f"no .png images in {folder}")
    images = [Image.open(p).convert("RGB") for p in paths]
    scores: dict[str, Any] = {"images": len(images)}
    if "accuracy" in metrics:
        prompt_file = prompt_file or folder / "prompts.txt"
        prompts = [line for line in prompt_file.read_text().splitlines() if line.strip()]
        scores.update(accuracy(images, prompts, benchmark))
    if "fd" in metrics and fd_ref is not None:
        scores[f"fd_{fd_ref.name.lower()}"] = frechet(images, fd_ref, progress=True)
    return scores


def _in_process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _run(argv: list[str] | None, command: str, metrics: Sequence[str]) -> int:
    from mmaccel.eval.commands import add_run_arguments

    parser = argparse.ArgumentParser(prog=f"mmaccel eval {command}", description=__doc__.splitlines()[0])
    add_run_arguments(parser, prompts=200)
    parser.add_argument("--out", type=Path, default=Path(f"outputs/{command}"), help="output directory")
    parser.add_argument("--noise-floor", action="store_true", help="add ar with other seeds")
    parser.add_argument("--grid", type=int, default=16, help="images per method in the sample grid (0: none)")
    parser.add_argument("--save-images", action="store_true", help="also save every image with prompts.txt")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA exists")
    if "fd" in metrics:
        parser.add_argument("--extractor", default=None,
                            help="the benchmark's feature network (shapesnet for shapes-t2i; the default) or inception")  # fmt: skip
        parser.add_argument("--real", type=int, default=1000, help="real images for the Frechet distance")
        parser.add_argument(
            "--real-seed", type=int, default=1, help="the benchmark's seed of the real images"
        )
        parser.add_argument("--real-stats", type=Path, default=None,
                            help="cache file of the real-image statistics (default: ~/.cache/mmaccel/...)")  # fmt: skip
    if command in ("fid", "accuracy"):
        parser.add_argument(
            "--images", type=Path, default=None, help="score this folder of .png images instead"
        )
        parser.add_argument(
            "--prompt-file", type=Path, default=None, help="prompts of --images, one per line"
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        bench = benchmark_for(args.benchmark, args.model)
        # compare shows what the benchmark can score; fid and accuracy insist on their metric
        metrics = metrics_of(bench, metrics, strict=command != "compare")
        fd_ref = (
            fd_reference(bench, args.extractor, args.real, args.real_seed, args.real_stats)
            if "fd" in metrics
            else None
        )
        if getattr(args, "images", None) is not None:
            scores = score_folder(args.images, metrics, fd_ref, args.prompt_file, bench)
            print(markdown_table(["folder", *scores], [[str(args.images), *scores.values()]]))
            return 0
        comp = compare(parse_methods(args.methods), bench.prompts(args.prompts, args.prompt_seed), batch=args.batch,
                       seed=args.seed, model=args.model, benchmark=bench, guidance_scale=args.guidance_scale,
                       temperature=args.temperature, compile=args.compile, metrics=metrics,
                       fd_ref=fd_ref, noise_floor=args.noise_floor, warmup=args.warmup, cpu=args.cpu)  # fmt: skip
        if _in_process_group():
            # leave together: a worker that tore its gloo group down and exited while the main
            # process was still scoring sometimes died with SIGABRT ("terminate called without
            # an active exception"), failing the launch. Not on the error path, where the
            # others may be inside another collective.
            torch.distributed.barrier()
    except (ValueError, FileNotFoundError) as err:
        print(f"mmaccel eval {command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if _in_process_group():
            torch.distributed.destroy_process_group()
    if comp is None:  # not the main process: rank 0 writes the outputs
        return 0
    comp.meta["prompt_seed"] = args.prompt_seed
    written = write_outputs(comp, args.out, args.grid, args.save_images)
    print(to_markdown(comp.summary, comp.meta, comp.accuracy_columns))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``mmaccel eval compare`` (and ``eval t2i``): every metric, table, JSON and plots."""
    return _run(argv, "compare", ALL_METRICS)


def main_fid(argv: list[str] | None = None) -> int:
    """``mmaccel eval fid``: Frechet distance (with forward passes) per method, or of ``--images``."""
    return _run(argv, "fid", ("speed", "fd"))


def main_accuracy(argv: list[str] | None = None) -> int:
    """``mmaccel eval accuracy``: prompt accuracy (with forward passes) per method, or of ``--images``."""
    return _run(argv, "accuracy", ("speed", "accuracy"))


if __name__ == "__main__":
    raise SystemExit(main())

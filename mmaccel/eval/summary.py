"""Per-method figures from the records of ``runner.run_chunks``: speed and quality.

Owns: the speed statistics every command reports (forward passes per image, tokens per
forward, wall-clock per call, images/s, peak memory, ratios against ``ar`` from the same
records; for a run that drafts, forwards per model role and the acceptance rate), prompt
accuracy (the benchmark's checker, see ``benchmarks.Benchmark``), and the Frechet distance
against the benchmark's real images under a named feature extractor (its own network or
Inception), with the real images' statistics cached to a file whose name carries the
benchmark, the extractor, a fingerprint of its weights, the number of real images and their
seed.

Must never: generate images, print, know a dataset (the benchmark supplies prompts, checker,
feature network and real images), or mix records of different runs into one figure.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from mmaccel.eval.benchmarks import DEFAULT_BENCHMARK, INCEPTION, Benchmark, load_benchmark, metrics_of
from mmaccel.eval.common import median
from mmaccel.eval.runner import ChunkResult, in_prompt_order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FDReference:
    """Where the real-image side of the Frechet distance comes from."""

    extractor: nn.Module | None  # None: Inception (only when its weights are on this machine)
    name: str  # the label every FD figure carries, e.g. "ShapesNet"
    stats_path: Path  # cached real-image feature statistics
    real: int  # number of real images
    real_seed: int  # the benchmark's seed of the real images
    benchmark: str  # whose real images
    real_images: Callable[[int, int], Sequence[Image.Image]]  # (n, seed) -> real images


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mmaccel`` (``~/.cache/mmaccel``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmaccel"


def fingerprint(module: nn.Module) -> str:
    """A short hash of a network's weights: cached statistics are only reused with the same weights."""
    h = hashlib.sha1()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:10]


def fd_reference(benchmark: str | Benchmark = DEFAULT_BENCHMARK, extractor: str | None = None, real: int = 1000,
                 real_seed: int = 1, stats_path: Path | str | None = None) -> FDReference:  # fmt: skip
    """The FD reference of ``benchmark``: its real images under ``extractor``.

    ``extractor``: the benchmark's own feature network (by lower-case name, e.g.
    ``"shapesnet"``; the default when it has one) or ``"inception"`` (torchmetrics' Inception,
    only where its weights are present). The statistics cache file is named after the
    benchmark, the extractor, a fingerprint of its weights, ``real`` and ``real_seed``.
    """
    bench = load_benchmark(benchmark)
    metrics_of(bench, ["fd"], strict=True)
    extractor = extractor or bench.extractors[0]
    if real < 2:
        raise ValueError(f"the Frechet distance needs at least 2 real images, got {real}")
    if bench.feature_net is not None and extractor == bench.feature_net.key:
        net: nn.Module | None = bench.feature_net.load()
        name, tag = bench.feature_net.name, fingerprint(net)
    elif extractor == INCEPTION:
        from mmaccel.eval.fid import inception_available

        if not inception_available():
            raise ValueError("Inception weights are not on this machine and cannot be downloaded; use "
                             + (bench.feature_net.key if bench.feature_net else "a benchmark with a feature network"))  # fmt: skip
        net, name, tag = None, "Inception", "torchmetrics"
    else:
        raise ValueError(f"unknown feature extractor {extractor!r} for benchmark {bench.name!r}; "
                         f"use {' or '.join(bench.extractors)}")  # fmt: skip
    default = default_cache_dir() / f"fd_{bench.name}_{name}_{tag}_real{real}_seed{real_seed}.pt"
    path = Path(stats_path) if stats_path else default
    return FDReference(net, name, path, real, real_seed, bench.name, bench.real_images)


def frechet(images: Sequence[Image.Image], ref: FDReference, progress: bool = False) -> float:
    """FD of ``images`` against ``ref`` (real images made only when the cache is missing)."""
    from mmaccel.eval.fid import frechet_distance

    reals = None
    if not ref.stats_path.exists():
        log.info("making %d real images of %s (seed %d)", ref.real, ref.benchmark, ref.real_seed)
        reals = ref.real_images(ref.real, ref.real_seed)
    return frechet_distance(
        images, reals, extractor=ref.extractor, name=ref.name, real_stats=ref.stats_path
    ).fid


def accuracy(
    images: Sequence[Image.Image], prompts: Sequence[str], benchmark: str | Benchmark = DEFAULT_BENCHMARK
) -> dict[str, float]:
    """The benchmark's prompt accuracy of images paired with prompts (must hold ``"accuracy"``)."""
    bench = load_benchmark(benchmark)
    metrics_of(bench, ["accuracy"], strict=True)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    figures = dict(bench.accuracy(list(images), list(prompts)))
    if "accuracy" not in figures:
        raise ValueError(
            f"benchmark {bench.name!r}: its accuracy gave no 'accuracy' figure ({', '.join(figures)})"
        )
    return figures


def speed_stats(rows: Sequence[ChunkResult], ar_rows: Sequence[ChunkResult]) -> dict[str, Any]:
    """Speed of one run (all its calls, every repeat) against ``ar``'s calls from the same run.

    Forward passes come from repeat 0 in prompt order (repeats reuse the seeds, so they
    repeat the counts); wall-clock figures use every call.
    """
    label = rows[0].label
    first = in_prompt_order(rows, label)
    nfe = [n for r in first for n in r.forward_passes]
    ar_nfe = [n for r in in_prompt_order(ar_rows, ar_rows[0].label) for n in r.forward_passes]
    lat, ar_lat = median([r.latency_s for r in rows]), median([r.latency_s for r in ar_rows])
    hist: list[int] = []
    for r in first:
        hist += [0] * (len(r.accepted_histogram) - len(hist))
        for k, c in enumerate(r.accepted_histogram):
            hist[k] += c
    stats = {
        "forward_passes_per_prompt": nfe,
        "nfe_median": median([float(n) for n in nfe]),
        "nfe_mean": float(np.mean(nfe)),
        "nfe_ratio_vs_ar": float(np.mean(nfe) / np.mean(ar_nfe)),
        "tokens_per_forward": first[0].num_tokens * len(nfe) / float(sum(nfe)),
        "latency_median_s": lat,
        "wall_clock_ratio_vs_ar": lat / ar_lat,
        "speedup_vs_ar": ar_lat / lat,
        "images_per_s": sum(len(r.images) for r in rows) / sum(r.latency_s for r in rows),
        "peak_mem_mb": max(r.peak_mem_mb for r in rows),
        "accepted_histogram": hist,
    }
    stats.update(drafting_stats(first))
    return stats


def drafting_stats(calls: Sequence[ChunkResult]) -> dict[str, Any]:
    """What a run that counts forwards per model role, or drafts and checks values, adds to its
    speed figures (``{}`` for a run that does neither), medians over ``calls``:
    ``forwards_median`` (per role, e.g. ``{"target": 9, "draft": 24}`` under CSpD),
    ``draft_forwards_median`` (the draft model's), ``acceptance_rate`` (share of drafted values
    kept per call) and ``acceptance_per_verify`` (the same per checked block, block by block)."""
    out: dict[str, Any] = {}
    roles = list(dict.fromkeys(role for r in calls for role in r.forwards))
    if roles:
        out["forwards_median"] = {
            role: median([float(r.forwards.get(role, 0)) for r in calls]) for role in roles
        }
    if "draft" in roles:
        out["draft_forwards_median"] = out["forwards_median"]["draft"]
    rates = [r.acceptance_rate for r in calls if r.acceptance_rate is not None]
    if rates:
        out["acceptance_rate"] = median(rates)
        blocks = max(len(r.acceptance_per_verify) for r in calls)
        out["acceptance_per_verify"] = [
            median([r.acceptance_per_verify[k] for r in calls if k < len(r.acceptance_per_verify)])
            for k in range(blocks)
        ]
    return out


def fd_column(summary: dict[str, dict[str, Any]]) -> tuple[str, str] | None:
    """(key, label) of the FD figure in a summary, e.g. ("fd_shapesnet", "FD-ShapesNet")."""
    first = next(iter(summary.values()))
    return (
        (f"fd_{first['fd_extractor'].lower()}", f"FD-{first['fd_extractor']}")
        if "fd_extractor" in first
        else None
    )


def image_digest(images: Sequence[Image.Image]) -> str:
    """SHA-1 of the images' RGB bytes in order: equal digests, identical images."""
    h = hashlib.sha1()
    for im in images:
        h.update(np.asarray(im.convert("RGB")).tobytes())
    return h.hexdigest()


def summarise(
    results: Sequence[ChunkResult],
    labels: Sequence[str],
    prompts: Sequence[str],
    *,
    metrics: Sequence[str] = ("speed", "accuracy", "fd"),
    fd_ref: FDReference | None = None,
    benchmark: str | Benchmark = DEFAULT_BENCHMARK,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Figures per run label (``ar`` must be among them): ``metrics`` chooses speed, accuracy
    (``benchmark``'s checker) and fd (against ``fd_ref``)."""
    if "fd" in metrics and fd_ref is None:
        raise ValueError("metric 'fd' needs an FDReference")
    bench = load_benchmark(benchmark) if "accuracy" in metrics else None
    by_label = {label: [r for r in results if r.label == label] for label in labels}
    if "ar" not in by_label or not by_label["ar"]:
        raise ValueError("the records hold no plain 'ar' run; every ratio is against it")
    summary: dict[str, dict[str, Any]] = {}
    for label in tqdm(labels, desc="scoring", disable=not progress, leave=False):
        rows = by_label[label]
        images = [im for r in in_prompt_order(rows, label) for im in r.images]
        if len(images) != len(prompts):
            raise RuntimeError(f"{label!r}: {len(images)} images for {len(prompts)} prompts")
        s: dict[str, Any] = {"images_sha1": image_digest(images), "config": rows[0].config}
        if "accuracy" in metrics:
            s.update(accuracy(images, prompts, bench))
        if fd_ref is not None and "fd" in metrics:
            s[f"fd_{fd_ref.name.lower()}"] = frechet(images, fd_ref, progress)
            s["fd_extractor"] = fd_ref.name
        if "speed" in metrics:
            s.update(speed_stats(rows, by_label["ar"]))
        summary[label] = s
    return summary

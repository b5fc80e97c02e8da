"""CoDe ``draft_scales`` sweep on ``fashion-var``: speed, peak memory and quality against ``ar``.

Usage (from the repository root, nothing else running)::

    python docs/benchmarks/fashion_var/sweep.py quality 1000 100    # PROMPTS BATCH
    python docs/benchmarks/fashion_var/sweep.py speed 1 20 3        # BATCH PROMPTS REPEATS
    python docs/benchmarks/fashion_var/sweep.py speed 32 64 3
    python docs/benchmarks/fashion_var/sweep.py small 1000 100      # the small VAR alone (PROMPTS BATCH)
    python docs/benchmarks/fashion_var/sweep.py plot

``quality``: ``mmaccel eval compare`` of ``ar`` and ``code:draft_scales=N`` (N = 1..6) on the
first PROMPTS class-name prompts of the ``fashion-mnist`` benchmark (balanced: every class
equally often), generated in seeded chunks of BATCH (same labels and seeds for every method):
class consistency (the shipped FashionNet classifier) and FD in FashionNet's feature space
against the 10,000 real test images. Writes ``quality.json``.

``speed``: ``mmaccel eval latency`` of the same methods at batch BATCH (eager steps for every
method, ``ar`` included; after a warm-up call, medians over chunks and repeats, methods
interleaved, ratios against ``ar`` from this run), plus each method's peak K/V cache and its
peak heap growth per call. Writes ``speed_batch{BATCH}.json``.

``small``: the small VAR alone with ``ar`` on the ``quality`` prompts and seeds (the same
figures), written to ``quality_small.json``.

``plot``: ``sweep.png`` (speed-up at each batch and FD against N) from the JSON files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODEL, BENCHMARK = "fashion-var", "fashion-mnist"
SCALES = range(1, 7)  # draft_scales of the 7-scale pair: 1 .. 6


def specs():
    from mmaccel.eval.common import MethodSpec

    return [MethodSpec("ar")] + [MethodSpec("code", {"draft_scales": n}) for n in SCALES]


def quality(n_prompts: int, batch: int) -> None:
    from mmaccel.eval.benchmarks import load_benchmark
    from mmaccel.eval.compare import compare
    from mmaccel.eval.summary import fd_reference

    bench = load_benchmark(BENCHMARK)
    fd_ref = fd_reference(bench, real=10_000)
    comp = compare(specs(), bench.prompts(n_prompts, 0), batch=batch, seed=0, model=MODEL, benchmark=bench,
                   fd_ref=fd_ref, compile="eager", warmup=False)  # fmt: skip
    rows = {}
    for label, s in comp.summary.items():
        rows[label] = {k: v for k, v in s.items() if isinstance(v, int | float | str)}
    out = {"prompts": n_prompts, "batch": batch, "meta": comp.meta, "methods": rows}
    (HERE / "quality.json").write_text(json.dumps(out, indent=1) + "\n")
    for label, r in rows.items():
        print(label, {k: r[k] for k in r if k.startswith(("accuracy", "fd", "n"))})


def small(n_prompts: int, batch: int) -> None:
    import mmaccel
    from mmaccel.eval.benchmarks import load_benchmark
    from mmaccel.eval.common import MethodSpec
    from mmaccel.eval.compare import compare
    from mmaccel.eval.summary import fd_reference
    from mmaccel.image_ar.var.fashion_model import FashionVARPair

    pair = mmaccel.load_model(MODEL)
    alone = FashionVARPair(pair.refiner, None, pair.vqvae, pair.default_guidance, pair.default_temperature)
    alone.name = "fashion-var small VAR alone"
    bench = load_benchmark(BENCHMARK)
    comp = compare([MethodSpec("ar")], bench.prompts(n_prompts, 0), batch=batch, seed=0, model=alone,
                   benchmark=bench, fd_ref=fd_reference(bench, real=10_000), compile="eager", warmup=False)  # fmt: skip
    row = {k: v for k, v in comp.summary["ar"].items() if isinstance(v, int | float | str)}
    (HERE / "quality_small.json").write_text(
        json.dumps({"prompts": n_prompts, "batch": batch, "ar": row}, indent=1) + "\n"
    )
    print({k: row[k] for k in row if k.startswith(("accuracy", "fd"))})


def speed(batch: int, n_prompts: int, repeats: int) -> None:
    import mmaccel
    from mmaccel.eval.benchmarks import load_benchmark
    from mmaccel.eval.latency import format_rows, measure_latency

    torch.set_num_threads(2)
    prompts = load_benchmark(BENCHMARK).prompts(n_prompts, 0)
    rows = measure_latency(specs(), prompts, MODEL, repeats=repeats, batch=batch, compile="eager")
    print(format_rows(rows))
    model = mmaccel.load_model(MODEL)
    chunk = prompts[:batch]
    records = []
    for spec, row in zip(specs(), rows, strict=True):
        out = mmaccel.generate_image(chunk, spec.name, model=model, seed=0, return_output=True, compile="eager",
                                     **spec.options)  # fmt: skip
        records.append({"method": row.method, "latency_s": row.latency_s, "speedup_vs_ar": row.speedup_vs_ar,
                        "images_per_s": row.images_per_s, "forward_passes": row.forward_passes,
                        "peak_heap_mb": row.peak_mem_mb, "peak_cache_mb": out.peak_cache_mb,
                        "forwards": out.generate_output.extras["forwards"]})  # fmt: skip
    ar = records[0]
    for r in records:
        r["peak_cache_vs_ar"] = r["peak_cache_mb"] / ar["peak_cache_mb"]
        r["peak_heap_vs_ar"] = r["peak_heap_mb"] / ar["peak_heap_mb"] if ar["peak_heap_mb"] > 0 else None
    out = {"batch": batch, "prompts": n_prompts, "repeats": repeats, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "rows": records}  # fmt: skip
    (HERE / f"speed_batch{batch}.json").write_text(json.dumps(out, indent=1) + "\n")


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for path in sorted(HERE.glob("speed_batch*.json")):
        data = json.loads(path.read_text())
        rows = [r for r in data["rows"] if r["method"] != "ar"]
        ns = [int(r["method"].split("=")[1]) for r in rows]
        ax1.plot(ns, [r["speedup_vs_ar"] for r in rows], "o-", label=f"speed-up, batch {data['batch']}")
        ax1.plot(
            ns,
            [1 - r["peak_cache_vs_ar"] for r in rows],
            "s--",
            label=f"K/V memory saved, batch {data['batch']}",
        )
    ax1.axhline(1.7, color="grey", lw=0.8, ls=":")
    ax1.set_xlabel("draft_scales N (scales drawn by the large VAR)")
    ax1.set_ylabel("ratio against ar (the large VAR alone)")
    ax1.legend(fontsize=8)
    quality_path = HERE / "quality.json"
    if quality_path.exists():
        q = json.loads(quality_path.read_text())["methods"]
        fd_key = next(k for k in q["ar"] if k.startswith("fd"))
        ns = list(SCALES)
        fd = [q[f"code:draft_scales={n}"][fd_key] for n in ns]
        acc = [100 * q[f"code:draft_scales={n}"]["accuracy"] for n in ns]
        ax2.plot(ns, fd, "o-", color="C3", label="FD (FashionNet), code")
        ax2.axhline(q["ar"][fd_key], color="C3", ls=":", label="FD, ar")
        ax2.axhline(1.1 * q["ar"][fd_key], color="C3", ls="--", lw=0.8, label="FD, ar + 10%")
        ax2.set_ylabel("FD")
        ax3 = ax2.twinx()
        ax3.plot(ns, acc, "s-", color="C0", label="class consistency %, code")
        ax3.axhline(100 * q["ar"]["accuracy"], color="C0", ls=":", label="class consistency %, ar")
        ax3.set_ylabel("class consistency (%)")
        ax2.legend(loc="lower left", fontsize=8)
        ax3.legend(loc="lower right", fontsize=8)
    ax2.set_xlabel("draft_scales N")
    fig.suptitle("CoDe on fashion-var: the large VAR draws scales 0..N-1, the small VAR the rest")
    fig.tight_layout()
    fig.savefig(HERE / "sweep.png", dpi=110)
    print(HERE / "sweep.png")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"quality": quality, "small": small, "speed": speed, "plot": plot}[command](*map(int, args))

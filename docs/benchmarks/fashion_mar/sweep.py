"""CSpD ``gamma`` sweep on ``fashion-mar``: speed, acceptance and quality against ``ar``.

Usage (from the repository root, nothing else running)::

    python docs/benchmarks/fashion_mar/sweep.py quality 1000 100   # PROMPTS BATCH
    python docs/benchmarks/fashion_mar/sweep.py speed 1 20 3       # BATCH PROMPTS REPEATS
    python docs/benchmarks/fashion_mar/sweep.py speed 32 64 3
    python docs/benchmarks/fashion_mar/sweep.py plot
    python docs/benchmarks/fashion_mar/sweep.py tables

Methods: ``ar`` (the target MAR alone, the model's ``num_iter``), ``cspd:gamma=G`` for G in
``GAMMAS`` (exact acceptance), ``cspd:gamma=4,cspd_kappa=K`` (the official runner's softened
ratio; lossy), ``ar:num_iter=V`` with V the verify steps of ``cspd:gamma=4`` (the target alone
with as many forwards as CSpD spends on it: CSpD's output follows the target with its verify
steps' schedule, so this is the plain decode nearest to it in law) and the draft MAR alone.

``quality``: ``mmaccel eval compare`` on the first PROMPTS class-name prompts of the
``fashion-mnist`` benchmark (balanced), seeded chunks of BATCH, the same labels and seeds for
every method: class consistency (the shipped FashionNet classifier) and FD in FashionNet's
feature space against the 10,000 real test images. Writes ``quality.json``.

``speed``: ``mmaccel eval latency`` at batch BATCH (after a warm-up call, medians over chunks
and repeats, methods interleaved, ratios against ``ar`` from this run) plus each method's
forwards per model and acceptance rate. Writes ``speed_batch{BATCH}.json``.

``plot``: ``sweep.png`` from the JSON files. ``tables``: the README's markdown tables from them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODEL, BENCHMARK = "fashion-mar", "fashion-mnist"
GAMMAS = (2, 3, 4, 6, 8)  # the speed runs; the quality run takes QUALITY_GAMMAS (each costs minutes)
QUALITY_GAMMAS = (2, 4, 8)
KAPPAS = (4.0, 42.0)


def specs(gammas=GAMMAS):
    import mmaccel
    from mmaccel.eval.common import MethodSpec
    from mmaccel.masked_set import verify_plan

    pair = mmaccel.load_model(MODEL)
    n = pair.default_num_iter
    cspd = pair.method_defaults.get("cspd", {})
    prefill = round(cspd.get("prefill_ratio", 0.1) * n)
    twin = len(verify_plan(n, 4, prefill))
    out = [MethodSpec("ar")] + [MethodSpec("cspd", {"gamma": g}) for g in gammas]
    out += [MethodSpec("cspd", {"gamma": 4, "cspd_kappa": k}) for k in KAPPAS]
    out += [MethodSpec("ar", {"num_iter": twin})]
    return out


def _draft_alone():
    import mmaccel
    from mmaccel.image_ar.mar.fashion_model import FashionMARPair

    pair = mmaccel.load_model(MODEL)
    alone = FashionMARPair(pair.draft.mar, None, pair.vae, pair.latent_scale, pair.default_guidance,
                           pair.default_temperature, pair.default_num_iter, pair.target.head_steps)  # fmt: skip
    alone.name = "fashion-mar draft MAR alone"
    return alone


def _rows(summary) -> dict:
    return {
        label: {k: v for k, v in s.items() if isinstance(v, int | float | str)}
        for label, s in summary.items()
    }


def quality(n_prompts: int, batch: int) -> None:
    from mmaccel.eval.benchmarks import load_benchmark
    from mmaccel.eval.common import MethodSpec
    from mmaccel.eval.compare import compare
    from mmaccel.eval.summary import fd_reference

    bench = load_benchmark(BENCHMARK)
    fd_ref = fd_reference(bench, real=10_000)
    prompts = bench.prompts(n_prompts, 0)
    comp = compare(specs(QUALITY_GAMMAS), prompts, batch=batch, seed=0, model=MODEL, benchmark=bench, fd_ref=fd_ref,
                   compile="eager", warmup=False)  # fmt: skip
    alone = compare([MethodSpec("ar")], prompts, batch=batch, seed=0, model=_draft_alone(), benchmark=bench,
                    fd_ref=fd_ref, compile="eager", warmup=False)  # fmt: skip
    rows = _rows(comp.summary)
    rows["draft alone (ar)"] = _rows(alone.summary)["ar"]
    out = {"prompts": n_prompts, "batch": batch, "meta": comp.meta, "methods": rows}
    (HERE / "quality.json").write_text(json.dumps(out, indent=1) + "\n")
    for label, r in rows.items():
        print(label, {k: r[k] for k in r if k.startswith(("accuracy", "fd", "acceptance"))})


def speed(batch: int, n_prompts: int, repeats: int) -> None:
    import mmaccel
    from mmaccel.eval.benchmarks import load_benchmark
    from mmaccel.eval.latency import format_rows, measure_latency

    torch.set_num_threads(2)
    prompts = load_benchmark(BENCHMARK).prompts(n_prompts, 0)
    runs = specs()
    rows = measure_latency(runs, prompts, MODEL, repeats=repeats, batch=batch, compile="eager")
    print(format_rows(rows))
    model = mmaccel.load_model(MODEL)
    records = []
    for spec, row in zip(runs, rows, strict=True):
        out = mmaccel.generate_image(prompts[:batch], spec.name, model=model, seed=0, return_output=True,
                                     **spec.options)  # fmt: skip
        extras = out.generate_output.extras
        records.append({"method": row.method, "latency_s": row.latency_s, "speedup_vs_ar": row.speedup_vs_ar,
                        "images_per_s": row.images_per_s, "forward_passes": row.forward_passes,
                        "forwards": extras["forwards"], "acceptance_rate": extras["acceptance_rate"],
                        "acceptance_per_verify": extras["acceptance_per_verify"],
                        "residual_rounds": extras["residual_rounds"]})  # fmt: skip
    out = {"batch": batch, "prompts": n_prompts, "repeats": repeats, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "rows": records}  # fmt: skip
    (HERE / f"speed_batch{batch}.json").write_text(json.dumps(out, indent=1) + "\n")


def _gamma(label: str) -> int | None:
    if not label.startswith("cspd") or "kappa" in label:
        return None
    return int(label.split("gamma=")[1].split(",")[0])


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for path in sorted(HERE.glob("speed_batch*.json")):
        data = json.loads(path.read_text())
        rows = [(g, r) for r in data["rows"] if (g := _gamma(r["method"])) is not None]
        ax1.plot([g for g, _ in rows], [r["speedup_vs_ar"] for _, r in rows], "o-",
                 label=f"speed-up, batch {data['batch']}")  # fmt: skip
        if data["batch"] == 1:
            ax1.plot(
                [g for g, _ in rows], [r["acceptance_rate"] for _, r in rows], "s--", label="acceptance rate"
            )
    ax1.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax1.set_xlabel("gamma (draft steps per target forward)")
    ax1.set_ylabel("ratio against ar (the target alone) / rate")
    ax1.legend(fontsize=8)
    quality_path = HERE / "quality.json"
    if quality_path.exists():
        q = json.loads(quality_path.read_text())["methods"]
        fd_key = next(k for k in q["ar"] if k.startswith("fd"))
        rows = [(g, r) for label, r in q.items() if (g := _gamma(label)) is not None]
        ax2.plot([g for g, _ in rows], [r[fd_key] for _, r in rows], "o-", color="C3", label="FD, cspd")
        ax2.axhline(q["ar"][fd_key], color="C3", ls=":", label="FD, ar")
        ax2.axhline(1.05 * q["ar"][fd_key], color="C3", ls="--", lw=0.8, label="FD, ar + 5%")
        ax2.set_ylabel("FD (FashionNet)")
        ax3 = ax2.twinx()
        ax3.plot([g for g, _ in rows], [100 * r["accuracy"] for _, r in rows], "s-", color="C0",
                 label="class consistency %, cspd")  # fmt: skip
        ax3.axhline(100 * q["ar"]["accuracy"], color="C0", ls=":", label="class consistency %, ar")
        ax3.set_ylabel("class consistency (%)")
        ax2.legend(loc="lower left", fontsize=8)
        ax3.legend(loc="lower right", fontsize=8)
    ax2.set_xlabel("gamma")
    fig.suptitle(
        "CSpD on fashion-mar (exact acceptance): the draft MAR runs gamma steps, the target checks them"
    )
    fig.tight_layout()
    fig.savefig(HERE / "sweep.png", dpi=110)
    print(HERE / "sweep.png")


def tables() -> None:
    q_path = HERE / "quality.json"
    if q_path.exists():
        q = json.loads(q_path.read_text())["methods"]
        fd_key = next(k for k in q["ar"] if k.startswith("fd"))
        ar_acc, ar_fd = q["ar"]["accuracy"], q["ar"][fd_key]
        print("| method | class consistency | vs ar (points) | FD-FashionNet | vs ar | acceptance |")
        print("|---|---|---|---|---|---|")
        for label, r in q.items():
            acc = r.get("acceptance_rate")
            print(f"| `{label}` | {100 * r['accuracy']:.1f}% | {100 * (r['accuracy'] - ar_acc):+.1f} | "
                  f"{r[fd_key]:.2f} | {100 * (r[fd_key] / ar_fd - 1):+.0f}% | "
                  f"{'' if acc is None else f'{100 * acc:.1f}%'} |")  # fmt: skip
    for path in sorted(HERE.glob("speed_batch*.json")):
        data = json.loads(path.read_text())
        print(f"\nBatch {data['batch']} ({data['prompts']} prompts, {data['repeats']} repeats):\n")
        print("| method | speed-up | s per call | target forwards | draft forwards | acceptance |")
        print("|---|---|---|---|---|---|")
        for r in data["rows"]:
            acc = r["acceptance_rate"]
            print(f"| `{r['method']}` | {r['speedup_vs_ar']:.2f} | {r['latency_s']:.3f} | "
                  f"{r['forwards'].get('target', '')} | {r['forwards'].get('draft', '-')} | "
                  f"{'-' if acc is None else f'{100 * acc:.1f}%'} |")  # fmt: skip


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"quality": quality, "speed": speed, "plot": plot, "tables": tables}[command](*map(int, args))

"""Text-to-image benchmark: quality and speed of several methods on one prompt set.

Owns: running each method over the same held-out prompts with the same seeds (batches
interleaved across methods, after a warm-up of each), then per method: prompt accuracy (one-
and two-object prompts), Frechet distance against real images with a named feature network,
target forward passes per image, tokens per forward, the accepted-tokens-per-step histogram,
and wall-clock per batch with its ratio to ``ar`` from the same run. ``--noise-floor`` adds
``ar`` with other seeds, which is how far a lossless method may drift by chance alone.

Usage: ``python -m mmaccel.eval.t2i_bench --methods ar,sjd,sjd-coupled:init=vertical --prompts 200``

Must never: reuse a baseline from another run, or hide a method's failure to reach a target.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmaccel.eval.common import MethodSpec, markdown_table, median, parse_methods

log = logging.getLogger(__name__)


def real_images(n: int, seed: int = 1):
    from PIL import Image

    from image_ar.shapes import sample_item

    return [Image.fromarray(sample_item(i, seed, "test")[1]) for i in range(n)]


def run(methods: list[MethodSpec], prompts: list[str], batch: int, seed: int, real: int, model: str,
        guidance_scale: float | None, noise_floor: bool, stats_dir: Path) -> dict:  # fmt: skip
    from image_ar.shapes_features import load_feature_net
    from mmaccel.eval.fid import frechet_distance
    from mmaccel.eval.prompt_accuracy import report
    from mmaccel.images import generate_image

    if not any(m.name == "ar" and not m.options for m in methods):
        methods = [MethodSpec("ar"), *methods]
    runs = [(m.label, m, 0) for m in methods]
    if noise_floor:
        runs.append(("ar (other seeds)", MethodSpec("ar"), 10_000))
    batches = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
    for _, m, _ in runs:  # warm-up
        generate_image(prompts[:2], m.name, model=model, seed=seed, guidance_scale=guidance_scale, **m.options)
    res = {label: {"images": [], "nfe": [], "latency": [], "hist": None} for label, _, _ in runs}
    with tqdm(total=len(batches) * len(runs), desc="t2i bench") as bar:
        for b, chunk in enumerate(batches):
            for label, m, offset in runs:
                out = generate_image(chunk, m.name, model=model, seed=seed + b + offset,
                                     guidance_scale=guidance_scale, return_output=True, **m.options)  # fmt: skip
                r = res[label]
                r["images"] += out.images
                r["nfe"] += out.generate_output.forward_passes_per_row.tolist()
                r["latency"].append(out.latency_s)
                h = out.generate_output.accepted_histogram
                r["hist"] = h if r["hist"] is None else [a + c for a, c in zip(r["hist"], h, strict=True)]
                bar.update()
    net = load_feature_net()
    stats = stats_dir / f"fd_shapesnet_real{real}.pt"
    reals = None if stats.exists() else real_images(real)
    ar_nfe, ar_lat = median(res["ar"]["nfe"]), median(res["ar"]["latency"])
    summary = {}
    for label, _, _ in runs:
        r = res[label]
        acc = report(r["images"], prompts)
        fd = frechet_distance(r["images"], reals, extractor=net, name="ShapesNet", real_stats=stats)
        nfe, lat = median(r["nfe"]), median(r["latency"])
        summary[label] = {
            "accuracy": acc["accuracy"],
            "accuracy_one_object": acc["accuracy_one_object"],
            "accuracy_two_objects": acc["accuracy_two_objects"],
            "n_one_object": acc["n_one_object"],
            "n_two_objects": acc["n_two_objects"],
            "fd_shapesnet": fd.fid,
            "nfe_median": nfe,
            "nfe_mean": sum(r["nfe"]) / len(r["nfe"]),
            "nfe_ratio_vs_ar": nfe / ar_nfe,
            "tokens_per_forward": 256 / nfe,
            "latency_median_s": lat,
            "speedup_vs_ar": ar_lat / lat,
            "accepted_histogram": r["hist"],
        }
    return {"summary": summary, "images": {k: v["images"] for k, v in res.items()}}


def _ci(p: float, n: float) -> float:
    return 1.96 * math.sqrt(max(p * (1 - p), 1e-9) / max(n, 1))


def to_markdown(summary: dict, meta: dict) -> str:
    headers = ["method", "acc 1-obj", "acc 2-obj", "acc all", "FD-ShapesNet", "NFE/image (median)",
               "NFE vs ar", "tokens/forward", "wall-clock/batch (s)", "speed-up vs ar"]  # fmt: skip
    rows = []
    for label, s in summary.items():
        rows.append([
            label,
            f"{s['accuracy_one_object']:.3f} ± {_ci(s['accuracy_one_object'], s['n_one_object']):.3f}",
            f"{s['accuracy_two_objects']:.3f} ± {_ci(s['accuracy_two_objects'], s['n_two_objects']):.3f}",
            s["accuracy"], s["fd_shapesnet"], s["nfe_median"], s["nfe_ratio_vs_ar"], s["tokens_per_forward"],
            s["latency_median_s"], s["speedup_vs_ar"],
        ])  # fmt: skip
    hist_lines = []
    for label, s in summary.items():
        h = s["accepted_histogram"]
        total = sum(h)
        top = ", ".join(f"{k}: {c / total:.3f}" for k, c in enumerate(h) if c and k <= 20)
        hist_lines.append(f"- `{label}`: {top}")
    head = " ".join(f"{k}={v}" for k, v in meta.items())
    return (f"{head}\n\n" + markdown_table(headers, rows) + "\n\n(± is the 95% binomial interval.)\n\n"
            "Tokens emitted per verify step (fraction of steps):\n\n" + "\n".join(hist_lines) + "\n")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mmaccel eval t2i", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ar,sjd,sjd-coupled")
    parser.add_argument("--model", default="shapes-t2i")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--real", type=int, default=1000, help="real images for the Frechet distance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--noise-floor", action="store_true", help="add ar with other seeds")
    parser.add_argument("--out", type=Path, default=Path("outputs/t2i_bench"))
    parser.add_argument("--save-images", type=int, default=16, help="images per method to save as a grid")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    from mmaccel.eval.latency import default_prompts

    prompts = default_prompts(args.prompts, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(parse_methods(args.methods), prompts, args.batch, args.seed, args.real, args.model,
                 args.guidance_scale, args.noise_floor, args.out)  # fmt: skip
    meta = {"model": args.model, "prompts": args.prompts, "batch": args.batch, "seed": args.seed,
            "guidance": args.guidance_scale, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name()}  # fmt: skip
    md = to_markdown(result["summary"], meta)
    (args.out / "results.md").write_text(md)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "summary": result["summary"]}, indent=1))
    for label, images in result["images"].items():
        _grid(images[: args.save_images]).save(args.out / f"samples_{label.replace(':', '_').replace(',', '_')}.png")
    print(md)


def _grid(images, cols: int = 8):
    from PIL import Image

    w, h = images[0].size
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


if __name__ == "__main__":
    main()

"""Window sweep against ``window="auto"``: wall-clock and forward passes, ratios against ``ar``.

Usage: ``python docs/benchmarks/window_auto/sweep.py BATCH PROMPTS REPEATS "ar|sjd:window=4|sjd:window=auto" [MODE]``

Every method runs its verify step in one ``compile=`` MODE (``ar`` included; default
``compile``: the faster mode at batch 1 on a 2-core CPU, ``eager`` is the faster at batch 20), after one warm-up call
(for ``window="auto"`` the call that times the windows and chooses; on the default model at its
default sampling the choice is kept from that call on);
then the prompts are generated in chunks of BATCH, REPEATS times with other seeds, the methods
interleaved per chunk. Prints one JSON line per method (medians of the calls) and writes them
to ``sweep_batch{BATCH}_{MODE}.json`` in the current directory.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

import mmaccel
from mmaccel.image_ar.shapes_benchmark import held_out_prompts


def parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, value = item.split("=")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return name, options


MODE = "compile"


def call(name: str, options: dict, prompts: list[str], seed: int) -> tuple[float, int, object]:
    t0 = time.perf_counter()
    out = mmaccel.generate_image(prompts, name, seed=seed, compile=MODE, return_output=True, **options)
    return time.perf_counter() - t0, out.num_forward_passes, out.generate_output.method


def main(batch: int, n_prompts: int, repeats: int, methods: list[str]) -> None:
    torch.set_num_threads(2)
    prompts = held_out_prompts(n_prompts, 0)
    chunks = [prompts[i : i + batch] for i in range(0, n_prompts, batch)]
    specs = [(spec, *parse(spec)) for spec in methods]
    for _, name, options in specs:
        call(name, options, chunks[0], 0)
    calls: dict[str, list] = {spec: [] for spec, _, _ in specs}
    for r in range(repeats):
        for c, chunk in enumerate(chunks):
            for spec, name, options in specs:
                calls[spec].append(call(name, options, chunk, 1000 * r + c))
    ar_s = statistics.median(t for t, _, _ in calls["ar"])
    ar_nfe = statistics.mean(n for _, n, _ in calls["ar"])
    rows = []
    for spec, _, _ in specs:
        s = statistics.median(t for t, _, _ in calls[spec])
        nfe = statistics.mean(n for _, n, _ in calls[spec])
        windows = sorted({getattr(m, "window", None) for _, _, m in calls[spec]}, key=str)
        window = windows[0] if len(windows) == 1 else windows  # auto: every call's window, if they differ
        rows.append(
            dict(method=spec, window=window, nfe=nfe, nfe_ratio=ar_nfe / nfe, latency_s=s, speedup=ar_s / s)
        )
        print(json.dumps(rows[-1]), flush=True)
    with open(f"sweep_batch{batch}_{MODE}.json", "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    MODE = sys.argv[5] if len(sys.argv) > 5 else MODE
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split("|"))

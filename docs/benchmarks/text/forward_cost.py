"""Seconds of one SmolLM2-135M forward of T tokens over a static cache, linears plain or packed.

    python docs/benchmarks/text/forward_cost.py [--prompt 400] [--repeats 9] [--threads 2]

Runs the model through mmaccel's adapter (``mmaccel.hf.HFCausalLM``) after a prefill of
``--prompt`` random tokens, with ``MMACCEL_PACK_LINEAR`` off and on (``mmaccel.cpu_linear``),
and prints the median milliseconds per T and the ratio to T = 1 of the same kind. Writes
``forward_cost.json`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from mmaccel import cpu_linear
from mmaccel.models import as_causal_lm
from mmaccel.text.smollm2 import load_smollm2

TOKENS = (1, 2, 4, 6, 8, 11, 16)


def forward_ms(model, packed: bool, prompt: int, repeats: int) -> dict[int, float]:
    os.environ[cpu_linear.ENV] = "1" if packed else "0"
    cpu_linear._MODELS.clear()
    lm = as_causal_lm(model)
    cache = lm.new_cache(1, prompt + max(TOKENS) + 1)
    ids = torch.randint(0, lm.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0))
    out = {}
    with torch.inference_mode():
        slots = cache.slots(prompt)
        lm.forward(ids, slots, cache, slots, cache.attn_mask(prompt))
        cache.commit(torch.tensor([prompt]))
        for T in TOKENS:
            x = ids[:, :T]
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                slots = cache.slots(T)
                lm.forward(x, slots, cache, slots, cache.attn_mask(T))
                times.append(time.perf_counter() - t0)
            out[T] = 1e3 * statistics.median(times[1:])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", type=int, default=400)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_smollm2()
    rows = {kind: forward_ms(model, kind == "packed", args.prompt, args.repeats) for kind in ("plain", "packed")}
    print("| T | " + " | ".join(f"{k} ms (x T=1)" for k in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for T in TOKENS:
        cells = [f"{r[T]:.1f} ({r[T] / r[1]:.2f})" for r in rows.values()]
        print(f"| {T} | " + " | ".join(cells) + " |")
    out = {"prompt": args.prompt, "threads": args.threads, "torch": torch.__version__, "ms": rows}
    (Path(__file__).parent / "forward_cost.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Where a verify step's time goes: ``torch.profiler`` table of the top ops of one call.

Usage: ``python docs/benchmarks/window_auto/profile_step.py BATCH "sjd-coupled:window=16" [compile]``

The call is made once to warm up (and compile), then once under the profiler; the table is
sorted by self CPU time and the per-step figure divides the call's time by its verify steps.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import mmaccel
from mmaccel.image_ar.shapes_benchmark import held_out_prompts

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from sweep import parse  # noqa: E402


def main(batch: int, spec: str, mode: str = "compile") -> None:
    torch.set_num_threads(2)
    name, options = parse(spec)
    prompts = held_out_prompts(batch, 0)
    mmaccel.generate_image(prompts, name, seed=0, compile=mode, **options)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        out = mmaccel.generate_image(prompts, name, seed=1, compile=mode, return_output=True, **options)
        seconds = time.perf_counter() - t0
    steps = out.num_forward_passes - 1
    print(f"{spec} batch {batch} compile={mode}: window {getattr(out.generate_output.method, 'window', '-')}, "
          f"{steps} verify steps, {seconds:.3f} s, {1000 * seconds / steps:.2f} ms per step")  # fmt: skip
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *sys.argv[3:])

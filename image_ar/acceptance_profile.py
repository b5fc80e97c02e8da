"""Measure the default model's acceptance profile: steps by tokens emitted, per method and window.

``window="auto"`` chooses the number of drafts per step from what a step costs on the device
(timed at the first call) and how many tokens a step emits with each window. The second part
does not depend on the hardware, so for the shipped model it is measured once here, at the
model's default sampling, with each method's shipped options, and shipped beside the weights
(``weights/shapes_t2i_acceptance.json``): a fresh process then chooses from measured acceptance
instead of a prior, and keeps its first choice.

    python -m mmaccel.image_ar.acceptance_profile            # ~15 min on 2 cores

Prompts: held-out captions of dataset seed 7 (the benchmarks use seed 0), one batch per
(method, window), random seed 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from mmaccel import window
from mmaccel.image_ar.default_model import ACCEPTANCE, load_default
from mmaccel.image_ar.shapes_benchmark import held_out_prompts
from mmaccel.images import generate_image
from mmaccel.methods import resolve_method
from mmaccel.sampling import SamplingConfig

METHODS = ("jacobi", "sjd", "sjd-coupled", "lantern", "zipar+sjd", "zipar+lantern")
PROMPT_SEED = 7


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20, help="prompts per (method, window), one batch")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=str(ACCEPTANCE))
    args = parser.parse_args(argv)
    model = load_default()
    prompts = held_out_prompts(args.prompts, seed=PROMPT_SEED)
    sampling = SamplingConfig(True, model.default_temperature, 0, 1.0, model.default_guidance)
    profiles = []
    for name in args.methods.split(","):
        config = resolve_method(name, {"window": "auto"}, model=model)
        hist: dict[str, list[int]] = {}
        for K in window.CANDIDATES[1:]:
            t0 = time.perf_counter()
            out = generate_image(prompts, name, seed=0, return_output=True, compile="eager", window=K)
            hist[str(K)] = window.step_histogram(out.generate_output.accepted_histogram, len(prompts))
            tau = window.mean_tokens(hist[str(K)])
            print(
                f"{name} window {K}: {tau:.2f} tokens per step ({time.perf_counter() - t0:.1f} s)", flush=True
            )
        options = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("name", "window")}
        profiles.append({"method": name, "options": options, "hist": hist})
    doc = {
        "about": "Verify steps by tokens emitted, per method (with the options shown) and window, on held-out "
        f"prompts of dataset seed {PROMPT_SEED} at the sampling shown; read by mmaccel.window (window='auto').",
        "command": "python -m mmaccel.image_ar.acceptance_profile "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "sampling": dataclasses.asdict(sampling),
        "profiles": profiles,
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

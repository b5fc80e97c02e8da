"""``mmaccel eval <command>`` (also ``python -m mmaccel.eval <command>``): the dispatcher and
the arguments every generating command shares.

    mmaccel eval latency  --methods ar,sjd,sjd-coupled --prompts 8 --repeats 3
    mmaccel eval compare  --methods ar,sjd,sjd-coupled --prompts 200 --out outputs/compare
    mmaccel eval fid      --methods ar,sjd --prompts 200      (or --images DIR)
    mmaccel eval accuracy --methods ar,sjd --prompts 200      (or --images DIR)
    mmaccel eval compare  --model fashion-mar --methods ar,cspd:gamma=4,cspd:gamma=8
    accelerate launch --multi_gpu --num_processes 2 -m mmaccel.eval compare --prompts 200

Owns: the command table and the shared run arguments (methods, benchmark, model, prompt set,
batch, seed, guidance, threads), so that ``latency`` and ``compare`` read the same prompts with
the same seeds by construction. ``--benchmark NAME`` picks a registered benchmark (its
prompts, accuracy checker and FD reference; ``mmaccel.benchmarks`` entry points); the model
defaults to the benchmark's.

Must never: compute anything; every command lives in its own module.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "latency": (
        "mmaccel.eval.latency",
        "main",
        "forward passes, tokens/forward, wall-clock, images/s, memory",
    ),
    "compare": ("mmaccel.eval.compare", "main", "speed and quality of several methods: table, JSON, plots"),
    "fid": ("mmaccel.eval.compare", "main_fid", "Frechet distance of methods (or of an image folder)"),
    "accuracy": (
        "mmaccel.eval.compare",
        "main_accuracy",
        "prompt accuracy of methods (or of an image folder)",
    ),
    "t2i": ("mmaccel.eval.compare", "main", "alias of compare (the former text-to-image benchmark)"),
    "text": ("mmaccel.eval.text", "main", "text LM decoding vs ar and transformers generate (SmolLM2)"),
}


def usage() -> str:
    lines = [
        "usage: mmaccel eval {" + ",".join(COMMANDS) + "} [options]   (-h after a command for its options)",
        "",
    ]
    lines += [f"  {name:9s} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``argv[0]`` with the remaining arguments; 2 on an unknown command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"mmaccel eval: error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[argv[0]]
    result = getattr(importlib.import_module(module), function)(argv[1:])
    return int(result or 0)


DEFAULT_BATCH = 8  # one default for every command, so their chunks (and seeds) agree out of the box


def add_run_arguments(parser: argparse.ArgumentParser, prompts: int | None) -> None:
    """The options that fix what is generated: same values, same images and forward passes."""
    from mmaccel.eval.benchmarks import DEFAULT_BENCHMARK, available_benchmarks

    parser.add_argument("--methods", default="ar,sjd,sjd-coupled", help="e.g. ar,sjd:window=8,init=vertical")
    parser.add_argument("--benchmark", default=None,
                        help=f"prompt set and scoring (default: the one meant for --model, else {DEFAULT_BENCHMARK}); "
                        f"installed: {', '.join(available_benchmarks())}")  # fmt: skip
    parser.add_argument("--model", default=None, help="registered image model (default: the benchmark's)")
    parser.add_argument("--prompts", type=int, default=prompts, help="prompts of the benchmark's set")
    parser.add_argument("--prompt-seed", type=int, default=0, help="dataset seed of the prompt set")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help="prompts per generate call; results depend on it (chunk seeds), not on processes")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="generation seed (chunk seeds derive from it)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the model's")
    parser.add_argument("--temperature", type=float, default=None, help="default: the model's")
    parser.add_argument("--compile", default="best", choices=["best", "compile", "eager", "cudagraph", "auto"],
                        help="how every method's step runs, ar included; best (default): each method in the faster "
                        "of eager and compiled, timed after the warm-up; masked-set (MAR) models always run eagerly")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up calls")

"""The ``mmaccel`` command line. Argument parsing lives here and nowhere in the library.

Usage::

    mmaccel generate-image "a large red circle at the top left on a blue background" --method sjd --out x.png
    mmaccel generate-image "ankle boot" --model fashion-var --method code --out boot.png
    mmaccel generate-image "ankle boot" --model fashion-mar --method cspd --gamma 4 --out boot.png
    mmaccel eval latency --methods ar,sjd,sjd-coupled:init=vertical
    mmaccel eval compare --methods ar,sjd,sjd-coupled --prompts 200      (also: fid, accuracy; see mmaccel eval -h)
    mmaccel methods | models
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mmaccel.eval.commands import COMMANDS as EVAL_COMMANDS
from mmaccel.methods import DESCRIPTIONS, MASKED_SET_OPTIONS, METHODS, OPTIONS, CSpDConfig, MaskedARConfig


def _window(text: str) -> int | str:
    """``--window``: an integer >= 0 or ``auto``; anything else is an argparse error naming it."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 or 'auto', got {text!r}")
    return value


def _masked_ran(config: CSpDConfig | MaskedARConfig, extras: dict) -> tuple[str, str]:
    """What a masked-set (MAR) run did: (``, num_iter 16, gamma 4, prefill_ratio 0.1, acceptance
    0.812``, `` of the target and 12 of the draft``) for the line ``generate-image`` prints."""
    if not isinstance(config, CSpDConfig):
        return f", num_iter {config.num_iter}", ""
    rate = extras.get("acceptance_rate")
    ran = (f", num_iter {config.num_iter}, gamma {config.gamma}, prefill_ratio {config.prefill_ratio:g}"
           + (f", cspd_kappa {config.cspd_kappa:g} (lossy)" if config.cspd_kappa is not None else "")
           + (f", acceptance {rate:.3f}" if rate is not None else ""))  # fmt: skip
    return ran, f" of the target and {extras['forwards'].get('draft', 0)} of the draft"


def _generate_image(args: argparse.Namespace) -> int:
    from mmaccel.eval.common import parse_method_spec
    from mmaccel.images import generate_image

    options = parse_method_spec("x:" + ",".join(args.option)).options if args.option else {}
    if args.window is not None:
        options["window"] = args.window
    if args.init is not None:
        options["init"] = args.init
    for name in ("draft_scales",) + MASKED_SET_OPTIONS["cspd"]:  # given: passed on, checked by the method
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    try:
        out = generate_image(args.prompt, args.method, model=args.model, seed=args.seed,
                             guidance_scale=args.guidance_scale, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, return_output=True, progress=True, **options)  # fmt: skip
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"mmaccel: error: {err}", file=sys.stderr)
        return 2
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = out.images[0]
    if args.scale > 1:
        image = image.resize((image.width * args.scale, image.height * args.scale), resample=0)
    image.save(path)
    config = out.generate_output.method
    # the window that ran: with window="auto" the number chosen, which --window pins next time
    ran = f", window {config.window}" if "window" in OPTIONS.get(config.name, ()) else ""
    if getattr(config, "draft_scales", None) is not None:  # CoDe on a next-scale pair: who drew what
        forwards = out.generate_output.extras["forwards"]
        ran = f", draft_scales {config.draft_scales}: drafter {forwards['drafter']}, refiner {forwards['refiner']}"
    whose = ""
    if isinstance(
        config, CSpDConfig | MaskedARConfig
    ):  # a masked-set (MAR) pair: its steps, and CSpD's drafts
        ran, whose = _masked_ran(config, out.generate_output.extras)
    print(f"saved {path.resolve()}  ({args.method}{ran}: {out.num_forward_passes} forward passes{whose} for "
          f"{out.num_tokens} tokens, {out.latency_s:.2f} s)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "eval":  # the eval commands parse their own arguments
        from mmaccel.eval.commands import main as eval_main

        return eval_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="mmaccel", description="Fast decoding for autoregressive generators."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list the decoding methods")
    sub.add_parser("models", help="list the installed image models")
    gen = sub.add_parser("generate-image", help="generate an image from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("--method", default="ar", help=f"one of {', '.join(METHODS)}")
    gen.add_argument("--model", default="shapes-t2i")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="out.png")
    gen.add_argument("--guidance-scale", type=float, default=None)
    gen.add_argument("--temperature", type=float, default=None, help="default: the model's")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument(
        "--window",
        type=_window,
        default=None,
        help="drafts verified per step: an integer >= 0 (0: none) or auto (default: time a few steps "
        "at the first call and use the count with the most tokens per second)",
    )
    gen.add_argument("--init", default=None, help="random | horizontal | vertical")
    gen.add_argument("--draft-scales", type=int, default=None,
                     help="method code on a next-scale (VAR) pair: scales drawn by the large model (default: the model's)")  # fmt: skip
    mar = "on a masked-set (MAR) pair such as fashion-mar"
    gen.add_argument(
        "--gamma",
        type=int,
        default=None,
        help=f"method cspd {mar}: steps the draft model runs per target check (default: the model's)",
    )
    gen.add_argument(
        "--prefill-ratio",
        type=float,
        default=None,
        help=f"method cspd {mar}: share of the steps the target runs alone first, in [0, 1)",
    )
    gen.add_argument(
        "--num-iter",
        type=int,
        default=None,
        help=f"methods ar and cspd {mar}: MAR steps (default: the model's)",
    )
    gen.add_argument("--cspd-kappa", type=float, default=None,
                     help=f"method cspd {mar}: > 0 softens the acceptance ratio (lossy; default: exact)")  # fmt: skip
    gen.add_argument("--option", action="append", default=[], help="extra method option key=value")
    gen.add_argument("--scale", type=int, default=4, help="upscale the saved image by this factor (nearest)")
    sub.add_parser("eval", help=f"evaluation commands: {', '.join(EVAL_COMMANDS)} (mmaccel eval -h)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="mmaccel: %(message)s")
    if args.command == "methods":
        for name in METHODS:
            print(f"{name:12s} {DESCRIPTIONS[name]}")
        return 0
    if args.command == "models":
        from mmaccel.images import available_models

        print("\n".join(available_models()))
        return 0
    return _generate_image(args)


if __name__ == "__main__":
    sys.exit(main())

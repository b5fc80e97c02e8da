"""Gradio demo: ``ar`` side by side with an accelerated method on the embedded text-to-image model.

    python -m demos.app --port 7860            # http://127.0.0.1:7860

Owns: the page (a prompt, a method picker built from ``mmaccel.methods.METHODS`` with each
method's options, see ``demos.inputs``, a seed), turning bad input into readable ``gr.Error``
messages, the comparison (both images, forward passes, wall-clock, the
speed-ups, and the per-step view of which tokens each forward accepted), the ``generate`` API
endpoint for ``gradio_client`` (prompt, method, seed) -> (ar image, method image, statistics),
the bounded request queue, and this command line.

Must never: decode tokens itself (everything goes through ``mmaccel.generate_image``), or listen
beyond loopback unless ``--host`` says so.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import html
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

import mmaccel
from demos.inputs import EXAMPLE_PROMPT, MAX_PROMPT_CHARS, Request, check_request, method_options
from demos.visualize import filling_gif, heat_map
from mmaccel.images import ImageModel, ImageOutput
from mmaccel.methods import DESCRIPTIONS, METHODS, resolve_method

log = logging.getLogger(__name__)

BASELINE = "ar"
# gradio finds the progress tracker by this default value; it follows the engine's tqdm bars
PROGRESS = gr.Progress(track_tqdm=True)


@dataclass
class Comparison:
    """Both runs of one request and the statistics the page and the API report."""

    request: Request
    baseline: ImageOutput
    accelerated: ImageOutput
    stats: dict[str, Any]


def _run_stats(out: ImageOutput) -> dict[str, Any]:
    forward_N = out.generate_output.token_forward_index[0].numpy()
    return {
        "forward_passes": out.num_forward_passes,
        "wall_clock_s": round(out.latency_s, 4),
        "tokens_per_forward": round(out.num_tokens / out.num_forward_passes, 3),
        "accepted_per_forward": np.bincount(forward_N, minlength=out.num_forward_passes).tolist(),
    }


def compare(
    request: Request, model: ImageModel, progress: Callable[[float, str], None] | None = None
) -> Comparison:
    """Generate the request's image with ``ar`` and then with its method; same seed, same model."""
    runs = []
    for i, (method, options) in enumerate([(BASELINE, {}), (request.method, request.options)]):
        if progress is not None:
            progress(i / 2, f"generating with {method}")
        out = mmaccel.generate_image(
            request.prompt,
            method,
            model=model,
            seed=request.seed,
            return_output=True,
            progress=progress is not None,
            **options,
        )
        runs.append(out)
    baseline, accelerated = runs
    config = resolve_method(request.method, request.options)
    stats = {
        "prompt": request.prompt,
        "seed": request.seed,
        "method": request.method,
        "options": {k: v for k, v in dataclasses.asdict(config).items() if k != "name" and v is not None},
        "num_tokens": accelerated.num_tokens,
        BASELINE: _run_stats(baseline),
        "accelerated": _run_stats(accelerated),
        "speedup_wall_clock": round(baseline.latency_s / accelerated.latency_s, 3),
        "speedup_forward_passes": round(baseline.num_forward_passes / accelerated.num_forward_passes, 3),
        "prompt_warnings": list(model.condition([request.prompt], guidance=False).warnings),
    }
    return Comparison(request, baseline, accelerated, stats)


def _summary(c: Comparison) -> str:
    s, name = c.stats, c.request.method
    opts = ", ".join(f"{k}={v}" for k, v in s["options"].items())
    a, m = s[BASELINE], s["accelerated"]
    rows = [
        f"| | `{BASELINE}` (baseline) | `{name}`{' · ' + opts if opts else ''} |",
        "|---|---:|---:|",
        f"| forward passes | {a['forward_passes']} | {m['forward_passes']} |",
        f"| tokens per forward | {a['tokens_per_forward']:.2f} | {m['tokens_per_forward']:.2f} |",
        f"| wall-clock | {a['wall_clock_s']:.2f} s | {m['wall_clock_s']:.2f} s |",
        f"| speed-up over `{BASELINE}` | 1.00x | **{s['speedup_wall_clock']:.2f}x** wall-clock, "
        f"**{s['speedup_forward_passes']:.2f}x** fewer forwards |",
    ]
    notes = [
        f"{s['num_tokens']} image tokens, seed {s['seed']}. Wall-clock is measured in this request on a "
        "shared CPU: requests running at the same time slow both columns; forward passes do not change."
    ]
    notes += [f"Note: {html.escape(w)}" for w in s["prompt_warnings"]]
    return "\n".join(rows) + "\n\n" + "\n\n".join(notes)


def _gif_html(c: Comparison) -> str:
    runs = [
        (label, out.images[0], out.generate_output.token_forward_index[0].numpy())
        for label, out in ((BASELINE, c.baseline), (c.request.method, c.accelerated))
    ]
    data = base64.b64encode(filling_gif(runs)).decode("ascii")
    return (
        f'<img src="data:image/gif;base64,{data}" alt="token grids filling forward by forward" '
        'style="image-rendering: pixelated; max-width: 100%">'
    )


def _big(image: Image.Image, factor: int = 4) -> Image.Image:
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _image(label: str, elem_id: str, show_label: bool = True) -> gr.Image:
    return gr.Image(
        label=label,
        show_label=show_label,
        type="pil",
        format="png",
        elem_id=elem_id,
        elem_classes=["pixelated"],
        interactive=False,
        buttons=["download", "fullscreen"],
    )


@contextlib.contextmanager
def _readable_errors() -> Iterator[None]:
    """Bad input (``InputError`` and the library's own ``ValueError``/``TypeError``) -> ``gr.Error``."""
    try:
        yield
    except (ValueError, TypeError) as err:
        # the message is rendered as HTML on the page: escape markup, keep quotes readable
        raise gr.Error(
            html.escape(str(err), quote=False), title="Invalid input", print_exception=False
        ) from None


def build_demo(model: ImageModel | None = None) -> gr.Blocks:
    """The page and its ``generate`` API endpoint; call ``.queue(...)`` and ``.launch(...)`` on it."""
    image_model = model if model is not None else mmaccel.load_model()
    specs = method_options()
    choices = [m for m in METHODS if m != BASELINE]
    first = "sjd" if "sjd" in choices else choices[0]

    def progress_fn(progress: gr.Progress) -> Callable[[float, str], None]:
        return lambda fraction, desc: progress(fraction, desc=desc)

    def api_generate(prompt: str, method: str, seed: float | None, progress=PROGRESS):
        """(prompt, method or method spec, seed) -> (ar image, method image, statistics dict)."""
        with _readable_errors():
            request = check_request(prompt, method, seed)
            c = compare(request, image_model, progress_fn(progress))
        return c.baseline.images[0], c.accelerated.images[0], c.stats

    with gr.Blocks(title="mmaccel demo", analytics_enabled=False) as demo:
        gr.Markdown(
            "# mmaccel: the same image in fewer forward passes\n"
            f"Type a prompt, pick a method, and compare it with plain autoregressive decoding (`{BASELINE}`) "
            "on the embedded Shapes-T2I model (64x64 images, 16x16 = 256 tokens)."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                prompt = gr.Textbox(
                    label="Prompt",
                    value=EXAMPLE_PROMPT,
                    lines=2,
                    max_length=MAX_PROMPT_CHARS,
                    elem_id="prompt",
                )
                method = gr.Radio(
                    choices, value=first, label=f"Method (compared with {BASELINE})", elem_id="method"
                )
                about = gr.Markdown(DESCRIPTIONS.get(first, ""))
                option_boxes = {}
                for spec in specs.values():
                    visible = first in spec.methods
                    label = spec.name
                    info = spec.help or ("empty: the method's default" if spec.optional else None)
                    if spec.choices:
                        box = gr.Radio(
                            list(spec.choices), value=spec.default, label=label, info=info, visible=visible
                        )
                    elif spec.kind is bool:
                        box = gr.Checkbox(value=bool(spec.default), label=label, info=info, visible=visible)
                    elif spec.kind in (int, float) and not spec.optional:
                        rng = f" ({spec.bounds[0]:g} to {spec.bounds[1]:g})" if spec.bounds else ""
                        box = gr.Number(
                            value=spec.default,
                            label=label + rng,
                            info=info,
                            visible=visible,
                            precision=0 if spec.kind is int else None,
                        )
                    else:  # text, or a number that may be left empty
                        box = gr.Textbox(
                            value="" if spec.default is None else str(spec.default),
                            label=label,
                            info=info,
                            visible=visible,
                        )
                    option_boxes[spec.name] = box
                seed = gr.Number(value=0, precision=0, label="Seed (same seed, same images)", elem_id="seed")
                run = gr.Button("Generate", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                with gr.Row():
                    ar_image = _image(BASELINE, "ar-image")
                    method_image = _image("method", "method-image")
                summary = gr.Markdown(elem_id="summary")
                gr.Markdown(
                    "**Per-step view.** Each cell is an image token (raster order) coloured by the forward pass "
                    "that committed it, dark = early. White lines separate tokens committed by different "
                    "forwards: every outlined block was accepted by a single forward. The animation replays "
                    "both runs forward by forward; magenta marks the tokens just committed."
                )
                with gr.Row():
                    ar_heat = _image(f"{BASELINE}: forward that committed each token", "ar-heat", False)
                    method_heat = _image("method: forward that committed each token", "method-heat", False)
                gif = gr.HTML(elem_id="filling")
                with gr.Accordion("Statistics (JSON)", open=False):
                    stats = gr.JSON(elem_id="stats")

        def pick(name: str):
            return [gr.update(value=DESCRIPTIONS.get(name, ""))] + [
                gr.update(visible=name in specs[option].methods) for option in option_boxes
            ]

        method.change(pick, method, [about, *option_boxes.values()], queue=False, api_visibility="private")

        def ui_generate(values: dict, progress=PROGRESS):
            with _readable_errors():
                name = values[method]
                options = {o: values[box] for o, box in option_boxes.items() if name in specs[o].methods}
                request = check_request(values[prompt], name, values[seed], options)
                c = compare(request, image_model, progress_fn(progress))
            progress(1.0, desc="drawing the per-step view")
            runs = [(BASELINE, c.baseline), (request.method, c.accelerated)]
            images = [
                gr.update(
                    value=_big(out.images[0]), label=f"{label} ({out.num_forward_passes} forward passes)"
                )
                for label, out in runs
            ]
            heat = [
                heat_map(
                    out.generate_output.token_forward_index[0].numpy(),
                    title=f"{label}: {out.num_forward_passes} forwards",
                )
                for label, out in runs
            ]
            return (*images, *heat, _summary(c), _gif_html(c), c.stats)

        run.click(
            ui_generate,
            {prompt, method, seed, *option_boxes.values()},
            [ar_image, method_image, ar_heat, method_heat, summary, gif, stats],
            api_visibility="private",
            concurrency_id="generate",
        )

        # the API endpoint reads its own hidden inputs, so a method spec string and any seed reach the checks
        with gr.Row(visible=False):
            api_prompt, api_method, api_seed = gr.Textbox(), gr.Textbox(), gr.Number()
            api_ar, api_method_image = gr.Image(type="pil", format="png"), gr.Image(type="pil", format="png")
            api_stats, api_button = gr.JSON(), gr.Button()
        api_button.click(
            api_generate,
            [api_prompt, api_method, api_seed],
            [api_ar, api_method_image, api_stats],
            api_name="generate",
            concurrency_id="generate",
        )
    return demo


def main(argv: list[str] | None = None) -> None:
    """``python -m demos.app [--host 127.0.0.1] [--port 7860] [--concurrency 2] ...``"""
    parser = argparse.ArgumentParser(prog="python -m demos.app", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--concurrency", type=int, default=2, help="requests generating at the same time")
    parser.add_argument(
        "--max-queue", type=int, default=32, help="requests waiting beyond that; more are refused"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: CPU cores / concurrency)"
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation at start")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.max_queue < 1:
        parser.error("--concurrency and --max-queue must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="demo: %(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.concurrency))
    model = mmaccel.load_model()
    if not args.no_warmup:  # first calls pay one-time costs that would skew the first comparison
        log.info("warming up")
        for name in (BASELINE, "sjd"):
            if name in METHODS:
                mmaccel.generate_image(EXAMPLE_PROMPT, name, model=model, seed=0)
    demo = build_demo(model)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        show_error=False,
        footer_links=["api"],
        run_history=False,
        css=".pixelated img { image-rendering: pixelated; }",
    )


if __name__ == "__main__":
    main()

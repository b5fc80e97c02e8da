"""Gradio demo: ``ar`` side by side with an accelerated method on the embedded text-to-image model.

    python -m demos.app --port 7860            # http://127.0.0.1:7860

Owns: the page (a prompt, a method picker built from ``mmaccel.methods.METHODS`` showing each
method only the options it reads, filled with the library's defaults for the model in use, see
``demos.inputs``; a seed), turning bad input into one readable message, the comparison (both
images, forward passes, the median wall-clock of timed repeats, the per-step view of which
tokens each forward accepted; see ``demos.report``), the ``generate`` API endpoint for
``gradio_client`` (prompt, method, seed) -> (ar image, method image, statistics), the bounded
request queue, and this command line.

Must never: decode tokens itself (everything goes through ``mmaccel.generate_image``), put a
default of its own into a request (a field left at the library's default is not sent), or
listen beyond loopback unless ``--host`` says so.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import torch
from PIL import Image

import mmaccel
from demos.inputs import (
    EXAMPLE_PROMPT,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    OptionSpec,
    check_request,
    default_note,
    method_options,
    option_names,
    page_defaults,
)
from demos.report import (
    BASELINE,
    BUDGET_S,
    REPEATS,
    Comparison,
    about_markdown,
    compare,
    intro_markdown,
    summary_markdown,
)
from demos.visualize import filling_gif, heat_maps
from mmaccel.images import ImageModel
from mmaccel.methods import METHODS

log = logging.getLogger(__name__)

# gradio finds the progress tracker by this default value; the comparison reports each run to it
PROGRESS = gr.Progress()
CSS = """
.pixelated img { image-rendering: pixelated; }
#status { min-height: 3.2em; }
#status .demo-error { color: #b91c1c; border: 1px solid #fca5a5; background: #fef2f2;
                      border-radius: 6px; padding: 0.6em 0.8em; }
"""
IDLE = f"Press <b>Generate</b> to run <code>{BASELINE}</code> and the chosen method with the same seed."


def _info(spec: OptionSpec, method: str, model: ImageModel) -> str:
    note = default_note(method, spec.name, model) if spec.name in option_names(method) else ""
    return " · ".join(t for t in (spec.help, note) if t)


def _field_value(spec: OptionSpec, method: str, model: ImageModel) -> Any:
    if spec.name in option_names(method):
        value = page_defaults(method, model)[spec.name]
    else:
        value = next(page_defaults(m, model)[spec.name] for m in spec.methods)  # hidden: any reader's
    # a field that takes a word (window: auto) holds text, whether the default is the word or a number
    return str(value) if spec.keywords and value is not None else value


def _field(spec: OptionSpec, method: str, model: ImageModel) -> gr.components.Component:
    """The field of one option, showing ``method``'s default (hidden if ``method`` does not read it)."""
    visible, value, info = (
        spec.name in option_names(method),
        _field_value(spec, method, model),
        _info(spec, method, model),
    )
    elem_id = f"option-{spec.name}"
    if spec.choices:
        return gr.Dropdown(
            list(spec.choices),
            value=value,
            label=spec.name,
            info=info,
            visible=visible,
            filterable=False,
            elem_id=elem_id,
        )
    if spec.keywords:
        # the word (auto) and a few numbers to pick, or any number typed in; check_request reads the text
        lo, hi = spec.bounds or (0, math.inf)
        rng = f"{lo:g} or more" if math.isinf(hi) else f"{lo:g} to {hi:g}"
        return gr.Dropdown(
            [*spec.keywords, *(str(n) for n in spec.suggested)],
            value=value,
            label=f"{spec.name} ({' or '.join(spec.keywords)}, or a whole number {rng})",
            info=info,
            visible=visible,
            allow_custom_value=True,
            filterable=True,
            elem_id=elem_id,
        )
    if spec.kind is bool:
        return gr.Checkbox(value=bool(value), label=spec.name, info=info, visible=visible, elem_id=elem_id)
    if spec.kind in (int, float):
        lo, hi = spec.bounds or (None, None)
        rng = "" if lo is None else f" (at least {lo:g})" if math.isinf(hi) else f" ({lo:g} to {hi:g})"
        # precision=None: gradio would round 2.5 to 2 before our check could refuse it
        return gr.Number(
            value=value,
            label=spec.name + rng,
            info=info,
            visible=visible,
            precision=None,
            step=1 if spec.kind is int else 0.05,
            placeholder="empty: not set",
            elem_id=elem_id,
        )
    return gr.Textbox(
        value="" if value is None else str(value),
        label=spec.name,
        info=info,
        visible=visible,
        elem_id=elem_id,
    )


def _run_label(out: Any, label: str) -> str:
    return f"{label} ({out.num_forward_passes} forward passes)"


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


def _error_html(message: str) -> str:
    return f'<div class="demo-error" role="alert"><b>Invalid input.</b> {html.escape(message, quote=False)}</div>'


@contextlib.contextmanager
def _readable_errors() -> Iterator[None]:
    """Bad input (``InputError`` and the library's own ``ValueError``/``TypeError``) -> ``gr.Error``."""
    try:
        yield
    except (ValueError, TypeError) as err:
        # the message is rendered as HTML by clients: escape markup, keep quotes readable
        raise gr.Error(
            html.escape(str(err), quote=False), title="Invalid input", print_exception=False
        ) from None


def build_demo(
    model: ImageModel | None = None, repeats: int = REPEATS, budget_s: float = BUDGET_S
) -> gr.Blocks:
    """The page and its ``generate`` API endpoint; call ``.queue(...)`` and ``.launch(...)`` on it.

    ``repeats``: timed runs of each method per request, after the run whose image is shown;
    fewer when they would take a request past ``budget_s`` seconds (``demos.report.compare``).
    """
    image_model = model if model is not None else mmaccel.load_model()
    specs = method_options()
    choices = [m for m in METHODS if m != BASELINE]
    first = "sjd" if "sjd" in choices else choices[0]

    def progress_fn(progress: gr.Progress) -> Callable[[float, str], None]:
        return lambda fraction, desc: progress(fraction, desc=desc)

    def api_generate(prompt: str, method: str, seed: float | None, progress=PROGRESS):
        """(prompt, method or method spec, seed) -> (ar image, method image, statistics dict)."""
        with _readable_errors():
            request = check_request(prompt, method, seed, model=image_model)
            c = compare(request, image_model, progress_fn(progress), repeats, budget_s)
        return c.baseline.images[0], c.accelerated.images[0], c.stats

    with gr.Blocks(title="mmaccel demo", analytics_enabled=False) as demo:
        gr.Markdown(intro_markdown(choices, image_model), elem_id="intro")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                prompt = gr.Textbox(
                    label="Prompt",
                    value=EXAMPLE_PROMPT,
                    lines=2,
                    info=f"at most {MAX_PROMPT_CHARS} characters; a longer prompt is refused, never cut",
                    elem_id="prompt",
                )
                method = gr.Radio(
                    choices, value=first, label=f"Method (compared with {BASELINE})", elem_id="method"
                )
                about = gr.Markdown(about_markdown(first, image_model), elem_id="about")
                option_boxes = {name: _field(spec, first, image_model) for name, spec in specs.items()}
                seed = gr.Number(
                    value=0,
                    precision=None,  # refuse 2.5 instead of rounding it
                    label="Seed: the same seed with the same method gives the same image",
                    info=f"a whole number from 0 to {MAX_SEED}",
                    elem_id="seed",
                )
                run = gr.Button("Generate", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                status = gr.HTML(IDLE, elem_id="status")
                with gr.Row():
                    ar_image = _image(BASELINE, "ar-image")
                    method_image = _image("method", "method-image")
                summary = gr.Markdown(elem_id="summary")
                gr.Markdown(
                    "**Per-step view.** Each cell is an image token (raster order) coloured by the forward pass "
                    "that committed it, on one colour scale for both runs (dark = early). White lines separate "
                    "tokens committed by different forwards: every outlined block was accepted by a single "
                    "forward. The animation replays both runs forward by forward; magenta marks the tokens "
                    "just committed."
                )
                heat_scale = gr.Markdown(elem_id="heat-scale")
                heat = _image("forward that committed each token", "heat", show_label=False)
                gif = gr.HTML(elem_id="filling")
                with gr.Accordion("Statistics (JSON)", open=False):
                    stats = gr.JSON(elem_id="stats")

        def pick(name: str):
            updates = [gr.update(value=about_markdown(name, image_model))]
            for option, spec in specs.items():
                reads = option in option_names(name)
                updates.append(
                    gr.update(
                        visible=reads,
                        value=_field_value(spec, name, image_model),
                        info=_info(spec, name, image_model),
                    )
                    if reads
                    else gr.update(visible=False)
                )
            return updates

        method.change(pick, method, [about, *option_boxes.values()], queue=False, api_visibility="private")

        outputs = [status, ar_image, method_image, summary, heat_scale, heat, gif, stats]

        def cleared(message: str) -> tuple:
            """No result on the page: the previous run's results never stay beside a new request."""
            return (
                message,
                gr.update(value=None, label=BASELINE),
                gr.update(value=None, label="method"),
                "",
                "",
                None,
                "",
                None,
            )

        def ui_generate(values: dict, progress=PROGRESS):
            name = values[method]
            options = {o: values[option_boxes[o]] for o in option_names(name)}
            try:
                request = check_request(
                    values[prompt], name, values[seed], options, page_defaults(name, image_model), image_model
                )
                c = compare(request, image_model, progress_fn(progress), repeats, budget_s)
            except (ValueError, TypeError) as err:
                return cleared(_error_html(str(err)))
            runs = [(BASELINE, c.baseline), (request.method, c.accelerated)]
            images = [
                gr.update(value=_big(out.images[0]), label=_run_label(out, label)) for label, out in runs
            ]
            forwards = [out.generate_output.token_forward_index[0].numpy() for _, out in runs]
            last = max(int(f.max()) for f in forwards)
            longest = runs[max(range(len(runs)), key=lambda i: int(forwards[i].max()))][0]
            scale = (
                f"Both maps use one colour scale: forward 0 (dark) to forward {last} (bright), "
                f"the last forward of `{longest}`."
            )
            maps = heat_maps(
                [
                    (f"{label}: {out.num_forward_passes} forwards", f)
                    for (label, out), f in zip(runs, forwards, strict=True)
                ]
            )
            done = f"Done: <code>{BASELINE}</code> and <code>{html.escape(request.method)}</code> with seed {request.seed}."
            return (done, *images, summary_markdown(c), scale, maps, _gif_html(c), c.stats)

        run.click(
            lambda: cleared("Generating…"),
            None,
            outputs,
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        ).then(
            ui_generate,
            {prompt, method, seed, *option_boxes.values()},
            outputs,
            api_visibility="private",
            concurrency_id="generate",
            show_progress_on=[status],
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
    parser.add_argument(
        "--repeats",
        type=int,
        default=REPEATS,
        help=f"timed runs of each method per request, after the warm-up run (default {REPEATS})",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=BUDGET_S,
        help=f"seconds a request aims to stay within: fewer timed runs (at least one) when "
        f"--repeats would not fit (default {BUDGET_S:g})",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation at start")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.max_queue < 1 or args.repeats < 1:
        parser.error("--concurrency, --max-queue and --repeats must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="demo: %(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.concurrency))
    model = mmaccel.load_model()
    if not args.no_warmup:  # first calls pay one-time costs that would skew the first comparison
        log.info("warming up")
        for name in (BASELINE, "sjd"):
            if name in METHODS:
                mmaccel.generate_image(EXAMPLE_PROMPT, name, model=model, seed=0)
    demo = build_demo(model, args.repeats, args.time_budget)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        show_error=False,
        footer_links=["api"],
        run_history=False,
        css=CSS,
    )


if __name__ == "__main__":
    main()

"""Gradio demo: ``ar`` side by side with an accelerated method, on a model the user picks.

    python -m demos.app --port 7860            # http://127.0.0.1:7860

Owns: the page (a model picker of the installed models that load, see ``demos.models``: the
embedded raster text-to-image model ``shapes-t2i`` by default, the next-scale (VAR) pair
``fashion-var`` and the masked-set (MAR) pair ``fashion-mar``, whose prompts are class names,
offered as a list; a model whose weights are missing is left out with a note saying why; a prompt; a method picker showing only the methods
that run on the model, each with only the options it reads, filled with the library's defaults
for that model, see ``demos.inputs`` and ``demos.fields``; a seed), turning bad input into one
readable message, the comparison (both images, forward passes (per model on a VAR or MAR pair),
the median wall-clock of timed repeats, the peak K/V cache on a VAR pair, the acceptance rate on
a MAR pair; see ``demos.report``), the per-step view (raster: which tokens each forward accepted;
VAR: which model drew each scale; MAR: what each target forward revealed; ``demos.visualize``),
the ``generate`` API endpoint for ``gradio_client`` (prompt, method, seed, model = ``shapes-t2i``,
``fashion-var``, ``fashion-mar``, ...) -> (ar image, method image, statistics), the bounded
request queue, and this command line.

Must never: decode tokens itself (everything goes through ``mmaccel.generate_image``), put a
default of its own into a request (a field left at the library's default is not sent), show a
stack trace for a model that cannot load, or listen beyond loopback unless ``--host`` says so.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr
import torch

import mmaccel
from demos.fields import option_field, option_update
from demos.inputs import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    check_request,
    method_options,
    option_names,
    page_defaults,
)
from demos.models import (
    Catalogue,
    classes,
    describe,
    example_prompt,
    first_method,
    is_masked_set,
    is_next_scale,
    load_catalogue,
    offered_methods,
)
from demos.report import (
    BASELINE,
    BUDGET_S,
    REPEATS,
    about_markdown,
    compare,
    intro_markdown,
    summary_markdown,
)
from demos.visualize import comparison_view, enlarge

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
PER_STEP = (
    "**Per-step view.** Each cell is an image token (raster order) coloured by the forward pass "
    "that committed it, on one colour scale for both runs (dark = early). White lines separate "
    "tokens committed by different forwards: every outlined block was accepted by a single "
    "forward. The animation replays both runs forward by forward; magenta marks the tokens "
    "just committed."
)
PER_SCALE = (
    "**Per-scale view.** A next-scale model draws a whole scale (1x1, 2x2, ... tokens) in one forward, "
    "so there is no token-by-token view: each square is one scale, split into its tokens and coloured "
    "by the model that drew it."
)
PER_VERIFY = (
    "**Per-forward view.** A masked-set model reveals its tokens in sets of a random order, so the view "
    "shows what each forward of the target revealed: each box is one target forward, as wide as the tokens "
    "it revealed; under `cspd` the part of a checked block kept from the draft model is shaded."
)


def _view_note(model: Any) -> str:
    return PER_SCALE if is_next_scale(model) else PER_VERIFY if is_masked_set(model) else PER_STEP


def _model_label(model: Any) -> str:
    kind = (
        "next-scale (VAR), prompts are class names"
        if is_next_scale(model)
        else "masked-set (MAR), prompts are class names"
        if is_masked_set(model)
        else "text-to-image"
    )
    return f"{model.name} ({kind})"


def _model_info(catalogue: Catalogue, model: Any) -> str:
    return " ".join(t for t in (describe(model) + ".", catalogue.note()) if t)


def _prompt_info(model: Any) -> str:
    limit = f"at most {MAX_PROMPT_CHARS} characters; a longer prompt is refused, never cut"
    if classes(model):
        return f"a class name: {', '.join(classes(model))} (pick one below, or type it); {limit}"
    return limit


def _run_label(out: Any, label: str) -> str:
    # next-scale and masked-set runs count forwards per model role
    forwards = out.generate_output.extras.get("forwards", {})
    if "draft" in forwards:
        return (
            f"{label} ({forwards['target']} forward passes of the target, {forwards['draft']} of the draft)"
        )
    if {"drafter", "refiner"} <= set(forwards):
        return (
            f"{label} ({out.num_forward_passes} forward passes: {forwards['drafter']} large model, "
            f"{forwards['refiner']} small model)"
        )
    return f"{label} ({out.num_forward_passes} forward passes)"


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


def build_demo(model: Any = None, repeats: int = REPEATS, budget_s: float = BUDGET_S) -> gr.Blocks:
    """The page and its ``generate`` API endpoint; call ``.queue(...)`` and ``.launch(...)`` on it.

    ``model``: a ``demos.models.Catalogue`` of the models to offer (default: every installed model
    that loads, ``load_catalogue()``), or one model, then the only one offered.
    ``repeats``: timed runs of each method per request, after the run whose image is shown;
    fewer when they would take a request past ``budget_s`` seconds (``demos.report.compare``).
    """
    if isinstance(model, Catalogue):
        catalogue = model
    else:
        catalogue = Catalogue.of(model) if model is not None else load_catalogue()
    m0 = catalogue.models[catalogue.default]
    first = first_method(m0)

    def progress_fn(progress: gr.Progress) -> Callable[[float, str], None]:
        return lambda fraction, desc: progress(fraction, desc=desc)

    def api_generate(
        prompt: str, method: str, seed: float | None, model: str = catalogue.default, progress=PROGRESS
    ):
        """(prompt, method or method spec, seed, model name) -> (ar image, method image, statistics dict)."""
        with _readable_errors():
            image_model = catalogue.get(model)
            request = check_request(prompt, method, seed, model=image_model)
            c = compare(request, image_model, progress_fn(progress), repeats, budget_s)
        return c.baseline.images[0], c.accelerated.images[0], c.stats

    with gr.Blocks(title="mmaccel demo", analytics_enabled=False) as demo:
        intro = gr.Markdown(intro_markdown(offered_methods(m0), m0), elem_id="intro")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                model_box = gr.Dropdown(
                    [(_model_label(m), name) for name, m in catalogue.models.items()],
                    value=catalogue.default,
                    label="Model",
                    info=_model_info(catalogue, m0),
                    filterable=False,
                    elem_id="model",
                )
                prompt = gr.Textbox(
                    label="Prompt",
                    value=example_prompt(m0),
                    lines=2,
                    info=_prompt_info(m0),
                    elem_id="prompt",
                )
                pick_class = gr.Radio(
                    list(classes(m0)),
                    value=None,
                    label="Classes",
                    visible=bool(classes(m0)),
                    elem_id="classes",
                )
                method = gr.Radio(
                    offered_methods(m0),
                    value=first,
                    label=f"Method (compared with {BASELINE})",
                    elem_id="method",
                )
                about = gr.Markdown(about_markdown(first, m0), elem_id="about")
                # one field per option any method reads, shown for the methods that read it; its range
                # and default follow the model (option_updates)
                option_boxes = {
                    name: option_field(spec, first, m0) for name, spec in method_options(m0).items()
                }
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
                view_note = gr.Markdown(_view_note(m0), elem_id="view-note")
                heat_scale = gr.Markdown(elem_id="heat-scale")
                heat = _image("the per-step view of both runs", "heat", show_label=False)
                gif = gr.HTML(elem_id="filling")
                with gr.Accordion("Statistics (JSON)", open=False):
                    stats = gr.JSON(elem_id="stats")

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

        def option_updates(name: str, image_model: Any) -> list[dict[str, Any]]:
            model_specs = method_options(image_model)
            return [option_update(model_specs[option], name, image_model) for option in option_boxes]

        def pick(name: str, model_name: str):
            image_model = catalogue.models.get(model_name)
            if image_model is None or name not in offered_methods(image_model):
                # a method of the previous model, while the model switch is on its way: it refills all
                return [gr.update()] * (1 + len(option_boxes))
            return [gr.update(value=about_markdown(name, image_model)), *option_updates(name, image_model)]

        method.change(
            pick, [method, model_box], [about, *option_boxes.values()], queue=False, api_visibility="private"
        )

        def switch(model_name: str):
            """Everything that follows the model: methods, their options, the prompt, the texts."""
            image_model = catalogue.get(model_name)
            name, names = first_method(image_model), classes(image_model)
            return (
                gr.update(info=_model_info(catalogue, image_model)),
                intro_markdown(offered_methods(image_model), image_model),
                gr.update(value=example_prompt(image_model), info=_prompt_info(image_model)),
                gr.update(choices=list(names), value=None, visible=bool(names)),
                gr.update(choices=offered_methods(image_model), value=name),
                about_markdown(name, image_model),
                *option_updates(name, image_model),
                _view_note(image_model),
                *cleared(IDLE),
            )

        model_box.change(
            switch,
            model_box,
            [
                model_box,
                intro,
                prompt,
                pick_class,
                method,
                about,
                *option_boxes.values(),
                view_note,
                *outputs,
            ],
            queue=False,
            api_visibility="private",
        )
        pick_class.input(
            lambda name: gr.update() if name is None else name,
            pick_class,
            prompt,
            queue=False,
            api_visibility="private",
        )

        def ui_generate(values: dict, progress=PROGRESS):
            name = values[method]
            options = {o: values[option_boxes[o]] for o in option_names(name)}
            try:
                image_model = catalogue.get(values[model_box])
                request = check_request(
                    values[prompt], name, values[seed], options, page_defaults(name, image_model), image_model
                )
                c = compare(request, image_model, progress_fn(progress), repeats, budget_s)
            except (ValueError, TypeError) as err:
                return cleared(_error_html(str(err)))
            runs = [(BASELINE, c.baseline), (request.method, c.accelerated)]
            images = [
                gr.update(value=enlarge(out.images[0]), label=_run_label(out, label)) for label, out in runs
            ]
            scale, picture, animation = comparison_view(c)
            done = (
                f"Done: <code>{BASELINE}</code> and <code>{html.escape(request.method)}</code> on "
                f"{html.escape(image_model.name)} with seed {request.seed}."
            )
            return (done, *images, summary_markdown(c), scale, picture, animation, c.stats)

        run.click(
            lambda: cleared("Generating…"),
            None,
            outputs,
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        ).then(
            ui_generate,
            {model_box, prompt, method, seed, *option_boxes.values()},
            outputs,
            api_visibility="private",
            concurrency_id="generate",
            show_progress_on=[status],
        )

        # the API endpoint reads its own hidden inputs, so a method spec string and any seed reach the checks
        with gr.Row(visible=False):
            api_prompt, api_method, api_seed = gr.Textbox(), gr.Textbox(), gr.Number()
            api_model = gr.Textbox(value=catalogue.default)
            api_ar, api_method_image = gr.Image(type="pil", format="png"), gr.Image(type="pil", format="png")
            api_stats, api_button = gr.JSON(), gr.Button()
        api_button.click(
            api_generate,
            [api_prompt, api_method, api_seed, api_model],
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
    catalogue = load_catalogue()  # a model that cannot load is left out, with its reason on the page
    if not args.no_warmup:  # first calls pay one-time costs that would skew the first comparison
        for name, model in catalogue.models.items():
            log.info("warming up %s", name)
            for method in (BASELINE, first_method(model)):
                mmaccel.generate_image(example_prompt(model), method, model=model, seed=0)
    demo = build_demo(catalogue, args.repeats, args.time_budget)
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

"""What the demo accepts: the options each method offers, their defaults, and the checks on a request.

Owns: ``method_options`` (every option a registered method reads, per
``mmaccel.methods.OPTIONS``, with its type, choices, range (for a model, the range valid on it:
``draft_scales`` 1 .. its scales - 1, ``num_iter`` and ``gamma`` 1 .. its tokens), the words it
takes instead of a number (``window="auto"``), a note for its label where the range alone says
too little (``cspd_kappa`` is lossy) and help; the model declares ``grid_width`` so the page
never offers it),
``page_defaults`` (what each option of a method runs with when the user names none, from
``mmaccel.methods.method_defaults``: the one source of defaults for the page, the API and the
CLI), ``check_request`` (prompt, method or method spec, options, seed, model -> a ``Request``,
or an ``InputError`` whose message is fit to show a user: also a method that does not run on
the model, and on a class-conditional model a prompt that is not one of its classes, with the
model's own message listing them).

Must never: import gradio or generate anything; it is plain Python, tested without a server.
Must never invent a default: a value the user did not change is not sent, so the library's
own default applies.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from demos.models import (
    classes,
    example_prompt,
    is_class_conditional,
    is_masked_set,
    is_next_scale,
    patch_nums,
    resolve_for,
    runnable_methods,
)
from mmaccel.acceptors.lantern import RULES
from mmaccel.drafters import INITS
from mmaccel.eval.common import parse_method_spec
from mmaccel.image_families import draft_scales_of
from mmaccel.methods import MASKED_SET_METHODS, METHODS, OPTIONS, method_defaults, model_method_defaults
from mmaccel.window import TIMED

# The grammar's longest caption is about 110 characters; a longer prompt is refused, never cut.
MAX_PROMPT_CHARS = 300
MAX_SEED = 2**32 - 1
# Options the page does not offer: the model declares its own grid width.
HIDDEN_OPTIONS = frozenset({"name", "grid_width"})
# What the config dataclasses cannot say about an option: its choices, range and meaning.
CHOICES: dict[str, tuple[str, ...]] = {"init": tuple(INITS), "lantern_rule": tuple(RULES)}
# Words an ``int | str`` option takes instead of a number (``mmaccel.methods``), and the numbers
# the page suggests beside them: the windows ``auto`` itself times (``mmaccel.window``).
KEYWORDS: dict[str, tuple[str, ...]] = {"window": ("auto",)}
SUGGESTED: dict[str, tuple[int, ...]] = {"window": TIMED}
# A window of 0 drafts is plain decoding through the method's acceptor; one wider than 64 costs
# more per forward than it can save on a 256-token image; more than 256 "neighbours" of a code
# are no longer near it in the shipped 1024-code codebook.
BOUNDS: dict[str, tuple[float, float]] = {
    "window": (0, 64),
    "zipar_window": (1, 64),
    "lantern_k": (1, 256),
    "lantern_delta": (0, 1),
    "lantern_lambda": (1, math.inf),
    # on a given model: 1 .. its scales - 1 (``method_options(model)``), both models draw a scale
    "draft_scales": (1, math.inf),
    # on a given model: 1 .. its tokens (``method_options(model)``): each step reveals at least one
    "gamma": (1, math.inf),
    "num_iter": (1, math.inf),
    "prefill_ratio": (0, 1),  # 1 itself is refused by the library: no step would be left to draft
}
# What a label says instead of the range, where the range alone would mislead.
NOTES: dict[str, str] = {
    "prefill_ratio": "0 up to, not including, 1",
    "cspd_kappa": "lossy; above 0, or empty",
}
HELP: dict[str, str] = {
    "window": "draft tokens verified per forward (0: none); auto: the number giving the most tokens "
    "per second on this machine, found by timing a few steps at the method's first request",
    "init": "how new draft slots start: random, the left neighbour, or the token one grid row up",
    "zipar_window": "a row starts once the row above holds this many tokens",
    "lantern_k": "nearest codebook neighbours a draft may borrow probability from",
    "lantern_delta": "total-variation budget per step (give this or lantern_lambda, not both)",
    "lantern_lambda": "multiplicative bound p~(x) <= lambda p(x) of LANTERN++, instead of lantern_delta",
    "lantern_rule": "bounded: one relaxed target per position, the bound holds; "
    "paper: the published per-draft rule, faster, bound not guaranteed",
    "draft_scales": "scales the large model draws (the smallest ones); the small model draws the rest, "
    "so those follow the small model's distribution",
    "gamma": "steps the draft model runs before the target checks them all in one forward",
    "prefill_ratio": "share of the steps the target runs alone first, before any drafting",
    "num_iter": "MAR steps, each revealing a set of tokens (a cosine schedule); fewer steps, fewer forwards",
    "cspd_kappa": "lossy: softens the acceptance ratio so more draft values are kept, and the image follows the "
    "draft more than the target; empty: exact acceptance",
}


class InputError(ValueError):
    """Bad input to the demo; its message is shown to the user as is."""


@dataclass(frozen=True)
class OptionSpec:
    """One method option as the page offers it."""

    name: str
    kind: type  # int, float, bool or str
    methods: tuple[str, ...]  # the methods that read it (``mmaccel.methods.OPTIONS``)
    optional: bool = False  # None (an empty box) is a valid value
    choices: tuple[str, ...] | None = None
    bounds: tuple[float, float] | None = None
    keywords: tuple[str, ...] = ()  # words taken instead of a number (window: auto)
    suggested: tuple[int, ...] = ()  # numbers offered beside the keywords; any other may be typed
    help: str = ""
    note: str = ""  # what the label says instead of the range (``NOTES``)


def _option_type(hint: Any) -> tuple[type, bool]:
    """(int, float, bool or str; whether None is allowed) for a config field's type hint."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        # ``int | str``: a number or one of the option's ``KEYWORDS`` (window="auto")
        hint = args[0] if len(args) == 1 else (int if set(args) == {int, str} else str)
    return (hint if hint in (int, float, bool, str) else str), optional


def option_names(method: str) -> tuple[str, ...]:
    """The options the page offers for ``method``: those it reads, but the model's ``grid_width``."""
    return tuple(o for o in OPTIONS.get(method, ()) if o not in HIDDEN_OPTIONS)


def _bounds(name: str, model: Any) -> tuple[float, float] | None:
    if name == "draft_scales" and is_next_scale(model):
        return (1, len(patch_nums(model)) - 1)  # mmaccel.images refuses any other number of scales
    if name in ("gamma", "num_iter") and is_masked_set(model):
        return (1, model.num_image_tokens)  # at most one step per token (mmaccel.images refuses more)
    return BOUNDS.get(name)


def method_options(model: Any = None) -> dict[str, OptionSpec]:
    """Every option some registered method reads, by option name, with the methods that read it.

    ``model``: the model the page runs, whose valid ranges the specs carry (``draft_scales``,
    ``num_iter``, ``gamma``).
    """
    found: dict[str, tuple[tuple[type, bool], list[str]]] = {}
    for method, config_cls in METHODS.items():
        hints = typing.get_type_hints(config_cls)
        for name in option_names(method):
            found.setdefault(name, (_option_type(hints[name]), []))[1].append(method)
    return {
        name: OptionSpec(
            name,
            kind,
            tuple(methods),
            optional=optional,
            choices=CHOICES.get(name),
            bounds=_bounds(name, model),
            keywords=KEYWORDS.get(name, ()),
            suggested=SUGGESTED.get(name, ()),
            help=HELP.get(name, ""),
            note=NOTES.get(name, ""),
        )
        for name, ((kind, optional), methods) in found.items()
    }


def page_defaults(method: str, model: Any = None) -> dict[str, Any]:
    """What each option the page offers for ``method`` runs with when the user names none.

    Straight from ``mmaccel.methods.method_defaults(method, model)`` (the model's shipped best
    setting, else the config class's default); the demo adds none of its own.
    """
    values = method_defaults(method, model)
    return {name: values[name] for name in option_names(method)}


def default_note(method: str, option: str, model: Any = None) -> str:
    """``"default for zipar+sjd: 4 (shapes-t2i's tuned setting)"``: the help line under a field."""
    value = page_defaults(method, model)[option]
    if value is None and option == "draft_scales" and is_next_scale(model):
        drawn = draft_scales_of(resolve_for(method, {}, model), model)
        return f"default for {method}: not set, so the large model draws {drawn} of the {len(patch_nums(model))} scales"
    if value is None and option == "num_iter" and is_masked_set(model):
        return f"default for {method}: not set, so {getattr(model, 'name', 'the model')}'s {model.default_num_iter} steps"
    if value is None and option == "cspd_kappa":
        return f"default for {method}: not set, so the acceptance is exact"
    if value is None:
        return f"default for {method}: not set"
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    if option in model_method_defaults(model, method):
        source = f"{getattr(model, 'name', 'the model')}'s tuned setting"
    else:
        source = "the method's own default"
    return f"default for {method}: {shown} ({source})"


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_option(spec: OptionSpec, value: Any) -> Any:
    if value is None or value == "":
        if spec.optional:
            return None
        raise InputError(f"Option {spec.name} needs a value.")
    if spec.kind is bool:
        return bool(value)
    if spec.kind in (int, float):
        words = "".join(f" or {w!r}" for w in spec.keywords)
        if isinstance(value, str) and value.strip().lower() in spec.keywords:
            return value.strip().lower()
        if isinstance(value, str):  # a text box or a method spec
            try:
                value = float(value.strip())
            except ValueError:
                raise InputError(f"Option {spec.name} must be a number{words}, got {value!r}.") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"Option {spec.name} must be a number{words}, got {value!r}.")
        if spec.kind is int:
            if value != int(value):  # never round: 2.5 is not silently run as 2
                raise InputError(f"Option {spec.name} must be a whole number, got {_number_text(value)}.")
            value = int(value)
        if spec.bounds and not spec.bounds[0] <= value <= spec.bounds[1]:
            lo, hi = spec.bounds
            allowed = f"at least {lo:g}" if math.isinf(hi) else f"between {lo:g} and {hi:g}"
            raise InputError(f"Option {spec.name} must be {allowed}{words}, got {_number_text(value)}.")
        return value
    if spec.choices and value not in spec.choices:
        raise InputError(f"Option {spec.name} must be one of {', '.join(spec.choices)}; got {value!r}.")
    return value


@dataclass(frozen=True)
class Request:
    """A checked request: a prompt, a known method, the options the user named, a seed."""

    prompt: str
    method: str
    options: dict[str, Any]  # only what the user named; the rest runs with the library's defaults
    seed: int


def _not_taken(method: str, option: str) -> InputError:
    takes = option_names(method)
    readers = [m for m in METHODS if option in option_names(m)]
    where = f" ({option} is read by {', '.join(readers)})" if readers else ""
    return InputError(
        f"Method {method!r} has no option {option!r}{where}; its options are: {', '.join(takes) or 'none'}."
    )


def not_runnable(method: str, model: Any) -> str:
    """Why ``method`` cannot run on ``model``, and what would."""
    runs = ", ".join(runnable_methods(model))
    if is_next_scale(model) or is_masked_set(model):
        kind = (
            "a next-scale (VAR) model"
            if is_next_scale(model)
            else "a masked-set (MAR) model of continuous tokens"
        )
        return (
            f"Method {method!r} does not run on {model.name}, {kind}: the methods that run on it are {runs}."
        )
    pairs = (
        "masked-set (MAR) model pairs such as fashion-mar"
        if method in MASKED_SET_METHODS
        else "next-scale (VAR) model pairs such as fashion-var"
    )
    return (
        f"Method {method!r} does not run on {model.name}, a next-token (raster) model: {method} runs on "
        f"{pairs}. The methods that run on {model.name} are {runs}."
    )


def _check_class(prompt: str, model: Any) -> None:
    """A class-conditional (VAR or MAR) model's own check of a class-name prompt, worded for one prompt."""
    try:
        model.labels([prompt])
    except ValueError as err:
        message = re.sub(r"^prompt 0: ", "", str(err))  # the page sends one prompt
        raise InputError(message[:1].upper() + message[1:]) from None


def check_request(
    prompt: Any,
    method: Any,
    seed: Any,
    options: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    model: Any = None,
) -> Request:
    """Validate the inputs; raise ``InputError`` with a message fit for the page.

    ``method`` is a name (``sjd``) or a spec with options (``sjd-coupled:init=vertical,window=8``);
    options in the spec override ``options``. An empty option (None or ``""``) is not named.
    ``defaults``: the values the page showed in its fields (``page_defaults``); an option still
    equal to its default is not named either, so the library applies its own default (and an
    exclusive pair such as lantern_delta / lantern_lambda stays consistent). ``model``: the
    model the request will run on: the method must run on it, the options are checked with its
    shipped defaults and ranges, and a class-conditional model checks the prompt is one of its
    classes (its own message, which lists them).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        kind = "a class name such as" if classes(model) else "e.g."
        raise InputError(f"Please enter a prompt, {kind} “{example_prompt(model)}”.")
    if len(prompt.strip()) > MAX_PROMPT_CHARS:
        raise InputError(
            f"The prompt is too long: {len(prompt.strip())} characters, at most {MAX_PROMPT_CHARS}. "
            "Nothing was generated and nothing was cut; please shorten it."
        )
    if not isinstance(method, str) or not method.strip():
        raise InputError(f"Please choose a method: one of {', '.join(METHODS)}.")
    try:
        spec = parse_method_spec(method)
    except ValueError as err:
        raise InputError(f"Cannot read the method {method!r}: {err}") from None
    if spec.name not in METHODS:
        raise InputError(f"Unknown method {spec.name!r}; choose one of {', '.join(METHODS)}.")
    if model is not None and spec.name not in runnable_methods(model):
        raise InputError(not_runnable(spec.name, model))
    specs = method_options(model)
    checked = {}
    for name, value in {**(options or {}), **spec.options}.items():
        if name not in option_names(spec.name):
            raise _not_taken(spec.name, name)
        value = _check_option(specs[name], value)
        # compared once checked, so a box's text "8" or " auto" equals the default 8 or "auto"
        at_default = name not in spec.options and defaults and name in defaults and value == defaults[name]
        if value is not None and not at_default:  # left empty or at the default: the library's
            checked[name] = value
    try:
        resolve_for(spec.name, checked, model)
    except (ValueError, TypeError) as err:
        raise InputError(str(err)) from None
    if is_class_conditional(model):
        _check_class(prompt.strip(), model)
    if seed is None or isinstance(seed, bool) or not isinstance(seed, int | float) or not math.isfinite(seed):
        raise InputError(f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
    if seed != int(seed):
        raise InputError(f"The seed must be a whole number from 0 to {MAX_SEED}, got {_number_text(seed)}.")
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"The seed must be between 0 and {MAX_SEED}, got {int(seed)}.")
    return Request(prompt.strip(), spec.name, checked, int(seed))


def config_options(config: Any) -> dict[str, Any]:
    """The options a resolved method config runs with, as the page offers them (set ones only)."""
    values = dataclasses.asdict(config)
    return {name: values[name] for name in option_names(config.name) if values[name] is not None}

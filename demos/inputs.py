"""What the demo accepts: the method options it offers and the checks on a request.

Owns: ``method_options`` (every option of every method registered in
``mmaccel.methods.METHODS``, read from the config dataclasses, so a method registered later
appears in the picker with its options), ``check_request`` (prompt, method or method spec,
options, seed -> a ``Request``, or an ``InputError`` whose message is fit to show a user).

Must never: import gradio or generate anything; it is plain Python, tested without a server.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from mmaccel.drafters import INITS
from mmaccel.eval.common import parse_method_spec
from mmaccel.methods import METHODS, resolve_method

EXAMPLE_PROMPT = "a large red circle at the top left on a blue background"
MAX_PROMPT_CHARS = 300
MAX_SEED = 2**32 - 1
# Options the page does not offer: the model declares its own grid width.
HIDDEN_OPTIONS = frozenset({"name", "grid_width"})
# What the config dataclasses cannot say about an option: its choices, range and meaning.
CHOICES: dict[str, tuple[str, ...]] = {"init": tuple(INITS)}
# A window wider than this costs more per forward than it can save on a 256-token image.
BOUNDS: dict[str, tuple[float, float]] = {"window": (1, 64)}
HELP: dict[str, str] = {
    "window": "draft tokens verified per forward",
    "init": "how new draft slots start: random, the left neighbour, or the token one grid row up",
}


class InputError(ValueError):
    """Bad input to the demo; its message is shown to the user as is."""


@dataclass(frozen=True)
class OptionSpec:
    """One method option as the page offers it, read from the methods' config dataclasses."""

    name: str
    kind: type  # int, float, bool or str
    default: Any
    methods: tuple[str, ...]  # the methods that take it
    optional: bool = False  # None (an empty box) means "the method's default"
    choices: tuple[str, ...] | None = None
    bounds: tuple[float, float] | None = None
    help: str = ""


def _option_type(hint: Any) -> tuple[type, bool]:
    """(int, float, bool or str; whether None is allowed) for a config field's type hint."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else str
    return (hint if hint in (int, float, bool, str) else str), optional


def method_options() -> dict[str, OptionSpec]:
    """Every option of every registered method (``mmaccel.methods.METHODS``), by option name."""
    found: dict[str, tuple[tuple[type, bool], Any, list[str]]] = {}
    for method, config_cls in METHODS.items():
        hints = typing.get_type_hints(config_cls)
        for field in dataclasses.fields(config_cls):
            if field.name in HIDDEN_OPTIONS:
                continue
            default = None if field.default is dataclasses.MISSING else field.default
            found.setdefault(field.name, (_option_type(hints[field.name]), default, []))[2].append(method)
    return {
        name: OptionSpec(
            name,
            kind,
            default,
            tuple(methods),
            optional=optional,
            choices=CHOICES.get(name),
            bounds=BOUNDS.get(name),
            help=HELP.get(name, ""),
        )
        for name, ((kind, optional), default, methods) in found.items()
    }


def _check_option(spec: OptionSpec, value: Any) -> Any:
    if value is None or (spec.optional and value == ""):
        if spec.optional:
            return None
        raise InputError(f"Option {spec.name} needs a value.")
    if spec.kind is bool:
        return bool(value)
    if spec.kind in (int, float):
        if isinstance(value, str):  # a text box or a method spec
            try:
                value = float(value.strip())
            except ValueError:
                raise InputError(f"Option {spec.name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"Option {spec.name} must be a number, got {value!r}")
        if spec.kind is int:
            if value != int(value):
                raise InputError(f"Option {spec.name} must be a whole number, got {value!r}")
            value = int(value)
        if spec.bounds and not spec.bounds[0] <= value <= spec.bounds[1]:
            lo, hi = spec.bounds
            raise InputError(f"Option {spec.name} must be between {lo:g} and {hi:g}, got {value:g}")
        return value
    if spec.choices and value not in spec.choices:
        raise InputError(f"Option {spec.name} must be one of {', '.join(spec.choices)}; got {value!r}")
    return value


@dataclass(frozen=True)
class Request:
    """A checked request: a prompt, a known method with valid options, a seed."""

    prompt: str
    method: str
    options: dict[str, Any]
    seed: int


def check_request(prompt: Any, method: Any, seed: Any, options: dict[str, Any] | None = None) -> Request:
    """Validate the inputs; raise ``InputError`` with a message fit for the page.

    ``method`` is a name (``sjd``) or a spec with options (``sjd-coupled:init=vertical,window=8``);
    options in the spec override ``options``.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"Please enter a prompt, e.g. “{EXAMPLE_PROMPT}”.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"The prompt is too long ({len(prompt)} characters; at most {MAX_PROMPT_CHARS}).")
    if not isinstance(method, str) or not method.strip():
        raise InputError(f"Please choose a method: one of {', '.join(METHODS)}.")
    try:
        spec = parse_method_spec(method)
    except ValueError as err:
        raise InputError(f"Cannot read the method {method!r}: {err}") from None
    if spec.name not in METHODS:
        raise InputError(f"Unknown method {spec.name!r}; choose one of {', '.join(METHODS)}.")
    specs = method_options()
    checked = {}
    for name, value in {**(options or {}), **spec.options}.items():
        if name not in specs or spec.name not in specs[name].methods:
            takes = [n for n, s in specs.items() if spec.name in s.methods]
            raise InputError(
                f"Method {spec.name!r} has no option {name!r}; its options are: {', '.join(takes) or 'none'}."
            )
        value = _check_option(specs[name], value)
        if value is not None:  # left empty: the method's default
            checked[name] = value
    try:
        resolve_method(spec.name, checked)
    except (ValueError, TypeError) as err:
        raise InputError(str(err)) from None
    if seed is None or isinstance(seed, bool) or not isinstance(seed, int | float) or seed != int(seed):
        raise InputError(f"The seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"The seed must be between 0 and {MAX_SEED}, got {int(seed)}.")
    return Request(prompt.strip(), spec.name, checked, int(seed))

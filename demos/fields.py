"""The option fields of the demo's page: one gradio component per method option, and its updates.

Owns: the field of each option (``demos.inputs.method_options``): a drop-down for a choice, a
drop-down that also takes a typed number for an option with a keyword (``window``: ``auto``),
a checkbox, or a number box labelled with its range on the model in use (``draft_scales``:
1 to the model's scales - 1; ``num_iter`` and ``gamma``: 1 to a MAR model's tokens) or with its
note (``cspd_kappa``: lossy), each filled with the value the method runs with on that model
(``demos.inputs.page_defaults``) and a help line saying where that value comes from; and the
update of every field when the method or the model changes (shown only for a method that
reads it).

Must never: check or send a value (``demos.inputs.check_request`` does), or invent a default.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from demos.inputs import OptionSpec, default_note, option_names, page_defaults


def _info(spec: OptionSpec, method: str, model: Any) -> str:
    note = default_note(method, spec.name, model) if spec.name in option_names(method) else ""
    return " · ".join(t for t in (spec.help, note) if t)


def _value(spec: OptionSpec, method: str, model: Any) -> Any:
    if spec.name in option_names(method):
        value = page_defaults(method, model)[spec.name]
    else:
        value = next(page_defaults(m, model)[spec.name] for m in spec.methods)  # hidden: any reader's
    # a field that takes a word (window: auto) holds text, whether the default is the word or a number
    return str(value) if spec.keywords and value is not None else value


def _label(spec: OptionSpec) -> str:
    """The field's label, with the range it takes (on the model in use), or its note where the
    range alone would mislead (``cspd_kappa (lossy; ...)``)."""
    if spec.note:
        return f"{spec.name} ({spec.note})"
    lo, hi = spec.bounds or (None, None)
    if spec.keywords:
        lo, hi = spec.bounds or (0, math.inf)
        rng = f"{lo:g} or more" if math.isinf(hi) else f"{lo:g} to {hi:g}"
        return f"{spec.name} ({' or '.join(spec.keywords)}, or a whole number {rng})"
    if spec.kind in (int, float) and not spec.choices and lo is not None:
        return spec.name + (f" (at least {lo:g})" if math.isinf(hi) else f" ({lo:g} to {hi:g})")
    return spec.name


def option_field(spec: OptionSpec, method: str, model: Any) -> gr.components.Component:
    """The field of one option, showing ``method``'s default on ``model`` (hidden if ``method``
    does not read it)."""
    visible, value, info, label = (
        spec.name in option_names(method),
        _value(spec, method, model),
        _info(spec, method, model),
        _label(spec),
    )
    elem_id = f"option-{spec.name}"
    if spec.choices:
        return gr.Dropdown(
            list(spec.choices),
            value=value,
            label=label,
            info=info,
            visible=visible,
            filterable=False,
            elem_id=elem_id,
        )
    if spec.keywords:
        # the word (auto) and a few numbers to pick, or any number typed in; check_request reads the text
        return gr.Dropdown(
            [*spec.keywords, *(str(n) for n in spec.suggested)],
            value=value,
            label=label,
            info=info,
            visible=visible,
            allow_custom_value=True,
            filterable=True,
            elem_id=elem_id,
        )
    if spec.kind is bool:
        return gr.Checkbox(value=bool(value), label=label, info=info, visible=visible, elem_id=elem_id)
    if spec.kind in (int, float):
        # precision=None: gradio would round 2.5 to 2 before our check could refuse it
        return gr.Number(
            value=value,
            label=label,
            info=info,
            visible=visible,
            precision=None,
            step=1 if spec.kind is int else 0.05,
            placeholder="empty: not set",
            elem_id=elem_id,
        )
    return gr.Textbox(
        value="" if value is None else str(value),
        label=label,
        info=info,
        visible=visible,
        elem_id=elem_id,
    )


def option_update(spec: OptionSpec, method: str, model: Any) -> dict[str, Any]:
    """The field of ``spec`` once ``method`` on ``model`` is picked: shown, refilled with the
    default and relabelled with the range if the method reads it, hidden otherwise."""
    if spec.name not in option_names(method):
        return gr.update(visible=False)
    return gr.update(
        visible=True,
        value=_value(spec, method, model),
        info=_info(spec, method, model),
        label=_label(spec),
    )

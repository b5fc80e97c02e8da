"""A user who names a method gets the model's validated best setting of it, under their own options."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import mmaccel
from mmaccel.image_ar.default_model import METHOD_DEFAULTS
from mmaccel.methods import METHODS, OPTIONS, method_defaults, resolve_method, with_model_defaults

from .conftest import tiny_lm


@dataclass
class Shipped:
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)


MODEL = Shipped(
    {"lantern": {"lantern_rule": "paper", "lantern_delta": 0.8}, "zipar+sjd": {"zipar_window": 4}}
)


def test_a_named_method_takes_the_models_defaults_and_the_users_options_win():
    assert resolve_method("lantern", {}, MODEL).lantern_rule == "paper"
    assert resolve_method("lantern", {}, MODEL).lantern_delta == 0.8
    assert resolve_method("lantern", {"lantern_delta": 0.3}, MODEL).lantern_delta == 0.3
    assert resolve_method("lantern", {}).lantern_rule == "bounded"  # no model: the config's default
    assert resolve_method("sjd", {}, MODEL) == resolve_method("sjd", {})  # nothing shipped for sjd


def test_naming_one_of_an_exclusive_pair_drops_the_models_value_of_the_other():
    config = resolve_method("lantern", {"lantern_lambda": 1.5}, MODEL)
    assert (config.lantern_lambda, config.lantern_delta, config.lantern_rule) == (1.5, None, "paper")
    assert with_model_defaults("lantern", {"lantern_lambda": 2.0}, MODEL) == {
        "lantern_rule": "paper",
        "lantern_lambda": 2.0,
    }


def test_method_defaults_lists_every_option_a_method_reads_with_the_value_it_runs_with():
    for name in METHODS:
        assert set(method_defaults(name)) == set(OPTIONS[name])
    assert method_defaults("zipar") == {"zipar_window": 8, "grid_width": None}
    shown = method_defaults("zipar+sjd", MODEL)
    assert shown["zipar_window"] == 4 and shown["window"] == "auto"
    with pytest.raises(ValueError, match="unknown method 'sdj'"):
        method_defaults("sdj")


@pytest.mark.parametrize(
    ("method", "option", "readers"),
    [
        ("zipar", "window", "jacobi, sjd"),
        ("zipar+sjd", "lantern_delta", "lantern, zipar\\+lantern"),
        ("ar", "init", ""),
    ],
)
def test_an_option_the_method_does_not_read_is_refused_and_the_readers_named(method, option, readers):
    grid = {"grid_width": 4} if method.startswith("zipar") else {}
    pattern = f"method '{re.escape(method)}' does not take option\\(s\\) {option}.*{readers}"
    with pytest.raises(ValueError, match=pattern):
        mmaccel.generate(tiny_lm(vocab=16), torch.tensor([[1, 2]]), method, max_new_tokens=16, **grid,
                         **{option: 0.5 if option == "lantern_delta" else 3})  # fmt: skip


def test_the_shipped_defaults_of_the_default_model_are_valid_and_applied():
    shipped = {k: v for k, v in json.loads(METHOD_DEFAULTS.read_text()).items() if k != "about"}
    model = mmaccel.load_model()
    assert model.method_defaults == shipped and shipped
    for name, options in shipped.items():
        resolve_method(name, options)  # every shipped setting is a valid setting of its method
    out = mmaccel.generate_image("a small red square at the center on a blue background", "zipar+sjd", seed=0,
                                 return_output=True)  # fmt: skip
    config = out.generate_output.method
    for key, value in shipped["zipar+sjd"].items():
        assert getattr(config, key) == value
    named = mmaccel.generate_image("a small red square at the center on a blue background", "zipar+sjd", seed=0,
                                   zipar_window=2, return_output=True)  # fmt: skip
    assert named.generate_output.method.zipar_window == 2

"""The models the demo offers: which load, which methods run on each, and a prompt that fits each.

Owns: ``Catalogue`` (the loaded models by name, the installed ones that cannot be loaded with
the reason, the default), ``load_catalogue`` (every model of ``mmaccel.images.available_models``
that loads; a model whose weights are missing is kept out with its one-line reason, never a
stack trace), and the facts the page reads off a model: whether it is a next-scale (VAR) model
or a masked-set (MAR) model of continuous tokens, the methods that run on it (next-scale:
``mmaccel.methods.NEXT_SCALE_METHODS``; masked-set: ``MASKED_SET_METHODS``; raster:
``RASTER_METHODS``), the method config a request resolves to on it (``resolve_for``), its
scales, an example prompt and, for a class-conditional model, its class names.

Must never: import gradio or generate anything.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import mmaccel
from mmaccel.image_ar.fashion.data import CLASS_NAMES
from mmaccel.images import DEFAULT_MODEL, MaskedSetImageModel, NextScaleImageModel
from mmaccel.methods import (
    MASKED_SET_METHODS,
    METHODS,
    NEXT_SCALE_METHODS,
    RASTER_METHODS,
    resolve_masked_method,
    resolve_method,
)

log = logging.getLogger(__name__)

BASELINE = "ar"
EXAMPLE_PROMPT = "a large red circle at the top left on a blue background"
# The class names the page offers to pick for a class-conditional model (its ``labels`` decides
# what it accepts: also plurals and the dataset's official names).
CLASSES: dict[str, tuple[str, ...]] = {"fashion-var": tuple(CLASS_NAMES), "fashion-mar": tuple(CLASS_NAMES)}
EXAMPLES: dict[str, str] = {"shapes-t2i": EXAMPLE_PROMPT, "fashion-var": "sneaker", "fashion-mar": "sneaker"}
# What each model role of a next-scale decode is (``mmaccel.next_scale``: "target" under ar,
# "drafter" / "refiner" under CoDe).
ROLE_WORDS = {"target": "large model", "drafter": "large model", "refiner": "small model"}
# ... and of a masked-set decode (``mmaccel.masked_set``: "target", and "draft" under CSpD).
MASKED_ROLE_WORDS = {"target": "target model", "draft": "draft model"}


def is_next_scale(model: Any) -> bool:
    """Whether ``model`` predicts the next scale (VAR) rather than the next token in raster order."""
    return isinstance(model, NextScaleImageModel)


def is_masked_set(model: Any) -> bool:
    """Whether ``model`` generates continuous tokens in masked sets (MAR)."""
    return isinstance(model, MaskedSetImageModel)


def is_class_conditional(model: Any) -> bool:
    """Whether ``model`` takes class names (VAR and MAR pairs), checked by its own ``labels``."""
    return is_next_scale(model) or is_masked_set(model)


def runnable_methods(model: Any) -> tuple[str, ...]:
    """Every method that runs on ``model``, the baseline first."""
    if is_next_scale(model):
        return tuple(m for m in METHODS if m in NEXT_SCALE_METHODS)
    if is_masked_set(model):
        return tuple(m for m in METHODS if m in MASKED_SET_METHODS)
    # methods made for next-scale (code) or masked-set (cspd) pairs do not decode a raster model
    return tuple(m for m in METHODS if m in RASTER_METHODS)


def resolve_for(method: str, options: dict[str, Any], model: Any) -> Any:
    """The config ``method`` with ``options`` runs with on ``model`` (its shipped defaults under the
    options): ``mmaccel.methods.resolve_masked_method`` on a masked-set model (``ar`` there takes
    ``num_iter``), ``resolve_method`` on the others. ValueError/TypeError for a bad option."""
    if is_masked_set(model):
        return resolve_masked_method(method, options, model=model, model_name=model.name)
    return resolve_method(method, options, model=model)


def offered_methods(model: Any) -> list[str]:
    """The methods the page compares with the baseline on ``model``."""
    return [m for m in runnable_methods(model) if m != BASELINE]


def first_method(model: Any) -> str:
    """The method picked when ``model`` is chosen: ``sjd`` on a raster model, ``code`` on a VAR
    pair, ``cspd`` on a MAR pair."""
    offered = offered_methods(model)
    return next((m for m in ("sjd", "code", "cspd") if m in offered), offered[0])


def patch_nums(model: Any) -> tuple[int, ...]:
    """The side of each scale of a next-scale model (1, 2, 3, ... 8): scale k has ``pn * pn`` tokens."""
    return tuple(int(p) for p in model.var.patch_nums)


def grid_side(model: Any) -> int:
    """The side of a raster model's square token grid (16 for 256 tokens)."""
    return math.isqrt(model.num_image_tokens)


def classes(model: Any) -> tuple[str, ...]:
    """The class names a class-conditional model takes as prompts (empty for a text model)."""
    found = getattr(model, "class_names", None) or CLASSES.get(getattr(model, "name", ""), ())
    return tuple(found)


def example_prompt(model: Any = None) -> str:
    """A prompt ``model`` understands: a caption of the Shapes grammar, or a class name."""
    name = getattr(model, "name", DEFAULT_MODEL)
    return EXAMPLES.get(name) or next(iter(classes(model)), EXAMPLE_PROMPT)


def describe(model: Any) -> str:
    """One line on what ``model`` is, for the picker and the page's introduction."""
    if is_next_scale(model):
        pns = patch_nums(model)
        kind = "pair (a large and a small model)" if getattr(model, "refiner", None) is not None else "model"
        return (
            f"{model.name}: a class-conditional next-scale (VAR) {kind}, {len(pns)} scales from "
            f"{pns[0]}x{pns[0]} to {pns[-1]}x{pns[-1]} tokens ({model.num_image_tokens} in all)"
        )
    if is_masked_set(model):
        kind = (
            "pair (a target and a smaller draft model)"
            if getattr(model, "draft", None) is not None
            else "model"
        )
        n, side = model.num_image_tokens, grid_side(model)
        cells = f"{side}x{side} = {n}" if side * side == n else str(n)
        return (
            f"{model.name}: a class-conditional masked-set (MAR) {kind} of continuous tokens "
            f"({cells} latent cells, drawn in {model.default_num_iter} steps by default)"
        )
    side = grid_side(model)
    return f"{model.name}: text-to-image, next-token in raster order ({side}x{side} = {model.num_image_tokens} tokens)"


@dataclass
class Catalogue:
    """The models the page offers (name -> model) and the installed ones it cannot (name -> why).

    ``default``: the model the page opens with (``shapes-t2i`` when it loaded, else the first).
    """

    models: dict[str, Any]
    missing: dict[str, str] = field(default_factory=dict)
    default: str = DEFAULT_MODEL

    def __post_init__(self) -> None:
        if not self.models:
            reasons = "; ".join(f"{n}: {why}" for n, why in self.missing.items()) or "none is installed"
            raise ValueError(f"no image model can be loaded ({reasons})")
        if self.default not in self.models:
            self.default = next(iter(self.models))

    @classmethod
    def of(cls, *models: Any, missing: dict[str, str] | None = None) -> Catalogue:
        """A catalogue of models already built, each under its ``name`` (the first is the default
        unless ``shapes-t2i`` is among them)."""
        named = {m.name: m for m in models}
        default = DEFAULT_MODEL if DEFAULT_MODEL in named else models[0].name if models else DEFAULT_MODEL
        return cls(named, dict(missing or {}), default)

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def get(self, name: Any) -> Any:
        """The model called ``name``; ValueError fit to show a user for any other name."""
        key = name.strip() if isinstance(name, str) else None
        if key in self.models:
            return self.models[key]
        if key in self.missing:
            raise ValueError(f"Model {key!r} cannot be used here: {self.missing[key]}")
        raise ValueError(f"Unknown model {name!r}; the models available here are: {', '.join(self.models)}.")

    def note(self) -> str:
        """The line under the model picker: the models left out and why ("" when none is)."""
        return " ".join(f"{name} is installed but not offered: {why}" for name, why in self.missing.items())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_catalogue(
    names: Iterable[str] | None = None, load: Callable[[str], Any] = mmaccel.load_model
) -> Catalogue:
    """Every installed model (or those of ``names``) that ``load`` can load; the others with why not.

    A model whose files are missing (``FileNotFoundError``, e.g. ``fashion-var`` while its weights
    are being trained) or that fails to build in any other way is left out with the first line of
    its error: the page states it, the server log has it, nobody sees a stack trace.
    """
    models, missing = {}, {}
    for name in mmaccel.available_models() if names is None else names:
        try:
            models[name] = load(name)
        except FileNotFoundError as err:
            missing[name] = _first_line(err)
        except Exception as err:  # any other failure to build: a note, not a crash of the page
            missing[name] = f"it failed to load ({type(err).__name__}: {_first_line(err)})"
        if name in missing:
            log.warning("model %s left out: %s", name, missing[name])
    return Catalogue(models, missing)

"""The shipped model's recipe: one document holding every config that made its weights.

Owns: the recipe format (``image_ar/configs/shapes_t2i_recipe.json``), its expansion into each
stage's full config, finding a stage by number or name, and the ``--recipe/--stage/--config``
arguments the training and export CLIs share (one definition, because the export records the
training command and must name the stage the way training does).

Format::

    {"about": str,
     "tokenizer": {"name": str, "model": {...}, "train": {...}},
     "base": {"model": {...}, "train": {...}},
     "stages": [{"stage": 1, "name": str, "note": str,
                 "model": {overrides}, "train": {overrides}, "unset": ["train.key", ...]}, ...]}

Stage 1 is ``base`` with stage 1's overrides; every later stage is the stage before it with
its own overrides set and its ``unset`` keys removed. ``name`` is the config file the stage
once was (the weights' json names it). The expansion is exact: a stage's config is, key for
key, the dict that trained it -- no defaults filled in -- so its digest can be checked against
the record (tests/test_recipe.py). ``unset`` exists for that: two stage files dropped a key the
stage before them set (stage 2 ``caption_pretrain_batch``, stage 9 ``gate_init``).

Must never: fill in defaults, normalise values or build config objects (the trainers do, from
the dict returned here), or let a stage set a key its trainer does not know.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the shipped model's recipe, relative to the repository root (where its commands run)
RECIPE = Path("image_ar/configs/shapes_t2i_recipe.json")
SECTIONS = ("model", "train")
STAGE_FIELDS = frozenset({"stage", "name", "note", "unset", *SECTIONS})

Known = Mapping[str, Collection[str]]  # section -> the keys its trainer accepts


@dataclass(frozen=True)
class Stage:
    """One expanded stage: ``config`` is the full ``{"model": ..., "train": ...}`` it trained with."""

    number: int
    name: str
    note: str
    config: dict[str, dict[str, Any]]


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe document at ``path`` (json), checked to have ``base`` and ``stages``."""
    recipe = json.loads(Path(path).read_text())
    missing = sorted({"base", "stages"} - set(recipe))
    if missing:
        raise ValueError(f"{path}: not a recipe, it lacks {missing}")
    return recipe


def check_keys(config: Mapping[str, Mapping[str, Any]], known: Known, where: str) -> None:
    """Raise ValueError naming the first section or key of ``config`` that ``known`` lacks."""
    for section, values in config.items():
        if section not in known:
            raise ValueError(f"{where}: unknown section {section!r} (known: {sorted(known)})")
        unknown = sorted(set(values) - set(known[section]))
        if unknown:
            raise ValueError(f"{where}: unknown {section} key(s) {unknown} (known: {sorted(known[section])})")


def expand(recipe: Mapping[str, Any], known: Known) -> list[Stage]:
    """Every stage of ``recipe``, in order, with its full config (see the module docstring).

    Raises ValueError on an unknown key, an ``unset`` of a key the stage before lacks, an
    override that repeats the value it replaces (overrides are the differences, nothing
    else), or stage numbers out of order / repeated names.
    """
    check_keys(recipe["base"], known, "base")
    config = copy.deepcopy(dict(recipe["base"]))
    stages: list[Stage] = []
    for entry in recipe["stages"]:
        where = f"stage {entry.get('stage')!r} ({entry.get('name')})"
        extra = sorted(set(entry) - STAGE_FIELDS)
        if extra:
            raise ValueError(f"{where}: unknown field(s) {extra} (a stage has {sorted(STAGE_FIELDS)})")
        number, name = entry["stage"], entry["name"]
        if stages and (number <= stages[-1].number or name in {s.name for s in stages}):
            raise ValueError(f"{where}: stages must have increasing numbers and distinct names")
        overrides = {s: entry[s] for s in SECTIONS if s in entry}
        check_keys(overrides, known, where)
        for dotted in entry.get("unset", []):
            section, _, key = dotted.partition(".")
            if key not in config.get(section, {}):
                raise ValueError(f"{where}: unset {dotted!r}, which the stage before does not set")
            del config[section][key]
        for section, values in overrides.items():
            old = config.setdefault(section, {})
            for key, value in values.items():
                # compared as json so that 1, 1.0 and true (equal in Python) count as different
                if key in old and json.dumps(old[key]) == json.dumps(value):
                    raise ValueError(f"{where}: sets {section}.{key} to {value!r}, the value it already has")
                old[key] = copy.deepcopy(value)
        stages.append(Stage(number, name, entry.get("note", ""), copy.deepcopy(config)))
    return stages


def find_stage(stages: Sequence[Stage], key: str | int) -> Stage:
    """The stage numbered ``key`` (18 or "18") or named ``key`` ("t2i_tiny_stage18")."""
    for stage in stages:
        if str(key) in (str(stage.number), stage.name):
            return stage
    listing = ", ".join(f"{s.number} ({s.name})" for s in stages)
    raise ValueError(f"no stage {key!r} in the recipe; its stages: {listing}")


def stage_config(recipe: Mapping[str, Any], key: str | int, known: Known) -> dict[str, dict[str, Any]]:
    """The full config of stage ``key`` (number or name) of ``recipe``."""
    return find_stage(expand(recipe, known), key).config


def tokenizer_config(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The tokenizer's full config ``{"model": ..., "train": ...}`` (its ``name`` left out)."""
    if "tokenizer" not in recipe:
        raise ValueError("the recipe has no tokenizer section")
    return {k: copy.deepcopy(v) for k, v in recipe["tokenizer"].items() if k != "name"}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--recipe FILE --stage N`` (the shipped recipe by default) or ``--config FILE``."""
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="recipe file (default: %(default)s)")
    parser.add_argument("--stage", help="the recipe's stage to use: its number or name (e.g. 18)")
    parser.add_argument("--config", type=Path, help="a single full config file instead of --recipe/--stage")


def config_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, known: Known
) -> tuple[dict[str, Any], str]:
    """The config dict that ``add_config_args``'s arguments name, and those arguments as text
    (for the command a run records). Exits through ``parser.error`` on bad arguments."""
    if (args.config is None) == (args.stage is None):
        parser.error("give exactly one of --stage N (a stage of --recipe) and --config FILE")
    if args.config is not None:
        return json.loads(args.config.read_text()), f"--config {args.config}"
    try:
        config = stage_config(read_recipe(args.recipe), args.stage, known)
    except ValueError as err:
        parser.error(str(err))
    return config, f"--recipe {args.recipe} --stage {args.stage}"

"""The two configs an ``image_ar`` trainer reads from a recipe stage or a config file.

Owns: ``split_config``: ``{"model": ..., "train": ...}`` -> (model config, train config), the
unknown sections and train keys named in the error, json lists turned back into tuples where the
train config's field defaults to a tuple (``betas``).

Must never: expand a recipe (``image_ar.recipe`` does) or read a file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any


def split_config(
    config: Mapping[str, Mapping[str, Any]],
    known: Mapping[str, Collection[str]],
    model_from_dict: Callable[[dict[str, Any]], Any],
    train_cls: type,
) -> tuple[Any, Any]:
    """``(model_from_dict(config["model"]), train_cls(**config["train"]))``; ValueError naming an
    unknown section or train key (``known``: section -> the keys its trainer accepts)."""
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown} (known: {sorted(known)})")
    train = dict(config.get("train", {}))
    bad = sorted(set(train) - set(known["train"]))
    if bad:
        raise ValueError(f"unknown train key(s) {bad} (known: {list(known['train'])})")
    tuples = {f.name for f in dataclasses.fields(train_cls) if isinstance(f.default, tuple)}
    train = {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in train.items()}
    return model_from_dict(dict(config.get("model", {}))), train_cls(**train)

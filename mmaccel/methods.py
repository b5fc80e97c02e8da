"""Method names -> (drafter, acceptor) pairs.

Owns: the frozen config of each decoding method, the table of method names, validation of
method options, and building the drafter and acceptor a config describes. A method is one
drafter plus one acceptor; nothing here decodes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mmaccel.acceptors import Acceptor, ExactMatch, SJDAcceptor
from mmaccel.drafters import INITS, Drafter, JacobiDrafter, NoDraft


@dataclass(frozen=True)
class ARConfig:
    """Plain KV-cached autoregressive decoding through the engine: the baseline."""

    name: str = "ar"


@dataclass(frozen=True)
class JacobiConfig:
    """A Jacobi window of ``window`` drafts.

    ``jacobi``: drafts kept while they equal the target's own draw (exact match).
    ``sjd``: drafts kept with probability min(1, p/q) (speculative Jacobi decoding).
    ``sjd-coupled``: as ``sjd`` with redraws coupled to the previous draft (MC-SJD).
    ``init``: how new window slots start: random, horizontal (left neighbour) or vertical
    (the token one grid row up; needs ``grid_width`` or a model that declares one).
    """

    name: str = "sjd"
    window: int = 16
    init: str = "random"
    grid_width: int | None = None


MethodConfig = ARConfig | JacobiConfig

METHODS: dict[str, type] = {
    "ar": ARConfig,
    "jacobi": JacobiConfig,
    "sjd": JacobiConfig,
    "sjd-coupled": JacobiConfig,
}

DESCRIPTIONS: dict[str, str] = {
    "ar": "plain KV-cached autoregressive decoding (the baseline); lossless",
    "jacobi": "Jacobi window, drafts kept while equal to the target's own draws; lossless",
    "sjd": "speculative Jacobi decoding (arXiv 2410.01699), accept with min(1, p/q); lossless",
    "sjd-coupled": "SJD with redraws coupled to the previous draft (MC-SJD, arXiv 2510.24211); lossless",
}


def resolve_method(method: str | MethodConfig, options: dict[str, Any]) -> MethodConfig:
    """The config for ``method`` with ``options`` applied; clear errors for bad names or values."""
    if isinstance(method, ARConfig | JacobiConfig):
        config = dataclasses.replace(method, **options) if options else method
    elif isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods are: {', '.join(METHODS)}")
        cls = METHODS[method]
        valid = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(
                f"method {method!r} does not take option(s) {', '.join(unknown)}; "
                f"its options are: {', '.join(valid) or 'none'}"
            )
        config = cls(name=method, **options)
    else:
        raise TypeError(f"method must be a method name or a method config, got {type(method).__name__}")
    _validate(config)
    return config


def _validate(config: MethodConfig) -> None:
    if isinstance(config, JacobiConfig):
        if not isinstance(config.window, int) or config.window < 1:
            raise ValueError(f"window must be an integer >= 1, got {config.window!r}")
        if config.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}; got {config.init!r}")
        if config.grid_width is not None and config.grid_width < 1:
            raise ValueError(f"grid_width must be >= 1, got {config.grid_width!r}")


def build(config: MethodConfig) -> tuple[Drafter, Acceptor]:
    """The drafter and acceptor of a method."""
    if isinstance(config, ARConfig):
        return NoDraft(), ExactMatch()
    drafter = JacobiDrafter(config.window, config.init, coupled=config.name == "sjd-coupled")
    acceptor = ExactMatch() if config.name == "jacobi" else SJDAcceptor()
    return drafter, acceptor

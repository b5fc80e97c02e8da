"""Method names -> (drafter, acceptor) pairs.

Owns: the table of method names (their configs live in ``mmaccel.configs``), validation of
method options, and building the drafter and acceptor a config describes. A method is one
drafter plus one acceptor; nothing here decodes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from mmaccel.acceptors import Acceptor, ExactMatch, LanternAcceptor, SJDAcceptor, neighbour_table
from mmaccel.acceptors.lantern import RULES
from mmaccel.configs import (  # noqa: F401 - re-exported: the configs are part of this module's API
    ARConfig,
    CoDeConfig,
    CSpDConfig,
    JacobiConfig,
    LanternConfig,
    LookaheadConfig,
    MaskedARConfig,
    MethodConfig,
    PromptLookupConfig,
    ZipARConfig,
)
from mmaccel.drafters import INITS, Drafter, JacobiDrafter, LookaheadDrafter, NoDraft, PromptLookupDrafter

# methods whose output is distributed exactly as plain sampling from the target
LOSSLESS = frozenset({"ar", "jacobi", "sjd", "sjd-coupled", "prompt-lookup", "lookahead"})
LANTERN_DEFAULT_DELTA = 0.1  # the budget when neither lantern_delta nor lantern_lambda is given
ZIPAR_ACCEPTORS = {"zipar": "sjd", "zipar+sjd": "sjd", "zipar+lantern": "lantern"}

METHODS: dict[str, type] = {
    "ar": ARConfig,
    "jacobi": JacobiConfig,
    "sjd": JacobiConfig,
    "sjd-coupled": JacobiConfig,
    "lantern": LanternConfig,
    "zipar": ZipARConfig,
    "zipar+sjd": ZipARConfig,
    "zipar+lantern": ZipARConfig,
    "prompt-lookup": PromptLookupConfig,
    "lookahead": LookaheadConfig,
    "code": CoDeConfig,
    "cspd": CSpDConfig,
}
# methods that decode next-scale (VAR) models, and masked-set (MAR) models; the rest of METHODS
# (and ar) decode raster (next-token) models
NEXT_SCALE_METHODS = ("ar", "code")
MASKED_SET_METHODS = ("ar", "cspd")
RASTER_METHODS = tuple(m for m in METHODS if m not in ("code", "cspd"))

DESCRIPTIONS: dict[str, str] = {
    "ar": "plain KV-cached autoregressive decoding (the baseline); lossless",
    "jacobi": "Jacobi window, drafts kept while equal to the target's own draws; lossless",
    "sjd": "speculative Jacobi decoding (arXiv 2410.01699), accept with min(1, p/q); lossless",
    "sjd-coupled": "SJD with redraws coupled to the previous draft (MC-SJD, arXiv 2510.24211); lossless",
    "lantern": "SJD window with LANTERN's latent-relaxed acceptance (arXiv 2410.03355); lossy: TV <= lantern_delta "
    "per step with lantern_rule='bounded', measured (not bounded) with the published rule 'paper'",
    "zipar": "ZipAR (arXiv 2412.04062): rows start once the row above has zipar_window tokens; lossy",
    "zipar+sjd": "ZipAR with an SJD window on every active row, verified in the same forward; lossy",
    "zipar+lantern": "ZipAR with a LANTERN-verified window on every active row; lossy",
    "prompt-lookup": "text: copy what followed the latest earlier occurrence of the last ngram_max..ngram_min "
    "tokens (prompt lookup decoding; branches > 1: several continuations in one forward), verified by "
    "speculative sampling; lossless",
    "lookahead": "text: lookahead decoding (arXiv 2402.02057): lookahead_g n-gram candidates from a pool fed by a "
    "Jacobi window of lookahead_w guesses and by the text, verified in one forward; lossless",
    "code": "collaborative decoding (CoDe, arXiv 2411.17787) of a next-scale (VAR) pair: the large model draws "
    "the first draft_scales scales, the small one the rest; lossy",
    "cspd": "continuous speculative decoding (CSpD, arXiv 2411.11925) of a masked-set (MAR) pair: the draft runs "
    "gamma steps, the target checks them in one forward with exact Gaussian densities and an exact residual; "
    "lossless for the verify steps' schedule (lossy with cspd_kappa)",
}


def not_raster(model_name: str | None = None) -> str:
    """The error of method ``code`` on a next-token model (``model_name``: the model's, if known)."""
    model = f"model {model_name!r}" if model_name else "this (next-token) model"
    return (
        "method 'code' (collaborative decoding) runs on a next-scale (VAR) model pair, e.g. "
        f"mmaccel.generate_image('sneaker', model='fashion-var', method='code'); on {model} use one of: "
        + ", ".join(RASTER_METHODS)
    )


def not_masked(model_name: str | None = None, family: str = "next-token") -> str:
    """The error of method ``cspd`` on a model that is not a masked-set (MAR) pair."""
    model = f"model {model_name!r}" if model_name else f"this ({family}) model"
    works = RASTER_METHODS if family == "next-token" else NEXT_SCALE_METHODS
    return (
        "method 'cspd' (continuous speculative decoding) runs on a masked-set model pair with continuous "
        "tokens (MAR), e.g. mmaccel.generate_image('sneaker', model='fashion-mar', method='cspd'); on "
        f"{model} use one of: " + ", ".join(works)
    )


# Options each method reads (the rest of its config class's fields would be ignored, so they
# are refused): plain ZipAR has no draft window, and only zipar+lantern reads LANTERN's options.
_JACOBI_OPTIONS = ("window", "init", "grid_width")
_LANTERN_OPTIONS = ("lantern_k", "lantern_delta", "lantern_lambda", "lantern_rule")
OPTIONS: dict[str, tuple[str, ...]] = {
    "ar": (),
    "jacobi": _JACOBI_OPTIONS,
    "sjd": _JACOBI_OPTIONS,
    "sjd-coupled": _JACOBI_OPTIONS,
    "lantern": _JACOBI_OPTIONS + _LANTERN_OPTIONS,
    "zipar": ("zipar_window", "grid_width"),
    "zipar+sjd": ("zipar_window",) + _JACOBI_OPTIONS,
    "zipar+lantern": ("zipar_window",) + _JACOBI_OPTIONS + _LANTERN_OPTIONS,
    "prompt-lookup": ("window", "ngram_max", "ngram_min", "branches"),
    "lookahead": ("window", "lookahead_n", "lookahead_w", "lookahead_g"),
    "code": ("draft_scales",),
    "cspd": ("gamma", "prefill_ratio", "num_iter", "cspd_kappa"),
}
MASKED_SET_OPTIONS: dict[str, tuple[str, ...]] = {"ar": ("num_iter",), "cspd": OPTIONS["cspd"]}
# Options of which a user gives at most one: naming one drops a model default for the other.
EXCLUSIVE: tuple[frozenset[str], ...] = (frozenset({"lantern_delta", "lantern_lambda"}),)


def model_method_defaults(model: Any, method: str) -> dict[str, Any]:
    """The options ``model`` ships as its validated best setting of ``method`` (``{}`` if none).

    A model declares them as ``method_defaults = {"lantern": {"lantern_rule": "paper", ...}}``;
    what the user names always wins over them.
    """
    table = getattr(model, "method_defaults", None) or {}
    return dict(table.get(method, {}))


def method_defaults(method: str, model: Any = None) -> dict[str, Any]:
    """Every option ``method`` reads, with the value it runs with when the user names none: the
    model's shipped default where it has one, else the config class's default."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are: {', '.join(METHODS)}")
    fields = {f.name: f.default for f in dataclasses.fields(METHODS[method])}
    values = {name: fields[name] for name in OPTIONS[method]}
    values.update(model_method_defaults(model, method))
    return values


def with_model_defaults(method: str, options: dict[str, Any], model: Any) -> dict[str, Any]:
    """``options`` on top of ``model``'s defaults for ``method`` (exclusive options respected)."""
    merged = model_method_defaults(model, method)
    for group in EXCLUSIVE:
        if group & set(options):
            for name in group:
                merged.pop(name, None)
    merged.update(options)
    return merged


def resolve_method(method: str | MethodConfig, options: dict[str, Any], model: Any = None) -> MethodConfig:
    """The config for ``method`` with ``options`` applied; clear errors for bad names or values.

    ``model``: a model that may ship its own best options per method (``method_defaults``);
    they apply to a method given by name, under the user's ``options``.
    """
    if isinstance(method, str) and method in METHODS and model is not None:
        options = with_model_defaults(method, options, model)
    if isinstance(method, ARConfig | JacobiConfig | CoDeConfig | CSpDConfig | MaskedARConfig):
        config = dataclasses.replace(method, **options) if options else method
    elif isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods are: {', '.join(METHODS)}")
        cls = METHODS[method]
        valid = list(OPTIONS[method])
        unknown = sorted(set(options) - set(valid))
        if unknown:
            elsewhere = [f"{o} is read by {', '.join(m for m, opts in OPTIONS.items() if o in opts)}"
                         for o in unknown if any(o in opts for opts in OPTIONS.values())]  # fmt: skip
            raise ValueError(
                f"method {method!r} does not take option(s) {', '.join(unknown)}"
                + (f" ({'; '.join(elsewhere)})" if elsewhere else "")
                + f"; its options are: {', '.join(valid) or 'none'}"
            )
        config = cls(name=method, **options)
    else:
        raise TypeError(f"method must be a method name or a method config, got {type(method).__name__}")
    _validate(config)
    return config


def resolve_masked_method(
    method: str | MethodConfig, options: dict[str, Any], model: Any = None, model_name: str = "this MAR model"
) -> CSpDConfig | MaskedARConfig:
    """``resolve_method`` for a masked-set (MAR) model: ``ar`` (option ``num_iter``) or ``cspd``."""
    name = method if isinstance(method, str) else getattr(method, "name", None)
    if name not in MASKED_SET_METHODS:
        raise ValueError(
            f"model {model_name!r} generates continuous tokens in masked sets (MAR); the methods that run on it "
            f"are {', '.join(MASKED_SET_METHODS)} (ar: the target alone, option num_iter; cspd: continuous "
            f"speculative decoding, options {', '.join(OPTIONS['cspd'])}); got {name!r}"
        )
    if isinstance(method, ARConfig):
        method = "ar"
    if isinstance(method, str) and model is not None:
        options = with_model_defaults(method, options, model)
    if isinstance(method, str):
        unknown = sorted(set(options) - set(MASKED_SET_OPTIONS[method]))
        if unknown:
            raise ValueError(f"method {method!r} on a MAR model does not take option(s) {', '.join(unknown)}; "
                             f"its options are: {', '.join(MASKED_SET_OPTIONS[method])}")  # fmt: skip
        config = (CSpDConfig if method == "cspd" else MaskedARConfig)(name=method, **options)
    else:
        config = dataclasses.replace(method, **options) if options else method
    _validate(config)
    return config


def _validate(config: MethodConfig) -> None:
    if isinstance(config, CSpDConfig | MaskedARConfig):
        _validate_masked(config)
    if isinstance(config, CoDeConfig) and config.draft_scales is not None:
        if (
            isinstance(config.draft_scales, bool)
            or not isinstance(config.draft_scales, int)
            or config.draft_scales < 1
        ):
            raise ValueError(f"draft_scales must be an integer >= 1 (scales drawn by the large model), "
                             f"got {config.draft_scales!r}")  # fmt: skip
    if isinstance(config, JacobiConfig):
        if config.window != "auto" and (not isinstance(config.window, int) or config.window < 0):
            raise ValueError(
                f"window must be an integer >= 0 (0: no drafts) or 'auto', got {config.window!r}"
            )
        if config.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}; got {config.init!r}")
        if config.grid_width is not None and config.grid_width < 1:
            raise ValueError(f"grid_width must be >= 1, got {config.grid_width!r}")
    if isinstance(config, PromptLookupConfig):
        for name in ("ngram_max", "ngram_min", "branches"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if config.ngram_min > config.ngram_max:
            raise ValueError(f"ngram_min ({config.ngram_min}) must be <= ngram_max ({config.ngram_max})")
    if isinstance(config, LookaheadConfig):
        for name, least in (("lookahead_n", 2), ("lookahead_w", 1), ("lookahead_g", 1)):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if config.lookahead_w < config.lookahead_n - 1:
            raise ValueError(
                f"lookahead_w ({config.lookahead_w}) must be >= lookahead_n - 1 ({config.lookahead_n - 1})"
            )
    if isinstance(config, ZipARConfig):
        if not isinstance(config.zipar_window, int) or config.zipar_window < 1:
            raise ValueError(f"zipar_window must be an integer >= 1, got {config.zipar_window!r}")
        changed = [f.name for f in dataclasses.fields(LanternConfig)
                   if f.name.startswith("lantern_") and getattr(config, f.name) != f.default]  # fmt: skip
        if config.name != "zipar+lantern" and changed:
            raise ValueError(
                f"{', '.join(changed)}: lantern options apply to 'zipar+lantern', not to {config.name!r}"
            )
    if isinstance(config, LanternConfig):
        if config.lantern_delta is not None and config.lantern_lambda is not None:
            raise ValueError("give lantern_delta or lantern_lambda, not both")
        if config.lantern_rule not in RULES:
            raise ValueError(f"lantern_rule must be one of {', '.join(RULES)}; got {config.lantern_rule!r}")
        if not isinstance(config.lantern_k, int) or config.lantern_k < 1:
            raise ValueError(f"lantern_k must be an integer >= 1, got {config.lantern_k!r}")
        if config.lantern_delta is not None and not 0 <= config.lantern_delta <= 1:
            raise ValueError(f"lantern_delta must be in [0, 1], got {config.lantern_delta!r}")
        if config.lantern_lambda is not None and not config.lantern_lambda >= 1:
            raise ValueError(f"lantern_lambda must be >= 1, got {config.lantern_lambda!r}")


def _validate_masked(config: CSpDConfig | MaskedARConfig) -> None:
    n = config.num_iter
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"num_iter must be an integer >= 1 (MAR steps), got {n!r}")
    if not isinstance(config, CSpDConfig):
        return
    if isinstance(config.gamma, bool) or not isinstance(config.gamma, int) or config.gamma < 1:
        raise ValueError(
            f"gamma must be an integer >= 1 (steps the draft runs per verify), got {config.gamma!r}"
        )
    r = config.prefill_ratio
    if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < 1:
        raise ValueError(f"prefill_ratio must be a number in [0, 1) (the share of steps the target runs alone "
                         f"first), got {r!r}")  # fmt: skip
    k = config.cspd_kappa
    if k is not None and (isinstance(k, bool) or not isinstance(k, int | float) or not k > 0):
        raise ValueError(f"cspd_kappa must be a number > 0 (None: exact acceptance), got {k!r}")


def codebook_of(lm: Any, method: str) -> torch.Tensor:
    """The image-token codebook a latent-relaxed method needs; a clear error when there is none."""
    codebook = getattr(lm, "codebook", None)
    if not isinstance(codebook, torch.Tensor) or codebook.dim() != 2:
        raise ValueError(
            f"method {method!r} needs the image tokenizer's codebook, but model family "
            f"{getattr(lm, 'family', type(lm).__name__)!r} exposes none (a `codebook` tensor [codes, dim])"
        )
    return codebook


def variable_drafts(config: MethodConfig) -> bool:
    """Whether the method's drafter drafts a varying number of real tokens per step, so each
    step verifies only those (``mmaccel.draft_length``)."""
    return isinstance(config, PromptLookupConfig | LookaheadConfig)


def build(config: MethodConfig, lm: Any = None) -> tuple[Drafter, Acceptor]:
    """The drafter and acceptor of a method (``lm``: the model, for methods that read it)."""
    if isinstance(config, ARConfig):
        return NoDraft(), ExactMatch()
    if isinstance(config, CoDeConfig):
        raise ValueError(not_raster())
    if isinstance(config, CSpDConfig | MaskedARConfig):
        raise ValueError(not_masked())
    if isinstance(config, JacobiConfig) and config.window == "auto":
        raise ValueError("window='auto' is chosen by mmaccel.generate; build() needs a number")
    if isinstance(config, JacobiConfig) and not isinstance(config, ZipARConfig) and config.window == 0:
        # no drafts: every acceptor then samples p at the pending position, which is plain decoding
        return NoDraft(), ExactMatch()
    if isinstance(config, LookaheadConfig):
        return LookaheadDrafter(config.lookahead_n, config.lookahead_w, config.lookahead_g), SJDAcceptor()
    if isinstance(config, PromptLookupConfig):
        drafter = PromptLookupDrafter(config.window, config.ngram_max, config.ngram_min, config.branches)
        return drafter, SJDAcceptor()
    if isinstance(config, ZipARConfig):
        drafter = (
            NoDraft()
            if config.name == "zipar" or config.window == 0
            else JacobiDrafter(config.window, config.init)
        )
        if ZIPAR_ACCEPTORS[config.name] == "sjd":
            return drafter, SJDAcceptor()
    else:
        drafter = JacobiDrafter(config.window, config.init, coupled=config.name == "sjd-coupled")
    if isinstance(config, LanternConfig):
        table = neighbour_table(
            codebook_of(lm, config.name),
            config.lantern_k,
            getattr(lm, "image_token_offset", 0),
            lm.vocab_size,
        )
        lam = config.lantern_lambda
        delta = (
            None
            if lam is not None
            else (config.lantern_delta if config.lantern_delta is not None else LANTERN_DEFAULT_DELTA)
        )
        return drafter, LanternAcceptor(table, delta, lam, config.lantern_rule)
    acceptor = ExactMatch() if config.name == "jacobi" else SJDAcceptor()
    return drafter, acceptor

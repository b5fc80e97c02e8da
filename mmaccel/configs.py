"""The frozen configuration of each decoding method (what ``mmaccel.methods`` resolves names
and options into, and builds a drafter and acceptor from). Plain data: nothing here validates,
builds or decodes.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    ``window``: drafts per step, or ``"auto"``: the number that maximises expected tokens per
    second on this device and batch (``mmaccel.window``; 0 = plain decoding with this acceptor).
    ``init``: how new window slots start: random, horizontal (left neighbour) or vertical
    (the token one grid row up; needs ``grid_width`` or a model that declares one).
    """

    name: str = "sjd"
    window: int | str = "auto"
    init: str = "random"
    grid_width: int | None = None


@dataclass(frozen=True)
class LanternConfig(JacobiConfig):
    """A Jacobi window verified with LANTERN's latent-relaxed acceptance (lossy, bounded).

    ``lantern_k``: nearest codebook neighbours a draft may borrow probability from.
    ``lantern_delta``: total-variation budget per step (default 0.1 when ``lantern_lambda``
    is not given); ``lantern_lambda`` (>= 1): the multiplicative bound of LANTERN++ instead.
    ``lantern_rule``: ``bounded`` (one relaxed target per position; the bound holds) or
    ``paper`` (the published per-draft rule; faster, bound not guaranteed for random drafts).
    Needs a model that exposes its image tokenizer's ``codebook``.
    """

    name: str = "lantern"
    lantern_k: int = 16
    lantern_delta: float | None = None
    lantern_lambda: float | None = None
    lantern_rule: str = "bounded"


@dataclass(frozen=True)
class ZipARConfig(LanternConfig):
    """ZipAR spatial next-set decoding on the model's raster grid (lossy unless w >= width).

    ``zipar_window`` (w): row r + 1 starts once row r holds w tokens. ``zipar`` advances
    every active row one token per forward; ``zipar+sjd`` / ``zipar+lantern`` give each row
    its own Jacobi window of ``window`` drafts, verified with SJD / LANTERN in the same forward.
    """

    name: str = "zipar"
    window: int | str = "auto"
    zipar_window: int = 8


@dataclass(frozen=True)
class PromptLookupConfig(JacobiConfig):
    """Prompt-lookup drafts for text (``mmaccel.drafters.prompt_lookup``), verified by speculative
    sampling (one-hot drafts: kept with probability p(x); greedy: kept iff the argmax); lossless.

    ``window``: the most drafts a step verifies per branch (a step verifies only what was
    copied: ``mmaccel.draft_length``), or ``"auto"`` (each step's length chosen from measured
    costs and acceptance, up to 16). ``ngram_max`` / ``ngram_min``: the longest and shortest
    suffix n-gram looked up in the prompt and the text so far. ``branches``: continuations of
    different matches verified together in one forward (tree mask), the longest kept one wins.
    """

    name: str = "prompt-lookup"
    window: int | str = "auto"
    ngram_max: int = 3
    ngram_min: int = 1
    branches: int = 1


@dataclass(frozen=True)
class LookaheadConfig(JacobiConfig):
    """Lookahead decoding for text (``mmaccel.drafters.lookahead``): each step verifies
    ``lookahead_g`` n-gram candidates (``lookahead_n`` tokens with the pending one) from a pool
    fed by a Jacobi window of ``lookahead_w`` guesses and by the text, all in one forward;
    lossless. ``window``: ``"auto"`` (a step runs the lookahead block only while measured
    acceptance makes it pay, else a plain step), or any number >= 1 (every step runs it).
    """

    name: str = "lookahead"
    window: int | str = "auto"
    lookahead_n: int = 3
    lookahead_w: int = 4
    lookahead_g: int = 2


@dataclass(frozen=True)
class CoDeConfig:
    """Collaborative decoding of a next-scale (VAR) model pair (CoDe, arXiv 2411.17787).

    The large model (the drafter) decodes scales ``0 .. draft_scales - 1``; the small model (the
    refiner) prefills those in one forward and decodes the remaining scales. ``draft_scales``:
    None takes the model's validated setting (``method_defaults``), else half of its scales.
    Lossy: the large scales follow the small model's distribution.
    """

    name: str = "code"
    draft_scales: int | None = None


@dataclass(frozen=True)
class CSpDConfig:
    """Continuous speculative decoding of a masked-set (MAR) model pair (CSpD, arXiv 2411.11925).

    After the first ``prefill_ratio`` of the ``num_iter`` steps (the target alone), the draft
    model runs ``gamma`` steps at a time and the target checks them in one forward: a draft value
    is kept with probability min(1, p(x)/q(x)) of the two heads' final-step Gaussians, else
    redrawn exactly from norm(max(0, p - q)). Lossless: the output follows the target with the
    verify steps' schedule (the ``gamma`` steps of a block merged into one set). ``cspd_kappa``
    (> 0) softens the ratio as the official runner's temperature (42) does: lossy, it then
    follows the draft more than the target. ``num_iter``: None takes the model's default.
    """

    name: str = "cspd"
    gamma: int = 4
    prefill_ratio: float = 0.1
    num_iter: int | None = None
    cspd_kappa: float | None = None


@dataclass(frozen=True)
class MaskedARConfig:
    """Plain MAR decoding with the target alone, ``num_iter`` steps (None: the model's default)."""

    name: str = "ar"
    num_iter: int | None = None


MethodConfig = ARConfig | JacobiConfig | CoDeConfig | CSpDConfig | MaskedARConfig

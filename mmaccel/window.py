"""``window="auto"``: the number of drafts per step that maximises tokens per second here.

A window of K drafts makes every step carry K + 1 tokens per row (per active row for ZipAR).
Whether that pays depends on two things this module measures instead of assuming:

* cost: the seconds of one whole verify step (forward, guidance, acceptance, drafting,
  commit) with each window, timed at the first ``auto`` call of a method, model, sampling and
  batch shape in a process by running a few real steps of that call eagerly on a scratch
  cache with its own generator (the user's draws are untouched). Windows 0, 1, 2, 4, 8, 16 are
  timed in that order, stopping once even the most tokens any window could emit would not pay
  for the last step timed; the windows between are interpolated.
* gain: the tokens one step emits, tau(K) = E[tokens per step], from acceptance histograms:
  a model may ship its own per method and window at its default sampling
  (``acceptance_profile``, measured offline: it does not depend on the hardware), and every
  call adds its own under the window it ran. For a window never run, tau is estimated from the
  nearest window that was: truncating a longer window's survival curve (optimistic: a short
  Jacobi window refines its drafts fewer times) or extending a shorter one's geometrically.
  With nothing measured, a prior (half the steps accept a first draft, each further draft kept
  with probability 0.75) is used.

The choice maximises tau(K) / cost(K) over K in ``CANDIDATES`` (shorter than the call), 0
included (plain decoding through the same acceptor). It is kept for the life of the process
as soon as the chosen window's tau is measured (always, for a model that ships its profile);
until then each call re-chooses with what the previous ones measured. Once kept, the same
seed gives the same output (the window is part of what a seed reproduces; the chosen one is
reported in ``GenerateOutput.method``, and passing it as ``window=`` pins it anywhere).

Owns: the per-process table of step costs and acceptance, and the choice. Must never: run
inside a step, change what a method samples (K only sets how many drafts are verified; every
acceptor is exact or bounded for any K), or time anything when the window is given.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from mmaccel.models import CausalLM, device_of, weights_id

CANDIDATES = (0, 1, 2, 3, 4, 6, 8, 12, 16)
TIMED = (0, 1, 2, 4, 8, 16)  # windows whose step is timed; the others are interpolated
WARMUP_STEPS, TIMED_STEPS = 2, 5  # steps run per timed window; the first are not counted
# before any call: P(n >= 1), then P(n >= k + 1 | n >= k); the shape of sjd's survival curve on
# the default model at K = 16 (0.49, then ratios 0.66-0.77)
PRIOR_FIRST, PRIOR_RATIO = 0.5, 0.75
MIN_STEPS = 32  # verify steps of a window before its own mean replaces the estimate


@dataclass
class Record:
    """What is known of one (model, method, sampling)'s acceptance with each window."""

    steps: dict[int, int] = field(default_factory=dict)  # K -> verify steps run
    hist: dict[int, list[int]] = field(default_factory=dict)  # K -> steps by tokens emitted


_COSTS: dict[Hashable, dict[int, float]] = {}  # (method key, batch shape, device) -> {K: step seconds}
_RECORDS: dict[Hashable, Record] = {}  # method key -> acceptance per window
_CHOSEN: dict[Hashable, int] = {}  # (method key, batch shape) -> the window kept


def method_key(lm: CausalLM, config: Any, sampling: Any) -> Hashable:
    """What acceptance is shared by: the model's weights, the method whatever its window, the
    target distribution."""
    shared = dataclasses.replace(config, window="auto") if hasattr(config, "window") else config
    return weights_id(lm), shared, sampling


def step_costs(
    key: Hashable, shape: Hashable, lm: CausalLM, time_steps: Callable[[int], list[float]], candidates, worth
) -> dict[int, float]:
    """Seconds of one verify step for each of ``candidates``: the ``TIMED`` ones by
    ``time_steps(K)`` (the seconds of consecutive real steps; median after warm-up), once per
    key, shape and device; the others interpolated. Timing stops at the first window whose
    step costs more than ``worth(seconds)`` says any window could repay (``worth`` returns
    False); windows past it are then given that window's cost, a lower bound that never wins."""
    table = _COSTS.setdefault((key, shape, str(device_of(lm))), {})
    for K in (K for K in TIMED if K <= max(candidates)):
        if K not in table:
            seconds = time_steps(K)
            timed = seconds[WARMUP_STEPS:] or seconds
            table[K] = statistics.median(timed)
        if not worth(table, K):
            break
    # a longer window never costs less: a dip is measurement noise, and trusting it picks
    # windows that lose (seen: T = 2 timed below T = 1 on a loaded 2-core machine)
    known, most = {}, 0.0
    for K in sorted(table):
        most = max(most, table[K])
        known[K] = most
    out = {}
    for K in candidates:
        below = max(k for k in known if k <= K)
        above = [k for k in known if k >= K]
        if not above:
            out[K] = known[below]
        else:
            hi = min(above)
            f = 0.0 if hi == below else (K - below) / (hi - below)
            out[K] = known[below] + f * (known[hi] - known[below])
    return out


def tokens_per_step(record: Record, K: int, base: float = 1.0) -> float:
    """tau(K): expected tokens one verify step emits with K drafts (module docstring); ``base``
    is tau(0) until measured (1 for raster decoding; the mean number of active rows for ZipAR)."""
    if record.steps.get(K, 0) >= MIN_STEPS:
        h = record.hist[K]
        return sum(j * c for j, c in enumerate(h)) / max(sum(h), 1)
    if K == 0:
        return base
    seen = sorted(k for k, n in record.steps.items() if n >= MIN_STEPS and k > 0)
    longer = [k for k in seen if k > K]
    if longer:  # truncate the nearest longer window's survival curve
        return 1.0 + sum(_survival(record.hist[longer[0]])[1 : K + 1])
    if seen:  # extend the longest shorter window geometrically
        s = _survival(record.hist[seen[-1]])
        k0 = seen[-1]
        ratio = s[k0] / s[k0 - 1] if k0 >= 2 and s[k0 - 1] > 0 else PRIOR_RATIO
        tail = [s[k0] * ratio ** (i - k0) for i in range(k0 + 1, K + 1)]
        return 1.0 + sum(s[1 : k0 + 1]) + sum(tail)
    return base * (1.0 + sum(PRIOR_FIRST * PRIOR_RATIO ** (k - 1) for k in range(1, K + 1)))


def step_histogram(accepted_histogram: list[int], prompts: int) -> list[int]:
    """Verify steps by tokens emitted, from a call's ``accepted_histogram`` (which also counts
    the token each of the ``prompts`` rows took from the prefill)."""
    hist = list(accepted_histogram)
    hist[1] -= prompts
    return hist


def mean_tokens(hist: list[int]) -> float:
    """Mean tokens emitted per verify step of a steps-by-tokens-emitted histogram."""
    return sum(j * c for j, c in enumerate(hist)) / max(sum(hist), 1)


def _survival(hist: list[int]) -> list[float]:
    """s[k] = P(the step kept at least k drafts) from steps-by-tokens-emitted counts (k = 0 ..
    len(hist) - 1, then zeros for as far as anyone reads: nothing longer was seen)."""
    total = max(sum(hist), 1)
    # emitted j tokens = kept j - 1 drafts
    return [sum(hist[k + 1 :]) / total for k in range(len(hist))] + [0.0] * (max(CANDIDATES) + 2)


def choose(
    lm: CausalLM,
    config: Any,
    sampling: Any,
    shape: Hashable,
    time_steps: Callable[[int], list[float]],
    max_new_tokens: int,
    base: float = 1.0,
) -> int:
    """The window maximising expected tokens per second for ``config`` at batch ``shape``.

    ``time_steps(K)``: runs a few real steps of this call with window K and returns their
    seconds. Kept for the process once the chosen window's acceptance is measured (module
    docstring); until then, re-chosen at each call."""
    key = method_key(lm, config, sampling)
    if (key, shape) in _CHOSEN:
        return _CHOSEN[key, shape]
    rate = rates(lm, config, sampling, shape, time_steps, max_new_tokens, base)
    best = max(rate, key=lambda K: (rate[K], -K))
    if best == 0 or _RECORDS[key].steps.get(best, 0) >= MIN_STEPS:
        _CHOSEN[key, shape] = best
    return best


def rates(
    lm: CausalLM,
    config: Any,
    sampling: Any,
    shape: Hashable,
    time_steps: Callable[[int], list[float]],
    max_new_tokens: int,
    base: float = 1.0,
) -> dict[int, float]:
    """Expected tokens per second (per row) of each candidate window: tau(K) / step seconds,
    over the windows shorter than the call (a window never drafts past the last token)."""
    key = method_key(lm, config, sampling)
    record = known(key, lm, config, sampling)
    candidates = [K for K in CANDIDATES if K < max(max_new_tokens, 1)]
    tau = {K: tokens_per_step(record, K, base) for K in candidates}
    most = max(tau.values())

    def worth(table: dict[int, float], K: int) -> bool:
        return most / table[K] >= max(tau[k] / table[k] for k in table if k in tau)

    costs = step_costs(key, shape, lm, time_steps, candidates, worth)
    return {K: tau[K] / costs[K] for K in candidates}


def known(key: Hashable, lm: CausalLM, config: Any, sampling: Any) -> Record:
    """The acceptance record of ``key``, started from the model's shipped profile when it has
    one for this method (same options) and sampling."""
    if key in _RECORDS:
        return _RECORDS[key]
    record = _RECORDS[key] = Record()
    profile = getattr(lm, "acceptance_profile", None) or {}
    if profile.get("sampling") != dataclasses.asdict(sampling):
        return record
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("name", "window")}
    for entry in profile.get("profiles", []):
        if entry["method"] == config.name and _same(entry["options"], options):
            for K, hist in entry["hist"].items():
                record.steps[int(K)] = sum(hist)
                record.hist[int(K)] = list(hist)
    return record


def _same(shipped: dict[str, Any], options: dict[str, Any]) -> bool:
    # JSON has no tuples; compare through it
    return {k: _plain(v) for k, v in shipped.items()} == {k: _plain(v) for k, v in options.items()}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def record(lm: CausalLM, config: Any, sampling: Any, K: int, hist: list[int]) -> None:
    """Add one call's steps-by-tokens-emitted histogram under the window it ran (on top of the
    model's shipped profile, which a call with a fixed window must not hide)."""
    rec = known(method_key(lm, config, sampling), lm, config, sampling)
    rec.steps[K] = rec.steps.get(K, 0) + sum(hist)
    n = max(len(hist), len(rec.hist.get(K, [])))
    old = rec.hist.get(K, []) + [0] * n
    rec.hist[K] = [old[j] + (hist[j] if j < len(hist) else 0) for j in range(n)]

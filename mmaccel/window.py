"""``window="auto"``: the number of drafts per step that maximises tokens per second here.

A window of K drafts makes every forward carry K + 1 tokens per row (per active row for
ZipAR). Whether that pays depends on two things this module measures instead of assuming:

* cost: the target forward's wall-clock at block length T = K + 1 for this model, device and
  batch, measured once per (model, device, rows, cache size) on a scratch cache (on a GPU the
  curve is flat until the device fills up; on a 2-core CPU it is nearly linear at batch 20),
  plus the time per draft beyond the forward that real steps showed; a window this process
  has run is costed by its measured step time;
* gain: the tokens one step emits, tau(K) = E[tokens per step], from the acceptance histograms
  of earlier calls of the same method on the same model in this process. For a window never
  run, tau is estimated from the nearest window that was: truncating a longer window's
  survival curve (optimistic: a short Jacobi window refines its drafts fewer times) or
  extending a shorter one's geometrically. Before any call, a prior (half the steps accept a
  first draft, each further draft kept with probability 0.8) is used.

The choice maximises tau(K) / cost(K + 1) over K in ``CANDIDATES``, 0 included (plain
decoding through the same acceptor). Per (model, method, sampling, batch shape) it is made
anew at each call until the window chosen has been timed, then kept for the life of the
process: after those first calls the same seed gives the same output (the window is part of
what a seed reproduces; the chosen one is reported in ``GenerateOutput.method``, and passing
it as ``window=`` pins it anywhere). Every call's histogram is recorded under the window it
ran, so later choices (another batch size) start from what was measured.

Owns: the per-process table of measured costs and acceptance, and the choice. Must never:
run inside a step, change what a method samples (K only sets how many drafts are verified;
every acceptor is exact or bounded for any K), or time anything when the window is given.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from mmaccel.models import CausalLM, device_of, weights_id

CANDIDATES = (0, 1, 2, 3, 4, 6, 8, 12, 16)
# before any call: P(n >= 1), then P(n >= k + 1 | n >= k); the shape of sjd's survival curve on
# the default model at K = 16 (0.49, then ratios 0.66-0.77)
PRIOR_FIRST, PRIOR_RATIO = 0.5, 0.75
MIN_STEPS = 32  # verify steps of a window before its own mean replaces the estimate


@dataclass
class Record:
    """What this process has seen of one (model, method, batch) with each window."""

    steps: dict[int, int] = field(default_factory=dict)  # K -> verify steps run
    hist: dict[int, list[int]] = field(default_factory=dict)  # K -> steps by tokens emitted
    timed_steps: dict[int, int] = field(default_factory=dict)  # K -> steps of calls that were timed
    step_s: dict[int, float] = field(default_factory=dict)  # K -> seconds in those steps


_COSTS: dict[Hashable, dict[int, float]] = {}  # (model, device, rows, capacity) -> {T: forward seconds}
_RECORDS: dict[Hashable, Record] = {}  # (model, method, sampling) -> acceptance seen per window
_CHOSEN: dict[Hashable, int] = {}  # (model, method, sampling, batch shape) -> the window chosen


def forward_costs(
    lm: CausalLM, rows: int, capacity: int, blocks: tuple[int, ...], repeats: int = 7
) -> dict[int, float]:
    """Median wall-clock of one forward of ``rows`` rows at each block length (measured once per
    model, device, batch and cache size; block lengths interleaved so load drift hits all alike)."""
    device = device_of(lm)
    key = (weights_id(lm), str(device), rows, capacity)
    table = _COSTS.setdefault(key, {})
    missing = [T for T in blocks if T not in table]
    if missing:
        cache = lm.new_cache(rows, capacity)
        cache.lens_B.fill_(capacity // 2)  # a half-full cache: attention over a typical length
        times: dict[int, list[float]] = {T: [] for T in missing}
        with torch.inference_mode():
            for r in range(repeats + 2):  # the first two rounds warm up (allocations, kernel choice)
                for T in missing:
                    tokens_BT = torch.zeros(rows, T, dtype=torch.long, device=device)
                    slots_BT, mask_BTS = cache.slots(T), cache.attn_mask(T)
                    _sync(device)
                    t0 = time.perf_counter()
                    lm.forward(tokens_BT, slots_BT, cache, slots_BT, mask_BTS)
                    _sync(device)
                    if r >= 2:
                        times[T].append(time.perf_counter() - t0)
        table.update({T: statistics.median(ts) for T, ts in times.items()})
    # a longer block never costs less: a dip is measurement noise, and trusting it picks windows
    # that lose (seen: T = 2 timed below T = 1 on a loaded 2-core machine)
    out, most = {}, 0.0
    for T in sorted(blocks):
        most = max(most, table[T])
        out[T] = most
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


def _survival(hist: list[int]) -> list[float]:
    """s[k] = P(the step kept at least k drafts) from steps-by-tokens-emitted counts (k = 0 ..
    len(hist) - 1, then zeros for as far as anyone reads: nothing longer was seen)."""
    total = max(sum(hist), 1)
    # emitted j tokens = kept j - 1 drafts
    return [sum(hist[k + 1 :]) / total for k in range(len(hist))] + [0.0] * (max(CANDIDATES) + 2)


def choose(
    key: Hashable,
    shape: Hashable,
    lm: CausalLM,
    rows: int,
    capacity: int,
    streams: int = 1,
    base: float = 1.0,
) -> int:
    """The window maximising expected tokens per second for method ``key`` at batch ``shape``.

    Re-chosen at each call until the window chosen has been timed (``MIN_STEPS`` steps of calls
    that did not compile), then kept for the process: the first calls of a shape may try a
    window or two, after which the same seed gives the same output."""
    if (key, shape) in _CHOSEN:
        return _CHOSEN[key, shape]
    rate = rates(key, lm, rows, capacity, streams, base)
    best = max(rate, key=lambda K: (rate[K], -K))
    if best == 0 or _RECORDS[key].timed_steps.get(best, 0) >= MIN_STEPS:
        _CHOSEN[key, shape] = best
    return best


def rates(
    key: Hashable, lm: CausalLM, rows: int, capacity: int, streams: int = 1, base: float = 1.0
) -> dict[int, float]:
    """Expected tokens per second (per row) of each candidate window: tau(K) / step seconds."""
    record = _RECORDS.setdefault(key, Record())
    costs = forward_costs(lm, rows, capacity, tuple(sorted({streams * (K + 1) for K in CANDIDATES})))
    seconds = step_seconds(record, costs, streams)
    return {K: tokens_per_step(record, K, base) / seconds[K] for K in CANDIDATES}


def record(key: Hashable, K: int, hist: list[int], seconds: float | None) -> None:
    """Add one call's acceptance histogram and decode seconds under the window it ran
    (``seconds`` None: the call's time is not representative, e.g. it compiled its step)."""
    rec = _RECORDS.setdefault(key, Record())
    steps = sum(hist)
    rec.steps[K] = rec.steps.get(K, 0) + steps
    if seconds is not None:
        rec.timed_steps[K] = rec.timed_steps.get(K, 0) + steps
        rec.step_s[K] = rec.step_s.get(K, 0.0) + seconds
    n = max(len(hist), len(rec.hist.get(K, [])))
    old = rec.hist.get(K, []) + [0] * n
    rec.hist[K] = [old[j] + (hist[j] if j < len(hist) else 0) for j in range(n)]


def step_seconds(record: Record, costs: dict[int, float], streams: int) -> dict[int, float]:
    """Seconds of one verify step per candidate window: measured where this process ran it
    (at least ``MIN_STEPS`` steps), else the forward's time plus the per-draft time beyond the
    forward that measured windows showed (drafting, acceptance, draws grow with K)."""
    measured = {K: record.step_s[K] / n for K, n in record.timed_steps.items() if n >= MIN_STEPS}
    extra = [(t - costs.get(streams * (K + 1), t)) / K for K, t in measured.items() if K > 0]
    per_draft = max(statistics.median(extra), 0.0) if extra else 0.0
    out = {}
    for T, cost in costs.items():
        K = T // streams - 1
        out[K] = measured.get(K, cost + per_draft * K)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""How many drafts each verify step carries, for drafters whose drafts vary in length.

A prompt-lookup drafter has K real drafts when the text so far repeats an earlier n-gram and
none when it does not; a verify block padded to K tokens regardless costs, on a 2-core CPU
with SmolLM2-135M, 1.7x a one-token step for drafts that cannot be kept. So such a drafter
reports its real length L per row (``Draft.length_B``), the decode loop reads the longest
active one with the state it already syncs, and the step runs with k drafts, k on the ladder
``0, 1, 2, 4, 8, 16, ...`` (each k is one step shape; a compiled step compiles each once).

* A fixed ``window=K``: k is the smallest ladder length >= L (at most K), so no real draft
  is dropped and no step verifies a block of filler.
* ``window="auto"``: K is ``AUTO_WINDOW`` and k is chosen per step to maximise the expected
  tokens per second, tau(k) / cost(k), over the ladder lengths up to the one covering L:

  - cost(k): the mean seconds of this process's recent steps of that length (model, method,
    sampling, batch, device), measured between the loop's syncs; a length with fewer than
    ``MIN_TIMED`` steps is explored (run) first when it is a candidate, shortest first,
    so 0 (plain decoding) is timed before any draft is;
  - tau(k) = 1 + sum_{j <= min(k, L)} s(j), s(j) the share of steps verifying >= j drafts
    that kept >= j, shrunk towards a cautious prior (``PRIOR_FIRST``, ``PRIOR_RATIO``,
    ``PRIOR_STEPS`` pseudo-steps): text drafts are often wrong, and a wrong one costs; a depth
    too rarely verified to be measured extends the deepest measured one at its measured ratio
    (so lengths past those tried are explored when the drafts tried are mostly kept);
  - a length k > 0 must promise ``MARGIN`` times plain decoding's rate to be chosen;
  - a call counts its own acceptance too, the process's estimate weighing ``CALL_PRIOR`` steps
    against it: a few rejected drafts in this text outweigh what other texts did;
  - acceptance is counted per evidence level a drafter gives its drafts (``Draft.evidence_B``:
    prompt lookup's matched n-gram length; lookahead's pool candidates): a one-token match is a
    weaker guess than a three-token one;
  - at batch > 1, every row pays for a longer step but the call ends with its slowest row:
    tau is the mean of the own tau (its drafts, its evidence) of the rows with the most tokens
    left (measured: counting every row drafted for rows that then waited for the others, and
    made batch 4 slower than ``ar``);
  - the acceptance counts of an evidence level decay by ``DECAY`` at each step that verifies
    drafts of that level: the estimates follow the text being written (a summary copies, an
    answer to an open question does not). A level judged not to pay is not drafted again in
    the process (no step spent re-exploring it): "auto" errs towards plain decoding.

  Drafting stops paying when the measured acceptance says so, and the step is then plain
  decoding at the plain step's cost (plus the drafter's lookup): ``auto`` is not meant to be
  slower than ``ar``.

Every k verifies its drafts exactly (``mmaccel.verify``): greedy output is the greedy tokens
whatever k is; sampled output keeps the target's law, but with ``auto`` its draws depend on the
lengths chosen, hence on timing: the same seed gives the same distribution, not the same tokens.
Pin ``window=`` for outputs a seed reproduces.

Owns: the per-process timing and acceptance table of each (method key, batch, device) and the
choice. Must never: run inside a step.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field

LADDER = (0, 1, 2, 4, 8, 16, 32, 64)
AUTO_WINDOW = 16  # the longest draft ``auto`` may verify
MIN_TIMED = 3  # steps of a length before its median cost is trusted
KEEP_TIMES = 63  # most recent step times kept per length
PRIOR_FIRST, PRIOR_RATIO, PRIOR_STEPS = 0.3, 0.7, 4.0
DECAY = 0.98  # per step, of the acceptance counts: what the recent text does is what counts
CALL_PRIOR = 3.0  # steps the process's estimate weighs against a call's own counts
MIN_REACHED = 4  # (decayed) steps verifying a draft depth before its own acceptance replaces the extension
MARGIN = 1.05  # expected tokens per second a draft length must promise over plain decoding


def lengths(window: int) -> list[int]:
    """The step lengths a window of ``window`` drafts may run: the ladder below it, and itself."""
    return sorted({k for k in LADDER if k < window} | {window})


@dataclass
class Table:
    """What one (method, batch, device) measured: step seconds by length, and acceptance."""

    seconds: dict[int, list[float]] = field(default_factory=dict)
    # (evidence, j) -> steps that verified >= j drafts, and of those, steps that kept >= j
    reached: dict[tuple[int, int], float] = field(default_factory=dict)
    kept: dict[tuple[int, int], float] = field(default_factory=dict)

    def survival(self, j: int, evidence: int = 0) -> float:
        """s(j): P(a step verifying >= j drafts keeps >= j). Where fewer than ``MIN_REACHED``
        steps verified j, extended geometrically from the deepest well-measured j0 < j at its
        own measured ratio s(j0) / s(j0 - 1) (copied text runs on: the ratio is high where drafts
        are right), else the prior's. Counted per ``evidence`` level of the drafts."""
        if j <= 0:
            return 1.0
        e = evidence
        j0 = max((i for i in range(1, j + 1) if self.reached.get((e, i), 0) >= MIN_REACHED), default=0)
        if j0 == j or j0 == 0:
            prior = PRIOR_FIRST * PRIOR_RATIO ** (j - 1)
            return (self.kept.get((e, j), 0) + PRIOR_STEPS * prior) / (
                self.reached.get((e, j), 0) + PRIOR_STEPS
            )
        s0 = self.survival(j0, e)
        ratio = s0 / self.survival(j0 - 1, e) if j0 >= 2 else PRIOR_RATIO
        return s0 * min(ratio, 1.0) ** (j - j0)

    def cost(self, k: int) -> float | None:
        """Mean seconds of a step of length k, the slowest one left out (a one-off stall); None
        until ``MIN_TIMED`` were run. The mean, not the median: tokens per second is total
        tokens over total time."""
        times = self.seconds.get(k, [])
        return (sum(times) - max(times)) / (len(times) - 1) if len(times) >= MIN_TIMED else None


_TABLES: dict[Hashable, Table] = {}


class LengthPolicy:
    """Chooses each step's length for one call (module docstring); ``adaptive``: ``auto``;
    ``ladder``: the lengths a drafter's steps may take (default: the ladder up to ``window``)."""

    def __init__(self, key: Hashable, window: int, adaptive: bool, ladder: list[int] | None = None) -> None:
        self.window, self.adaptive = window, adaptive
        self.ladder = sorted(ladder) if ladder is not None else lengths(window)
        self.table = _TABLES.setdefault(key, Table())
        # this call's own counts, (evidence, j) -> steps; the process's table weighs CALL_PRIOR steps
        self.reached: dict[tuple[int, int], int] = {}
        self.kept: dict[tuple[int, int], int] = {}

    def survival(self, j: int, evidence: int) -> float:
        """s(j) for this call: its own counts, starting from the process's estimate."""
        key = evidence, j
        return (self.kept.get(key, 0) + CALL_PRIOR * self.table.survival(j, evidence)) / (
            self.reached.get(key, 0) + CALL_PRIOR
        )

    def covering(self, longest: int) -> int:
        """The shortest step length on the ladder that carries ``longest`` drafts (at most the window)."""
        return min(k for k in self.ladder if k >= min(longest, self.window))

    def choose(self, drafts: list[int], evidence: list[int], left: list[int] | None = None) -> int:
        """The length of the next step, given each active row's real drafts, their evidence
        level (``Draft.evidence_B``) and the tokens each has left to write (``left``; None:
        all the same). The call ends when its slowest row does, so only the rows with the most
        left count: drafts of a row that will finish early anyway buy nothing."""
        if left is not None:
            most = max(left)
            drafts = [d for d, n in zip(drafts, left, strict=True) if n == most]
            evidence = [e for e, n in zip(evidence, left, strict=True) if n == most]
        top = self.covering(max(drafts))
        if not self.adaptive or top == 0:
            return top
        candidates = [k for k in self.ladder if k <= top]
        for k in candidates:  # explore: a length not yet timed is run, shortest first
            if self.table.cost(k) is None:
                return k
        # a draft must beat plain decoding by MARGIN: its estimates are noisy, and a wrong call
        # would make ``auto`` slower than ``ar``
        rate = {k: self.tokens(k, drafts, evidence) / self.table.cost(k) / (MARGIN if k else 1.0)
                for k in candidates}  # fmt: skip
        return max(candidates, key=lambda k: (rate[k], -k))

    def tokens(self, k: int, drafts: list[int], evidence: list[int]) -> float:
        """tau(k): expected tokens per row of a step of length k (every row pays for the step;
        a row gains only from its own drafts)."""
        gains = [
            sum(self.survival(j, e) for j in range(1, min(k, d) + 1))
            for d, e in zip(drafts, evidence, strict=True)
        ]
        return 1.0 + sum(gains) / len(gains)

    def observe(
        self, k: int, seconds: float, drafts: list[int], kept: list[int], evidence: list[int]
    ) -> None:
        """One step of length ``k`` took ``seconds``; each active row had ``drafts`` real drafts
        of ``evidence`` level in it and kept ``kept`` of them."""
        times = self.table.seconds.setdefault(k, [])
        times.append(seconds)
        del times[:-KEEP_TIMES]
        for d, n, e in zip(drafts, kept, evidence, strict=True):
            if min(d, k) > 0:  # older steps of this evidence level count less
                for key in [key for key in self.table.reached if key[0] == e]:
                    self.table.reached[key] *= DECAY
                    self.table.kept[key] *= DECAY
            for j in range(1, min(d, k) + 1):
                for counts, hit in ((self.table.reached, 1), (self.table.kept, n >= j), (self.reached, 1),
                                    (self.kept, n >= j)):  # fmt: skip
                    counts[e, j] = counts.get((e, j), 0) + hit


class StepClock:
    """The decode loop's side of a variable drafter: from what the loop synced after each step
    (each row's done flag, token count, real drafts and their evidence), credit the step that
    just ended with its seconds and acceptance, and choose the next step's length."""

    def __init__(self, policy: LengthPolicy, max_new_tokens: int) -> None:
        self.policy, self.max_new_tokens = policy, max_new_tokens
        self.last: tuple | None = None  # (length, start time, active rows, counts, drafts, evidence)

    def step(self, done: list[int], counts: list[int], drafts: list[int], evidence: list[int]) -> int:
        """Credit the last step (its seconds end now); the length of the next one."""
        if self.last is not None:
            k, t0, active, before, was_drafts, was_evidence = self.last
            kept = [counts[b] - before[b] - 1 for b in active]
            self.policy.observe(k, time.perf_counter() - t0, [was_drafts[b] for b in active], kept,
                                [was_evidence[b] for b in active])  # fmt: skip
        active = [b for b, d in enumerate(done) if not d] or [0]
        left = [self.max_new_tokens - counts[b] for b in active]
        k = self.policy.choose([drafts[b] for b in active], [evidence[b] for b in active], left)
        self.last = k, time.perf_counter(), active, counts, drafts, evidence
        return k

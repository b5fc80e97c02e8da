"""CompiledStep: one decode step, compiled per declared shape bucket.

Owns: the declared (batch, query-length) buckets of a step function, the compiled callable
(``torch.compile(fullgraph=True)``) or, on CUDA, one captured CUDA graph per bucket with its
static input buffers, and ``resolve_mode`` (what ``compile="auto"`` means on a device).

A step is ``fn(*args, *inputs)``: ``args`` are fixed for the life of the step (model, cache,
state, configs), ``inputs`` are the tensors that change per call (for the whole verify step:
the flat draws). In ``compile`` mode the compiled function is shared by every step of the
same ``kind`` in the process (one code object per kind, so dynamo's cache and its recompile
limit are per kind), and a second image of the same shape runs the graph the first one
compiled. In ``cudagraph`` mode, inputs are copied into static buffers before each replay;
warm-up runs on a side stream with every tensor in ``mutated`` saved before and restored
after, so warming up advances no decoding state.

Must never: silently run a shape it did not declare (that would recompile or re-capture on
the hot path); capture before warm-up; capture on the default stream.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)
MODES = ("auto", "eager", "compile", "cudagraph")
_COMPILED: dict[Hashable, Callable] = {}  # kind -> torch.compile'd private copy of a step function


# ``auto`` on a CPU: compiling a whole step costs about this many seconds of this machine's time
# (measured: 20-60 s on 2 cores). A kind is run eagerly until the process has spent as long
# running it, then compiled: the ski-rental rule, never more than about twice the better choice
# made in hindsight (one-off calls and tests stay eager; benchmarks and servers compile). The
# compiled step is kept only if its first timed call runs faster per step than the eager calls
# did: on a 2-core CPU the compiled step is 2x faster at batch 1 and 2x SLOWER at batch 20
# (measured: Shapes-T2I ``ar``, 0.70 s against 1.38 s per image at batch 1; 7.5 s against 3.9 s
# per 20 images), so ``auto`` compiles only where it helps.
COMPILE_AFTER_S = 30.0
_EAGER_S: dict[Hashable, tuple[float, int]] = {}  # kind -> (seconds, steps) run eagerly (auto mode)
_FAILED: set[Hashable] = set()  # kinds that torch.compile refused (auto then stays eager)
_SLOWER: set[Hashable] = set()  # kinds whose compiled step ran slower than eager (auto stays eager)
_KEPT: set[Hashable] = set()  # kinds whose compiled step was timed faster than eager
_RAN: set[Hashable] = set()  # compiled kinds that have run (so have been compiled)


def resolve_mode(mode: str, device: torch.device | str, kind: Hashable | None = None) -> str:
    """What ``mode`` means for a step of ``kind`` on ``device``.

    ``auto``: one CUDA graph per bucket on CUDA; on a CPU ``torch.compile`` of the whole step
    once this process has run the kind eagerly for ``COMPILE_AFTER_S`` seconds (or compiled it
    already), eager before that, for kinds the compiler refused, and for kinds whose compiled
    step was timed slower than their eager one (``record_compiled``).
    """
    if mode not in MODES:
        raise ValueError(f"compile must be one of {', '.join(MODES)}; got {mode!r}")
    if mode != "auto":
        return mode
    if torch.device(device).type == "cuda":
        return "cudagraph"
    if kind in _FAILED or kind in _SLOWER:
        return "eager"
    return "compile" if kind in _COMPILED or _EAGER_S.get(kind, (0.0, 0))[0] >= COMPILE_AFTER_S else "eager"


def record_eager(kind: Hashable, seconds: float, steps: int) -> None:
    """Count ``seconds`` of eager running of ``kind`` (``steps`` steps) towards ``auto``'s
    decision to compile it."""
    total, n = _EAGER_S.get(kind, (0.0, 0))
    _EAGER_S[kind] = (total + seconds, n + steps)


def record_compiled(kind: Hashable, seconds: float, steps: int) -> None:
    """The first timed compiled call of ``kind`` under ``auto`` (``steps`` steps in ``seconds``,
    compilation excluded): keep the compiled step if it ran faster per step than the eager calls
    did, else run the kind eagerly from now on."""
    if kind in _KEPT or kind in _SLOWER or steps <= 0:
        return
    eager_s, eager_steps = _EAGER_S.get(kind, (0.0, 0))
    if eager_steps == 0:
        return
    compiled_per_step, eager_per_step = seconds / steps, eager_s / eager_steps
    if compiled_per_step < eager_per_step:
        _KEPT.add(kind)
        return
    log.info("the compiled step ran %.2f ms per step against %.2f ms eagerly; running it eagerly",
             1e3 * compiled_per_step, 1e3 * eager_per_step)  # fmt: skip
    _SLOWER.add(kind)
    _COMPILED.pop(kind, None)


def compiled_for(fn: Callable, kind: Hashable) -> Callable:
    """``torch.compile(fullgraph=True)`` of ``fn``, one per ``kind`` per process.

    Each kind compiles a private copy of ``fn``'s code object: dynamo keys its cache (and its
    limit of recompiles) on the code object, so steps of different kinds neither evict each
    other nor fall back to eager after a handful of shapes.
    """
    if kind not in _COMPILED:
        code = fn.__code__.replace()
        copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        copy.__kwdefaults__ = fn.__kwdefaults__
        _COMPILED[kind] = torch.compile(copy, fullgraph=True, dynamic=False)
    return _COMPILED[kind]


class CompiledStep:
    """Run ``fn(*args, *inputs)`` for declared buckets (by default ``inputs[0].shape[:2]``).

    Args:
        fn: a function of ``args`` and tensors; its side effects (cache and state writes) must
            go to tensors that live at fixed addresses.
        buckets: the (batch, query-length) shapes this step may be called with.
        mode: ``eager`` (call ``fn``), ``compile`` (``torch.compile(fullgraph=True)``),
            ``cudagraph`` (capture per bucket; CUDA only). ``auto`` is resolved by the caller
            (``resolve_mode``).
        args: the fixed leading arguments of ``fn``.
        kind: the key under which the compiled function is shared across steps (default: a
            private one per step).
        fallback: when compiling fails (the first call), run eagerly instead and remember the
            kind (``auto``); otherwise the compiler's error is raised (an explicit ``compile``).
        mutated: tensors ``fn`` writes (saved and restored around CUDA-graph warm-up).
        warmup: eager runs on a side stream before capturing a bucket.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        buckets: Iterable[tuple[int, int]],
        mode: str = "eager",
        *,
        args: Sequence[Any] = (),
        kind: Hashable | None = None,
        mutated: Sequence[torch.Tensor] = (),
        warmup: int = 2,
        fallback: bool = False,
    ) -> None:
        if mode not in MODES or mode == "auto":
            raise ValueError(f"mode must be one of eager, compile, cudagraph; got {mode!r}")
        self.fn, self.mode, self.args, self.mutated, self.warmup = (
            fn,
            mode,
            tuple(args),
            tuple(mutated),
            warmup,
        )
        self.buckets = frozenset((int(b), int(t)) for b, t in buckets)
        if not self.buckets:
            raise ValueError("CompiledStep needs at least one (batch, query-length) bucket")
        self._compiled = None
        self.kind = kind if kind is not None else ("private", id(self))
        self.fallback = fallback
        if mode == "compile":
            self._compiled = compiled_for(fn, self.kind)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, tuple, Any]] = {}
        self.compiled_in_call = False  # this step compiled or captured a graph (its time is not a step's)

    def __call__(self, *inputs: torch.Tensor, bucket: tuple[int, int] | None = None) -> Any:
        key = tuple(inputs[0].shape[:2]) if bucket is None else tuple(bucket)
        if key not in self.buckets:
            raise ValueError(
                f"CompiledStep called with (batch, query-length) {key}, which is not a declared bucket "
                f"{sorted(self.buckets)}"
            )
        if self.mode == "eager":
            return self.fn(*self.args, *inputs)
        if self.mode == "compile":
            # the first call of a kind compiles it: its time says nothing about the step's speed
            self.compiled_in_call = self.compiled_in_call or self.kind not in _RAN
            _RAN.add(self.kind)
            if not self.fallback:
                return self._compiled(*self.args, *inputs)
            try:  # tracing runs on fake tensors: a refused compile has changed no state
                return self._compiled(*self.args, *inputs)
            except Exception as err:  # noqa: BLE001 - any compiler failure; the step itself is sound
                log.warning("torch.compile failed for this step (%s: %s); running it eagerly",
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "")  # fmt: skip
                _FAILED.add(self.kind)
                _COMPILED.pop(self.kind, None)
                self.mode, self.fallback = "eager", False
                return self.fn(*self.args, *inputs)
        return self._replay(key, inputs)

    def _replay(self, key, inputs) -> Any:
        if not inputs[0].is_cuda:
            raise RuntimeError("CompiledStep mode 'cudagraph' needs CUDA tensors; use 'compile' or 'eager'")
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs)
            self.compiled_in_call = True
        graph, static_inputs, static_out = self._graphs[key]
        for buf, x in zip(static_inputs, inputs, strict=True):
            buf.copy_(x)
        graph.replay()
        return static_out.clone() if isinstance(static_out, torch.Tensor) else static_out

    def _capture(self, inputs):
        static_inputs = tuple(x.clone() for x in inputs)
        saved = [t.clone() for t in self.mutated]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*self.args, *static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(self.mutated, saved, strict=True):  # warm-up must not advance the decode
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # recorded, not run: the state is untouched until replay
            static_out = self.fn(*self.args, *static_inputs)
        return graph, static_inputs, static_out

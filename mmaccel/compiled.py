"""CompiledStep: one decode step, compiled per declared shape bucket.

Owns: the declared (batch, query-length) buckets of a step function, the compiled callable
(``torch.compile(fullgraph=True)``) or, on CUDA, one captured CUDA graph per bucket with its
static input buffers. Inputs are copied into the static buffers before each replay; outputs
are cloned out so a later replay cannot overwrite what the caller holds.

Must never: silently run a shape it did not declare (that would recompile or re-capture on
the hot path); capture before warm-up; capture on the default stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

MODES = ("eager", "compile", "cudagraph")


class CompiledStep:
    """Run ``fn(*inputs)`` whose first input has shape ``[B, T, ...]``, for declared (B, T).

    Args:
        fn: a function of tensors only, returning a tensor; its side effects (cache writes)
            must go to tensors that live at fixed addresses.
        buckets: the (batch, query-length) shapes this step may be called with.
        mode: ``eager`` (call ``fn``), ``compile`` (``torch.compile(fullgraph=True)``),
            ``cudagraph`` (capture per bucket; CUDA only).
        warmup: eager runs on a side stream before capturing a bucket.
    """

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        buckets: Iterable[tuple[int, int]],
        mode: str = "eager",
        warmup: int = 2,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.fn, self.mode, self.warmup = fn, mode, warmup
        self.buckets = frozenset((int(b), int(t)) for b, t in buckets)
        if not self.buckets:
            raise ValueError("CompiledStep needs at least one (batch, query-length) bucket")
        self._compiled = torch.compile(fn, fullgraph=True, dynamic=False) if mode == "compile" else None
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, tuple, torch.Tensor]] = {}

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = tuple(inputs[0].shape[:2])
        if key not in self.buckets:
            raise ValueError(
                f"CompiledStep called with (batch, query-length) {key}, which is not a declared bucket "
                f"{sorted(self.buckets)}"
            )
        if self.mode == "eager":
            return self.fn(*inputs)
        if self.mode == "compile":
            return self._compiled(*inputs)
        return self._replay(key, inputs)

    def _replay(self, key, inputs) -> torch.Tensor:
        if not inputs[0].is_cuda:
            raise RuntimeError("CompiledStep mode 'cudagraph' needs CUDA tensors; use 'compile' or 'eager'")
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs)
        graph, static_inputs, static_out = self._graphs[key]
        for buf, x in zip(static_inputs, inputs, strict=True):
            buf.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, inputs):
        static_inputs = tuple(x.clone() for x in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(*static_inputs)
        return graph, static_inputs, static_out

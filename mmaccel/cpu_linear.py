"""Linear layers of a transformers model run through oneDNN-packed weights on a CPU.

Why: on a CPU, ``torch.nn.functional.linear`` with a few rows (a verify block of 2-16
tokens) takes MKL's small-matrix path, which streams the weights several times: measured on
2 cores for SmolLM2-135M's 211 linears, 36 ms for one token but 65 ms for two and 95 ms for
eleven. The same products with the weights packed once by oneDNN
(``torch.ops.mkldnn._reorder_linear_weight``) take 27, 25 and 42 ms: one token is faster too,
and a verify block costs about 1.5x one token instead of 2.6x. That ratio decides whether a
drafter's fewer forwards are also less time.

Owns: the packed copies of one model's linear weights (made once per model and process,
remade when a weight is replaced or modified in place), and ``active()``, which routes every
``nn.Linear`` of the model through them for the duration of one forward. The user's model
is otherwise untouched: the routing is an instance attribute set on entry and removed on
exit (reference-counted, so concurrent calls on one model share it).

Costs memory: the packed copy is as large as the linear weights (540 MB for SmolLM2-135M in
fp32). ``packed_linears`` packs only on a CPU, for float32/bfloat16 weights, when oneDNN is
available, when the copy takes at most a quarter of the memory available, and unless
``MMACCEL_PACK_LINEAR=0``. The results are the same products in another summation order
(logits differ by ~1e-6), so a greedy argmax can differ only where two logits tie to that
precision.

Must never: run inside ``torch.compile`` (the caller checks), change a weight, or stay
installed after the forward that asked for it.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

log = logging.getLogger(__name__)
ENV = "MMACCEL_PACK_LINEAR"
MEMORY_SHARE = 0.25  # the packed copy may take at most this share of the memory available


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


class PackedLinears:
    """Packed copies of the weights of every ``nn.Linear`` of one model (module docstring)."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.linears = linears
        self.lock = threading.Lock()
        self.users = 0
        self.packed: list[torch.Tensor] = []
        self.stamps: list[tuple[int, int]] = []
        self.repack()

    @staticmethod
    def _stamp(m: nn.Linear) -> tuple[int, int]:
        return m.weight.data_ptr(), m.weight._version

    def repack(self) -> None:
        by_ptr: dict[int, torch.Tensor] = {}  # tied weights (an lm_head sharing the embedding) packed once
        self.packed = [by_ptr.setdefault(m.weight.data_ptr(), _pack(m.weight)) for m in self.linears]
        self.stamps = [self._stamp(m) for m in self.linears]

    def fresh(self) -> bool:
        """Whether every weight is still the one packed (not replaced, not modified in place)."""
        return all(self._stamp(m) == s for m, s in zip(self.linears, self.stamps, strict=True))

    @contextmanager
    def active(self) -> Iterator[None]:
        """Every linear of the model runs on its packed weight inside this block."""
        with self.lock:
            if self.users == 0:
                if not self.fresh():
                    self.repack()
                for m, w in zip(self.linears, self.packed, strict=True):
                    m.forward = _packed_forward(w, m.bias)
            self.users += 1
        try:
            yield
        finally:
            with self.lock:
                self.users -= 1
                if self.users == 0:
                    for m in self.linears:
                        del m.forward


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


_MODELS: weakref.WeakKeyDictionary[nn.Module, PackedLinears | None] = weakref.WeakKeyDictionary()


def packed_linears(model: nn.Module) -> PackedLinears | None:
    """The packed linears of ``model``, made at the first call; None where packing does not
    apply (module docstring: device, dtype, oneDNN, memory, ``MMACCEL_PACK_LINEAR=0``)."""
    if os.environ.get(ENV, "1") == "0":
        return None
    if model in _MODELS:
        return _MODELS[model]
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    ok = (
        bool(linears)
        and torch.backends.mkldnn.is_available()
        and all(
            m.weight.device.type == "cpu" and m.weight.dtype in (torch.float32, torch.bfloat16)
            for m in linears
        )
        and all(m.bias is None or m.bias.dtype == m.weight.dtype for m in linears)
    )
    packed = None
    if ok:
        size = sum({m.weight.data_ptr(): m.weight.nbytes for m in linears}.values())
        free = _available_bytes()
        if free is not None and size > MEMORY_SHARE * free:
            log.info("not packing %s's linear weights for the CPU: %d MB would exceed a quarter of the "
                     "%d MB available", type(model).__name__, size >> 20, free >> 20)  # fmt: skip
        else:
            packed = PackedLinears(linears)
    _MODELS[model] = packed
    return packed

"""Helpers shared by the evaluation commands: method specs, timing, memory, tables.

Owns: parsing ``name:key=value,...`` method specs, a peak-memory meter (CUDA allocator on GPU,
C heap in use on CPU), medians, and markdown tables.

Must never: print (the CLIs do) or decide anything about a method's quality.
"""

from __future__ import annotations

import functools
import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class MethodSpec:
    """A method name with its options, e.g. ``sjd-coupled:window=8,init=vertical``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}:{opts}" if opts else self.name


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_method_spec(spec: str) -> MethodSpec:
    """``"sjd:window=8,init=vertical"`` -> MethodSpec("sjd", {"window": 8, "init": "vertical"})."""
    name, _, rest = spec.strip().partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"bad option {item!r} in method spec {spec!r}; expected key=value")
        options[key.strip()] = _value(value.strip())
    if not name:
        raise ValueError(f"empty method name in spec {spec!r}")
    return MethodSpec(name, options)


def parse_methods(text: str) -> list[MethodSpec]:
    """Method specs separated by ``;`` or by ``,`` before a new name (``ar,sjd:window=8``)."""
    specs, current = [], ""
    for part in text.replace(";", ",;").split(","):
        part = part.strip().lstrip(";")
        if not part:
            continue
        if "=" in part and ":" not in part and current:
            current += "," + part
        else:
            if current:
                specs.append(current)
            current = part
    if current:
        specs.append(current)
    return [parse_method_spec(s) for s in specs]


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class PeakMemory:
    """Peak memory allocated over a ``with`` block, in MB, above what was in use at entry.

    On CUDA: the caching allocator's peak. On CPU: the C heap's bytes in use (glibc
    ``mallinfo2``: small blocks plus mmapped ones, which is where torch's CPU tensors live),
    sampled every ``interval_s`` by a thread, so a spike shorter than that can be missed; where
    ``mallinfo2`` does not exist (not glibc), the resident-set growth instead, which after a
    warm-up call often reads near zero because freed memory stays mapped.
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.001) -> None:
        self.device, self.interval_s, self.peak_mb = torch.device(device), interval_s, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._read = _heap_in_use() or _resident_set
        self._base = self._peak = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._read())
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._read())
        self.peak_mb = (self._peak - self._base) / 2**20


@functools.cache
def _heap_in_use() -> Callable[[], int] | None:
    """A reader of glibc's heap bytes in use, or None where there is no ``mallinfo2``."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields]

    mallinfo2.restype = MallInfo2

    def read() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return read


def _resident_set() -> int:
    return _this_process().memory_info().rss


@functools.cache
def _this_process():
    import psutil

    return psutil.Process()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(x: Any) -> str:
        return f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)

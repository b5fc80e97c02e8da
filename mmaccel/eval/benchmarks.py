"""Benchmarks: what ``mmaccel eval`` measures a model on, supplied by plug-ins.

Owns: the ``Benchmark`` record a dataset plug-in fills in (its name, the image models it is
meant for, its prompt set, and optionally a prompt-accuracy checker with the table columns
that show it, a feature network for the Frechet distance and the real images FD compares
against), and the discovery of benchmarks by name: in-process registrations
(``register_benchmark``, for code and tests) first, then the ``mmaccel.benchmarks``
entry-point group, whose targets are zero-argument functions returning a ``Benchmark``.

Must never: import a model family or a dataset (plug-ins register themselves; the core only
sees their ``Benchmark``), load a benchmark before it is asked for, or print.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image
    from torch import nn

ENTRY_POINT_GROUP = "mmaccel.benchmarks"
DEFAULT_BENCHMARK = "shapes-t2i"
INCEPTION = "inception"  # the core's own FD extractor (torchmetrics), usable with any benchmark's real images


@dataclass(frozen=True)
class AccuracyColumn:
    """One results-table column of a benchmark's accuracy figures.

    ``key``: the figure (a key of the benchmark's ``accuracy`` dict). ``n_key``: when set, the
    number of prompts behind the figure, and the cell shows ``value ± 95% binomial interval``.
    """

    header: str
    key: str
    n_key: str | None = None


@dataclass(frozen=True)
class FeatureNet:
    """A benchmark's own FD feature network: float images ``[N, 3, H, W]`` in [0, 1] -> ``[N, F]``.

    ``name`` labels every FD figure (``FD-<name>``); ``--extractor`` selects it by
    ``name.lower()``. ``load`` builds the network (weights included) when FD is asked for.
    """

    name: str
    load: Callable[[], nn.Module]

    @property
    def key(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Benchmark:
    """A prompt set and how to score images made from it.

    ``prompt_set(n, seed)``: the first ``n`` prompts of the set drawn with ``seed`` (same
    arguments, same prompts). ``model``: the registered image model (``mmaccel.image_models``)
    the benchmark is run on unless another is named; ``models``: other registered models it is
    meant for too (``--model`` one of them alone picks this benchmark, see ``benchmark_for``;
    e.g. ``fashion-mnist`` scores ``fashion-var`` and ``fashion-mar``). ``accuracy(images, prompts)``: figures of
    images paired with their prompts, at least ``"accuracy"`` (the fraction judged right; the
    speed-quality plot draws it), shown in the table as ``accuracy_columns``.
    ``real_images(n, seed)``: ``n`` real images for the Frechet distance, under ``feature_net``
    or (where its weights exist) Inception. Leave a part None when the dataset has none; the
    commands that need it then say so.
    """

    name: str
    model: str
    prompt_set: Callable[[int, int], Sequence[str]]
    accuracy: Callable[[Sequence[Image.Image], Sequence[str]], dict[str, float]] | None = None
    accuracy_columns: tuple[AccuracyColumn, ...] = (AccuracyColumn("accuracy", "accuracy"),)
    feature_net: FeatureNet | None = None
    real_images: Callable[[int, int], Sequence[Image.Image]] | None = None
    description: str = ""
    models: tuple[str, ...] = ()

    @property
    def meant_for(self) -> tuple[str, ...]:
        """Every model the benchmark is meant for: ``model`` first, then ``models``."""
        return (self.model,) + tuple(m for m in self.models if m != self.model)

    def prompts(self, n: int, seed: int = 0) -> list[str]:
        """``n`` prompts of the set for ``seed``; ValueError when the set cannot give them."""
        if n < 1:
            raise ValueError(f"need at least one prompt, got {n}")
        prompts = list(self.prompt_set(n, seed))
        if len(prompts) != n:
            raise ValueError(f"benchmark {self.name!r} gave {len(prompts)} prompts when asked for {n}")
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"benchmark {self.name!r} gave a prompt that is not non-empty text")
        return prompts

    @property
    def metrics(self) -> tuple[str, ...]:
        """The quality metrics it can score beside speed: ``accuracy`` and/or ``fd``."""
        return (
            ("speed",)
            + ("accuracy",) * (self.accuracy is not None)
            + ("fd",) * (self.real_images is not None)
        )

    @property
    def extractors(self) -> tuple[str, ...]:
        """``--extractor`` values for its FD: its own feature network first, then Inception."""
        if self.real_images is None:
            return ()
        return ((self.feature_net.key,) if self.feature_net else ()) + (INCEPTION,)


# name -> factory; consulted before the entry points, so code and tests can add benchmarks.
_REGISTERED: dict[str, Callable[[], Benchmark]] = {}


def register_benchmark(name: str, factory: Callable[[], Benchmark], *, replace: bool = False) -> None:
    """Make ``factory()`` the benchmark called ``name`` in this process.

    Raises ValueError when ``name`` is taken (registered here or installed) unless ``replace``.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"a benchmark name must be a non-empty string, got {name!r}")
    if name in available_benchmarks() and not replace:
        raise ValueError(f"benchmark {name!r} is already registered; pass replace=True to override it")
    _REGISTERED[name] = factory


def unregister_benchmark(name: str) -> None:
    """Forget an in-process registration (installed entry points stay)."""
    _REGISTERED.pop(name, None)


def available_benchmarks() -> list[str]:
    """Names of the benchmarks registered in this process or installed as entry points."""
    return sorted(set(_REGISTERED) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_benchmark(benchmark: str | Benchmark = DEFAULT_BENCHMARK) -> Benchmark:
    """The benchmark called ``benchmark`` (a ``Benchmark`` is returned as given).

    Raises ValueError naming the unknown benchmark and the available ones.
    """
    if isinstance(benchmark, Benchmark):
        return benchmark
    factory = _REGISTERED.get(benchmark)
    if factory is None:
        factory = next(
            (ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == benchmark), None
        )
    if factory is None:
        raise ValueError(
            f"unknown benchmark {benchmark!r}; available benchmarks: {', '.join(available_benchmarks()) or 'none'}"
        )
    loaded = factory()
    if not isinstance(loaded, Benchmark):
        raise TypeError(f"benchmark {benchmark!r} loaded a {type(loaded).__name__}, not an mmaccel Benchmark")
    return loaded


def benchmark_for(benchmark: str | None, model: str | None) -> Benchmark:
    """The benchmark a command runs: ``benchmark`` when named; else the first installed benchmark
    meant for ``model`` (``Benchmark.meant_for``: its ``model`` or one of its ``models``); else
    the default. So ``--model fashion-var`` (or ``fashion-mar``) alone scores that model on its
    own prompts.

    Raises ValueError when ``model`` is named with no benchmark and none is meant for it.
    """
    if benchmark is not None:
        return load_benchmark(benchmark)
    if model is None:
        return load_benchmark(DEFAULT_BENCHMARK)
    for name in [DEFAULT_BENCHMARK] + [b for b in available_benchmarks() if b != DEFAULT_BENCHMARK]:
        loaded = load_benchmark(name)
        if model in loaded.meant_for:
            return loaded
    raise ValueError(
        f"no installed benchmark is meant for model {model!r}; name one with --benchmark "
        f"({', '.join(available_benchmarks())})"
    )


def metrics_of(benchmark: Benchmark, wanted: Sequence[str], strict: bool) -> tuple[str, ...]:
    """``wanted`` restricted to what ``benchmark`` can score; with ``strict`` a missing one is a
    ValueError (``eval fid`` on a benchmark without real images), else it is dropped."""
    missing = [m for m in wanted if m not in benchmark.metrics]
    if missing and strict:
        what = {"accuracy": "prompt-accuracy checker", "fd": "real images for the Frechet distance"}
        raise ValueError(f"benchmark {benchmark.name!r} has no " + " and no ".join(what[m] for m in missing))
    return tuple(m for m in wanted if m in benchmark.metrics)

"""Running several methods over one prompt set, in fixed seeded chunks, sharded over processes.

Owns: the chunk plan and each chunk's seed, the split of chunks
over processes (``accelerate launch`` / ``torchrun``), the loop that calls ``generate_image``
for every (chunk, method) with warm-up, interleaving and peak-memory metering, and gathering
the per-chunk records on the main process. ``eval latency``, ``eval compare``, ``eval fid``
and ``eval accuracy`` all generate through ``run_chunks``, so they see the same images and
forward-pass counts for the same prompts, batch size and seed.

Why chunks: ``generate_image`` draws the randomness of a whole batch from one generator, so
a prompt's image depends on which prompts share its batch (and the batch size changes the
shapes of every random draw). Results are therefore made a function of
``(prompts, batch, seed)`` only: prompts are cut into consecutive chunks of ``batch``; the
chunk whose first prompt has index ``i`` is generated with ``chunk_seed(seed, i)``; process
``r`` of ``w`` takes chunks ``r, r + w, r + 2w, ...``. Any number of processes then produces
the same images, forward passes, prompt accuracy and FD as one process (on CPU at the same
thread count; GPU kernels of different devices need not agree to the last bit). Repeats
(``eval latency``) reuse the same seeds: they re-time identical work.

Must never: compute a quality figure, choose prompts (a benchmark plug-in does, see
``benchmarks``), print, or compare against a baseline from another run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from mmaccel.eval.common import MethodSpec, PeakMemory

log = logging.getLogger(__name__)
NOISE_FLOOR_OFFSET = 10_000  # seed offset of "ar (other seeds)"
_SEED_STRIDE = 1_000_003  # a prime above any prompt count, so (seed, start) -> seed is one-to-one


@dataclass(frozen=True)
class Run:
    """One column of a benchmark: a method spec, its label and a seed offset (noise floor)."""

    label: str
    spec: MethodSpec
    seed_offset: int = 0


@dataclass(frozen=True)
class Chunk:
    """Prompts ``start:stop`` of the prompt set, generated as one batch."""

    index: int
    start: int
    stop: int


@dataclass
class ChunkResult:
    """What one ``generate_image`` call on one chunk gave for one run."""

    label: str
    chunk: int
    start: int
    repeat: int
    images: list[Image.Image]
    forward_passes: list[int]  # per prompt of the chunk
    num_tokens: int  # image tokens per prompt
    latency_s: float  # wall-clock of the call
    peak_mem_mb: float
    accepted_histogram: list[int]  # verify steps of the call by tokens emitted
    config: str = ""  # the method config that ran (the model's method defaults applied)
    forwards: dict[str, int] = field(default_factory=dict)  # per model role, where the model counts them
    acceptance_rate: float | None = None  # drafted values kept (CSpD on a masked-set pair), else None
    acceptance_per_verify: list[float] = field(default_factory=list)  # the same, per checked block


def check_method(spec: MethodSpec) -> None:
    """ValueError for a method name or option that no model family takes (checked before any model
    is loaded): a spec valid on raster or next-scale models (``resolve_method``), or on a
    masked-set (MAR) model (``resolve_masked_method``: ``ar:num_iter=8``, ``cspd:gamma=4``).
    Whether it runs on the model named is checked once that is loaded (``run_chunks``)."""
    from mmaccel.methods import MASKED_SET_OPTIONS, resolve_masked_method, resolve_method

    try:
        resolve_method(spec.name, dict(spec.options))
    except ValueError:
        if not set(spec.options) <= set(MASKED_SET_OPTIONS.get(spec.name, ())) or not spec.options:
            raise
        resolve_masked_method(spec.name, dict(spec.options))  # its own message for a bad value


def make_runs(methods: Sequence[MethodSpec], noise_floor: bool = False) -> list[Run]:
    """Runs for ``methods`` with plain ``ar`` first when absent (every ratio is against it);
    ``noise_floor`` appends ``ar`` with other seeds."""
    specs = list(methods)
    for m in specs:  # unknown names and options fail here, before any model is loaded
        check_method(m)
    if not any(m.name == "ar" and not m.options for m in specs):
        specs.insert(0, MethodSpec("ar"))
    labels = [m.label for m in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"a method is listed twice: {', '.join(labels)}")
    runs = [Run(m.label, m) for m in specs]
    if noise_floor:
        runs.append(Run("ar (other seeds)", MethodSpec("ar"), NOISE_FLOOR_OFFSET))
    return runs


def plan_chunks(n_prompts: int, batch: int) -> list[Chunk]:
    """Consecutive chunks of ``batch`` prompts (the last may be shorter)."""
    if batch < 1 or n_prompts < 1:
        raise ValueError(f"need batch >= 1 and at least one prompt, got batch={batch}, prompts={n_prompts}")
    return [Chunk(i, s, min(s + batch, n_prompts)) for i, s in enumerate(range(0, n_prompts, batch))]


def chunk_seed(seed: int, start: int) -> int:
    """Seed of the chunk whose first prompt has index ``start``."""
    return seed * _SEED_STRIDE + start


def shard(chunks: Sequence[Chunk], rank: int, world: int) -> list[Chunk]:
    """The chunks process ``rank`` of ``world`` generates (round robin, so the kinds of prompt a
    prompt set mixes spread evenly)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    return list(chunks[rank::world])


@lru_cache(maxsize=4)
def _load_on_device(name: str, device: str) -> Any:
    from importlib.metadata import entry_points

    from mmaccel.images import ENTRY_POINT_GROUP, available_models

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()(device=device)
    raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models()) or 'none'}")


def resolve_model(model: Any = None, device: torch.device | str = "cpu") -> Any:
    """A model name or ``ImageModel`` -> an ``ImageModel`` on ``device`` (names only: an object
    is used as given; None: the library's default model). Registered loaders take ``device=``."""
    from mmaccel.images import DEFAULT_MODEL, load_model

    model = DEFAULT_MODEL if model is None else model
    if not isinstance(model, str):
        return model

    device = torch.device(device)
    return load_model(model) if device.type == "cpu" else _load_on_device(model, str(device))


def run_chunks(
    runs: Sequence[Run],
    prompts: Sequence[str],
    chunks: Sequence[Chunk],
    *,
    model: Any = None,
    seed: int = 0,
    guidance_scale: float | None = None,
    temperature: float | None = None,
    compile: str = "best",
    repeats: int = 1,
    warmup: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "generate",
    state=None,
) -> list[ChunkResult]:
    """Generate every chunk with every run, ``repeats`` times, and record each call.

    ``model``: a registered model name or an ``ImageModel`` (None: the library's default).

    Warm-up first (one call per run on the first chunk: allocations, lazy loading, kernel
    selection, and compiling each method's step). ``compile`` is a mode of ``generate_image``
    used for every run, ``ar`` included, or ``best``: after the warm-up each run times one
    eager and one compiled call (CUDA graph on CUDA) on the first chunk and runs in the faster,
    so ``ar`` and every method are each timed at their fastest (without warm-up, ``best`` runs
    eagerly); the records name the mode. Then, per repeat and chunk, the runs are interleaved so that drift in machine
    load hits all methods alike. The chunk starting at prompt ``i`` uses
    ``chunk_seed(seed + run.seed_offset, i)`` in every repeat.

    A run whose method chooses its window (``window="auto"``, the default) is pinned to the
    window its first call chose on the main process (``state``: the ``accelerate`` state when
    sharded), so every chunk, repeat and process uses one window and any number of processes
    gives the same images; the records name it.

    A masked-set (MAR) model always decodes eagerly (``generate_image`` has no compiled step for
    it): every run records ``compile=eager`` whatever ``compile`` says, and ``best`` times nothing.
    """
    from mmaccel.images import MaskedSetImageModel, generate_image
    from mmaccel.methods import resolve_masked_method, resolve_method

    image_model = resolve_model(model, device)
    masked = isinstance(image_model, MaskedSetImageModel)

    def resolved(run: Run):  # the config a run's calls resolve to on this model (fails before any work)
        if masked:
            return resolve_masked_method(run.spec.name, dict(run.spec.options), model=image_model,
                                         model_name=getattr(image_model, "name", "this MAR model"))  # fmt: skip
        return resolve_method(run.spec.name, dict(run.spec.options), model=image_model)

    # "best": each run in the faster of eager and compiled, timed on the warm-up chunk (below)
    compiled_mode = "cudagraph" if torch.device(device).type == "cuda" else "compile"
    modes = {run.label: "eager" if compile == "best" or masked else compile for run in runs}

    def call(run: Run, chunk: Chunk, mode: str | None = None):
        return generate_image(list(prompts[chunk.start : chunk.stop]), run.spec.name, model=image_model,
                              seed=chunk_seed(seed + run.seed_offset, chunk.start), guidance_scale=guidance_scale,
                              temperature=temperature, compile=mode or modes[run.label], return_output=True,
                              **run.spec.options)  # fmt: skip

    chosen: dict[str, int] = {}
    auto = {run.label for run in runs if getattr(resolved(run), "window", None) == "auto"}
    if chunks:  # warm-up; a run with window="auto" makes its first call here either way
        for run in tqdm(
            [r for r in runs if warmup or r.label in auto], desc="warm-up", disable=not progress, leave=False
        ):
            out = call(run, chunks[0])
            if run.label in auto:
                chosen[run.label] = out.generate_output.method.window
    if state is not None and state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        shared = [chosen]
        broadcast_object_list(shared, from_process=0)
        chosen = shared[0]
    runs = [dataclasses.replace(run, spec=MethodSpec(run.spec.name, {**run.spec.options, "window": chosen[run.label]}))
            if run.label in chosen else run for run in runs]  # fmt: skip
    if compile == "best" and warmup and chunks and not masked:
        for run in tqdm(runs, desc="eager or compiled", disable=not progress, leave=False):
            eager_s = call(run, chunks[0], "eager").latency_s
            call(run, chunks[0], compiled_mode)  # compiles (or captures)
            compiled_s = call(run, chunks[0], compiled_mode).latency_s
            modes[run.label] = compiled_mode if compiled_s < eager_s else "eager"
    results: list[ChunkResult] = []
    with tqdm(total=repeats * len(chunks) * len(runs), desc=desc, disable=not progress) as bar:
        for repeat in range(repeats):
            for chunk in chunks:
                for run in runs:
                    with PeakMemory(device) as mem:
                        out = call(run, chunk)
                    gen, extras = out.generate_output, out.generate_output.extras or {}
                    results.append(ChunkResult(run.label, chunk.index, chunk.start, repeat, out.images,
                                               gen.forward_passes_per_row.tolist(), out.num_tokens, out.latency_s,
                                               mem.peak_mb, list(gen.accepted_histogram),
                                               f"{gen.method!r}, compile={modes[run.label]}",
                                               dict(extras.get("forwards", {})), extras.get("acceptance_rate"),
                                               list(extras.get("acceptance_per_verify", []))))  # fmt: skip
                    bar.update()
    return results


def process_state(cpu: bool = False):
    """The ``accelerate`` process state (one process when not launched distributed).

    ``cpu``: stay on the CPU even where CUDA exists. Without CUDA the processes always run on
    the CPU and talk over gloo (``accelerate launch --multi_gpu --num_processes N`` or
    ``torchrun --nproc_per_node N`` start them; ``accelerate launch --cpu`` starts only one
    unless ``mpirun`` is configured).
    """
    from accelerate import PartialState

    return PartialState(cpu=cpu or not torch.cuda.is_available())


def gather_results(results: list[ChunkResult], state=None) -> list[ChunkResult]:
    """All processes' records (every process gets them), ordered by (repeat, chunk, label)."""
    if state is not None and state.num_processes > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    return sorted(results, key=lambda r: (r.repeat, r.chunk, r.label))


def in_prompt_order(results: Sequence[ChunkResult], label: str, repeat: int = 0) -> list[ChunkResult]:
    """The records of one run and repeat, ordered by chunk; checks that no chunk is missing."""
    rows = sorted((r for r in results if r.label == label and r.repeat == repeat), key=lambda r: r.chunk)
    if [r.chunk for r in rows] != list(range(len(rows))):
        raise RuntimeError(f"chunks of {label!r} are missing or duplicated: {[r.chunk for r in rows]}")
    return rows

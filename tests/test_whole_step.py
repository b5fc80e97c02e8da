"""The whole verify step (forward + guidance + processing + acceptance + drafting + commit) as one
compiled graph: equal to eager token for token, no graph break, no host sync, no recompiles."""

from __future__ import annotations

import contextlib
import copy
import importlib
import time

import pytest
import torch

import mmaccel
from mmaccel import compiled

from .conftest import tiny_lm
from .test_generate_image import PROMPTS
from .test_generate_image import pipeline as pipeline  # noqa: F401 - the small t2i fixture

engine = importlib.import_module("mmaccel.generate")  # the module (mmaccel.generate is the function)

# every method, with options that exercise each drafter and acceptor path
METHODS = [
    ("ar", {}),
    ("jacobi", {"window": 3}),
    ("sjd", {"window": 4}),
    ("sjd-coupled", {"window": 4, "init": "vertical"}),
    ("lantern", {"window": 4, "lantern_k": 3, "lantern_rule": "bounded", "lantern_delta": 0.2}),
    ("lantern", {"window": 4, "lantern_k": 3, "lantern_rule": "paper", "lantern_delta": 0.5}),
    ("zipar", {"zipar_window": 2}),
    ("zipar+sjd", {"zipar_window": 3, "window": 2, "init": "vertical"}),
    ("zipar+lantern", {"zipar_window": 3, "window": 2, "lantern_k": 3, "lantern_rule": "paper"}),
]


def graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.mark.parametrize(("method", "options"), METHODS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS)])
def test_compiled_whole_step_equals_eager_in_one_graph_reused_for_the_next_image(pipeline, method, options):  # noqa: F811
    kw = dict(seed=5, guidance_scale=2.0, temperature=1.0, return_output=True, **options)
    eager = mmaccel.generate_image(PROMPTS, method, model=pipeline, compile="eager", **kw)
    before = graphs()
    compiled_out = mmaccel.generate_image(PROMPTS, method, model=pipeline, compile="compile", **kw)
    assert torch.equal(compiled_out.tokens, eager.tokens)
    assert compiled_out.num_forward_passes == eager.num_forward_passes
    assert torch.equal(
        compiled_out.generate_output.token_forward_index, eager.generate_output.token_forward_index
    )
    assert graphs() - before == 1, "the whole step must be one graph (fullgraph) compiled once"
    # the next image: other prompts, another seed, a new condition binding - same graph
    again = mmaccel.generate_image(
        PROMPTS[::-1], method, model=pipeline, compile="compile", **{**kw, "seed": 6}
    )
    assert graphs() - before == 1, "a second image of the same shape recompiled the step"
    assert again.tokens.shape == eager.tokens.shape


@contextlib.contextmanager
def no_host_sync():
    """Any host sync on a tensor raises while active."""

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"host sync inside the step: Tensor.{name}")

        return method

    names = ("item", "tolist", "__bool__", "nonzero", "__int__", "__float__", "__index__")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    try:
        for n in names:
            setattr(torch.Tensor, n, refuse(n))
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize(("method", "options"), METHODS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS)])
def test_the_step_never_syncs_with_the_host(pipeline, method, options, monkeypatch):  # noqa: F811
    calls = []

    def guarded(fn):
        def step(*args):
            calls.append(1)
            with no_host_sync():
                return fn(*args)

        step.__name__ = fn.__name__
        return step

    monkeypatch.setattr(engine, "verify_step", guarded(engine.verify_step))
    monkeypatch.setattr(engine, "zipar_step", guarded(engine.zipar_step))
    mmaccel.generate_image(PROMPTS, method, model=pipeline, compile="eager", seed=1, **options)
    assert calls, "the guarded step never ran"


def test_the_guard_catches_a_sync():
    with no_host_sync(), pytest.raises(AssertionError, match="Tensor.item"):
        torch.ones(1).item()


def test_auto_compiles_a_kind_only_after_it_has_run_eagerly_for_the_compile_time(monkeypatch):
    monkeypatch.setattr(compiled, "_EAGER_S", {})
    kind = ("verify_step", "test")
    assert compiled.resolve_mode("auto", "cpu", kind) == "eager"
    compiled.record_eager(kind, compiled.COMPILE_AFTER_S / 2, 100)
    assert compiled.resolve_mode("auto", "cpu", kind) == "eager"
    compiled.record_eager(kind, compiled.COMPILE_AFTER_S / 2, 100)
    assert compiled.resolve_mode("auto", "cpu", kind) == "compile"
    assert compiled.resolve_mode("auto", "cuda", kind) == "cudagraph"
    assert compiled.resolve_mode("eager", "cpu", kind) == "eager"
    with pytest.raises(ValueError, match="compile must be one of"):
        compiled.resolve_mode("jit", "cpu")


@pytest.mark.parametrize(("compiled_s", "kept"), [(10.0, True), (40.0, False)])
def test_auto_keeps_a_compiled_step_only_if_it_was_timed_faster_than_eager(monkeypatch, compiled_s, kept):
    for table in ("_EAGER_S", "_COMPILED"):
        monkeypatch.setattr(compiled, table, {})
    for table in ("_SLOWER", "_KEPT"):
        monkeypatch.setattr(compiled, table, set())
    kind = ("verify_step", "timed")
    compiled.record_eager(kind, compiled.COMPILE_AFTER_S, 100)  # 0.3 s per step eagerly
    assert compiled.resolve_mode("auto", "cpu", kind) == "compile"
    compiled.record_compiled(kind, compiled_s, 100)  # 0.1 s or 0.4 s per step compiled
    assert compiled.resolve_mode("auto", "cpu", kind) == ("compile" if kept else "eager")
    compiled.record_compiled(kind, 1.0 if not kept else 100.0, 100)  # decided once
    assert compiled.resolve_mode("auto", "cpu", kind) == ("compile" if kept else "eager")


def test_auto_compiles_only_where_it_helps_end_to_end(monkeypatch):
    """A step whose compiled calls are slow (simulated) goes back to eager after one timed call."""
    for table in ("_EAGER_S", "_COMPILED"):
        monkeypatch.setattr(compiled, table, {})
    for table in ("_SLOWER", "_KEPT", "_RAN"):
        monkeypatch.setattr(compiled, table, set())
    monkeypatch.setattr(compiled, "COMPILE_AFTER_S", 1e-9)  # compile from the second call

    def slow_compile(fn, kind):
        def run(*args):
            time.sleep(0.002)  # every compiled step: 2 ms slower than eager
            return fn(*args)

        compiled._COMPILED[kind] = run
        return run

    monkeypatch.setattr(compiled, "compiled_for", slow_compile)
    model, ids = tiny_lm(vocab=16), torch.tensor([[1, 2, 3]])
    modes = []
    for _ in range(4):
        out = mmaccel.generate(model, ids, "ar", max_new_tokens=12, seed=0, compile="auto")
        modes.append(out.sequences)
    assert all(torch.equal(m, modes[0]) for m in modes)
    assert len(compiled._SLOWER) == 1 and not compiled._KEPT


def test_auto_runs_eagerly_where_the_compiler_refuses_the_step(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("graph break")

    monkeypatch.setattr(compiled, "compiled_for", lambda fn, kind: broken)
    monkeypatch.setattr(compiled, "_FAILED", set())
    step = compiled.CompiledStep(lambda x: x + 1, [(1, 1)], "compile", kind="k", fallback=True)
    assert torch.equal(step(torch.zeros(1, 1)), torch.ones(1, 1))
    assert "running it eagerly" in caplog.text and compiled.resolve_mode("auto", "cpu", "k") == "eager"
    strict = compiled.CompiledStep(lambda x: x + 1, [(1, 1)], "compile", kind="k2")
    with pytest.raises(RuntimeError, match="graph break"):
        strict(torch.zeros(1, 1))


@pytest.mark.cuda
@pytest.mark.parametrize(("method", "options"), METHODS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS)])
def test_cuda_graph_of_the_whole_step_equals_eager_on_gpu(pipeline, method, options):  # noqa: F811
    pipeline = copy.deepcopy(pipeline)  # the module's fixture stays on the CPU
    pipeline.t2i.cuda(), pipeline.vq.cuda()
    pipeline.codebook = pipeline.codebook.cuda()
    kw = dict(seed=5, guidance_scale=2.0, temperature=1.0, return_output=True, **options)
    eager = mmaccel.generate_image(PROMPTS, method, model=pipeline, compile="eager", **kw)
    graph = mmaccel.generate_image(PROMPTS, method, model=pipeline, compile="cudagraph", **kw)
    assert torch.equal(graph.tokens, eager.tokens)
    assert graph.num_forward_passes == eager.num_forward_passes

"""``mmaccel eval compare``: chunk seeding, sharding invariance, agreement with ``eval latency``,
the written outputs, and one- vs two-process runs under ``accelerate launch`` on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmaccel.eval.benchmarks import load_benchmark
from mmaccel.eval.common import MethodSpec
from mmaccel.eval.compare import compare, score_folder, write_outputs
from mmaccel.eval.latency import measure_latency
from mmaccel.eval.runner import chunk_seed, make_runs, plan_chunks, run_chunks, shard
from mmaccel.eval.summary import fd_reference, image_digest

from .test_generate_image import pipeline  # noqa: F401  (fixture)

METHODS = [MethodSpec("sjd", {"window": 4})]


@pytest.fixture(scope="module")
def prompts():
    return load_benchmark("shapes-t2i").prompts(6)


def test_chunks_cover_the_prompts_and_shards_partition_them():
    chunks = plan_chunks(10, 4)
    assert [(c.start, c.stop) for c in chunks] == [(0, 4), (4, 8), (8, 10)]
    for world in (1, 2, 3, 5):
        shards = [shard(chunks, r, world) for r in range(world)]
        assert sorted(c.index for s in shards for c in s) == [0, 1, 2]
    seeds = {chunk_seed(s, c.start) for s in range(3) for c in chunks}
    assert len(seeds) == 9  # no two (seed, chunk) pairs share a generator seed
    with pytest.raises(ValueError, match="batch >= 1"):
        plan_chunks(10, 0)


def test_make_runs_puts_ar_first_and_rejects_duplicates():
    assert [r.label for r in make_runs(METHODS, noise_floor=True)] == [
        "ar",
        "sjd:window=4",
        "ar (other seeds)",
    ]
    with pytest.raises(ValueError, match="listed twice"):
        make_runs([MethodSpec("sjd"), MethodSpec("sjd")])


def test_results_do_not_depend_on_the_number_of_processes(pipeline, prompts):  # noqa: F811
    runs, chunks = make_runs(METHODS), plan_chunks(len(prompts), 2)
    kw = dict(model=pipeline, seed=3, warmup=False, progress=False)
    one = run_chunks(runs, prompts, chunks, **kw)
    two = [r for rank in (1, 0) for r in run_chunks(runs, prompts, shard(chunks, rank, 2), **kw)]
    key = lambda r: (r.label, r.chunk)  # what gather_results sorts by
    assert [key(r) for r in sorted(one, key=key)] == [key(r) for r in sorted(two, key=key)]
    for a, b in zip(sorted(one, key=key), sorted(two, key=key), strict=True):
        assert a.forward_passes == b.forward_passes and image_digest(a.images) == image_digest(b.images)


def test_a_run_with_window_auto_keeps_the_window_of_its_first_call(pipeline, prompts, monkeypatch):  # noqa: F811
    from mmaccel import window

    answers = iter([3, 5, 7, 9, 11])  # a choice that would change with every call
    monkeypatch.setattr(window, "choose", lambda *a, **k: next(answers))
    runs, chunks = (
        make_runs([MethodSpec("sjd"), MethodSpec("sjd", {"window": 2})]),
        plan_chunks(len(prompts), 2),
    )
    results = run_chunks(
        runs, prompts, chunks, model=pipeline, seed=3, warmup=False, repeats=2, progress=False
    )
    auto = [r.config for r in results if r.label == "sjd"]
    assert len(auto) == 2 * len(chunks) and all("window=3," in c for c in auto)  # the first call's choice
    assert all("window=2," in r.config for r in results if r.label == "sjd:window=2")


def test_best_runs_each_method_in_the_faster_mode_timed_after_warm_up(pipeline, prompts, monkeypatch):  # noqa: F811
    import types

    from mmaccel import images

    real = images.generate_image
    calls = []

    def timed(*args, compile, **kw):  # ar is faster compiled, sjd eagerly (made up)
        out = real(*args, compile="eager", **kw)
        calls.append((args[1], compile))
        slow = (args[1] == "ar") == (compile == "eager")
        return types.SimpleNamespace(**{**vars(out), "latency_s": 2.0 if slow else 1.0})

    monkeypatch.setattr(images, "generate_image", timed)
    runs, chunks = make_runs([MethodSpec("sjd", {"window": 2})]), plan_chunks(len(prompts), 2)
    results = run_chunks(runs, prompts, chunks, model=pipeline, seed=3, compile="best", progress=False)
    modes = {r.label: r.config.rsplit("compile=", 1)[1] for r in results}
    assert modes == {"ar": "compile", "sjd:window=2": "eager"}
    timed_calls = calls[len(runs) : 4 * len(runs)]  # after the warm-up: eager, compile (compiling), compile
    assert sorted(timed_calls) == sorted(
        (r.spec.name, m) for r in runs for m in ("eager", "compile", "compile")
    )


def test_compare_agrees_with_latency(pipeline, prompts):  # noqa: F811
    comp = compare(METHODS, prompts, batch=2, seed=1, model=pipeline, metrics=("speed", "accuracy"),
                   warmup=False, progress=False)  # fmt: skip
    rows = measure_latency(
        METHODS, prompts, model=pipeline, repeats=2, seed=1, batch=2, progress=False, warmup=False
    )
    assert list(comp.summary) == [r.method for r in rows] == ["ar", "sjd:window=4"]
    for row in rows:
        s = comp.summary[row.method]
        assert s["forward_passes_per_prompt"] == row.forward_passes_per_prompt
        assert s["nfe_median"] == row.forward_passes and s["tokens_per_forward"] == row.tokens_per_forward
    assert (
        comp.summary["ar"]["nfe_ratio_vs_ar"] == 1.0 and comp.summary["sjd:window=4"]["nfe_ratio_vs_ar"] < 1
    )


def test_outputs_and_folder_scoring(pipeline, prompts, tmp_path):  # noqa: F811
    ref = fd_reference(real=16, stats_path=tmp_path / "ref.pt")
    comp = compare(METHODS, prompts, batch=3, model=pipeline, fd_ref=ref, noise_floor=True, warmup=False,
                   progress=False)  # fmt: skip
    written = write_outputs(comp, tmp_path / "out", grid_images=4, save_images=True)
    names = {p.name for p in written}
    assert {
        "results.md",
        "results.json",
        "speed_quality.png",
        "accepted_histogram.png",
        "samples_ar.png",
    } <= names
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["prompts"] == prompts and set(data["summary"]) == {"ar", "sjd:window=4", "ar (other seeds)"}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "FD-ShapesNet" in md and "NFE vs ar" in md and "`sjd:window=4`" in md
    sjd = comp.summary["sjd:window=4"]
    folder = score_folder(tmp_path / "out" / "images" / "sjd_window=4", ("accuracy", "fd"), ref)
    assert folder["images"] == len(prompts) and folder["accuracy"] == sjd["accuracy"]
    assert folder["fd_shapesnet"] == pytest.approx(sjd["fd_shapesnet"], rel=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compare_cli(out: Path, stats: Path, processes: int) -> dict:
    # a pinned window: with window="auto" each run chooses from its own timings (one window per run)
    args = ["-m", "mmaccel.eval", "compare", "--methods", "ar,sjd:window=8", "--prompts", "8", "--batch", "4", "--real", "64",
            "--real-stats", str(stats), "--no-warmup", "--grid", "0", "--cpu", "--compile", "eager",
            "--out", str(out)]  # fmt: skip
    if processes > 1:  # `--cpu` in accelerate 1.x starts one process unless mpirun is set up; --multi_gpu
        # starts N through torch elastic, and our --cpu keeps them on the CPU (gloo)
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(_free_port())]  # fmt: skip
        cmd = launch + args
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_two_processes_equal_one_process(tmp_path):
    """Default model, 8 prompts, ar and sjd, 64 real images: same images, FD, accuracy, NFE."""
    one = _compare_cli(tmp_path / "one", tmp_path / "ref.pt", 1)
    two = _compare_cli(tmp_path / "two", tmp_path / "ref.pt", 2)  # reads the statistics the first run cached
    assert (one["meta"]["processes"], two["meta"]["processes"]) == (1, 2)
    assert one["prompts"] == two["prompts"] and list(one["summary"]) == ["ar", "sjd:window=8"]
    keys = ("images_sha1", "fd_shapesnet", "accuracy", "forward_passes_per_prompt", "accepted_histogram")
    for label, a in one["summary"].items():
        b = two["summary"][label]
        differ = {k: (a[k], b[k]) for k in keys if a[k] != b[k]}
        assert not differ, f"{label}: one process vs two differ in {differ}"

"""Benchmarks are plug-ins: ``mmaccel eval`` drives any registered benchmark and imports no family.

A second, minimal benchmark is defined here (its own prompts, a tiny accuracy checker, a tiny
feature network and real images), registered in-process, and run through the public command
entry points; a fresh interpreter checks that ``mmaccel.eval`` pulls in no model family.
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mmaccel.images
from mmaccel.eval import compare as compare_cli
from mmaccel.eval import latency as latency_cli
from mmaccel.eval.benchmarks import (
    AccuracyColumn,
    Benchmark,
    FeatureNet,
    available_benchmarks,
    load_benchmark,
    register_benchmark,
    unregister_benchmark,
)
from mmaccel.images import ConditionedPrompts

NAME, BARE = "tiny-test-bench", "tiny-bare-bench"
PROMPTS = ("a small red square at the top on a black background",
           "a large white circle at the center on a blue background",
           "a small green triangle at the bottom left on a yellow background")  # fmt: skip
PALETTE_KC = np.array([(220, 40, 40), (40, 170, 60), (40, 80, 220), (240, 220, 40), (140, 60, 180),
                       (245, 140, 30), (240, 240, 240), (25, 25, 25)], dtype=np.uint8)  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


def prompt_set(n: int, seed: int) -> list[str]:
    """The test prompts, cycled and rotated by ``seed``."""
    return [PROMPTS[(seed + i) % len(PROMPTS)] for i in range(n)]


def wide_accuracy(images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, float]:
    """A tiny checker: an image is 'right' when it is at least as wide as it is tall."""
    wide = [im.width >= im.height for im in images]
    return {"accuracy": float(np.mean(wide)), "wide": float(np.mean(wide)), "n": float(len(images)),
            "distinct_prompts": float(len(set(prompts)))}  # fmt: skip


class MeanColour(nn.Module):
    """Features = per-channel mean and max of the image."""

    def forward(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        return torch.cat([images_NCHW.mean((2, 3)), images_NCHW.amax((2, 3))], 1)


def flat_images(n: int, seed: int) -> list[Image.Image]:
    """Real images: flat 64x64 squares of palette colours plus a little noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base_HWC = np.broadcast_to(PALETTE_KC[rng.integers(len(PALETTE_KC))], (64, 64, 3)).astype(np.int16)
        out.append(
            Image.fromarray((base_HWC + rng.integers(-20, 21, (64, 64, 3))).clip(0, 255).astype(np.uint8))
        )
    return out


def tiny_benchmark(model: str = "shapes-t2i", name: str = NAME) -> Benchmark:
    return Benchmark(name=name, model=model, prompt_set=prompt_set, accuracy=wide_accuracy,
                     accuracy_columns=(AccuracyColumn("tiny acc", "accuracy"), AccuracyColumn("wide share", "wide", "n")),
                     feature_net=FeatureNet("MeanColour", MeanColour), real_images=flat_images)  # fmt: skip


@pytest.fixture(scope="module")
def registered():
    register_benchmark(NAME, tiny_benchmark)
    register_benchmark(BARE, lambda: Benchmark(name=BARE, model="shapes-t2i", prompt_set=prompt_set))
    yield
    unregister_benchmark(NAME)
    unregister_benchmark(BARE)


@pytest.fixture
def generated_prompts(monkeypatch):
    """Every prompt list that reaches ``generate_image`` during the test."""
    seen: list[list[str]] = []
    original = mmaccel.images.generate_image

    def recording(prompt, *args, **kwargs):
        seen.append(list(prompt))
        return original(prompt, *args, **kwargs)

    monkeypatch.setattr(mmaccel.images, "generate_image", recording)
    return seen


def test_the_installed_benchmark_comes_through_its_entry_point(registered):
    assert {"shapes-t2i", NAME, BARE} <= set(available_benchmarks())
    shapes = load_benchmark("shapes-t2i")
    assert shapes.model == "shapes-t2i" and set(shapes.metrics) == {"speed", "accuracy", "fd"}
    assert [c.header for c in shapes.accuracy_columns] == ["acc 1-obj", "acc 2-obj", "acc all"]
    assert shapes.extractors == ("shapesnet", "inception")
    assert shapes.prompts(3, 0) == shapes.prompts(3, 0) and len(set(shapes.prompts(3, 0))) == 3
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark("shapes-t2i", tiny_benchmark)
    with pytest.raises(ValueError, match=f"unknown benchmark 'nope'; available benchmarks: .*{NAME}"):
        load_benchmark("nope")


def test_latency_runs_on_the_registered_benchmark(registered, generated_prompts, capsys):
    assert latency_cli.main(["--benchmark", NAME, "--methods", "ar", "--prompts", "2", "--batch", "2",
                             "--repeats", "1", "--no-warmup", "--prompt-seed", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"benchmark {NAME}, model shapes-t2i, 2 prompts (prompt seed 1)" in out and "| ar |" in out
    assert generated_prompts == [prompt_set(2, 1)]


def test_compare_scores_with_the_benchmarks_checker_and_fd(registered, generated_prompts, tmp_path, capsys):
    out = tmp_path / "out"
    assert compare_cli.main(["--benchmark", NAME, "--methods", "ar", "--prompts", "2", "--batch", "2",
                             "--no-warmup", "--grid", "0", "--cpu", "--real", "6",
                             "--real-stats", str(tmp_path / "real.pt"), "--out", str(out)]) == 0  # fmt: skip
    assert generated_prompts == [prompt_set(2, 0)]
    data = json.loads((out / "results.json").read_text())
    assert data["prompts"] == prompt_set(2, 0) and data["meta"]["benchmark"] == NAME
    assert data["meta"]["model"] == "shapes-t2i" and data["meta"]["fd"]["extractor"] == "MeanColour"
    ar = data["summary"]["ar"]
    assert ar["accuracy"] == ar["wide"] == 1.0 and ar["n"] == 2.0 and ar["distinct_prompts"] == 2.0
    assert ar["fd_extractor"] == "MeanColour" and math.isfinite(ar["fd_meancolour"])
    assert "accuracy_one_object" not in ar  # nothing of Shapes-T2I's checker
    md = (out / "results.md").read_text()
    assert "| method | tiny acc | wide share | FD-MeanColour |" in md and "acc 1-obj" not in md
    assert "1.000 ± " in md and "95% binomial interval" in md
    assert md in capsys.readouterr().out
    assert (tmp_path / "real.pt").exists()  # the real images' statistics were cached where asked


def test_fd_cache_name_carries_the_benchmark(registered):
    from mmaccel.eval.summary import fd_reference

    ref = fd_reference(NAME, real=5, real_seed=3)
    assert ref.stats_path.name.startswith(f"fd_{NAME}_MeanColour_") and ref.stats_path.name.endswith(
        "_real5_seed3.pt"
    )
    assert fd_reference("shapes-t2i", real=7).stats_path.name.startswith("fd_shapes-t2i_ShapesNet_")
    with pytest.raises(ValueError, match=f"unknown feature extractor 'shapesnet' for benchmark '{NAME}'"):
        fd_reference(NAME, "shapesnet")


@pytest.mark.parametrize("command", ["latency", "compare"])
def test_unknown_benchmark_is_a_clear_error(registered, command, capsys):
    main = {"latency": latency_cli.main, "compare": compare_cli.main}[command]
    assert main(["--benchmark", "no-such-bench", "--prompts", "2"]) == 2
    err = capsys.readouterr().err
    assert f"mmaccel eval {command}: error: unknown benchmark 'no-such-bench'" in err and NAME in err


@pytest.mark.parametrize(
    ("command", "missing"), [("fid", "real images"), ("accuracy", "prompt-accuracy checker")]
)
def test_a_metric_the_benchmark_lacks_is_a_clear_error(registered, command, missing, capsys):
    main = {"fid": compare_cli.main_fid, "accuracy": compare_cli.main_accuracy}[command]
    assert main(["--benchmark", BARE, "--prompts", "2"]) == 2
    assert f"benchmark '{BARE}' has no {missing}" in capsys.readouterr().err


# --- mmaccel.eval imports no family -------------------------------------------------------

FAMILIES = ("mmaccel.image_ar", "mmaccel.speech", "image_ar", "speech", "demos")


def is_family(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FAMILIES)


def family_imports(folder: Path) -> list[str]:
    """Every import (anywhere, also inside functions) of ``folder/*.py`` naming a family, and
    every string that is a family's module name (``importlib.import_module`` and the like)."""
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            hits = [n for n in names if is_family(n)]
            if hits:
                found.append(f"{path.name}:{node.lineno} {hits[0]}")
    return found


def test_eval_sources_import_no_family():
    assert family_imports(ROOT / "mmaccel" / "eval") == []


class ColourModel:
    """A family-free image model: a TinyLM writes 4 tokens, each the colour of one cell of 2x2."""

    name, num_image_tokens, default_guidance, default_temperature = "colour-grid", 4, 1.0, 1.0

    def __init__(self) -> None:
        from mmaccel.tiny_lm import TinyLM, TinyLMConfig

        torch.manual_seed(0)
        self.lm = TinyLM(TinyLMConfig(vocab_size=len(PALETTE_KC))).eval()

    def condition(self, prompts: list[str], guidance: bool) -> ConditionedPrompts:
        ids_BL = torch.tensor(
            [[sum(map(ord, p)) % len(PALETTE_KC), len(p) % len(PALETTE_KC)] for p in prompts]
        )
        return ConditionedPrompts(self.lm, ids_BL, ids_BL if guidance else None)

    def decode(self, tokens_BN: torch.Tensor) -> list[Image.Image]:
        grids_B22C = PALETTE_KC[tokens_BN.view(-1, 2, 2).cpu().numpy()]
        return [Image.fromarray(g).resize((16, 16), Image.Resampling.NEAREST) for g in grids_B22C]


def family_free_run(out: Path) -> None:
    """Import every ``mmaccel.eval`` module and the CLI, then compare, time and score a folder on
    a family-free model and benchmark; fail when a family module got imported on the way."""
    import importlib
    import pkgutil

    import mmaccel.eval
    from mmaccel.eval.common import MethodSpec

    for info in pkgutil.iter_modules(mmaccel.eval.__path__):
        if info.name != "__main__":  # it runs the dispatcher
            importlib.import_module(f"mmaccel.eval.{info.name}")
    importlib.import_module("mmaccel.cli")
    from mmaccel.eval.compare import compare, score_folder, write_outputs
    from mmaccel.eval.latency import measure_latency
    from mmaccel.eval.summary import fd_reference

    bench = tiny_benchmark(model="colour-grid")
    model, methods, prompts = ColourModel(), [MethodSpec("sjd", {"window": 2})], bench.prompts(4)
    ref = fd_reference(bench, real=6, stats_path=out / "real.pt")
    comp = compare(
        methods, prompts, batch=2, model=model, benchmark=bench, fd_ref=ref, warmup=False, progress=False
    )
    write_outputs(comp, out, grid_images=2, save_images=True)
    measure_latency(methods, prompts, model=model, repeats=1, batch=2, progress=False, warmup=False)
    score_folder(out / "images" / "ar", ("accuracy", "fd"), ref, benchmark=bench)
    loaded = sorted(m for m in sys.modules if is_family(m))
    assert not loaded, f"mmaccel.eval imported a model family: {loaded}"


def test_eval_runs_without_importing_a_family(tmp_path):
    code = f"from tests.test_eval_benchmarks import family_free_run; family_free_run(__import__('pathlib').Path({str(tmp_path)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["benchmark"] == NAME

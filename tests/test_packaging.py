"""The distribution claims one import name, and nothing in a checkout shadows another one.

The card's folders ``image_ar/``, ``speech/`` and ``kernels/`` are imported as
``mmaccel.image_ar``, ``mmaccel.speech`` and ``mmaccel.kernels``. A top-level ``kernels/`` package
in the checkout once shadowed Hugging Face's ``kernels`` library, which ``transformers`` imports,
and broke every Hugging Face model forward run from the repository root: these tests run the
imports the way a user's script from the checkout would (a fresh interpreter whose first
``sys.path`` entry is the repository root).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("image_ar", "speech", "kernels")


def run_python(code: str, cwd: Path, python: str = sys.executable, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)  # fmt: skip


def test_from_the_repository_root_kernels_is_hugging_faces_and_a_llama_forward_works():
    pytest.importorskip("kernels", reason="Hugging Face's kernels library (the dev extra) is not installed")
    code = f"""
import sys
assert sys.path[0] in ("", {str(ROOT)!r}), sys.path[:2]   # the checkout comes first, as for a user's script
import kernels
assert "site-packages" in kernels.__file__, kernels.__file__
assert not kernels.__file__.startswith({str(ROOT / "kernels")!r})
import torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
logits = LlamaForCausalLM(cfg).eval()(torch.tensor([[1, 2, 3]])).logits
assert logits.shape == (1, 3, 32), logits.shape
print("ok", kernels.__file__)
"""
    done = run_python(code, ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ")


def test_no_folder_of_the_checkout_is_a_regular_package_under_a_bare_name():
    # A namespace portion (a folder without __init__.py) never wins over another distribution's
    # regular package of the same name; a regular package at the top of the checkout would.
    code = f"""
import importlib.util
for name in {FOLDERS!r}:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin not in (None, "namespace"):
        assert not spec.origin.startswith({str(ROOT)!r} + "/" + name + "/"), (name, spec.origin)
import mmaccel.image_ar.shapes, mmaccel.kernels, mmaccel.speech
print("ok")
"""
    done = run_python(code, ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in FOLDERS:
        assert not (ROOT / name / "__init__.py").exists(), (
            f"{name}/__init__.py makes a bare {name!r} importable"
        )


def test_the_installed_distribution_maps_only_mmaccel():
    owned = {top for top, dists in importlib.metadata.packages_distributions().items() if "mmaccel" in dists}
    assert owned == {"mmaccel"}


def test_entry_points_name_modules_under_mmaccel():
    dist = importlib.metadata.distribution("mmaccel")
    assert dist.entry_points, "mmaccel declares no entry points"
    for ep in dist.entry_points:
        assert ep.value.split(":")[0].split(".")[0] == "mmaccel", ep


def build_wheel(tmp: Path) -> Path:
    """``pip wheel`` of a copy of the checkout's files (tracked and new, not ignored): building in
    the checkout itself would reuse a stale ``build/`` folder."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell which files belong to the source tree")
    src = tmp / "src"
    for name in filter(None, listed.stdout.decode().split("\0")):
        if not os.path.lexists(ROOT / name):  # deleted in the work tree, not yet in git
            continue
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name, follow_symlinks=False)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("mmaccel-*.whl")
    return wheel


def test_the_wheel_holds_one_top_level_package_with_the_shipped_weights(tmp_path):
    wheel = zipfile.ZipFile(build_wheel(tmp_path))
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mmaccel"}
    for needed in ("mmaccel/image_ar/default_model.py", "mmaccel/image_ar/weights/shapes_t2i.safetensors",
                   "mmaccel/image_ar/weights/vq_tiny.safetensors", "mmaccel/image_ar/weights/shapes_t2i.json",
                   "mmaccel/image_ar/llamagen/gpt.py", "mmaccel/eval/compare.py"):  # fmt: skip
        assert needed in names, f"{needed} is missing from the wheel"
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert wheel.read(top_level).decode().split() == ["mmaccel"]


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_generates_an_image_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for args in (["-r", str(ROOT / "requirements.lock")], ["--no-deps", str(wheel)]):
        done = subprocess.run(pip + args, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run([str(env_dir / "bin" / "mmaccel"), "generate-image", "a small white square at the center on a black background",
                           "--method", "sjd", "--seed", "0", "--out", "x.png"],
                          cwd=work, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"saved {work / 'x.png'}" in done.stdout, done.stdout
    from PIL import Image

    assert Image.open(work / "x.png").size[0] >= 64
    where = run_python(
        "import mmaccel; print(mmaccel.__file__)", work, python=str(env_dir / "bin" / "python")
    )
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout, where.stdout

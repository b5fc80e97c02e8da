"""The ``fashion-mnist`` benchmark plug-in: found by name, balanced prompts, real test images,
class consistency by the shipped classifier, and FashionNet as an FD feature network."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from mmaccel.eval.benchmarks import AccuracyColumn, load_benchmark
from mmaccel.image_ar.fashion import benchmark, data
from mmaccel.image_ar.fashion.classifier import WEIGHTS
from mmaccel.image_ar.fashion.data import CLASS_NAMES, class_index
from tests.test_fashion_data import write_fake_dataset

try:
    data.data_dir()  # where the benchmark reads from ($MMACCEL_FASHION_MNIST_DIR or the package)
    HAVE_DATA = True
except FileNotFoundError:
    HAVE_DATA = False
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
)
needs_weights = pytest.mark.skipif(not WEIGHTS.exists(), reason=f"no trained classifier at {WEIGHTS}")


def test_the_entry_point_loads_the_benchmark():
    bench = load_benchmark("fashion-mnist")
    assert bench.name == "fashion-mnist" and bench.model == "fashion-var"
    assert bench.accuracy_columns == (AccuracyColumn("class consistency", "accuracy", "n"),)
    assert bench.metrics == ("speed", "accuracy", "fd")
    assert bench.extractors == ("fashionnet", "inception") and bench.feature_net.name == "FashionNet"
    assert "\n" not in bench.description and "93.31%" in bench.description
    assert bench.prompts(10, 0) == benchmark.class_prompts(10, 0)


def test_prompts_are_balanced_deterministic_and_seeded():
    prompts = benchmark.class_prompts(32, seed=0)
    assert len(prompts) == 32 and all(isinstance(p, str) for p in prompts)
    labels = [class_index(p) for p in prompts]  # every prompt is a class name the models read
    for start in range(0, 30, 10):
        assert sorted(labels[start : start + 10]) == list(range(10))
    assert sorted(Counter(labels).values()) == [3] * 8 + [4] * 2
    assert len(set(labels[30:])) == 2
    assert benchmark.class_prompts(32, seed=0) == prompts
    assert benchmark.class_prompts(7, seed=0) == prompts[:7]  # a shorter list is a prefix
    assert benchmark.class_prompts(32, seed=1) != prompts
    assert benchmark.class_prompts(10, seed=0) != benchmark.class_prompts(10, seed=1)
    assert sorted(benchmark.class_prompts(10, seed=5)) == sorted(CLASS_NAMES)
    assert len({tuple(prompts[s : s + 10]) for s in (0, 10, 20)}) > 1  # not one order repeated


def test_real_images_are_a_seeded_sample_without_replacement(tmp_path, monkeypatch):
    folder = write_fake_dataset(tmp_path / "fm", n_train=10, n_test=20)
    monkeypatch.setenv(data.ENV_DIR, str(folder))
    images = benchmark.real_images(20, seed=3)
    assert len(images) == 20 and all(im.size == (32, 32) and im.mode == "L" for im in images)
    assert len({im.tobytes() for im in images}) == 20  # every test image once
    assert [im.tobytes() for im in benchmark.real_images(5, seed=3)] == [im.tobytes() for im in images[:5]]
    assert [im.tobytes() for im in benchmark.real_images(5, seed=4)] != [im.tobytes() for im in images[:5]]
    with pytest.raises(ValueError, match="20 test images; cannot give 21"):
        benchmark.real_images(21, seed=3)


@needs_data
def test_real_images_come_from_the_test_split():
    images = benchmark.real_images(300, seed=1)
    arrays = np.stack([np.asarray(im) for im in images])
    assert arrays.shape == (300, 32, 32) and not arrays[:, :2].any()  # padded: 2 px of background
    test = data.load_split("test")
    assert any(np.array_equal(arrays[0], im) for im in test.images)
    assert len({a.tobytes() for a in arrays}) == 300
    with pytest.raises(ValueError, match="10000 test images; cannot give 10001"):
        benchmark.real_images(10_001, seed=1)


@needs_weights
def test_the_classifier_is_loaded_once():
    assert benchmark.classifier() is benchmark.classifier()
    assert benchmark.feature_net() is not benchmark.classifier()  # FD may move its copy
    with pytest.raises(ValueError, match="unknown Fashion-MNIST class"):
        benchmark.accuracy([Image.new("L", (32, 32))], ["a red circle"])


@needs_weights
@needs_data
def test_class_consistency_of_real_images():
    test = data.load_split("test")
    images = data.to_pil(test.images[:200])
    right = [CLASS_NAMES[k] for k in test.labels[:200]]
    wrong = [CLASS_NAMES[(k + 3) % 10] for k in test.labels[:200]]
    figures = load_benchmark("fashion-mnist").accuracy(images, right)
    assert figures["accuracy"] >= 0.85 and figures["n"] == 200
    assert "accuracy_ankle boot" in figures
    # RGB images (what an image model returns) are judged like their grayscale originals
    assert benchmark.accuracy([im.convert("RGB") for im in images], right) == figures
    assert benchmark.accuracy(images, wrong)["accuracy"] < 0.1


@needs_weights
@needs_data
def test_fashionnet_as_fd_feature_net():
    pytest.importorskip("torchmetrics")
    from mmaccel.eval.fid import frechet_distance, to_unit_tensor

    bench = load_benchmark("fashion-mnist")
    net = bench.feature_net.load()
    reals = bench.real_images(400, 1)
    x_N3HW = to_unit_tensor(reals[:8])  # exactly what the FD code feeds a feature network
    assert x_N3HW.shape == (8, 3, 32, 32) and 0 <= x_N3HW.min() and x_N3HW.max() <= 1
    with torch.no_grad():
        feats_NF = net(x_N3HW)
    assert feats_NF.shape == (8, net.num_features) and torch.isfinite(feats_NF).all()

    def fd(fake: list[Image.Image]) -> float:
        return frechet_distance(fake, reals[:200], extractor=net, name=bench.feature_net.name).fid

    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(200)]
    blank = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in rng.integers(0, 40, 200)]
    same = fd(reals[200:])
    assert same * 10 < fd(noise) and same * 10 < fd(blank)

"""The Fashion-MNIST classifier: its input contract (FD feature net), training run, shipped weights."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmaccel.image_ar.fashion import data
from mmaccel.image_ar.fashion.classifier import (
    WEIGHTS,
    ClassifierConfig,
    FashionNet,
    class_accuracy,
    load_classifier,
    predict,
)
from mmaccel.image_ar.fashion.train_classifier import TrainConfig, augment, main
from tests.test_fashion_data import needs_package, write_fake_dataset

TINY = {"model": {"widths": [4, 8], "blocks": [1, 1], "features": 8, "dropout": 0.2},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "eval_batch": 16}}  # fmt: skip


def test_forward_takes_what_fd_and_pil_give():
    torch.manual_seed(0)
    net = FashionNet(ClassifierConfig(**TINY["model"])).eval()
    grey_N1HW = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        feats = net(grey_N1HW)
        assert feats.shape == (3, 8) and net.num_features == 8
        # grayscale as RGB with equal channels (what PIL -> to_unit_tensor gives) = the same features
        torch.testing.assert_close(net(grey_N1HW.expand(3, 3, 32, 32)), feats)
        torch.testing.assert_close(net((grey_N1HW * 255).round().to(torch.uint8)), feats, atol=0.05, rtol=0)
        assert net(torch.rand(2, 3, 64, 64)).shape == (2, 8)  # resized (torchmetrics' dummy size)
        assert net.logits(grey_N1HW).shape == (3, 10)
    pil = [Image.fromarray(np.zeros((32, 32), np.uint8)) for _ in range(2)]
    assert predict(net, pil).shape == (2,)
    with pytest.raises(ValueError, match="one count >= 1 per stage"):
        ClassifierConfig(widths=(8, 8), blocks=(1,))


def test_augment_moves_but_never_cuts_a_padded_garment():
    images_NHW = torch.from_numpy(
        data.pad(np.random.default_rng(0).integers(1, 256, (16, 28, 28), dtype=np.uint8))
    )
    g = torch.Generator().manual_seed(0)
    moved = augment(images_NHW, TrainConfig(shift=2, flip=True), g)
    assert moved.shape == images_NHW.shape and moved.dtype == torch.uint8
    # a 2 px shift of an image with a 2 px background border keeps every garment pixel
    assert torch.equal(moved.flatten(1).sum(1), images_NHW.flatten(1).sum(1))
    assert ((moved > 0).flatten(1).sum(1) == 28 * 28).all()
    assert not torch.equal(moved, images_NHW)
    assert torch.equal(augment(images_NHW, TrainConfig(shift=0, flip=False), g), images_NHW)


def test_training_resumes_to_the_same_weights_and_exports(tmp_path, one_thread):
    folder = write_fake_dataset(tmp_path / "fm", n_train=40, n_test=20)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    common = ["--config", str(config), "--data-dir", str(folder), "--threads", "1"]
    once, twice = tmp_path / "once.safetensors", tmp_path / "twice.safetensors"
    main([*common, "--out-dir", str(tmp_path / "a"), "--weights", str(once)])
    main([*common, "--out-dir", str(tmp_path / "b"), "--weights", str(twice), "--max-steps", "3"])
    assert not twice.exists()  # stopped mid-run: checkpoint only
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)["step"] == 3
    main([*common, "--out-dir", str(tmp_path / "b"), "--weights", str(twice)])
    a, b = load_classifier(once), load_classifier(twice)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    record = json.loads(once.with_suffix(".json").read_text())
    assert record["config"] == {
        "model": TINY["model"],
        "train": {**dataclasses.asdict(TrainConfig()), **TINY["train"]},
    }
    assert record["test_n"] == 20 and 0 <= record["test_accuracy"] <= 1
    assert record["data"]["train"] == 40 and "train_classifier" in record["command"]
    assert a.config == ClassifierConfig(**TINY["model"])


def test_missing_weights_name_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        load_classifier(tmp_path / "none.safetensors")


# --- the shipped weights -------------------------------------------------------------------------

needs_weights = pytest.mark.skipif(
    not WEIGHTS.exists(),
    reason=f"no trained classifier at {WEIGHTS} (python -m mmaccel.image_ar.fashion.train_classifier)",
)


@pytest.fixture(scope="module")
def shipped():
    return load_classifier()


@needs_weights
def test_shipped_weights_are_small_fp16_and_recorded():
    from safetensors.torch import load_file

    assert WEIGHTS.stat().st_size < 2_000_000
    assert all(t.dtype == torch.float16 for t in load_file(str(WEIGHTS)).values())
    record = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert record["test_n"] == 10_000 and record["test_accuracy"] >= 0.92
    assert record["file_bytes"] == WEIGHTS.stat().st_size


@needs_weights
@needs_package
def test_shipped_classifier_is_accurate_on_the_first_1000_test_images(shipped):
    test = data.load_split("test", data.DEFAULT_DIR)
    got = predict(shipped, test.images[:1000])
    assert (got.numpy() == test.labels[:1000]).mean() >= 0.9
    # class consistency as a benchmark sees it: PIL images and class names
    pil = data.to_pil(test.images[:200])
    names = [data.CLASS_NAMES[k] for k in test.labels[:200]]
    result = class_accuracy(pil, names, shipped)
    assert result["accuracy"] >= 0.85 and result["n"] == 200 and "accuracy_ankle boot" in result
    wrong = [data.CLASS_NAMES[(k + 1) % 10] for k in test.labels[:200]]
    assert class_accuracy(pil, wrong, shipped)["accuracy"] < 0.1


@needs_weights
@needs_package
def test_shipped_classifier_as_fd_feature_net(shipped, tmp_path):
    pytest.importorskip("torchmetrics")
    from mmaccel.eval.fid import frechet_distance

    test = data.load_split("test", data.DEFAULT_DIR)
    real, other = data.to_pil(test.images[:300]), data.to_pil(test.images[300:600])
    stats = tmp_path / "ref.pt"
    same = frechet_distance(other, real, extractor=shipped, name="FashionNet", real_stats=stats)
    # only trousers: real images, wrong class balance; blurred: right balance, lost detail
    trousers = data.to_pil(test.images[test.labels == 1][:300])
    skewed = frechet_distance(trousers, None, extractor=shipped, name="FashionNet", real_stats=stats)
    blurred = [im.resize((8, 8)).resize((32, 32)) for im in other]
    blurry = frechet_distance(blurred, None, extractor=shipped, name="FashionNet", real_stats=stats)
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)) for _ in range(300)]
    worst = frechet_distance(noise, None, extractor=shipped, name="FashionNet", real_stats=stats)
    assert "FD-FashionNet" in str(same) and skewed.num_real == 300  # read the cached statistics
    assert same.fid * 5 < skewed.fid and same.fid * 5 < blurry.fid < worst.fid


def test_the_recipe_expands_to_the_trainers_configs():
    from mmaccel.image_ar.fashion.train_classifier import CONFIG_KEYS, RECIPE, configs_from_dict
    from mmaccel.image_ar.recipe import expand, read_recipe

    (stage,) = expand(read_recipe(RECIPE), CONFIG_KEYS)
    model_cfg, cfg = configs_from_dict(stage.config)
    assert model_cfg.features == FashionNet(model_cfg).num_features and cfg.epochs >= 1
    assert stage.name == "fashion_classifier"

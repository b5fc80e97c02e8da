"""Training the Fashion-MNIST VAR VQ-VAE: the loss falls, resuming is exact, the export loads in the
official layout, and the shipped weights round-trip test images through the (1..8) token grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmaccel.image_ar.recipe import read_recipe, stage_config
from mmaccel.image_ar.var import VQVAEConfig, load_vqvae
from mmaccel.image_ar.var.fashion_vq import (
    WEIGHTS,
    config_to_dict,
    load_fashion_vqvae,
    read_config,
    reconstruct,
    to_uint8,
)
from mmaccel.image_ar.var.train_vqvae import (
    CHECKPOINT,
    CONFIG_KEYS,
    RECIPE,
    TrainConfig,
    configs_from_dict,
    export,
    main,
    train,
)
from tests.test_fashion_data import needs_package, write_fake_dataset

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8)
TINY_VQ = VQVAEConfig(vocab_size=32, z_channels=4, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, in_channels=1,
                      using_sa=False, using_mid_sa=True, norm_groups=4, patch_nums=PATCH_NUMS)  # fmt: skip
TINY_TRAIN = TrainConfig(steps=4, batch_size=4, lr=3e-3, warmup_steps=1, restart_every=2, dead_after=2,
                         restart_until=1.0, log_every=1, checkpoint_minutes=0.0)  # fmt: skip
# measured on the shipped weights over the 10,000 test images: see image_ar/weights/fashion_vqvae.json
# the shipped weights measured 26.5 dB on the 10,000 test images; per image, textured items go lower
SHIPPED_MEAN_PSNR, SHIPPED_MIN_PSNR = 24.0, 15.0


@pytest.fixture(autouse=True)
def _threads(one_thread):
    """Tiny convolutions: one thread is far faster than two on a busy 2-core machine."""
    yield


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 ``[n, 32, 32]``: random 4x4 grids upsampled (learnable in a few steps, unlike noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 4, 4, generator=g)
    return F.interpolate(low, size=(32, 32), mode="bilinear").squeeze(1).mul(255).round().to(torch.uint8)


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "loss.log").read_text().splitlines()]


def test_a_few_steps_lower_the_loss(tmp_path):
    cfg = TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=2, log_every=1, restart_every=5,
                      dead_after=5, checkpoint_minutes=100.0)  # fmt: skip
    _, record = train(TINY_VQ, cfg, tmp_path, smooth_images(32), progress=False)
    assert record["finished"] and record["step"] == 40
    rec = [m["l2"] + m["l1"] for m in logged(tmp_path)]
    assert all(math.isfinite(m["loss"]) for m in logged(tmp_path))
    assert sum(rec[-5:]) / 5 < 0.5 * sum(rec[:5]) / 5, rec


def test_resume_continues_exactly_and_export_loads(tmp_path):
    images = smooth_images(12)
    _, first = train(TINY_VQ, TINY_TRAIN, tmp_path / "run", images, max_steps=3, progress=False)
    assert first["step"] == 3 and not first["finished"]
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 3
    model, last = train(TINY_VQ, TINY_TRAIN, tmp_path / "run", images, progress=False)
    assert last["finished"] and [m["step"] for m in logged(tmp_path / "run")] == [1, 2, 3, 4]

    # an uninterrupted run ends in the same weights (data order, restarts, optimizer, usage EMA)
    straight, _ = train(TINY_VQ, TINY_TRAIN, tmp_path / "straight", images, progress=False)
    for (name, a), b in zip(model.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    weights = tmp_path / "vq.safetensors"
    export(model, weights, {"command": "test"})
    assert read_config(weights) == TINY_VQ
    assert json.loads(weights.with_suffix(".json").read_text()) == {"command": "test"}
    loaded = load_fashion_vqvae(weights)
    assert not loaded.training
    load_vqvae(weights, TINY_VQ)  # the official-layout loader reads it strictly
    model.half().float()  # what the fp16 file holds
    x_B1HW = images[:2, None].float() / 127.5 - 1
    with torch.no_grad():
        for a, b in zip(loaded.img_to_idxBl(x_B1HW), model.img_to_idxBl(x_B1HW), strict=True):
            assert torch.equal(a, b)


def test_resume_refuses_another_config(tmp_path):
    images = smooth_images(8)
    train(TINY_VQ, TINY_TRAIN, tmp_path, images, max_steps=1, progress=False)
    with pytest.raises(ValueError, match="another config"):
        train(TINY_VQ, TrainConfig(steps=4, batch_size=4, lr=1e-4), tmp_path, images, progress=False)


def test_missing_weights_name_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_vqvae"):
        load_fashion_vqvae(tmp_path / "absent.safetensors")


def test_the_recipe_builds_the_asked_for_model():
    vq_cfg, cfg = configs_from_dict(stage_config(read_recipe(RECIPE), 1, CONFIG_KEYS))
    assert vq_cfg.patch_nums == PATCH_NUMS and vq_cfg.in_channels == 1
    assert vq_cfg.downsample == 4 and vq_cfg.image_size == 32
    assert cfg.steps > 0


def test_main_trains_exports_and_evaluates(tmp_path):
    pytest.importorskip("safetensors")
    if not Path(WEIGHTS.parent / "fashion_classifier.safetensors").exists():
        pytest.skip("the evaluation needs the shipped Fashion classifier")
    write_fake_dataset(tmp_path / "data", n_train=16, n_test=6)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": config_to_dict(TINY_VQ),
                                  "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1}}))  # fmt: skip
    weights = tmp_path / "w" / "vq.safetensors"
    main(["--config", str(config), "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "run"),
          "--weights", str(weights), "--steps", "3", "--eval-n", "5", "--threads", "1"])  # fmt: skip
    record = json.loads(weights.with_suffix(".json").read_text())
    assert record["config"]["train"]["steps"] == 3 and record["test"]["n"] == 5
    assert len(record["test"]["psnr_per_scale"]) == len(PATCH_NUMS)
    for key in (
        "mse",
        "psnr",
        "usage",
        "classifier_accuracy_originals",
        "classifier_accuracy_reconstructions",
    ):
        assert math.isfinite(record["test"][key]), key
    assert "--steps 3" in record["command"] and record["train_seconds"] >= 0


@needs_package
@pytest.mark.skipif(not WEIGHTS.exists(), reason="shipped Fashion VQ-VAE weights not trained yet")
def test_shipped_weights_round_trip_test_images():
    from mmaccel.image_ar.fashion.data import load_split, to_float

    model = load_fashion_vqvae()
    assert model.cfg.patch_nums == PATCH_NUMS and model.cfg.in_channels == 1
    assert WEIGHTS.stat().st_size < 5e6
    images_NHW = load_split("test").images[:16].copy()
    with torch.no_grad():
        idx_list = model.img_to_idxBl(to_float(images_NHW))
        assert [tuple(i.shape) for i in idx_list] == [(16, pn * pn) for pn in PATCH_NUMS]
        assert all(int(i.min()) >= 0 and int(i.max()) < model.cfg.vocab_size for i in idx_list)
        rec_NHW = to_uint8(model.idxBl_to_img(idx_list, last_one=True))
    assert rec_NHW.shape == (16, 32, 32) and torch.equal(rec_NHW, reconstruct(model, images_NHW))
    mse_N = ((rec_NHW.float() - torch.from_numpy(images_NHW.copy()).float()) / 255).pow(2).mean((1, 2))
    psnr_N = -10 * torch.log10(mse_N)
    assert psnr_N.mean().item() > SHIPPED_MEAN_PSNR and psnr_N.min().item() > SHIPPED_MIN_PSNR, psnr_N

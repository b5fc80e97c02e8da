"""VQ training script: resuming is exact, exported weights load in the official layout, and
the shipped tiny tokenizer reconstructs held-out Shapes-T2I images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmaccel.image_ar.llamagen import VQConfig, load_vq
from mmaccel.image_ar.train_vq import CHECKPOINT, TrainConfig, batch, export, load_trained_vq, to_uint8, train

SHIPPED = Path(__file__).parents[1] / "image_ar" / "weights" / "vq_tiny.safetensors"
# measured on the shipped weights: mean PSNR 24.6 dB over 500 test images, min 23.3 dB on the
# first 16 (the background's per-pixel noise caps any 16x16 tokenizer at 25.5 dB mean)
SHIPPED_MIN_PSNR = 22.0

TINY_VQ = VQConfig(
    codebook_size=32,
    codebook_embed_dim=4,
    encoder_ch_mult=(1, 2, 2),
    decoder_ch_mult=(1, 2, 2),
    z_channels=8,
    ch=8,
    num_res_blocks=1,
    norm_groups=4,
)
TINY_TRAIN = TrainConfig(
    steps=3, batch_size=2, warmup_steps=1, ckpt_every=1, log_every=1, restart_every=1, dead_after=1
)


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_resume_continues_exactly_and_export_loads(tmp_path):
    _, first = train(TINY_VQ, TINY_TRAIN, tmp_path / "run", stop_at=2, progress=False)
    assert first["step"] == 2
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 2
    model, last = train(TINY_VQ, TINY_TRAIN, tmp_path / "run", progress=False)
    assert last["step"] == 3
    assert all(math.isfinite(last[k]) for k in ("loss", "rec", "codebook", "commit"))
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "loss.log").read_text().splitlines()]
    assert logged == [1, 2, 3]

    # an uninterrupted run ends in the same weights (data, restarts and optimizer all resume)
    straight, _ = train(TINY_VQ, TINY_TRAIN, tmp_path / "straight", progress=False)
    for (name, a), b in zip(model.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    weights = tmp_path / "vq.safetensors"
    export(model, weights, {"command": "test"})
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["vq_config"]["codebook_size"] == 32 and meta["command"] == "test"
    loaded = load_vq(weights, TINY_VQ)
    model.half().float()  # what the fp16 file holds
    img_BCHW, _ = batch(0, 2, split="test")
    with torch.no_grad():
        assert torch.equal(loaded.encode(img_BCHW), model.encode(img_BCHW))
        assert torch.equal(loaded(img_BCHW)[0], model(img_BCHW)[0])


def test_resume_refuses_another_config(tmp_path):
    train(TINY_VQ, TINY_TRAIN, tmp_path, stop_at=1, progress=False)
    with pytest.raises(ValueError, match="another config"):
        train(TINY_VQ, TrainConfig(steps=3, batch_size=2, lr=5e-4), tmp_path, progress=False)


@pytest.mark.skipif(not SHIPPED.exists(), reason="shipped VQ weights not trained yet")
def test_shipped_vq_reconstructs_test_images():
    model = load_trained_vq(SHIPPED)
    assert model.cfg.codebook_size == 1024 and model.cfg.downsample == 4
    img_BCHW, _ = batch(0, 16, split="test")
    with torch.no_grad():
        idx_BN = model.encode(img_BCHW)
        rec_BHWC = to_uint8(model.decode_codes(idx_BN))
    assert idx_BN.shape == (16, 256)
    mse_B = ((rec_BHWC.float() - to_uint8(img_BCHW).float()) / 255).pow(2).flatten(1).mean(1)
    psnr_B = -10 * torch.log10(mse_B)
    assert psnr_B.min().item() > SHIPPED_MIN_PSNR, psnr_B


def test_tokenizing_from_a_start_index_continues_the_item_sequence():
    from mmaccel.image_ar.tokenize_shapes import tokenize

    model = load_trained_vq(SHIPPED)
    whole, whole_caps = tokenize(model, 5, batch_size=2, progress=False)
    tail, tail_caps = tokenize(model, 2, batch_size=2, progress=False, start=3)
    assert torch.equal(tail, whole[3:]) and tail_caps == whole_caps[3:]
    with pytest.raises(ValueError, match="start=-1"):
        tokenize(model, 2, start=-1)


def test_tokenize_cli_rejects_a_negative_start(capsys):
    from mmaccel.image_ar.tokenize_shapes import main

    with pytest.raises(SystemExit):
        main(["--start", "-3", "--n", "5"])
    assert "--start -3" in capsys.readouterr().err

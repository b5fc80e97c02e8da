"""The MAR KL autoencoder (``mmaccel.image_ar.mar.vae``) and its Fashion trainer, on tiny configs.

The key fixture was written by hand from LTH14/mar ``models/vae.py`` (``Encoder`` / ``Decoder`` /
``AutoencoderKL``) for ``TINY``: two levels (8x8 and 4x4), one ResNet block per encoder level
and two per decoder level, encoder attention at resolution 4, none in the decoder's levels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmaccel.image_ar.mar import train_kl_vae as tkv
from mmaccel.image_ar.mar.vae import (
    KL16,
    AutoencoderKL,
    DiagonalGaussianDistribution,
    KLVAEConfig,
    load_official_kl,
)

TINY = KLVAEConfig(embed_dim=2, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8,
                   in_channels=1, out_ch=1, norm_groups=4)  # fmt: skip

_RES = ("norm1", "conv1", "norm2", "conv2")
_ATTN = ("norm", "q", "k", "v", "proj_out")


def _wb(*modules: str) -> list[str]:
    return [f"{m}.{p}" for m in modules for p in ("weight", "bias")]


def _block(prefix: str, nin: bool = False) -> list[str]:
    return _wb(*(f"{prefix}.{n}" for n in (*_RES, *(("nin_shortcut",) if nin else ()))))


def _attn(prefix: str) -> list[str]:
    return _wb(*(f"{prefix}.{n}" for n in _ATTN))


def _mid(prefix: str) -> list[str]:
    return [
        *_block(f"{prefix}.mid.block_1"),
        *_attn(f"{prefix}.mid.attn_1"),
        *_block(f"{prefix}.mid.block_2"),
    ]


OFFICIAL_TINY_KEYS = {
    *_wb("encoder.conv_in"),
    *_block("encoder.down.0.block.0"),
    *_wb("encoder.down.0.downsample.conv"),
    *_block("encoder.down.1.block.0", nin=True),  # 8 -> 16 channels
    *_attn("encoder.down.1.attn.0"),  # resolution 4 is in attn_resolutions
    *_mid("encoder"),
    *_wb("encoder.norm_out", "encoder.conv_out"),
    *_wb("decoder.conv_in"),
    *_mid("decoder"),
    *_block("decoder.up.1.block.0"),  # coarsest level first built, stored last
    *_block("decoder.up.1.block.1"),
    *_wb("decoder.up.1.upsample.conv"),
    *_block("decoder.up.0.block.0", nin=True),  # 16 -> 8 channels
    *_block("decoder.up.0.block.1"),
    *_wb("decoder.norm_out", "decoder.conv_out"),
    *_wb("quant_conv", "post_quant_conv"),
}


def _model(cfg: KLVAEConfig = TINY, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(cfg).eval()


def test_state_dict_keys_match_official_layout():
    sd = _model().state_dict()
    assert set(sd) == OFFICIAL_TINY_KEYS
    assert sd["encoder.conv_out.weight"].shape == (4, 16, 3, 3)  # double_z: mean | logvar
    assert sd["quant_conv.weight"].shape == (4, 4, 1, 1)
    assert sd["post_quant_conv.weight"].shape == (2, 2, 1, 1)
    assert sd["decoder.conv_in.weight"].shape == (16, 2, 3, 3)
    assert sd["decoder.conv_out.weight"].shape == (1, 8, 3, 3)
    assert sd["encoder.down.1.attn.0.q.weight"].shape == (16, 16, 1, 1)


def test_kl16_preset_size():
    with torch.device("meta"):
        model = AutoencoderKL(KL16)
    # the official AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)) has 66,456,019 parameters
    assert sum(p.numel() for p in model.parameters()) == 66_456_019
    assert KL16.stride == 16 and KL16.latent_size == 16
    assert "encoder.down.4.attn.1.q.weight" in model.state_dict()  # attention at 16x16 only
    assert not any(".attn." in k for k in model.state_dict() if k.startswith("decoder.up"))


def test_encode_decode_shapes():
    model = _model()
    posterior = model.encode(torch.randn(3, 1, 8, 8))
    assert posterior.mean.shape == posterior.std.shape == (3, 2, 4, 4)
    assert model.decode(posterior.sample()).shape == (3, 1, 8, 8)


def test_posterior_sample_mode_kl():
    moments = torch.cat([torch.randn(2, 3, 4, 4), torch.full((2, 3, 4, 4), 50.0)], dim=1)
    post = DiagonalGaussianDistribution(moments)
    assert torch.all(post.logvar == 20.0)  # clamped as official
    a = post.sample(torch.Generator().manual_seed(1))
    b = post.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(post.mode(), moments[:, :3])
    unit = DiagonalGaussianDistribution(torch.zeros(2, 6, 4, 4))
    assert torch.allclose(unit.kl(), torch.zeros(2))
    shifted = DiagonalGaussianDistribution(torch.cat([torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)], 1))
    assert torch.allclose(shifted.kl(), torch.tensor([0.5 * 12]))  # 0.5 * sum(mean^2)


@pytest.mark.parametrize("fmt", ["official_pickle", "safetensors", "state_dict"])
def test_official_layout_round_trip(tmp_path, fmt):
    from safetensors.torch import save_file

    src = _model(seed=3)
    sd = src.state_dict()
    if fmt == "official_pickle":
        path = tmp_path / "kl.ckpt"
        torch.save({"model": sd}, path)  # what the official init_from_ckpt reads: torch.load(path)["model"]
        loaded = load_official_kl(path, TINY)
    elif fmt == "safetensors":
        path = tmp_path / "kl.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        loaded = load_official_kl(path, TINY)
    else:
        loaded = load_official_kl(sd, TINY)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x).mean, src.encode(x).mean)
        z = torch.randn(2, 2, 4, 4)
        assert torch.equal(loaded.decode(z), src.decode(z))


def test_load_names_missing_and_unexpected_keys(tmp_path):
    sd = _model().state_dict()
    del sd["encoder.down.1.attn.0.q.weight"]
    sd["encoder.down.1.attn.0.qkv.weight"] = torch.zeros(48, 16, 1, 1)
    with pytest.raises(ValueError, match=r"missing keys: encoder\.down\.1\.attn\.0\.q\.weight") as err:
        load_official_kl({"model": sd}, TINY)
    assert "unexpected keys: encoder.down.1.attn.0.qkv.weight" in str(err.value)
    with pytest.raises(ValueError, match="misshapen"):
        load_official_kl(_model(KLVAEConfig(**{**TINY.__dict__, "embed_dim": 3})).state_dict(), TINY)


def test_trainer_runs_resumes_and_exports(tmp_path):
    images_NHW = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 8, 8), dtype=np.uint8))
    cfg = tkv.TrainConfig(steps=4, batch_size=4, warmup_steps=1, log_every=2, eval_batch=8)
    _, rec = tkv.train(TINY, cfg, tmp_path / "run", images_NHW, max_steps=2, progress=False)
    assert rec["step"] == 2 and not rec["finished"]
    model, rec = tkv.train(TINY, cfg, tmp_path / "run", images_NHW, progress=False)
    assert rec["step"] == 4 and rec["finished"]
    stats = tkv.latent_stats(model, images_NHW, batch=8)
    assert (
        stats["latent_scale"] == pytest.approx(1 / stats["latent_std_all"]) and len(stats["latent_mean"]) == 2
    )
    path = tmp_path / "w.safetensors"
    tkv.export(model, path, stats, {"name": "t"})
    loaded, stats2 = tkv.load_fashion_kl_vae(path)
    assert loaded.cfg == TINY and stats2["latent_scale"] == pytest.approx(stats["latent_scale"])
    assert json.loads(path.with_suffix(".json").read_text()) == {"name": "t"}
    with pytest.raises(ValueError, match="another config"):
        tkv.train(TINY, tkv.TrainConfig(steps=5, batch_size=4), tmp_path / "run", images_NHW, progress=False)


def test_recipe_builds_the_fashion_config():
    from mmaccel.image_ar.recipe import read_recipe, stage_config

    config = stage_config(read_recipe(tkv.RECIPE), "1", tkv.CONFIG_KEYS)
    vae_cfg, cfg = tkv.configs_from_dict(config)
    assert (
        vae_cfg.stride == 4
        and vae_cfg.latent_size == 8
        and vae_cfg.embed_dim == 4
        and vae_cfg.in_channels == 1
    )
    assert tkv.config_from_dict(tkv.config_to_dict(vae_cfg)) == vae_cfg

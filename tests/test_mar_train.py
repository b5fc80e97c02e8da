"""The Fashion MAR trainer (``mmaccel.image_ar.mar.train_mar``) on tiny models and random latents."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mmaccel.image_ar.mar import train_mar as tm
from mmaccel.image_ar.mar.config import MARConfig
from mmaccel.image_ar.mar.model import build_mar
from mmaccel.image_ar.mar.vae import AutoencoderKL, KLVAEConfig

TINY_VAE = KLVAEConfig(embed_dim=2, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8,
                       in_channels=1, out_ch=1, norm_groups=4)  # fmt: skip
TINY_MAR = MARConfig(img_size=8, vae_stride=2, vae_embed_dim=2, encoder_embed_dim=16, encoder_depth=1,
                     encoder_num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                     class_num=10, buffer_size=2, diffloss_d=1, diffloss_w=16, num_sampling_steps="5",
                     attn_dropout=0.0, proj_dropout=0.0)  # fmt: skip


def test_presets_sizes_and_cost_ratio():
    target, _ = tm.configs_from_dict(tm.preset_config("target"))
    draft, _ = tm.configs_from_dict(tm.preset_config("draft"))
    for cfg in (target, draft):
        assert (
            cfg.seq_len == 64 and cfg.token_embed_dim == 4 and cfg.class_num == 10 and cfg.buffer_size == 16
        )
    with torch.device("meta"):
        n_target = sum(p.numel() for p in build_mar(target).parameters())
    assert 2 * n_target <= 14e6  # fp16 bytes
    assert tm.forward_macs(draft)["total"] <= tm.forward_macs(target)["total"] / 4


def test_forward_macs_head_matches_diffloss_params():
    with torch.device("meta"):
        model = build_mar(TINY_MAR)
    weights = sum(p.numel() for p in model.diffloss.parameters() if p.ndim > 1)
    assert tm.forward_macs(TINY_MAR)["head"] == TINY_MAR.seq_len * weights


def test_train_resume_export_and_evaluate(tmp_path):
    cfg = tm.TrainConfig(steps=4, batch_size=4, warmup_steps=1, log_every=2, eval_n=10, eval_batch=5,
                         eval_num_iter=2, checkpoint_minutes=100)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    latents = {
        "mean": torch.randn(16, 2, 4, 4, generator=g),
        "std": torch.rand(16, 2, 4, 4, generator=g) * 0.1,
    }
    labels_N = torch.arange(16) % 10
    _, _, rec = tm.train(TINY_MAR, cfg, tmp_path / "run", latents, labels_N, 0.5, max_steps=2, progress=False)
    assert rec["step"] == 2 and not rec["finished"]
    model, ema, rec = tm.train(TINY_MAR, cfg, tmp_path / "run", latents, labels_N, 0.5, progress=False)
    assert rec["step"] == 4 and rec["finished"]
    assert len((tmp_path / "run" / "loss.log").read_text().splitlines()) == 2
    assert set(ema) == set(model.state_dict())
    assert any(not torch.equal(ema[k], v) for k, v in model.state_dict().items())
    # sampling-only settings may change after training: a finished run is re-evaluated, not refused
    resampled = dataclasses.replace(TINY_MAR, num_sampling_steps="1,1,1,1,1")
    _, _, rec = tm.train(resampled, dataclasses.replace(cfg, eval_n=20), tmp_path / "run", latents, labels_N, 0.5,
                         progress=False)  # fmt: skip
    assert rec["step"] == 4 and rec["finished"]
    with pytest.raises(ValueError, match="another config"):
        tm.train(
            TINY_MAR,
            dataclasses.replace(cfg, steps=5),
            tmp_path / "run",
            latents,
            labels_N,
            0.5,
            progress=False,
        )

    path = tmp_path / "fashion_mar_tiny.safetensors"
    tm.export(ema, TINY_MAR, path, "ab" * 32, 0.5, {"name": "tiny"})
    loaded, scale = tm.load_fashion_mar(path)
    assert scale == 0.5 and json.loads(path.with_suffix(".json").read_text()) == {"name": "tiny"}
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ema[k].half().float())

    vae = AutoencoderKL(TINY_VAE).eval()
    result = tm.class_consistency(loaded, vae, 0.5, cfg, tmp_path / "grid.png")
    assert result["n"] == 10 and 0.0 <= result["class_consistency"] <= 1.0 and len(result["per_class"]) == 10
    again = tm.class_consistency(loaded, vae, 0.5, cfg)
    assert again["class_consistency"] == result["class_consistency"]  # seeded sampling


@pytest.mark.parametrize("preset", tm.PRESETS)
def test_preset_head_sampling_skips_the_last_timestep(preset):
    """At t = 999 of the cosine schedule 1 / sqrt(abar) is about 1e4: the shipped respacing
    starts at t = 980 (the official "ddim50" steps), where an eps error is amplified ~30x, not 1e4x."""
    from mmaccel.image_ar.mar.diffusion import create_diffusion

    cfg, _ = tm.configs_from_dict(tm.preset_config(preset))
    diffusion = create_diffusion(cfg.num_sampling_steps)
    assert diffusion.num_timesteps == 50 and diffusion.timestep_map == list(range(0, 1000, 20))

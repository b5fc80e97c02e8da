"""MAR family: official key names and shapes, checkpoint round trips, the training loss, the
diffusion schedule and samplers, and the reference token sampler.

The expected key list below was written from reading LTH14/mar (``models/mar.py`` MAR,
``models/diffloss.py`` DiffLoss / SimpleMLPAdaLN / TimestepEmbedder / ResBlock / FinalLayer)
and timm 0.9.12's ``vision_transformer.Block`` / ``Attention`` / ``Mlp`` (``qkv_bias=True``,
identity ``q_norm`` / ``k_norm`` / layer scale), not by running it or our code.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import pytest
import torch

from mmaccel.image_ar.mar.config import MAR_PRESETS, MARConfig
from mmaccel.image_ar.mar.diffloss import DiffLoss
from mmaccel.image_ar.mar.diffusion import create_diffusion, space_timesteps
from mmaccel.image_ar.mar.loader import load_official_mar
from mmaccel.image_ar.mar.model import build_mar

TINY = MARConfig(
    img_size=32, vae_stride=4, patch_size=1, vae_embed_dim=4, class_num=10, buffer_size=4,
    encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
    decoder_embed_dim=48, decoder_depth=1, decoder_num_heads=2,
    diffloss_d=2, diffloss_w=32, num_sampling_steps="10", diffusion_batch_mul=2,
)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matrices: on a busy machine, intra-op threads only add contention (10 s vs 0.4 s here)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the official layout, as data ------------------------------------------------------------


def _block(prefix, C, hidden):
    return {
        prefix + "norm1.weight": (C,), prefix + "norm1.bias": (C,),
        prefix + "attn.qkv.weight": (3 * C, C), prefix + "attn.qkv.bias": (3 * C,),
        prefix + "attn.proj.weight": (C, C), prefix + "attn.proj.bias": (C,),
        prefix + "norm2.weight": (C,), prefix + "norm2.bias": (C,),
        prefix + "mlp.fc1.weight": (hidden, C), prefix + "mlp.fc1.bias": (hidden,),
        prefix + "mlp.fc2.weight": (C, hidden), prefix + "mlp.fc2.bias": (C,),
    }  # fmt: skip


def official_mar_keys(cfg: MARConfig):
    E, D, W = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.diffloss_w
    L = (cfg.img_size // cfg.vae_stride // cfg.patch_size) ** 2
    C = cfg.vae_embed_dim * cfg.patch_size**2
    P = L + cfg.buffer_size
    keys = {
        "class_emb.weight": (cfg.class_num, E), "fake_latent": (1, E),
        "z_proj.weight": (E, C), "z_proj.bias": (E,),
        "z_proj_ln.weight": (E,), "z_proj_ln.bias": (E,),
        "encoder_pos_embed_learned": (1, P, E),
        "encoder_norm.weight": (E,), "encoder_norm.bias": (E,),
        "decoder_embed.weight": (D, E), "decoder_embed.bias": (D,),
        "mask_token": (1, 1, D),
        "decoder_pos_embed_learned": (1, P, D),
        "decoder_norm.weight": (D,), "decoder_norm.bias": (D,),
        "diffusion_pos_embed_learned": (1, L, D),
        "diffloss.net.time_embed.mlp.0.weight": (W, 256), "diffloss.net.time_embed.mlp.0.bias": (W,),
        "diffloss.net.time_embed.mlp.2.weight": (W, W), "diffloss.net.time_embed.mlp.2.bias": (W,),
        "diffloss.net.cond_embed.weight": (W, D), "diffloss.net.cond_embed.bias": (W,),
        "diffloss.net.input_proj.weight": (W, C), "diffloss.net.input_proj.bias": (W,),
        "diffloss.net.final_layer.linear.weight": (2 * C, W), "diffloss.net.final_layer.linear.bias": (2 * C,),
        "diffloss.net.final_layer.adaLN_modulation.1.weight": (2 * W, W),
        "diffloss.net.final_layer.adaLN_modulation.1.bias": (2 * W,),
    }  # fmt: skip
    for i in range(cfg.encoder_depth):
        keys |= _block(f"encoder_blocks.{i}.", E, int(E * cfg.mlp_ratio))
    for i in range(cfg.decoder_depth):
        keys |= _block(f"decoder_blocks.{i}.", D, int(D * cfg.mlp_ratio))
    for i in range(cfg.diffloss_d):
        r = f"diffloss.net.res_blocks.{i}."
        keys |= {
            r + "in_ln.weight": (W,), r + "in_ln.bias": (W,),
            r + "mlp.0.weight": (W, W), r + "mlp.0.bias": (W,),
            r + "mlp.2.weight": (W, W), r + "mlp.2.bias": (W,),
            r + "adaLN_modulation.1.weight": (3 * W, W), r + "adaLN_modulation.1.bias": (3 * W,),
        }  # fmt: skip
    return keys


def _assert_official_layout(model, cfg):
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = official_mar_keys(cfg)
    assert sorted(set(ours) - set(official)) == [] and sorted(set(official) - set(ours)) == []
    assert ours == official


def test_tiny_state_dict_matches_official_layout():
    _assert_official_layout(build_mar(TINY), TINY)


@pytest.mark.parametrize("name", sorted(MAR_PRESETS))
def test_released_presets_match_official_layout(name):
    with torch.device("meta"):
        model = build_mar(MAR_PRESETS[name])
    _assert_official_layout(model, MAR_PRESETS[name])


def test_config_round_trip_and_derived_sizes():
    assert MARConfig.from_dict(TINY.to_dict()) == TINY
    assert (TINY.seq_len, TINY.token_embed_dim) == (64, 4)
    model = build_mar(replace(TINY, patch_size=2))
    assert (model.seq_len, model.token_embed_dim, model.seq_h, model.seq_w) == (16, 16, 4, 4)
    with pytest.raises(ValueError, match="bogus"):
        MARConfig.from_dict({**TINY.to_dict(), "bogus": 1})


# --- checkpoints -----------------------------------------------------------------------------


def _randomised(seed):
    torch.manual_seed(seed)
    model = build_mar(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def test_official_checkpoint_round_trip(tmp_path):
    sd = _randomised(0).state_dict()
    sd_ema = _randomised(1).state_dict()
    path = tmp_path / "checkpoint-last.pth"
    torch.save(
        {"model": sd, "model_ema": sd_ema, "optimizer": {"state": {}}, "epoch": 3,
         "args": argparse.Namespace(model="mar_base")},
        path,
    )  # fmt: skip
    for key, want in (("model", sd), ("model_ema", sd_ema)):
        got = load_official_mar(path, TINY, key=key).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert not load_official_mar(path, TINY).training

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd_ema.items()}, str(tmp_path / "mar.safetensors"))
    got = load_official_mar(tmp_path / "mar.safetensors", TINY).state_dict()
    assert all(torch.equal(got[k], sd_ema[k]) for k in sd_ema)


def test_bad_checkpoints_are_named(tmp_path):
    sd = _randomised(0).state_dict()
    bad = {("module." + k if i == 0 else k): v for i, (k, v) in enumerate(sd.items()) if k != "mask_token"}
    bad["diffloss.net.extra.weight"] = torch.zeros(1)
    bad["z_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError) as err:
        load_official_mar({"model": bad}, TINY, key="model")
    msg = str(err.value)
    assert "mask_token" in msg and "diffloss.net.extra.weight" in msg and "z_proj.weight" in msg
    torch.save({"model": sd}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="model_ema"):
        load_official_mar(tmp_path / "c.pth", TINY, key="model_ema")
    with pytest.raises(ValueError, match="missing keys: decoder_blocks.1"):
        load_official_mar(sd, replace(TINY, decoder_depth=2))


# --- the model -------------------------------------------------------------------------------


def _latents(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, TINY.vae_embed_dim, 8, 8, generator=g), torch.arange(B) % TINY.class_num


def test_training_loss_is_a_finite_scalar_with_gradients():
    model = _randomised(0).train()
    imgs, labels = _latents()
    loss = model(imgs, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("z_proj.weight", "encoder_blocks.0.attn.qkv.weight", "decoder_blocks.0.mlp.fc2.weight",
                 "diffloss.net.input_proj.weight", "diffusion_pos_embed_learned"):  # fmt: skip
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_patchify_round_trip():
    model = build_mar(replace(TINY, patch_size=2))
    x = torch.randn(2, 4, 8, 8)
    tokens = model.patchify(x)
    assert tokens.shape == (2, 16, 16)
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 2:4].reshape(-1))  # second token: row 0, column 1
    assert torch.equal(model.unpatchify(tokens), x)


def test_encoder_sees_only_known_tokens():
    model = _randomised(0)
    imgs, labels = _latents(2)
    x = model.patchify(imgs)
    orders = model.sample_orders(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(orders.sort(dim=1).values, torch.arange(64).expand(2, 64))
    mask = model.random_masking(x, orders, generator=torch.Generator().manual_seed(1))
    n_masked = int(mask[0].sum())
    assert (mask.sum(1) == n_masked).all() and 0.7 * 64 <= n_masked <= 64
    cls = model.class_emb(labels)
    enc = model.forward_mae_encoder(x, mask, cls)
    assert enc.shape == (2, TINY.buffer_size + 64 - n_masked, TINY.encoder_embed_dim)
    changed = torch.where(mask.bool()[..., None], torch.randn_like(x), x)
    assert torch.equal(model.forward_mae_encoder(changed, mask, cls), enc)
    assert model.forward_mae_decoder(enc, mask).shape == (2, 64, TINY.decoder_embed_dim)


def test_mask_ratio_follows_the_truncated_normal():
    model = build_mar(TINY)
    g = torch.Generator().manual_seed(0)
    ratios = torch.tensor([model.sample_mask_ratio(g) for _ in range(4000)])
    assert ratios.min() >= 0.7 and ratios.max() <= 1.0
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    a = (0.7 - 1.0) / 0.25
    mean = 1.0 + 0.25 * (pdf(a) - pdf(0.0)) / (cdf(0.0) - cdf(a))
    assert abs(ratios.mean().item() - mean) < 0.005


def test_sample_tokens_shape_and_seed():
    model = _randomised(0)
    labels = torch.tensor([1, 2])
    run = lambda seed, cfg: model.sample_tokens(
        2, num_iter=4, cfg=cfg, labels=labels, temperature=0.9, generator=torch.Generator().manual_seed(seed)
    )
    a = run(0, 3.0)
    assert a.shape == (2, TINY.vae_embed_dim, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, run(0, 3.0))
    assert not torch.equal(a, run(1, 3.0))
    assert run(0, 1.0).shape == a.shape


# --- the diffusion ---------------------------------------------------------------------------


def _alpha_bar(s):  # the cosine schedule's abar(s), s in [0, 1]
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def test_respaced_cosine_schedule_matches_the_formulas():
    assert space_timesteps(1000, "10") == {0, 111, 222, 333, 444, 555, 666, 777, 888, 999}
    assert space_timesteps(1000, "100") == {round(j * 999 / 99) for j in range(100)}
    diff = create_diffusion("10")
    assert diff.timestep_map == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    # without clipping (only the very last betas reach 0.999), abar_i = abar((i + 1) / T) / abar(0)
    for k, t in enumerate(diff.timestep_map[:-1]):
        assert diff.alphas_cumprod[k] == pytest.approx(_alpha_bar((t + 1) / 1000) / _alpha_bar(0), rel=1e-9)
    full = create_diffusion("")
    assert full.num_timesteps == 1000 and full.timestep_map == list(range(1000))

    # learned range at t = 0: v = -1 gives the clipped posterior variance of step 1, v = +1 beta_0
    ab = diff.alphas_cumprod
    beta0, beta1 = 1 - ab[0], 1 - ab[1] / ab[0]
    post_var1 = beta1 * (1 - ab[0]) / (1 - ab[1])
    x = torch.randn(3, 4)
    t = torch.zeros(3, dtype=torch.long)
    for v, want in ((-1.0, math.log(post_var1)), (1.0, math.log(beta0))):
        out = diff.p_mean_variance(torch.cat([torch.zeros(3, 4), torch.full((3, 4), v)], 1), x, t)
        torch.testing.assert_close(out["log_variance"], torch.full((3, 4), want), rtol=1e-6, atol=1e-6)
    # eps = 0: x0_hat = x / sqrt(abar_k)
    k = torch.full((3,), 5, dtype=torch.long)
    out = diff.p_mean_variance(torch.zeros(3, 8), x, k)
    torch.testing.assert_close(out["pred_xstart"], x / math.sqrt(ab[5]))


def _diffloss(cfg_channels=4, z_channels=6, seed=0):
    torch.manual_seed(seed)
    dl = DiffLoss(cfg_channels, z_channels, depth=2, width=32, num_sampling_steps="10")
    with torch.no_grad():
        for p in dl.parameters():
            p.normal_(0, 0.1)
    return dl.eval()


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_final_gaussian_mean_equals_the_official_sampler(cfg):
    dl = _diffloss()
    n, S = 3, dl.num_sampling_steps
    rows = 2 * n if cfg != 1.0 else n
    z = torch.randn(rows, 6)
    sample = dl.sample(z, temperature=0.9, cfg=cfg, generator=torch.Generator().manual_seed(7))
    # the official sampler draws x_T, then one [rows, C] noise per step, the last one unused
    g = torch.Generator().manual_seed(7)
    x_T = torch.randn(n, 4, generator=g)
    x_T = torch.cat([x_T, x_T]) if cfg != 1.0 else x_T
    noise = torch.stack([torch.randn(rows, 4, generator=g) for _ in range(S)])
    mean, std = dl.final_gaussian(z, x_T, noise[:-1], temperature=0.9, cfg=cfg)
    # the guided chain is the first half of the official one (its second half is never read);
    # equal up to float rounding (embeddings batched and coefficients folded differently)
    torch.testing.assert_close(mean, sample[:n], rtol=1e-5, atol=1e-5)
    assert std.shape == mean.shape and (std > 0).all()


def test_cfg_guides_eps_in_both_halves_and_keeps_each_variance():
    dl = _diffloss()
    n, C = 3, 4
    x = torch.randn(n, C)
    z = torch.randn(2 * n, 6)
    t = torch.full((2 * n,), 500)
    out = dl.net.forward_with_cfg(torch.cat([x, torch.randn(n, C)]), t, z, 2.5)
    cond, uncond = dl.net(x, t[:n], z[:n]), dl.net(x, t[:n], z[n:])
    guided = uncond[:, :C] + 2.5 * (cond[:, :C] - uncond[:, :C])
    torch.testing.assert_close(out[:n, :C], guided)
    assert torch.equal(out[:n, :C], out[n:, :C])
    torch.testing.assert_close(out[:n, C:], cond[:, C:])
    torch.testing.assert_close(out[n:, C:], uncond[:, C:])

    # the first half of the guided chain equals a chain over n rows with the guided model
    x_T = torch.randn(n, C)
    noise = torch.randn(dl.num_sampling_steps - 1, n, C)
    mean, std = dl.final_gaussian(z, torch.cat([x_T, x_T]), torch.cat([noise, noise], 1), cfg=2.5)

    def guided_fn(x_NC, t_N):
        c, u = dl.net(x_NC, t_N, z[:n]), dl.net(x_NC, t_N, z[n:])
        return torch.cat([u[:, :C] + 2.5 * (c[:, :C] - u[:, :C]), c[:, C:]], 1)

    ref_mean, ref_std = dl.gen_diffusion.final_gaussian(guided_fn, x_T, noise)
    assert mean.shape == (n, C)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std, ref_std, rtol=1e-5, atol=1e-6)


def test_set_sampling_steps_keeps_weights():
    dl = _diffloss()
    before = {k: v.clone() for k, v in dl.state_dict().items()}
    dl.set_sampling_steps(5)
    assert dl.num_sampling_steps == 5 and dl.gen_diffusion.timestep_map == sorted(space_timesteps(1000, "5"))
    assert all(torch.equal(before[k], v) for k, v in dl.state_dict().items())
    mean, std = dl.final_gaussian(torch.randn(2, 6), torch.randn(2, 4), torch.randn(4, 2, 4))
    assert mean.shape == std.shape == (2, 4)
    with pytest.raises(ValueError, match="inter_noise"):
        dl.final_gaussian(torch.randn(2, 6), torch.randn(2, 4), torch.randn(9, 2, 4))


def test_training_loss_is_mse_plus_vb():
    diff = create_diffusion("")
    x0 = torch.randn(5, 4)
    t = torch.tensor([0, 1, 10, 500, 999])
    noise = torch.randn(5, 4)
    eps, v = torch.randn(5, 4), torch.rand(5, 4) * 2 - 1
    terms = diff.training_losses(lambda x, tt: torch.cat([eps, v], 1), x0, t, noise)
    torch.testing.assert_close(terms["mse"], ((noise - eps) ** 2).mean(1))
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    assert torch.isfinite(terms["vb"]).all() and (terms["vb"][1:] >= 0).all()
    # a perfect model (true eps, v = -1 i.e. the true posterior variance) has zero KL for t >= 1
    x_t = diff.q_sample(x0, t, noise)
    perfect = diff.training_losses(lambda x, tt: torch.cat([noise, -torch.ones(5, 4)], 1), x0, t, noise)
    assert torch.equal(x_t, diff.q_sample(x0, t, noise))
    torch.testing.assert_close(perfect["vb"][1:], torch.zeros(4), atol=1e-4, rtol=0)

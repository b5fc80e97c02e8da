"""VAR family behaviour on small models: tokenizer round trips, block-causal teacher forcing,
the per-scale static-cache hook against teacher forcing, and the reference CFG sampler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmaccel.image_ar.var import (
    VAR,
    VQVAE,
    VARConfig,
    VQVAEConfig,
    autoregressive_infer_cfg,
    sample_with_top_k_top_p,
)

VAE_CFG = VQVAEConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                      norm_groups=8, patch_nums=(1, 2, 3, 4))  # fmt: skip
VAR_CFG = VARConfig(depth=2, embed_dim=64, num_heads=4, num_classes=10, vocab_size=64, Cvae=8,
                    patch_nums=(1, 2, 3, 4))  # fmt: skip


def _randomised(model, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("scale_mul_1H11"):  # keep the official log(4)
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def vae():
    return _randomised(VQVAE(VAE_CFG))


@pytest.fixture(scope="module", params=[False, True], ids=["ada_lin", "shared_aln"])
def var(request):
    from dataclasses import replace

    return _randomised(VAR(replace(VAR_CFG, shared_aln=request.param)), seed=1)


def _images(B=2, seed=3):
    return torch.rand(B, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def _codes(B=2, seed=4):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VAE_CFG.vocab_size, (B, pn * pn), generator=gen) for pn in VAE_CFG.patch_nums]


# --- VQ-VAE -------------------------------------------------------------------------------------


def test_img_to_idxBl_and_back_shapes(vae):
    with torch.no_grad():
        idx = vae.img_to_idxBl(_images())
        assert [tuple(i.shape) for i in idx] == [(2, 1), (2, 4), (2, 9), (2, 16)]
        assert all(i.dtype == torch.int64 and 0 <= i.min() and i.max() < 64 for i in idx)
        imgs = vae.idxBl_to_img(idx, same_shape=True, last_one=False)
        assert len(imgs) == 4 and all(tuple(im.shape) == (2, 3, 8, 8) for im in imgs)
        last = vae.idxBl_to_img(idx, same_shape=True, last_one=True)
        assert torch.equal(last, imgs[-1]) and last.abs().max() <= 1
        # quantizing gives the same partial sums as re-embedding the codes
        f_hats = vae.quantize.f_to_idxBl_or_fhat(vae.img_to_f(_images()), to_fhat=True)
        assert torch.allclose(vae.fhat_to_img(f_hats[-1]), last)
        assert len(vae.img_to_reconstructed_img(_images(), last_one=False)) == 4


def test_phi_choice_follows_official_ticks():
    with torch.device("meta"):
        q = VQVAE(VQVAEConfig()).quantize  # 4 shared Phi over 10 scales
    layers = list(q.quant_resi.qresi_ls)
    chosen = [layers.index(q.quant_resi.for_scale(si, 10)) for si in range(10)]
    assert chosen == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_var_input_equals_the_autoregressive_chain(vae):
    idx = _codes()
    with torch.no_grad():
        x_BLCv = vae.quantize.idxBl_to_var_input(idx)
        assert tuple(x_BLCv.shape) == (2, VAR_CFG.L - 1, 8)
        f_hat, parts = torch.zeros(2, 8, 4, 4, dtype=torch.float64), []
        for si, pn in enumerate(VAE_CFG.patch_nums):
            h = vae.quantize.embedding(idx[si]).transpose(1, 2).reshape(2, 8, pn, pn)
            f_hat, nxt = vae.quantize.get_next_autoregressive_input(si, 4, f_hat, h)
            if si < 3:
                parts.append(nxt.reshape(2, 8, -1).transpose(1, 2))
        assert torch.allclose(torch.cat(parts, 1), x_BLCv)
        assert torch.allclose(f_hat, vae.quantize.embed_to_fhat(
            [vae.quantize.embedding(i).transpose(1, 2).reshape(2, 8, p, p) for i, p in zip(idx, (1, 2, 3, 4), strict=True)],
            last_one=True))  # fmt: skip


def test_vae_training_forward_runs_and_backpropagates():
    vae = _randomised(VQVAE(VAE_CFG), dtype=torch.float32).train()
    rec, loss = vae(_images().float())
    (F.mse_loss(rec, _images().float()) + loss).backward()
    assert vae.encoder.conv_in.weight.grad is not None and vae.quantize.embedding.weight.grad is not None
    assert vae.quantize.ema_vocab_hit_SV.sum() > 0


# --- transformer -------------------------------------------------------------------------------


def test_block_causal_mask_layout(var):
    mask = var.block_causal_mask(0, var.L)
    lvl = torch.tensor([0] + [1] * 4 + [2] * 9 + [3] * 16)
    assert torch.equal(mask, lvl[None, :] <= lvl[:, None])
    assert torch.equal(var.attn_bias_for_masking[0, 0] == 0, mask)  # the official buffer agrees
    assert torch.equal(var.block_causal_mask(5, 14), mask[5:14, :14])


def test_teacher_forcing_is_block_causal(var, vae):
    label_B = torch.tensor([3, 7])
    x_BLCv = vae.quantize.idxBl_to_var_input(_codes())
    with torch.no_grad():
        logits = var(label_B, x_BLCv)
        assert tuple(logits.shape) == (2, var.L, 64) and logits.dtype == torch.float32
        changed = x_BLCv.clone()
        changed[:, 4:] += 1.0  # inputs of scales 2 and 3 (positions 5..29)
        logits2 = var(label_B, changed)
    assert torch.equal(logits[:, :5], logits2[:, :5])  # scales 0 and 1 cannot see them
    assert not torch.allclose(logits[:, 5:14], logits2[:, 5:14])


def test_label_dropout_only_in_training(var, vae):
    x_BLCv = vae.quantize.idxBl_to_var_input(_codes())
    label_B = torch.tensor([3, 7])
    with torch.no_grad():
        null = var(torch.full((2,), 10), x_BLCv)
        dropped = var(label_B, x_BLCv, drop_B=torch.tensor([True, False]))
        assert torch.equal(dropped[0], null[0]) and torch.equal(dropped[1], var(label_B, x_BLCv)[1])


@pytest.mark.parametrize("blocks", [[(0, 1), (1, 5), (5, 14), (14, 30)], [(0, 14), (14, 30)]])
def test_forward_scale_with_static_cache_matches_teacher_forcing(var, vae, blocks):
    """Scale by scale, or a multi-scale prefill then a scale, through StaticKVCache."""
    label_B, idx = torch.tensor([1, 9, 4]), _codes(B=3)
    x_BLCv = vae.quantize.idxBl_to_var_input(idx)
    with torch.no_grad():
        want = var(label_B, x_BLCv)
        cond_BD = var.condition(label_B)
        x_BLC = torch.cat((var.first_scale_input(cond_BD), var.scale_input(x_BLCv, 1)), 1)
        cache = var.new_cache(3)
        got = []
        for start, stop in blocks:
            slots_BT, mask_BTS = var.cache_step_inputs(cache, start, stop)
            got.append(var.forward_scale(x_BLC[:, start:stop], cond_BD, cache, slots_BT, mask_BTS))
            cache.commit(torch.full_like(cache.lens_B, stop - start))
    assert torch.allclose(torch.cat(got, 1), want, atol=1e-5, rtol=1e-5)
    # scale_input of one scale equals the slice of the whole-sequence input
    assert torch.allclose(var.scale_input(x_BLCv[:, 4:13], 5), x_BLC[:, 5:14])


def test_cache_rollback_replays_a_scale(var):
    cond_BD = var.condition(torch.tensor([2]))
    with torch.no_grad():
        cache = var.new_cache(1)
        x = var.first_scale_input(cond_BD)
        var.forward_scale(x, cond_BD, cache, *var.cache_step_inputs(cache, 0, 1))
        cache.commit(torch.ones(1))
        f = torch.randn(1, 4, 8, dtype=torch.float64)
        first = var.forward_scale(var.scale_input(f, 1), cond_BD, cache, *var.cache_step_inputs(cache, 1, 5))
        cache.commit(torch.full((1,), 4))
        cache.rollback(torch.ones(1, dtype=torch.int32))
        again = var.forward_scale(var.scale_input(f, 1), cond_BD, cache, *var.cache_step_inputs(cache, 1, 5))
    assert torch.equal(first, again)


# --- reference sampler --------------------------------------------------------------------------


def test_sampler_is_deterministic_under_a_seed(var, vae):
    a = autoregressive_infer_cfg(var, vae, 2, torch.tensor([1, 2]), g_seed=0, cfg=2.0, top_k=20, top_p=0.9)
    b = autoregressive_infer_cfg(var, vae, 2, torch.tensor([1, 2]), g_seed=0, cfg=2.0, top_k=20, top_p=0.9)
    c = autoregressive_infer_cfg(var, vae, 2, torch.tensor([1, 2]), g_seed=1, cfg=2.0, top_k=20, top_p=0.9)
    assert all(torch.equal(x, y) for x, y in zip(a.idx_Bl, b.idx_Bl, strict=True)) and torch.equal(
        a.images, b.images
    )
    assert any(not torch.equal(x, y) for x, y in zip(a.idx_Bl, c.idx_Bl, strict=True))
    assert tuple(a.images.shape) == (2, 3, 8, 8) and 0 <= a.images.min() and a.images.max() <= 1
    assert [tuple(i.shape) for i in a.idx_Bl] == [(2, 1), (2, 4), (2, 9), (2, 16)]
    # images are the decoded codes
    assert torch.allclose(a.images, vae.idxBl_to_img(a.idx_Bl, True, last_one=True).add(1).mul(0.5))


def test_sampler_labels(var, vae):
    rand = autoregressive_infer_cfg(var, vae, 3, None, g_seed=5, decode=False)
    assert rand.labels_B.shape == (3,) and rand.images is None
    assert torch.equal(
        autoregressive_infer_cfg(var, vae, 2, -1, g_seed=0, decode=False).labels_B, torch.full((2,), 10)
    )


def test_sampler_logits_follow_the_cfg_ramp(var, vae):
    """Guided logits of scale k = (1 + t) cond - t uncond, t = cfg * k / (K - 1), where cond and
    uncond are teacher-forced logits on the sampled codes."""
    cfg = 3.0
    out = autoregressive_infer_cfg(
        var, vae, 2, torch.tensor([4, 6]), g_seed=0, cfg=cfg, decode=False, keep_logits=True
    )
    x_BLCv = vae.quantize.idxBl_to_var_input(out.idx_Bl)
    with torch.no_grad():
        cond = var(out.labels_B, x_BLCv)
        uncond = var(torch.full((2,), 10), x_BLCv)
    for si, (b, e) in enumerate(var.begin_ends):
        t = cfg * si / 3
        assert torch.allclose(out.logits_BlV[si], (1 + t) * cond[:, b:e] - t * uncond[:, b:e], atol=1e-5)


def test_top_k_top_p_filters():
    logits = torch.tensor([[[0.0, 3.0, 1.0, 2.0]]]).expand(1, 200, 4)
    gen = torch.Generator().manual_seed(0)
    assert (sample_with_top_k_top_p(logits, top_k=1, generator=gen) == 1).all()
    assert (sample_with_top_k_top_p(logits, top_p=0.01, generator=gen) == 1).all()
    top2 = sample_with_top_k_top_p(logits, top_k=2, generator=gen)
    assert set(top2.unique().tolist()) == {1, 3}
    # top_p keeps the smallest set whose mass exceeds top_p: p = softmax = [.032, .644, .087, .237]
    kept = sample_with_top_k_top_p(logits, top_p=0.8, generator=gen)
    assert set(kept.unique().tolist()) == {1, 3}
    assert torch.equal(logits, torch.tensor([[[0.0, 3.0, 1.0, 2.0]]]).expand(1, 200, 4))  # untouched
    no_repl = sample_with_top_k_top_p(logits[:, :1], num_samples=-4, generator=gen)
    assert sorted(no_repl.flatten().tolist()) == [0, 1, 2, 3]


def test_mismatched_vae_is_refused_by_the_sampler(var):
    from dataclasses import replace

    other = VQVAE(replace(VAE_CFG, vocab_size=32)).double()
    with pytest.raises(ValueError, match="vocab_size: VAR 64 vs VQ-VAE 32"):
        autoregressive_infer_cfg(var, other, 1, 0)

"""VAR family checkpoints: official key names and shapes, round trips, and clear errors.

The expected key lists below were written from reading FoundationVision/VAR @ 78b9539
(``models/var.py`` VAR, ``models/basic_var.py`` SelfAttention / FFN / AdaLNSelfAttn /
AdaLNBeforeHead, ``models/vqvae.py`` VQVAE, ``models/basic_vae.py`` Encoder / Decoder /
ResnetBlock / AttnBlock / Downsample2x / Upsample2x, ``models/quant.py`` VectorQuantizer2 /
Phi*), not by running it or our code. Official checkpoints are saved with ``strict=True``
loading, so persistent buffers (``lvl_1L``, ``attn_bias_for_masking``, ``zero_k_bias``,
``ema_vocab_hit_SV``) are part of the layout.
"""

from __future__ import annotations

import pytest
import torch

from mmaccel.image_ar.var import (
    VAR,
    VAR_PRESETS,
    VQVAE,
    VQVAE_PRESETS,
    VARConfig,
    VQVAEConfig,
    load_vae_var,
    load_var,
    load_vqvae,
)

# --- the official layout, as data ------------------------------------------------------------


def official_var_keys(depth, C, heads, V, Cvae, num_classes, patch_nums, shared_aln, l2_norm=True):
    L, S = sum(p * p for p in patch_nums), len(patch_nums)
    keys = {
        "word_embed.weight": (C, Cvae), "word_embed.bias": (C,),
        "class_emb.weight": (num_classes + 1, C),
        "pos_start": (1, patch_nums[0] ** 2, C),
        "pos_1LC": (1, L, C),
        "lvl_embed.weight": (S, C),
        "lvl_1L": (1, L),
        "attn_bias_for_masking": (1, 1, L, L),
        "head_nm.ada_lin.1.weight": (2 * C, C), "head_nm.ada_lin.1.bias": (2 * C,),
        "head.weight": (V, C), "head.bias": (V,),
    }  # fmt: skip
    if shared_aln:  # nn.Sequential(SiLU, SharedAdaLin(D, 6C))
        keys |= {"shared_ada_lin.1.weight": (6 * C, C), "shared_ada_lin.1.bias": (6 * C,)}
    for i in range(depth):
        b = f"blocks.{i}."
        keys |= {
            b + "attn.mat_qkv.weight": (3 * C, C),
            b + "attn.q_bias": (C,), b + "attn.v_bias": (C,), b + "attn.zero_k_bias": (C,),
            b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,),
            b + "ffn.fc1.weight": (4 * C, C), b + "ffn.fc1.bias": (4 * C,),
            b + "ffn.fc2.weight": (C, 4 * C), b + "ffn.fc2.bias": (C,),
        }  # fmt: skip
        if l2_norm:
            keys[b + "attn.scale_mul_1H11"] = (1, heads, 1, 1)
        if shared_aln:
            keys[b + "ada_gss"] = (1, 1, 6, C)
        else:
            keys |= {b + "ada_lin.1.weight": (6 * C, C), b + "ada_lin.1.bias": (6 * C,)}
    return keys


def _resnet(prefix, cin, cout):
    keys = {
        prefix + "norm1.weight": (cin,), prefix + "norm1.bias": (cin,),
        prefix + "conv1.weight": (cout, cin, 3, 3), prefix + "conv1.bias": (cout,),
        prefix + "norm2.weight": (cout,), prefix + "norm2.bias": (cout,),
        prefix + "conv2.weight": (cout, cout, 3, 3), prefix + "conv2.bias": (cout,),
    }  # fmt: skip
    if cin != cout:
        keys |= {prefix + "nin_shortcut.weight": (cout, cin, 1, 1), prefix + "nin_shortcut.bias": (cout,)}
    return keys


def _attn(prefix, c):
    return {
        prefix + "norm.weight": (c,), prefix + "norm.bias": (c,),
        prefix + "qkv.weight": (3 * c, c, 1, 1), prefix + "qkv.bias": (3 * c,),
        prefix + "proj_out.weight": (c, c, 1, 1), prefix + "proj_out.bias": (c,),
    }  # fmt: skip


def _conv(prefix, cout, cin, k):
    return {prefix + "weight": (cout, cin, k, k), prefix + "bias": (cout,)}


def official_vae_keys(ch, ch_mult, nrb, z, V, S, share, in_ch=3):
    n, top = len(ch_mult), ch * ch_mult[-1]
    keys = _conv("encoder.conv_in.", ch, in_ch, 3)
    cin = ch
    for i in range(n):  # encoder: nrb blocks per level, attention at the last level
        for j in range(nrb):
            keys |= _resnet(f"encoder.down.{i}.block.{j}.", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i == n - 1:
                keys |= _attn(f"encoder.down.{i}.attn.{j}.", cin)
        if i != n - 1:
            keys |= _conv(f"encoder.down.{i}.downsample.conv.", cin, cin, 3)
    for part in ("encoder", "decoder"):
        keys |= _resnet(f"{part}.mid.block_1.", top, top) | _attn(f"{part}.mid.attn_1.", top)
        keys |= _resnet(f"{part}.mid.block_2.", top, top)
    keys |= {"encoder.norm_out.weight": (top,), "encoder.norm_out.bias": (top,)}
    keys |= _conv("encoder.conv_out.", z, top, 3) | _conv("decoder.conv_in.", top, z, 3)
    cin = top
    for i in reversed(range(n)):  # decoder: nrb + 1 blocks per level, coarse first
        for j in range(nrb + 1):
            keys |= _resnet(f"decoder.up.{i}.block.{j}.", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
            if i == n - 1:
                keys |= _attn(f"decoder.up.{i}.attn.{j}.", cin)
        if i != 0:
            keys |= _conv(f"decoder.up.{i}.upsample.conv.", cin, cin, 3)
    keys |= {"decoder.norm_out.weight": (ch,), "decoder.norm_out.bias": (ch,)}
    keys |= _conv("decoder.conv_out.", in_ch, ch, 3)
    keys |= _conv("quant_conv.", z, z, 3) | _conv("post_quant_conv.", z, z, 3)
    keys |= {"quantize.ema_vocab_hit_SV": (S, V), "quantize.embedding.weight": (V, z)}
    phi = {0: [f"quantize.quant_resi.{k}." for k in range(S)], 1: ["quantize.quant_resi.qresi."]}
    for prefix in phi.get(share, [f"quantize.quant_resi.qresi_ls.{k}." for k in range(share)]):
        keys |= _conv(prefix, z, z, 3)
    return keys


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _assert_same(ours, official):
    assert sorted(set(official) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(official)) == [], "keys our model has and the official does not"
    bad = {k: (ours[k], official[k]) for k in official if ours[k] != official[k]}
    assert bad == {}


def test_var_d16_state_dict_matches_official_layout():
    with torch.device("meta"):
        model = VAR(VAR_PRESETS["d16"])
    official = official_var_keys(16, 1024, 16, 4096, 32, 1000, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), False)
    _assert_same(_shapes(model), official)
    assert len(official) == 12 + 16 * 13
    assert model.lvl_1L.dtype == torch.int64  # official: torch.full of Python ints


def test_var_d36_shared_aln_state_dict_matches_official_layout():
    with torch.device("meta"):
        model = VAR(VAR_PRESETS["d36"])
    pn512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
    _assert_same(_shapes(model), official_var_keys(36, 2304, 36, 4096, 32, 1000, pn512, True))


def test_var_presets_follow_build_vae_var():
    for depth in (16, 20, 24, 30):
        cfg = VAR_PRESETS[f"d{depth}"]
        assert (cfg.embed_dim, cfg.num_heads, cfg.attn_l2_norm, cfg.shared_aln) == (
            64 * depth,
            depth,
            True,
            False,
        )
        assert cfg.cond_drop_rate == 0.1 and cfg.norm_eps == 1e-6 and cfg.num_classes == 1000
        assert cfg.drop_path_rate == pytest.approx(0.1 * depth / 24)
        assert cfg.L == 680


def test_vae_ch160v4096z32_state_dict_matches_official_layout():
    with torch.device("meta"):
        model = VQVAE(VQVAE_PRESETS["vae_ch160v4096z32"])
    official = official_vae_keys(160, (1, 1, 2, 2, 4), 2, 32, 4096, 10, 4)
    _assert_same(_shapes(model), official)


@pytest.mark.parametrize("share", [0, 1, 3])
def test_vae_phi_sharing_modes_use_official_names(share):
    cfg = VQVAEConfig(vocab_size=16, z_channels=4, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                      norm_groups=4, share_quant_resi=share, patch_nums=(1, 2))  # fmt: skip
    with torch.device("meta"):
        model = VQVAE(cfg)
    _assert_same(_shapes(model), official_vae_keys(8, (1, 2), 1, 4, 16, 2, share))


# --- small models through files ---------------------------------------------------------------

SMALL_VAE = VQVAEConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                        norm_groups=8, patch_nums=(1, 2, 3, 4))  # fmt: skip
SMALL_VAR = VARConfig(depth=2, embed_dim=64, num_heads=4, num_classes=10, vocab_size=64, Cvae=8,
                      patch_nums=(1, 2, 3, 4))  # fmt: skip


def _randomised(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("scale_mul_1H11"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def _teacher_inputs(B=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    label_B = torch.randint(0, SMALL_VAR.num_classes, (B,), generator=gen)
    x_BLCv = torch.randn(B, SMALL_VAR.L - SMALL_VAR.first_l, SMALL_VAR.Cvae, generator=gen)
    return label_B, x_BLCv


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_small_var_round_trip_reproduces_logits(tmp_path, suffix):
    model = _randomised(VAR(SMALL_VAR))
    label_B, x_BLCv = _teacher_inputs()
    with torch.no_grad():
        want = model(label_B, x_BLCv)
    path = tmp_path / f"var{suffix}"
    if suffix == ".pth":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_var(path, SMALL_VAR, vqvae=SMALL_VAE)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(label_B, x_BLCv), want)


def test_small_vae_round_trip_reproduces_codes_and_images(tmp_path):
    vae = _randomised(VQVAE(SMALL_VAE))
    img = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        idx = vae.img_to_idxBl(img)
        rec = vae.idxBl_to_img(idx, same_shape=True, last_one=True)
    torch.save({"module." + k: v for k, v in vae.state_dict().items()}, tmp_path / "vae.pth")
    loaded = load_vqvae(tmp_path / "vae.pth", SMALL_VAE)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded.img_to_idxBl(img), idx, strict=True))
        assert torch.equal(loaded.idxBl_to_img(idx, same_shape=True, last_one=True), rec)


def test_training_checkpoint_container_is_unwrapped(tmp_path):
    vae, var = _randomised(VQVAE(SMALL_VAE)), _randomised(VAR(SMALL_VAR))
    trunk = {"epoch": 3, "trainer": {"var_wo_ddp": var.state_dict(), "vae_local": vae.state_dict()}}
    torch.save(trunk, tmp_path / "ar-ckpt-last.pth")
    vae2, var2 = load_vae_var(
        tmp_path / "ar-ckpt-last.pth", tmp_path / "ar-ckpt-last.pth", SMALL_VAE, SMALL_VAR
    )
    assert torch.equal(var2.head.weight, var.head.weight)
    assert torch.equal(vae2.quantize.embedding.weight, vae.quantize.embedding.weight)


def test_ema_vocab_hits_with_other_scale_count_are_tolerated_as_official():
    sd = _randomised(VQVAE(SMALL_VAE)).state_dict()
    sd["quantize.ema_vocab_hit_SV"] = torch.ones(10, SMALL_VAE.vocab_size)
    vae = load_vqvae(sd, SMALL_VAE)
    assert vae.quantize.ema_vocab_hit_SV.shape == (4, SMALL_VAE.vocab_size)
    sd["quantize.ema_vocab_hit_SV"] = torch.ones(4, 32)  # a different vocabulary is an error
    with pytest.raises(ValueError, match=r"ema_vocab_hit_SV: checkpoint \(4, 32\) vs model \(4, 64\)"):
        load_vqvae(sd, SMALL_VAE)


# --- errors -------------------------------------------------------------------------------------


def test_missing_unexpected_and_misshapen_keys_are_named():
    sd = VAR(SMALL_VAR).state_dict()
    del sd["blocks.1.attn.q_bias"]
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    sd["head.weight"] = torch.zeros(65, 64)
    with pytest.raises(ValueError) as err:
        load_var(sd, SMALL_VAR)
    msg = str(err.value)
    assert "missing keys: blocks.1.attn.q_bias" in msg
    assert "unexpected keys: blocks.0.attn.extra" in msg
    assert "head.weight: checkpoint (65, 64) vs model (64, 64)" in msg


def test_vae_misshapen_key_names_both_shapes():
    sd = VQVAE(SMALL_VAE).state_dict()
    sd["quantize.embedding.weight"] = torch.zeros(32, 8)
    with pytest.raises(
        ValueError, match=r"quantize\.embedding\.weight: checkpoint \(32, 8\) vs model \(64, 8\)"
    ):
        load_vqvae(sd, SMALL_VAE)


def test_patch_nums_mismatch_fails_before_reading(tmp_path):
    other = VQVAEConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                        norm_groups=8, patch_nums=(1, 2, 4))  # fmt: skip
    missing = tmp_path / "never_written.pth"  # reading it would raise FileNotFoundError
    with pytest.raises(ValueError, match=r"patch_nums: VAR \(1, 2, 3, 4\) vs VQ-VAE \(1, 2, 4\)"):
        load_var(missing, SMALL_VAR, vqvae=other)
    with pytest.raises(ValueError, match="patch_nums"):
        load_vae_var(missing, missing, other, SMALL_VAR)


def test_unreadable_or_unsafe_files_raise_value_error(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth is corrupted or truncated"):
        load_var(tmp_path / "bad.pth", SMALL_VAR)
    torch.save({"w": torch.zeros(1), "obj": object.__new__(_Opaque)}, tmp_path / "obj.pth")
    with pytest.raises(ValueError, match="weights-only load refuses"):
        load_var(tmp_path / "obj.pth", SMALL_VAR)
    with pytest.raises(FileNotFoundError):
        load_var(tmp_path / "absent.pth", SMALL_VAR)


class _Opaque:
    pass

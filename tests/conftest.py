"""Shared fixtures: tiny models built in-process (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from mmaccel.image_ar.shapes import caption, sample_scene
from mmaccel.tiny_lm import TinyLM, TinyLMConfig


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def tiny_llama(vocab: int = 64, seed: int = 0, init: float = 0.5, dtype=torch.float64):
    """A tiny random transformers LlamaForCausalLM with peaked (non-uniform) outputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=init,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_lm(vocab: int = 64, seed: int = 0, scale: float = 1.0, **kw) -> TinyLM:
    """A tiny project model; ``scale`` multiplies the output head to sharpen its distributions."""
    torch.manual_seed(seed)
    model = TinyLM(TinyLMConfig(vocab_size=vocab, **kw)).eval()
    with torch.no_grad():
        model.head.weight.mul_(scale)
    return model


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def project_lm():
    return tiny_lm(scale=3.0)


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models decode token by token, and on a busy 2-core
    machine one thread is far faster; the demo also runs each request on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def token_file(tmp_path, n: int) -> str:
    """A training token file of ``n`` random images with real captions; returns its path."""
    g = torch.Generator().manual_seed(0)
    captions = [caption(sample_scene(i)) for i in range(n)]
    path = tmp_path / "tokens.pt"
    torch.save(
        {"tokens": torch.randint(0, 1024, (n, 256), generator=g).to(torch.int16), "captions": captions}, path
    )
    return str(path)


def random_t2i_model(cell_map: int = 0, cell_embed_std: float = 0.5, blind: bool = False):
    """A small Shapes-T2I model with every tensor random (the official init zeroes the head;
    a cell map's last layer and ``cell_embed`` start at zero): ``cell_embed_std`` 0 keeps the
    map adding nothing; ``blind`` zeroes the caption projection, so every caption (and the
    null caption) gives the same condition."""
    from mmaccel.image_ar.t2i_model import ShapesT2IModel, t2i_config

    torch.manual_seed(0)
    model = ShapesT2IModel(t2i_config(dim=32, n_layer=2, n_head=2, image_pos_embedding=True,
                                      condition_cell_map=cell_map)).eval()  # fmt: skip
    with torch.no_grad():
        model.gpt.output.weight.normal_(0.0, 0.5)
        if cell_map:
            for layer in model.gpt.cell_map[::2]:
                layer.weight.normal_(0.0, 0.5)
            model.gpt.cell_embed.weight.zero_()
            if cell_embed_std:
                model.gpt.cell_embed.weight.normal_(0.0, cell_embed_std)
        if blind:
            model.gpt.cls_embedding.cap_proj.fc2.weight.zero_()
    return model


def tiny_var_pair(default_guidance: float = 2.5, draft_scales: int | None = 3):
    """A small random VAR pair standing in for fashion-var: large (depth 2) and small (depth 1)
    VARs over a 4-scale (1, 2, 3, 4) VQ-VAE of 64 codes, 8x8 grayscale images, float32."""
    from dataclasses import replace

    from mmaccel.image_ar.var import VAR, VQVAE, VARConfig, VQVAEConfig
    from mmaccel.image_ar.var.fashion_model import FashionVARPair

    patch_nums = (1, 2, 3, 4)
    vae_cfg = VQVAEConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8,
                          in_channels=1, patch_nums=patch_nums)  # fmt: skip
    var_cfg = VARConfig(depth=2, embed_dim=64, num_heads=4, num_classes=10, vocab_size=64, Cvae=8,
                        patch_nums=patch_nums)  # fmt: skip

    def randomised(model, seed):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not name.endswith("scale_mul_1H11"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        return model.eval()

    large = randomised(VAR(var_cfg), seed=1)
    small = randomised(VAR(replace(var_cfg, depth=1, embed_dim=32, num_heads=2)), seed=2)
    defaults = {"code": {"draft_scales": draft_scales}} if draft_scales is not None else {}
    return FashionVARPair(large, small, randomised(VQVAE(vae_cfg), seed=0), default_guidance=default_guidance,
                          method_defaults=defaults)  # fmt: skip


def tiny_mar_pair(
    default_guidance: float = 2.0,
    head_steps: int = 5,
    draft_width: int = 16,
    method_defaults=None,
    draft_overrides=None,
):
    """A small random MAR pair standing in for fashion-mar: target (width 32, depth 1 + 1) and draft
    (width ``draft_width``, ``draft_overrides`` of its MARConfig) over a 4x4 grid of 4-channel
    tokens of a tiny KL VAE (16x16 grayscale)."""
    from mmaccel.image_ar.mar.config import MARConfig
    from mmaccel.image_ar.mar.fashion_model import FashionMARPair
    from mmaccel.image_ar.mar.model import build_mar
    from mmaccel.image_ar.mar.vae import AutoencoderKL, KLVAEConfig

    def mar(width, seed, **overrides):
        torch.manual_seed(seed)
        cfg = MARConfig(**{**dict(img_size=16, vae_stride=4, vae_embed_dim=4, class_num=10, buffer_size=2,
                        encoder_embed_dim=width, encoder_depth=1, encoder_num_heads=2, decoder_embed_dim=width,
                        decoder_depth=1, decoder_num_heads=2, diffloss_d=1, diffloss_w=32,
                        num_sampling_steps=str(head_steps), attn_dropout=0.0, proj_dropout=0.0), **overrides})  # fmt: skip
        model = build_mar(cfg)
        with torch.no_grad():  # the official init zeroes the head's modulations: untrained heads all agree
            for p in model.parameters():
                p.copy_(torch.randn(p.shape) * 0.2)
        return model.eval()

    torch.manual_seed(0)
    vae = AutoencoderKL(KLVAEConfig(embed_dim=4, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                                    resolution=16, in_channels=1, out_ch=1, norm_groups=4))  # fmt: skip
    return FashionMARPair(mar(32, 1), mar(draft_width, 2, **(draft_overrides or {})), vae, latent_scale=1.0, default_guidance=default_guidance,
                          default_num_iter=8, method_defaults=method_defaults)  # fmt: skip

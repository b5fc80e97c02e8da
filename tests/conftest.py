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

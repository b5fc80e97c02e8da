"""Shared fixtures: tiny models built in-process (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from image_ar.shapes import caption, sample_scene
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

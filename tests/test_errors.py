"""Every bad input is refused with a clear error before any work starts."""

from __future__ import annotations

import pytest
import torch

import mmaccel

from .conftest import tiny_lm

IDS = torch.tensor([[1, 2, 3]])


@pytest.fixture(scope="module")
def model():
    return tiny_lm(vocab=16, max_seq_len=32)


def test_unknown_method_lists_valid_ones(model):
    with pytest.raises(ValueError, match=r"unknown method 'fast'.*ar, jacobi, sjd, sjd-coupled"):
        mmaccel.generate(model, IDS, "fast")


def test_unknown_option_names_the_valid_ones(model):
    with pytest.raises(ValueError, match=r"does not take option\(s\) windw.*window"):
        mmaccel.generate(model, IDS, "sjd", windw=4)


@pytest.mark.parametrize("window", [-1, -3])
def test_window_below_zero(model, window):
    with pytest.raises(
        ValueError, match=rf"window must be an integer >= 0 \(0: no drafts\) or 'auto', got {window}"
    ):
        mmaccel.generate(model, IDS, "sjd", window=window)


def test_unknown_init(model):
    with pytest.raises(ValueError, match="init must be one of random, horizontal, vertical; got 'diagonal'"):
        mmaccel.generate(model, IDS, "sjd", init="diagonal")


def test_vertical_init_without_grid(model):
    with pytest.raises(ValueError, match="declares no grid width"):
        mmaccel.generate(model, IDS, "sjd", init="vertical")


def test_negative_temperature(model):
    with pytest.raises(ValueError, match=r"temperature must be >= 0, got -0.5"):
        mmaccel.generate(model, IDS, temperature=-0.5)


@pytest.mark.parametrize("top_p", [0.0, 1.5, -0.1])
def test_top_p_outside_unit_interval(model, top_p):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        mmaccel.generate(model, IDS, top_p=top_p)


def test_negative_top_k(model):
    with pytest.raises(ValueError, match="top_k must be an integer >= 0"):
        mmaccel.generate(model, IDS, top_k=-1)


@pytest.mark.parametrize("n", [0, -1])
def test_max_new_tokens_below_one(model, n):
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        mmaccel.generate(model, IDS, max_new_tokens=n)


def test_input_ids_not_a_tensor(model):
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        mmaccel.generate(model, [[1, 2, 3]])


def test_input_ids_float(model):
    with pytest.raises(TypeError, match="integer token ids, got dtype torch.float32"):
        mmaccel.generate(model, IDS.float())


@pytest.mark.parametrize("ids", [torch.tensor([1, 2, 3]), torch.ones(1, 2, 3, dtype=torch.long)])
def test_input_ids_not_2d(model, ids):
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        mmaccel.generate(model, ids)


@pytest.mark.parametrize("shape", [(1, 0), (0, 3)])
def test_input_ids_empty(model, shape):
    with pytest.raises(ValueError, match="input_ids is empty"):
        mmaccel.generate(model, torch.zeros(shape, dtype=torch.long))


def test_mask_with_empty_row(model):
    with pytest.raises(ValueError, match="leaves a row with no tokens"):
        mmaccel.generate(model, IDS, attention_mask=torch.zeros_like(IDS))


def test_model_without_lm_head():
    from transformers import LlamaConfig, LlamaModel

    base = LlamaModel(
        LlamaConfig(
            vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    )
    with pytest.raises(TypeError, match="LlamaModel.*language-model head"):
        mmaccel.generate(base, IDS)


def test_not_a_model():
    with pytest.raises(TypeError, match="cannot decode a str"):
        mmaccel.generate("llama", IDS)


def test_sequence_overflowing_max_length(model):
    with pytest.raises(ValueError, match=r"prompt \(3 tokens\) \+ max_new_tokens \(30\) = 33 exceeds .* 32"):
        mmaccel.generate(model, IDS, max_new_tokens=30)


def test_cfg_needs_uncond_ids(model):
    with pytest.raises(ValueError, match="needs both cfg_scale and uncond_input_ids"):
        mmaccel.generate(model, IDS, cfg_scale=2.0)


def test_unknown_compile_mode(model):
    with pytest.raises(ValueError, match="compile must be one of auto, eager, compile, cudagraph"):
        mmaccel.generate(model, IDS, compile="jit")


def test_errors_come_before_work(model, monkeypatch):
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError):
        mmaccel.generate(model, IDS, "sjd", top_p=2.0)
    assert calls == []

"""Linear layers run through oneDNN-packed weights on a CPU (``mmaccel.cpu_linear``): the same
products, the model untouched after the call, repacked when a weight changes, switched off by
``MMACCEL_PACK_LINEAR=0``."""

from __future__ import annotations

import pytest
import torch

import mmaccel
from mmaccel import cpu_linear
from mmaccel.models import as_causal_lm

from .test_text_generate import hf_model, prompts

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


def fp32(arch: str):
    return hf_model(arch).float()


def logits_of(lm, ids):
    cache = lm.new_cache(ids.shape[0], ids.shape[1])
    slots = cache.slots(ids.shape[1])
    with torch.inference_mode():
        return lm.forward(ids, slots, cache, slots, cache.attn_mask(ids.shape[1]))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2's q/k/v projections have biases
def test_packed_logits_equal_plain_ones(arch, monkeypatch):
    model = fp32(arch)
    ids = torch.randint(1, 40, (2, 9))
    packed = as_causal_lm(model)
    assert packed._packed is not None and len(packed._packed.linears) == 2 * 7 + 1
    monkeypatch.setenv(cpu_linear.ENV, "0")
    plain = as_causal_lm(model)
    assert plain._packed is None
    torch.testing.assert_close(logits_of(packed, ids), logits_of(plain, ids), rtol=1e-5, atol=1e-5)
    # the routing is removed after the forward: the user's model runs its own linears again
    assert not any("forward" in vars(m) for m in model.modules())


def test_a_weight_changed_in_place_is_repacked():
    model = fp32("llama")
    lm = as_causal_lm(model)
    ids = torch.randint(1, 40, (1, 5))
    before = logits_of(lm, ids)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    after = logits_of(lm, ids)
    torch.testing.assert_close(after, logits_of(as_causal_lm(model), ids))
    assert not torch.allclose(before, after)
    with cpu_linear._MODELS[model].active():
        torch.testing.assert_close(model.lm_head(torch.ones(3, 32)), torch.ones(3, 32) @ model.lm_head.weight.T,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_only_float_cpu_weights_are_packed():
    assert cpu_linear.packed_linears(hf_model("llama")) is None  # float64: oneDNN has no packed path
    assert (
        len(cpu_linear.packed_linears(fp32("gpt2")).linears) == 1
    )  # its projections are Conv1D; the head is
    assert cpu_linear.packed_linears(torch.nn.Sequential(torch.nn.ReLU())) is None


@pytest.mark.parametrize(
    ("method", "options"), [("ar", {}), ("prompt-lookup", {"window": 4}), ("sjd", {"window": 4})]
)
def test_greedy_with_packed_linears_equals_transformers(method, options):
    model = fp32("llama")
    ids, mask = prompts(3)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    out = mmaccel.generate(model, ids, method, attention_mask=mask, max_new_tokens=20, do_sample=False,
                           pad_token_id=0, **options)  # fmt: skip
    assert cpu_linear._MODELS[model] is not None
    assert torch.equal(out.sequences, ref)

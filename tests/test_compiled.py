"""CompiledStep: declared buckets, torch.compile(fullgraph=True) equal to eager on CPU,
CUDA-graph capture/replay on GPU."""

from __future__ import annotations

import pytest
import torch

import mmaccel
from mmaccel.compiled import CompiledStep

from .conftest import tiny_lm


def make_step(model, cache, mode):
    def forward_block(tokens_BT):
        T = tokens_BT.shape[1]
        slots = cache.slots(T)
        return model.forward(tokens_BT, slots, cache, slots, cache.attn_mask(T))

    return CompiledStep(forward_block, [(2, 5)], mode=mode)


def run_replays(mode: str, device: str = "cpu"):
    """Five verify forwards with fresh tokens and changing fill lengths; logits and caches."""
    model = tiny_lm(vocab=32).to(device)
    cache = model.new_cache(2, 40)
    step = make_step(model, cache, mode)
    g = torch.Generator().manual_seed(0)
    outs = []
    with torch.no_grad():
        for i in range(5):
            tokens = torch.randint(0, 32, (2, 5), generator=g).to(device)
            outs.append(step(tokens).cpu())
            cache.commit(torch.tensor([1 + i % 3, 5 - i % 2], device=device))
    return outs, [k.cpu() for k in cache.k], cache.lens_B.cpu()


def test_undeclared_shape_raises():
    model = tiny_lm(vocab=32)
    step = make_step(model, model.new_cache(2, 20), "eager")
    with pytest.raises(ValueError, match=r"\(2, 4\), which is not a declared bucket \[\(2, 5\)\]"):
        step(torch.zeros(2, 4, dtype=torch.long))


def test_bad_mode_and_no_buckets():
    with pytest.raises(ValueError, match="mode must be one of"):
        CompiledStep(lambda x: x, [(1, 1)], mode="tensorrt")
    with pytest.raises(ValueError, match="at least one"):
        CompiledStep(lambda x: x, [])


def test_cudagraph_mode_refuses_cpu_tensors():
    step = CompiledStep(lambda x: x * 2, [(1, 3)], mode="cudagraph")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        step(torch.zeros(1, 3))


def test_compiled_verify_forward_equals_eager_over_replays():
    import torch._dynamo

    torch._dynamo.reset()
    eager_logits, eager_k, eager_lens = run_replays("eager")
    compiled_logits, compiled_k, compiled_lens = run_replays("compile")
    for a, b in zip(eager_logits, compiled_logits, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager_k, compiled_k, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert torch.equal(eager_lens, compiled_lens)


def test_generate_with_compiled_step_equals_eager():
    model = tiny_lm(vocab=32, scale=2.0)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    kw = dict(max_new_tokens=12, seed=3, window=4)
    eager = mmaccel.generate(model, ids, "sjd", **kw)
    compiled = mmaccel.generate(model, ids, "sjd", compile="compile", **kw)
    assert torch.equal(eager.sequences, compiled.sequences)


@pytest.mark.cuda
def test_cudagraph_replay_equals_eager_on_gpu():
    eager_logits, eager_k, _ = run_replays("eager", "cuda")
    graph_logits, graph_k, _ = run_replays("cudagraph", "cuda")
    for a, b in zip(eager_logits, graph_logits, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager_k, graph_k, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)

"""Next-scale decoding in the shared core (VAR) and CoDe, on small random float64 models."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mmaccel.image_ar.var import VAR, VQVAE, VARConfig, VQVAEConfig, autoregressive_infer_cfg
from mmaccel.next_scale import decode_scales

PATCH_NUMS = (1, 2, 3, 4)
VAE_CFG = VQVAEConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8,
                      patch_nums=PATCH_NUMS)  # fmt: skip
VAR_CFG = VARConfig(
    depth=2, embed_dim=64, num_heads=4, num_classes=10, vocab_size=64, Cvae=8, patch_nums=PATCH_NUMS
)


def randomised(model, seed=0, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("scale_mul_1H11"):
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.to(torch.float64).eval()


@pytest.fixture(scope="module")
def vae():
    return randomised(VQVAE(VAE_CFG))


@pytest.fixture(scope="module")
def var():
    return randomised(VAR(VAR_CFG), seed=1)


@pytest.fixture(scope="module")
def small():
    return randomised(VAR(replace(VAR_CFG, depth=1, embed_dim=32, num_heads=2)), seed=2)


LABELS = torch.tensor([3, 7, 0])


def test_greedy_equals_the_reference_sampler(var, vae):
    """Greedy next-scale decoding through the engine = the official-semantics sampler with top-k 1."""
    ref = autoregressive_infer_cfg(var, vae, 3, LABELS, g_seed=0, cfg=1.5, top_k=1, decode=False)
    out = decode_scales(var, vae, LABELS, cfg=1.5, do_sample=False, compile="eager")
    assert [t.tolist() for t in out.tokens] == [t.tolist() for t in ref.idx_Bl]
    assert torch.allclose(out.f_hat, ref.f_hat)
    assert out.num_forward_passes == len(PATCH_NUMS) and out.forwards == {"target": len(PATCH_NUMS)}


def test_sampling_is_seeded_and_uses_the_guided_ramp(var, vae):
    a = decode_scales(var, vae, LABELS, cfg=2.0, seed=5, compile="eager")
    b = decode_scales(var, vae, LABELS, cfg=2.0, seed=5, compile="eager")
    c = decode_scales(var, vae, LABELS, cfg=2.0, seed=6, compile="eager")
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a.tokens, c.tokens, strict=True))
    unguided = decode_scales(var, vae, LABELS, cfg=0.0, do_sample=False, compile="eager")
    ref = autoregressive_infer_cfg(var, vae, 3, LABELS, cfg=0.0, top_k=1, decode=False)
    assert [t.tolist() for t in unguided.tokens] == [t.tolist() for t in ref.idx_Bl]


def test_the_law_of_the_first_scale_matches_its_guided_softmax(var, vae):
    """Many rows: the frequency of each first-scale token tracks softmax(guided logits / T)."""
    label = torch.tensor([4])
    ref = autoregressive_infer_cfg(var, vae, 1, label, cfg=1.0, top_k=1, decode=False, keep_logits=True)
    p = (ref.logits_BlV[0][0, 0] / 2.0).softmax(-1)  # scale 0 has guidance 1 (ramp starts at 1)
    n = 2000  # one call: every row draws independently
    first = decode_scales(
        var, vae, label.repeat(n), cfg=1.0, temperature=2.0, seed=0, compile="eager"
    ).tokens[0]
    counts = torch.bincount(first[:, 0], minlength=64).double()
    top = p.argsort(descending=True)[:3]
    for i in top:
        sd = (p[i] * (1 - p[i]) / n).sqrt()
        assert abs(counts[i] / n - p[i]) < 5 * sd + 1e-3


def test_code_with_the_model_as_its_own_refiner_is_plain_decoding(var, vae):
    """CoDe's hand-over (prefill of scales 0..N in one forward, then the rest) changes nothing
    when both models are the same: same draws, same tokens."""
    plain = decode_scales(var, vae, LABELS, cfg=1.5, seed=3, compile="eager")
    for n in range(1, len(PATCH_NUMS)):
        code = decode_scales(var, vae, LABELS, cfg=1.5, seed=3, refiner=var, draft_scales=n, compile="eager")
        assert all(torch.equal(x, y) for x, y in zip(plain.tokens, code.tokens, strict=True)), n
        assert code.forwards == {"drafter": n, "refiner": len(PATCH_NUMS) - n}


def test_code_hands_the_large_scales_to_the_refiner(var, small, vae):
    code = decode_scales(var, vae, LABELS, cfg=1.5, seed=3, refiner=small, draft_scales=2, compile="eager")
    plain = decode_scales(var, vae, LABELS, cfg=1.5, seed=3, compile="eager")
    assert [torch.equal(x, y) for x, y in zip(plain.tokens, code.tokens, strict=True)][:2] == [True, True]
    assert code.forwards == {"drafter": 2, "refiner": 2} and code.f_hat.shape == plain.f_hat.shape
    # the drafter's cache is freed at the hand-over: never both held at once
    assert code.peak_cache_mb <= plain.peak_cache_mb + 1e-9


def test_compiled_scale_steps_equal_eager(var, vae):
    eager = decode_scales(var, vae, LABELS, cfg=1.5, seed=9, compile="eager")
    compiled = decode_scales(var, vae, LABELS, cfg=1.5, seed=9, compile="compile")
    assert all(torch.equal(x, y) for x, y in zip(eager.tokens, compiled.tokens, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"draft_scales": 2}, "needs both a refiner and draft_scales"),
        ({"draft_scales": 0, "refiner": "small"}, r"draft_scales must be an integer in 1\.\.3"),
        ({"draft_scales": 4, "refiner": "small"}, r"draft_scales must be an integer in 1\.\.3"),
        ({"labels": torch.tensor([10])}, r"class ids must be in 0\.\.9, got \[10\]"),
    ],
)
def test_bad_input_is_named_before_any_work(var, small, vae, kwargs, message):
    kwargs = dict(kwargs)
    labels = kwargs.pop("labels", LABELS)
    if kwargs.get("refiner") == "small":
        kwargs["refiner"] = small
    with pytest.raises(ValueError, match=message):
        decode_scales(var, vae, labels, **kwargs)

"""Next-scale models behind the public API: ``generate_image(..., model=<VAR pair>, method="ar" | "code")``,
the refusals that name what would work, and ``mmaccel eval`` on a VAR pair (small random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmaccel
from mmaccel.eval.common import MethodSpec
from mmaccel.eval.latency import measure_latency
from mmaccel.image_ar.fashion.data import CLASS_NAMES
from mmaccel.image_ar.var.fashion_model import FashionVARPair, weights_present
from mmaccel.images import NextScaleImageModel
from mmaccel.next_scale import decode_scales
from tests.conftest import tiny_var_pair

PATCH_NUMS = (1, 2, 3, 4)  # the scales of tiny_var_pair


@pytest.fixture(scope="module")
def pair():
    return tiny_var_pair()


def test_a_pair_is_a_next_scale_image_model(pair):
    assert isinstance(pair, NextScaleImageModel)
    assert pair.num_image_tokens == sum(p * p for p in PATCH_NUMS)


def test_ar_is_plain_next_scale_decoding_of_the_large_model(pair):
    out = mmaccel.generate_image(["sneaker", "bag"], model=pair, seed=3, return_output=True, compile="eager")
    ref = decode_scales(pair.var, pair.vqvae, torch.tensor([7, 8]), cfg=1.5, seed=3, compile="eager")
    assert torch.equal(out.tokens, torch.cat(ref.tokens, dim=1))
    assert out.num_forward_passes == len(PATCH_NUMS)
    assert out.generate_output.extras["forwards"] == {"target": len(PATCH_NUMS)}
    assert out.generate_output.forward_passes_per_row.tolist() == [len(PATCH_NUMS)] * 2
    # every forward emits a whole scale per image
    assert (
        sum(k * n for k, n in enumerate(out.generate_output.accepted_histogram)) == 2 * pair.num_image_tokens
    )
    assert all(isinstance(im, Image.Image) and im.size == (8, 8) for im in out.images)


def test_decoding_the_tokens_gives_the_returned_images(pair):
    out = mmaccel.generate_image(["coat"], model=pair, seed=0, return_output=True, compile="eager")
    again = pair.decode(out.tokens)
    assert (np.asarray(again[0]) == np.asarray(out.images[0])).all()


def test_code_hands_the_large_scales_to_the_refiner(pair):
    out = mmaccel.generate_image("ankle boot", "code", model=pair, seed=1, draft_scales=2, return_output=True,
                                 compile="eager")  # fmt: skip
    ref = decode_scales(pair.var, pair.vqvae, torch.tensor([9]), cfg=1.5, seed=1, refiner=pair.refiner,
                        draft_scales=2, compile="eager")  # fmt: skip
    assert torch.equal(out.tokens, torch.cat(ref.tokens, dim=1))
    assert out.generate_output.extras["forwards"] == {"drafter": 2, "refiner": 2}
    assert out.generate_output.method.draft_scales == 2
    ar = mmaccel.generate_image("ankle boot", model=pair, seed=1, return_output=True, compile="eager")
    assert out.peak_cache_mb < ar.peak_cache_mb  # the drafter's cache holds only its scales


def test_code_takes_the_models_validated_draft_scales_unless_told(pair):
    out = mmaccel.generate_image("dress", "code", model=pair, seed=0, return_output=True, compile="eager")
    assert out.generate_output.method.draft_scales == 3
    assert out.generate_output.extras["forwards"] == {"drafter": 3, "refiner": 1}
    bare = FashionVARPair(pair.var, pair.refiner, pair.vqvae)
    out = mmaccel.generate_image("dress", "code", model=bare, seed=0, return_output=True, compile="eager")
    assert out.generate_output.method.draft_scales == 2  # half of the 4 scales


def test_guidance_scale_one_turns_guidance_off(pair):
    out = mmaccel.generate_image("shirt", model=pair, seed=2, guidance_scale=1.0, return_output=True,
                                 compile="eager")  # fmt: skip
    ref = decode_scales(pair.var, pair.vqvae, torch.tensor([6]), cfg=0.0, seed=2, compile="eager")
    assert torch.equal(out.tokens, torch.cat(ref.tokens, dim=1))


@pytest.mark.parametrize(
    ("prompt", "method", "options", "message"),
    [
        ("spaceship", "ar", {}, "the classes are: " + ", ".join(CLASS_NAMES)),
        ("sneaker", "sjd", {}, "the methods that run on it are ar, code"),
        ("sneaker", "code", {"draft_scales": 4}, "draft_scales must be in 1..3"),
        ("sneaker", "code", {"draft_scales": 0}, "draft_scales must be an integer >= 1"),
        ("sneaker", "code", {"window": 4}, "does not take option(s) window"),
    ],
)
def test_bad_requests_name_what_would_work(pair, prompt, method, options, message):
    with pytest.raises(ValueError) as err:
        mmaccel.generate_image(prompt, method, model=pair, compile="eager", **options)
    assert message in str(err.value)


def test_code_needs_a_refiner(pair):
    alone = FashionVARPair(pair.var, None, pair.vqvae)
    with pytest.raises(ValueError, match="needs a refiner"):
        mmaccel.generate_image("sneaker", "code", model=alone)


def test_code_on_a_next_token_model_is_refused_naming_a_var_pair():
    from mmaccel.tiny_lm import TinyLM, TinyLMConfig

    lm = TinyLM(TinyLMConfig())
    with pytest.raises(ValueError, match="next-scale.*fashion-var"):
        mmaccel.generate(lm, torch.tensor([[1, 2, 3]]), "code", max_new_tokens=4)
    with pytest.raises(ValueError, match="fashion-var"):
        mmaccel.generate_image("a red circle", "code")


def test_eval_latency_runs_on_a_var_pair(pair):
    rows = measure_latency([MethodSpec("ar"), MethodSpec("code", {"draft_scales": 2})], ["sneaker", "bag"], pair,
                           repeats=1, compile="eager", progress=False)  # fmt: skip
    assert [r.method for r in rows] == ["ar", "code:draft_scales=2"]
    assert rows[0].speedup_vs_ar == 1.0 and rows[1].speedup_vs_ar > 0
    assert rows[0].forward_passes == rows[1].forward_passes == len(PATCH_NUMS)


@pytest.mark.skipif(not weights_present(), reason="the shipped fashion-var weights are not in this checkout")
def test_the_shipped_pair_generates_a_sneaker():
    model = mmaccel.load_model("fashion-var")
    image = mmaccel.generate_image("sneaker", "code", model="fashion-var", seed=0)
    assert image.size == (32, 32) and image.mode == "L"
    assert model.refiner is not None and model.num_image_tokens == 155
    # the validated setting (docs/benchmarks/fashion_var) is what a user naming the method gets
    out = mmaccel.generate_image("bag", "code", model=model, seed=0, return_output=True)
    assert out.generate_output.method.draft_scales == 2 and model.default_guidance == 3.0


def test_naming_the_model_picks_its_benchmark():
    from mmaccel.eval.benchmarks import benchmark_for

    assert benchmark_for(None, "fashion-var").name == "fashion-mnist"
    assert benchmark_for(None, None).name == "shapes-t2i"
    assert benchmark_for("shapes-t2i", "fashion-var").name == "shapes-t2i"  # a named one always wins
    with pytest.raises(ValueError, match="no installed benchmark is meant for model 'nope'"):
        benchmark_for(None, "nope")

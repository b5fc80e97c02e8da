"""MAR pairs behind the public API: ``generate_image(model=<MAR pair>, method="ar"|"cspd")``.

A small random pair (``conftest.tiny_mar_pair``) stands in for the shipped ``fashion-mar``; the
shipped pair itself is checked when its weights are present. The calls must give what
``mmaccel.masked_set.decode_masked`` gives, count forwards per model, take the model's defaults,
and refuse bad input before any work.
"""

from __future__ import annotations

import pytest
import torch

import mmaccel
from mmaccel.acceptors.continuous import ContinuousSpeculative
from mmaccel.drafters.masked_draft import MaskedSetDrafter
from mmaccel.masked_set import decode_masked, verify_plan
from tests.conftest import tiny_lm, tiny_mar_pair, tiny_var_pair

PROMPTS = ["sneaker", "bag", "trouser"]


@pytest.fixture(scope="module")
def pair():
    return tiny_mar_pair()


def test_ar_is_the_target_alone(pair):
    out = mmaccel.generate_image(PROMPTS, model=pair, method="ar", seed=0, return_output=True, num_iter=6)
    ref = decode_masked(pair.target, pair.labels(PROMPTS), num_iter=6, cfg=pair.default_guidance, seed=0)
    assert torch.equal(out.tokens, ref.tokens_BLC)
    assert out.num_forward_passes == 6 and out.generate_output.extras["forwards"] == {"target": 6}
    assert len(out.images) == 3 and out.images[0].size == (16, 16) and out.images[0].mode == "L"
    assert out.num_tokens == 16 and sum(out.generate_output.accepted_histogram) == 6 * 3


def test_cspd_is_the_drafter_plus_the_continuous_acceptor(pair):
    out = mmaccel.generate_image(PROMPTS, model=pair, method="cspd", seed=1, return_output=True, gamma=3,
                                 prefill_ratio=0.25, num_iter=8)  # fmt: skip
    plan = verify_plan(8, 3, 2)
    ref = decode_masked(pair.target, pair.labels(PROMPTS), num_iter=8, cfg=pair.default_guidance, seed=1, plan=plan,
                        drafter=MaskedSetDrafter(pair.draft), acceptor=ContinuousSpeculative())  # fmt: skip
    assert torch.equal(out.tokens, ref.tokens_BLC)
    extras = out.generate_output.extras
    assert extras["forwards"] == {"target": 4, "draft": 6} and out.num_forward_passes == 4
    assert extras["drafted"] == ref.drafted and 0 <= extras["acceptance_rate"] < 1  # random models disagree
    assert torch.isfinite(out.tokens).all()
    assert out.generate_output.method.gamma == 3 and out.generate_output.method.num_iter == 8


def test_same_seed_same_images_and_model_defaults():
    pair = tiny_mar_pair(method_defaults={"cspd": {"gamma": 2, "prefill_ratio": 0.0}})
    a = mmaccel.generate_image(PROMPTS, model=pair, method="cspd", seed=3, return_output=True)
    b = mmaccel.generate_image(PROMPTS, model=pair, method="cspd", seed=3, return_output=True)
    assert torch.equal(a.tokens, b.tokens)
    assert a.generate_output.method.gamma == 2 and a.generate_output.method.num_iter == pair.default_num_iter
    assert a.generate_output.extras["forwards"] == {"target": 4, "draft": 8}
    c = mmaccel.generate_image(PROMPTS, model=pair, method="cspd", seed=3, return_output=True, gamma=4)
    assert c.generate_output.method.gamma == 4  # the user's option wins


def test_far_draft_still_fills_every_token(pair):
    """A draft whose Gaussians sit far from the target's: everything goes through the residual."""
    far = tiny_mar_pair()
    with torch.no_grad():
        far.draft.mar.diffloss.net.final_layer.linear.bias[:4] += 40.0  # eps shifted far away
    out = mmaccel.generate_image(PROMPTS, model=far, method="cspd", seed=0, return_output=True, gamma=4)
    assert out.generate_output.extras["acceptance_rate"] < 0.05
    assert torch.isfinite(out.tokens).all() and (out.tokens != 0).all()


@pytest.mark.parametrize(
    "options,match",
    [
        ({"gamma": 0}, "gamma must be an integer >= 1"),
        ({"gamma": 1.5}, "gamma must be an integer >= 1"),
        ({"prefill_ratio": 1.0}, r"prefill_ratio must be a number in \[0, 1\)"),
        ({"prefill_ratio": -0.1}, r"prefill_ratio must be a number in \[0, 1\)"),
        ({"cspd_kappa": 0}, "cspd_kappa must be a number > 0"),
        ({"num_iter": 0}, "num_iter must be an integer >= 1"),
        ({"num_iter": 17}, "num_iter must be <= 16"),
        ({"window": 4}, "does not take option"),
    ],
)
def test_bad_cspd_options_fail_before_any_work(pair, options, match, monkeypatch):
    monkeypatch.setattr(pair.target, "conditions", _no_work)
    with pytest.raises(ValueError, match=match):
        mmaccel.generate_image("sneaker", model=pair, method="cspd", **options)


def _no_work(*args, **kwargs):
    raise AssertionError("a forward ran before the error")


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"vae_embed_dim": 8}, "token dimension is 8, the target's 4"),
        ({"img_size": 32}, "sequence length is 64"),
    ],
)
def test_draft_of_other_tokens_is_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_mar_pair(draft_overrides=overrides)


def test_draft_with_other_head_steps_is_refused(pair):
    other = tiny_mar_pair()
    other.draft.set_head_steps(3)
    with pytest.raises(ValueError, match="head sampling steps"):
        mmaccel.generate_image("sneaker", model=other, method="cspd")


def test_other_methods_and_models_are_refused(pair):
    with pytest.raises(ValueError, match="continuous tokens in masked sets.*got 'sjd'"):
        mmaccel.generate_image("sneaker", model=pair, method="sjd")
    with pytest.raises(ValueError, match="top_k and top_p filter a vocabulary"):
        mmaccel.generate_image("sneaker", model=pair, method="ar", top_k=5)
    with pytest.raises(ValueError, match="prompt 0"):
        mmaccel.generate_image("spaceship", model=pair)
    with pytest.raises(ValueError, match="method 'cspd' .* masked-set model pair"):
        mmaccel.generate_image("a large red circle at the top left on a blue background", method="cspd")
    with pytest.raises(ValueError, match="method 'cspd' .*use one of: ar, code"):
        mmaccel.generate_image("sneaker", model=tiny_var_pair(), method="cspd")
    with pytest.raises(ValueError, match="method 'cspd'"):
        mmaccel.generate(tiny_lm(), torch.zeros(1, 2, dtype=torch.long), method="cspd")


def test_shipped_pair():
    from mmaccel.image_ar.mar.fashion_model import weights_present

    if not weights_present():
        pytest.skip("fashion-mar weights not shipped yet")
    pair = mmaccel.load_model("fashion-mar")
    assert pair.target.seq_len == 64 and pair.target.token_dim == 4
    out = mmaccel.generate_image(
        ["sneaker", "bag"], model="fashion-mar", method="cspd", seed=0, return_output=True
    )
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    assert out.generate_output.extras["forwards"]["draft"] > 0
    # scaled latents have unit-order spread; a head respaced to keep t = 999 sends them to hundreds
    assert out.tokens.std() < 5
    assert pair.target.mar.diffloss.gen_diffusion.timestep_map == list(range(0, 1000, 20))


def test_head_steps_are_respaced_from_t0():
    pair = tiny_mar_pair()
    pair.target.set_head_steps(50)
    assert pair.target.head_steps == 50
    assert pair.target.mar.diffloss.gen_diffusion.timestep_map == list(range(0, 1000, 20))


def test_compiled_modes_are_refused_on_a_mar_pair(pair):
    with pytest.raises(ValueError, match="runs eagerly"):
        mmaccel.generate_image("sneaker", model=pair, method="ar", compile="compile")

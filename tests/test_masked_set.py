"""Masked-set decoding (MAR) in the core, and CSpD's law end to end on a toy model.

The toy masked-set model has analytic condition vectors (a class offset plus a weighted sum of
the known tokens, different per position) and a head whose denoising chain is a fixed linear
recursion driven by the given noise, ending in a Gaussian step. CSpD with a mismatched draft must
give the same law as the target alone with the verify steps' schedule (two-sample KS per position
and on the sum); a draft far from the target must still fill every token; the official
softened ratio must fail the same comparison (the test has power).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mmaccel.acceptors.continuous import ContinuousSpeculative
from mmaccel.acceptors.distributions import Gaussian
from mmaccel.drafters.masked_draft import MaskedSetDrafter
from mmaccel.masked_set import MaskedSetModel, Schedule, decode_masked, verify_plan

ALPHA = 1e-3


class ToyMasked:
    """seq_len 4, 1-D tokens; z_l = class + offset + w * pos_l * (sum of known tokens)."""

    def __init__(
        self, w: float = 0.8, offset: float = 0.0, std: float = 0.3, head_steps: int = 3, L: int = 4
    ):
        self.seq_len, self.token_dim, self.head_steps = L, 1, head_steps
        self.w, self.offset, self.std = w, offset, std
        self.pos_L = torch.tensor([1.0, -0.7, 0.4, 0.9, -0.3, 0.6][:L])

    def condition(self, labels_B, guided):
        e_B1 = labels_B.float()[:, None] * 2.0
        return torch.cat([e_B1, torch.zeros_like(e_B1)]) if guided else e_B1

    def conditions(self, tokens_BLC, known_BL, cond):
        s_B = (tokens_BLC[..., 0] * known_BL).sum(1)
        return cond[:, None, :] + self.offset + self.w * self.pos_L[None, :, None] * s_B[:, None, None]

    def head(self, z_ND, x_T_NC, inter_SNC, temperature, cfg):
        if torch.is_tensor(cfg) or cfg != 1.0:
            z_c, z_u = z_ND.chunk(2)
            z_ND = z_u + cfg * (z_c - z_u)
            x_T_NC, inter_SNC = x_T_NC[: len(z_ND)], inter_SNC[:, : len(z_ND)]
        x = x_T_NC
        for n in inter_SNC:
            x = 0.5 * x + 0.5 * z_ND + 0.3 * temperature * n
        return Gaussian(0.7 * z_ND + 0.2 * x, torch.full_like(x, self.std * temperature))


def _decode(drafter_model=None, plan=None, acceptor=None, B=6000, seed=0, cfg=1.0):
    labels = torch.arange(B) % 2
    drafter = MaskedSetDrafter(drafter_model) if drafter_model is not None else None
    return decode_masked(ToyMasked(), labels, num_iter=4, cfg=cfg, seed=seed, plan=plan, drafter=drafter,
                         acceptor=acceptor)  # fmt: skip


def _same_law(a, b) -> float:
    x, y = a.tokens_BLC[..., 0], b.tokens_BLC[..., 0]
    cols = [(x[:, i], y[:, i]) for i in range(x.shape[1])] + [
        (x.sum(1), y.sum(1)),
        (x[:, 0] * x[:, 1], y[:, 0] * y[:, 1]),
    ]
    return min(stats.ks_2samp(u.numpy(), v.numpy()).pvalue for u, v in cols) * len(cols)  # Bonferroni


PLAN = verify_plan(4, gamma=2, prefill_steps=1)


def test_toy_model_fits_the_protocol():
    assert isinstance(ToyMasked(), MaskedSetModel)
    assert PLAN == [(0, 1, False), (1, 3, True), (3, 4, False)]
    assert verify_plan(3, gamma=1) == [(0, 1, True), (1, 2, True), (2, 3, True)]


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_cspd_follows_the_target_with_the_verify_schedule(cfg):
    merged = _decode(plan=PLAN, seed=1, cfg=cfg)
    out = _decode(ToyMasked(w=0.3, offset=0.4, std=0.45), plan=PLAN, seed=2, cfg=cfg)
    assert 0 < out.accepted < out.drafted  # some kept, some redrawn
    assert _same_law(out, merged) > ALPHA
    assert out.forwards == {"target": 3, "draft": 2}


def test_far_draft_fills_every_token_with_the_target_law():
    merged = _decode(plan=PLAN, seed=3)
    out = _decode(ToyMasked(offset=60.0, std=0.05), plan=PLAN, seed=4)
    assert out.accepted == 0 and out.residual_rounds >= 1
    assert torch.isfinite(out.tokens_BLC).all() and (out.tokens_BLC != 0).all()
    assert _same_law(out, merged) > ALPHA


def test_softened_ratio_follows_the_draft_and_the_test_sees_it():
    merged = _decode(plan=PLAN, seed=5)
    out = _decode(ToyMasked(w=0.3, offset=1.0), plan=PLAN, seed=6, acceptor=ContinuousSpeculative(kappa=42.0))
    assert _same_law(out, merged) < ALPHA


def test_ar_is_one_target_forward_per_step_and_seeded():
    a, b = _decode(B=8, seed=7), _decode(B=8, seed=7)
    assert a.num_forward_passes == 4 and a.forwards == {"target": 4}
    assert torch.equal(a.tokens_BLC, b.tokens_BLC)
    assert not torch.equal(a.tokens_BLC, _decode(B=8, seed=8).tokens_BLC)


def _official_unknown(L: int, num_iter: int) -> list[int]:
    """MAR's mask_len after each step (``generate_next_mask``), recomputed independently."""
    out, prev = [], L
    for step in range(num_iter):
        m = int(math.floor(L * math.cos(math.pi / 2.0 * (step + 1) / num_iter)))
        m = max(1, min(prev - 1, m))
        out.append(m)
        prev = m
    return out


@pytest.mark.parametrize("L,n", [(64, 16), (256, 64), (64, 64), (4, 4), (64, 1)])
def test_schedule_is_mars(L, n):
    s = Schedule.cosine(L, n)
    assert list(s.unknown) == _official_unknown(L, n)
    sizes = [s.bounds[k] - s.bounds[k + 1] for k in range(n)]
    assert sum(sizes) == L and min(sizes) >= 1 and s.bounds[-1] == 0


def test_block_guidance_follows_the_step_of_each_position():
    s = Schedule.cosine(64, 8)
    g = s.block_guidance(3.0, 2, 5)
    sizes = {k: s.bounds[k] - s.bounds[k + 1] for k in range(2, 5)}
    assert g.shape == (s.bounds[2] - s.bounds[5],)
    # the block's positions are orders[:, bounds[5]:bounds[2]]: step 4's set, then 3's, then 2's
    expected = (
        [s.guidance(3.0, 4)] * sizes[4] + [s.guidance(3.0, 3)] * sizes[3] + [s.guidance(3.0, 2)] * sizes[2]
    )
    torch.testing.assert_close(g, torch.tensor(expected))
    assert s.guidance(3.0, 0) < s.guidance(3.0, 7) <= 3.0

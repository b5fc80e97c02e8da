"""ZipAR: its schedule, its exact sampling law, equality with ar for wide windows, hidden slots, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

import mmaccel
from mmaccel.zipar import zipar_forward_passes

from . import test_exactness as ex
from .conftest import tiny_llama, tiny_lm

V, PROMPT = ex.V, ex.PROMPT  # vocabulary 6; a 2 x 2 grid = 4 new tokens (every image enumerable)


def sample_grid(model, method: str, **options) -> torch.Tensor:
    ids = PROMPT.expand(ex.SAMPLES, -1)
    out = mmaccel.generate(model, ids, method, max_new_tokens=4, grid_width=2, seed=0, **options)
    return out.new_tokens


@pytest.mark.parametrize(("method", "options"), [("zipar", {}), ("zipar+sjd", {"window": 2})])
def test_window_at_least_the_width_is_ar_in_distribution(method, options):
    model = tiny_lm(vocab=V, scale=4.0)
    exact = ex.exact_distribution(model, ex.SETTINGS["plain"])
    assert ex.chi_square_p(sample_grid(model, method, zipar_window=2, **options), exact) > 1e-3


def zipar_w1_distribution(model) -> dict[tuple[int, ...], float]:
    """The exact law of ZipAR with w = 1 on a 2 x 2 grid: token (1, 0) is predicted from the
    stand-in (row 0's latest token, (0, 0)) placed at position (0, 1); (1, 1) sees everything."""
    P = PROMPT.shape[1]
    probs = {}
    with torch.no_grad():
        for a, b, c, d in itertools.product(range(V), repeat=4):
            logp = model.full_logits(torch.tensor([[*PROMPT[0], a, b, c]])).log_softmax(-1)[0]
            standin = model.full_logits(torch.tensor([[*PROMPT[0], a, a]])).log_softmax(-1)[0, -1]
            probs[(a, b, c, d)] = float((logp[P - 1, a] + logp[P, b] + standin[c] + logp[P + 2, d]).exp())
    return probs


def test_narrow_window_samples_exactly_its_schedule():
    model = tiny_lm(vocab=V, scale=4.0)
    exact = zipar_w1_distribution(model)
    assert abs(sum(exact.values()) - 1) < 1e-5
    assert ex.chi_square_p(sample_grid(model, "zipar", zipar_window=1), exact) > 1e-3
    # and it is really not ar's law (the harness could tell them apart)
    ar_law = ex.exact_distribution(model, ex.SETTINGS["plain"])
    assert ex.chi_square_p(sample_grid(model, "zipar", zipar_window=1), ar_law) < 1e-6


@pytest.mark.parametrize(
    "make", [lambda: tiny_lm(vocab=32), lambda: tiny_llama(vocab=32)], ids=["project", "hf-llama"]
)
def test_greedy_with_a_wide_window_is_ar_bit_for_bit(make):
    model = make()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    ar = mmaccel.generate(model, ids, "ar", max_new_tokens=24, do_sample=False)
    for method, opts in [("zipar", {}), ("zipar+sjd", {"window": 3})]:
        z = mmaccel.generate(
            model, ids, method, max_new_tokens=24, grid_width=6, zipar_window=6, do_sample=False, **opts
        )
        assert torch.equal(z.sequences, ar.sequences), method


@pytest.mark.parametrize(
    ("rows", "width", "window"), [(4, 4, 1), (4, 4, 2), (3, 5, 2), (5, 3, 3), (4, 4, 9), (1, 6, 2)]
)
def test_forward_passes_follow_the_schedule(rows, width, window):
    out = mmaccel.generate(
        tiny_lm(vocab=16), torch.tensor([[1, 2]]), "zipar", max_new_tokens=rows * width,
        grid_width=width, zipar_window=window, seed=0,
    )  # fmt: skip
    assert out.num_forward_passes == zipar_forward_passes(rows, width, window)
    w = min(window, width)
    expected = [[r * w + c for c in range(width)] for r in range(rows)]
    assert out.token_forward_index[0].view(rows, width).tolist() == expected
    # the histogram counts every row's tokens of a step together (one per active row)
    assert sum(k * n for k, n in enumerate(out.accepted_histogram)) == rows * width


def test_contents_of_undecoded_slots_change_nothing():
    model = tiny_lm(vocab=16)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    kw = dict(max_new_tokens=16, grid_width=4, zipar_window=2, seed=3)
    methods = [("zipar", {}), ("zipar+sjd", {"window": 3})]
    clean = [mmaccel.generate(model, ids, m, **kw, **o).sequences for m, o in methods]
    new_cache = model.new_cache

    def garbage_cache(batch, capacity):
        cache = new_cache(batch, capacity)
        for buf in (*cache.k, *cache.v):
            buf.normal_(0, 100)
        return cache

    model.new_cache = garbage_cache
    dirty = [mmaccel.generate(model, ids, m, **kw, **o).sequences for m, o in methods]
    assert all(torch.equal(a, b) for a, b in zip(clean, dirty, strict=True))


def test_windowed_zipar_cuts_forwards_and_never_sees_less_of_the_row_above():
    model = tiny_lm(vocab=16, scale=3.0)
    model.codebook = torch.randn(16, 4)
    ids = torch.tensor([[1, 2, 3]] * 4)
    w, H, W = 2, 8, 8
    kw = dict(max_new_tokens=H * W, grid_width=W, zipar_window=w, seed=0)
    plain = mmaccel.generate(model, ids, "zipar", **kw)
    assert_sees_the_row_above(plain.token_forward_index, H, W, w)
    for method, opts in [
        ("zipar+sjd", {"window": 4}),
        ("zipar+lantern", {"window": 4, "lantern_delta": 0.3, "lantern_k": 8}),
    ]:
        out = mmaccel.generate(model, ids, method, **kw, **opts)
        assert out.num_forward_passes < plain.num_forward_passes
        assert out.new_tokens.shape == (4, H * W)
        assert_sees_the_row_above(out.token_forward_index, H, W, w)


def assert_sees_the_row_above(token_forward_BN: torch.Tensor, H: int, W: int, w: int) -> None:
    """Every token (r, c) is emitted after row r - 1's token at column min(c + w - 1, W - 1)
    (plain ZipAR's view of the row above; the windowed methods may see more, never less), and
    a row's tokens come in column order."""
    tf = token_forward_BN.view(-1, H, W)
    col = (torch.arange(W) + w - 1).clamp(max=W - 1)
    assert (tf[:, :-1, col] < tf[:, 1:, :]).all()
    assert (tf[:, :, 1:] >= tf[:, :, :-1]).all()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"zipar_window": 0, "grid_width": 4}, "zipar_window must be an integer >= 1"),
        ({"grid_width": 5}, "multiple of grid_width"),
        ({}, "declares no grid width"),
        ({"grid_width": 4, "eos_token_id": 3}, "eos_token_id is not supported"),
        ({"grid_width": 4, "lantern_delta": 0.2}, "lantern_delta is read by lantern, zipar\\+lantern"),
    ],
)
def test_bad_options_raise_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        mmaccel.generate(tiny_lm(vocab=16), torch.tensor([[1, 2]]), "zipar", max_new_tokens=16, **options)

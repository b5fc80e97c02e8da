"""window="auto": the cost model, the acceptance estimate and the choice they make."""

from __future__ import annotations

import pytest
import torch

import mmaccel
from mmaccel import window
from mmaccel.window import Record, tokens_per_step

from .conftest import tiny_lm


@pytest.fixture(autouse=True)
def fresh_tables(monkeypatch):
    monkeypatch.setattr(window, "_COSTS", {})
    monkeypatch.setattr(window, "_RECORDS", {})
    monkeypatch.setattr(window, "_CHOSEN", {})


def hist_for(steps: int, survival: list[float]) -> list[int]:
    """Steps by tokens emitted for a given P(kept >= k), k = 1.."""
    s = [1.0, *survival, 0.0]
    return [0] + [round(steps * (s[k] - s[k + 1])) for k in range(len(s) - 1)]


def test_tokens_per_step_from_measurement_truncation_extension_and_prior():
    rec = Record()
    prior = tokens_per_step(rec, 2)
    assert prior == pytest.approx(1 + window.PRIOR_FIRST * (1 + window.PRIOR_RATIO))
    assert tokens_per_step(rec, 0) == 1.0 and tokens_per_step(rec, 0, base=3.0) == 3.0
    h = hist_for(1000, [0.6, 0.3, 0.15, 0.05])  # measured with a window of 4
    window.record("k", 4, h, 1.0)
    rec = window._RECORDS["k"]
    assert tokens_per_step(rec, 4) == pytest.approx(1 + 0.6 + 0.3 + 0.15 + 0.05, abs=0.01)
    assert tokens_per_step(rec, 2) == pytest.approx(1 + 0.6 + 0.3, abs=0.01)  # truncated
    assert tokens_per_step(rec, 8) > tokens_per_step(rec, 4)  # extended geometrically
    assert tokens_per_step(rec, 8) < tokens_per_step(rec, 4) + 0.05 * 4


def fake_costs(costs):
    def measure(lm, rows, capacity, blocks, repeats=7):
        return {T: costs(T) for T in blocks}

    return measure


def test_the_choice_is_plain_decoding_when_forwards_cost_in_proportion_to_tokens(monkeypatch):
    monkeypatch.setattr(window, "forward_costs", fake_costs(lambda T: 0.01 * T))
    assert window.choose("m", (40, 24, 256), None, 40, 500) == 0


def test_the_choice_is_a_long_window_when_forwards_cost_the_same_and_drafts_are_kept(monkeypatch):
    monkeypatch.setattr(window, "forward_costs", fake_costs(lambda T: 0.01))
    window.record("m", 16, hist_for(500, [0.95**k for k in range(1, 17)]), 5.0)
    assert window.choose("m", (2, 24, 256), None, 2, 500) == max(window.CANDIDATES)


def test_measured_step_time_beyond_the_forward_counts(monkeypatch):
    monkeypatch.setattr(window, "forward_costs", fake_costs(lambda T: 0.01))
    # window 8 was measured: 1.5 tokens per step but each step took 10 forwards' time
    window.record("m", 8, hist_for(100, [0.5]), 100 * 0.1)
    rates = window.rates("m", None, 2, 500)
    assert rates[8] < rates[0]


def test_costs_are_measured_once_and_never_fall_with_longer_blocks():
    model = tiny_lm(vocab=32)
    first = window.forward_costs(model, 2, 64, (1, 2, 5))
    assert list(first) == [1, 2, 5] and all(first[a] <= first[b] for a, b in [(1, 2), (2, 5)])
    assert window.forward_costs(model, 2, 64, (1, 2, 5)) == first  # cached, not re-timed


def test_auto_reports_its_window_and_keeps_it_once_timed_so_a_seed_reproduces():
    model, ids = tiny_lm(vocab=32, scale=2.0), torch.tensor([[1, 2, 3], [4, 5, 6]])
    for _ in range(8):  # the first calls may try windows until the one chosen has been timed
        mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=3, window="auto", compile="eager")
        if window._CHOSEN:
            break
    assert window._CHOSEN, "the choice never settled"
    a = mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=3, window="auto", compile="eager")
    b = mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=3, window="auto", compile="eager")
    K = a.method.window
    assert isinstance(K, int) and K in window.CANDIDATES and b.method.window == K
    assert torch.equal(a.sequences, b.sequences)
    pinned = mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=3, window=K)
    assert torch.equal(pinned.sequences, a.sequences)


@pytest.mark.parametrize("method", ["jacobi", "sjd", "sjd-coupled"])
def test_window_zero_is_plain_decoding_token_for_token(method):
    model, ids = tiny_lm(vocab=32, scale=2.0), torch.tensor([[1, 2, 3], [4, 5, 6]])
    ar = mmaccel.generate(model, ids, "ar", max_new_tokens=16, seed=9)
    zero = mmaccel.generate(model, ids, method, max_new_tokens=16, seed=9, window=0)
    assert torch.equal(zero.sequences, ar.sequences) and zero.num_forward_passes == ar.num_forward_passes


@pytest.mark.parametrize("bad", [-1, 2.5, "fast"])
def test_bad_window_is_named(bad):
    with pytest.raises(ValueError, match="window must be an integer >= 0 .* or 'auto'"):
        mmaccel.generate(tiny_lm(vocab=16), torch.tensor([[1, 2]]), "sjd", max_new_tokens=4, window=bad)


def test_the_choice_is_kept_only_once_the_chosen_window_has_been_timed(monkeypatch):
    monkeypatch.setattr(window, "forward_costs", fake_costs(lambda T: 0.01))
    window.record("m", 16, hist_for(500, [0.95**k for k in range(1, 17)]), None)  # untimed (compiled)
    assert window.choose("m", "s", None, 2, 500) == 16 and not window._CHOSEN
    window.record("m", 16, hist_for(500, [0.95**k for k in range(1, 17)]), 500 * 0.01)
    assert window.choose("m", "s", None, 2, 500) == 16 and window._CHOSEN == {("m", "s"): 16}

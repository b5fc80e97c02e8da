"""window="auto": the cost model, the acceptance estimate and the choice they make."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch

import mmaccel
from mmaccel import window
from mmaccel.methods import resolve_method
from mmaccel.sampling import SamplingConfig
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
    model = tiny_lm(vocab=32)
    window.record(model, SJD, SAMPLING, 4, h)
    rec = window._RECORDS[window.method_key(model, SJD, SAMPLING)]
    assert tokens_per_step(rec, 4) == pytest.approx(1 + 0.6 + 0.3 + 0.15 + 0.05, abs=0.01)
    assert tokens_per_step(rec, 2) == pytest.approx(1 + 0.6 + 0.3, abs=0.01)  # truncated
    assert tokens_per_step(rec, 8) > tokens_per_step(rec, 4)  # extended geometrically
    assert tokens_per_step(rec, 8) < tokens_per_step(rec, 4) + 0.05 * 4


SJD, SAMPLING = resolve_method("sjd", {}), SamplingConfig()


def steps_costing(cost, calls=None):
    """A ``time_steps`` whose every step of window K takes ``cost(K)`` seconds."""

    def time_steps(K):
        if calls is not None:
            calls.append(K)
        return [cost(K)] * (window.WARMUP_STEPS + window.TIMED_STEPS)

    return time_steps


def test_the_choice_is_plain_decoding_when_steps_cost_in_proportion_to_tokens():
    model = tiny_lm(vocab=32)
    assert window.choose(model, SJD, SAMPLING, (40, 24), steps_costing(lambda K: 0.01 * (K + 1)), 256) == 0


def test_the_choice_is_a_long_window_when_steps_cost_the_same_and_drafts_are_kept():
    model = tiny_lm(vocab=32)
    key = window.method_key(model, SJD, SAMPLING)
    window.record(model, SJD, SAMPLING, 16, hist_for(500, [0.95**k for k in range(1, 17)]))
    assert window.choose(model, SJD, SAMPLING, (2, 24), steps_costing(lambda K: 0.01), 256) == max(
        window.CANDIDATES
    )
    assert window._CHOSEN == {(key, (2, 24)): 16}  # measured acceptance: kept


def test_timing_stops_once_no_longer_window_can_pay_and_the_rest_are_interpolated():
    model, calls = tiny_lm(vocab=32), []
    window.record(model, SJD, SAMPLING, 16, hist_for(500, [0.6**k for k in range(1, 17)]))  # tau(16) ~ 2.5
    rates = window.rates(model, SJD, SAMPLING, "s", steps_costing(lambda K: 0.01 * (K + 1), calls), 256)
    assert calls == [0, 1, 2]  # a 3-token step costs 3x; no window emits 3 tokens per step
    assert set(rates) == set(window.CANDIDATES) and max(rates, key=rates.get) == 0
    assert window.rates(model, SJD, SAMPLING, "s", steps_costing(lambda K: 1.0, calls), 256) == rates
    assert calls == [0, 1, 2]  # timed once per method, shape and device


def test_step_costs_never_fall_with_longer_windows_and_interpolate_between_timed_ones():
    model = tiny_lm(vocab=32)
    measured = {0: 1.0, 1: 2.0, 2: 1.5, 4: 4.0, 8: 8.0, 16: 16.0}  # 2 timed below 1: noise
    costs = window.step_costs(
        "k", "s", model, steps_costing(measured.get), window.CANDIDATES, lambda t, K: True
    )
    assert costs[2] == 2.0 and costs[3] == 3.0 and costs[6] == 6.0 and costs[12] == 12.0


def test_windows_longer_than_the_call_are_not_candidates():
    model = tiny_lm(vocab=32)
    assert set(window.rates(model, SJD, SAMPLING, "s", steps_costing(lambda K: 0.01), 4)) == {0, 1, 2, 3}


def test_a_shipped_profile_at_the_same_method_and_sampling_is_used_and_the_choice_kept_at_once():
    model = tiny_lm(vocab=32)
    model.acceptance_profile = {
        "sampling": dataclasses.asdict(SAMPLING),
        "profiles": [{"method": "sjd", "options": {"init": "random", "grid_width": None},
                      "hist": {"4": hist_for(100, [0.9, 0.8, 0.7, 0.6])}}],
    }  # fmt: skip
    window.record(model, SJD, SAMPLING, 2, hist_for(10, [0.5, 0.2]))  # a call with a fixed window ran first
    K = window.choose(model, SJD, SAMPLING, "s", steps_costing(lambda K: 0.01 if K <= 4 else 1.0), 256)
    assert K == 4 and window._CHOSEN  # the profile is measured acceptance: kept at once
    key = window.method_key(model, SJD, SAMPLING)
    assert window._RECORDS[key].steps == {4: 100, 2: 10}
    other = dataclasses.replace(SAMPLING, temperature=0.5)  # another target: the profile does not apply
    assert window.known(window.method_key(model, SJD, other), model, SJD, other).steps == {}
    coupled = resolve_method("sjd-coupled", {})  # another method: likewise
    assert window.known(window.method_key(model, coupled, SAMPLING), model, coupled, SAMPLING).steps == {}


def test_the_shipped_profile_matches_the_models_method_defaults_and_sampling():
    from mmaccel.image_ar.default_model import ACCEPTANCE, load_default

    pipeline, profile = load_default(), json.loads(ACCEPTANCE.read_text())
    sampling = SamplingConfig(True, pipeline.default_temperature, 0, 1.0, pipeline.default_guidance)
    assert profile["sampling"] == dataclasses.asdict(sampling)
    for entry in profile["profiles"]:
        config = resolve_method(entry["method"], {}, model=pipeline)
        lm = types.SimpleNamespace(acceptance_profile=profile)
        record = window.known(("probe", entry["method"]), lm, config, sampling)
        assert set(record.steps) == set(window.CANDIDATES) - {0}, f"{entry['method']}: stale profile"


def test_auto_reports_its_window_and_keeps_it_so_a_seed_reproduces():
    model, ids = tiny_lm(vocab=32, scale=2.0), torch.tensor([[1, 2, 3], [4, 5, 6]])
    for _ in range(len(window.CANDIDATES)):  # calls re-choose until the chosen window is measured
        mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=3, compile="eager")
        if window._CHOSEN:
            break
    assert window._CHOSEN, "the choice never settled"
    a = mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=3, compile="eager")
    b = mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=3, window="auto", compile="eager")
    K = a.method.window
    assert isinstance(K, int) and K in window.CANDIDATES and b.method.window == K
    assert torch.equal(a.sequences, b.sequences)
    pinned = mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=3, window=K)
    assert torch.equal(pinned.sequences, a.sequences)


def test_timing_a_window_leaves_the_callers_draws_alone():
    model, ids = tiny_lm(vocab=32, scale=2.0), torch.tensor([[1, 2, 3]])
    out = mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=5, compile="eager")  # times windows
    assert window._COSTS
    again = mmaccel.generate(model, ids, "sjd", max_new_tokens=24, seed=5, window=out.method.window)
    assert torch.equal(out.sequences, again.sequences)


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

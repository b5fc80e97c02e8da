"""Lossless methods sample exactly the autoregressive distribution (chi-square on an
enumerable model: vocabulary 6, 4 new tokens, every continuation's exact probability known)."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

import mmaccel
from mmaccel.sampling import SamplingConfig, process_logits

from .conftest import tiny_llama, tiny_lm

V, NEW, SAMPLES = 6, 4, 20_000
PROMPT = torch.tensor([[1, 4, 2]])
SETTINGS = {
    "plain": dict(temperature=1.0, top_k=0, top_p=1.0),
    "processed": dict(temperature=0.7, top_k=4, top_p=0.9),
}
METHOD_OPTIONS = {
    "ar": ("ar", {}),
    "jacobi": ("jacobi", dict(window=2)),
    "sjd": ("sjd", dict(window=3, init="random")),
    "sjd-vertical": ("sjd", dict(window=3, init="vertical", grid_width=2)),
    "sjd-coupled": ("sjd-coupled", dict(window=2, init="horizontal")),
    "prompt-lookup": ("prompt-lookup", dict(window=3, ngram_max=2)),
    "prompt-lookup-branches": ("prompt-lookup", dict(window=2, ngram_max=2, branches=3)),
    "lookahead": ("lookahead", dict(window=1, lookahead_n=3, lookahead_w=2, lookahead_g=2)),
}


def logits_of(model, ids_BT: torch.Tensor) -> torch.Tensor:
    if isinstance(model, mmaccel.tiny_lm.TinyLM):
        return model.full_logits(ids_BT)
    return model(input_ids=ids_BT).logits


def exact_distribution(model, setting: dict) -> dict[tuple[int, ...], float]:
    """P(continuation) for all V**NEW continuations, by the chain rule over processed targets."""
    conts = torch.tensor(list(itertools.product(range(V), repeat=NEW)))
    ids = torch.cat([PROMPT.expand(len(conts), -1), conts], dim=1)
    with torch.no_grad():
        probs = process_logits(logits_of(model, ids).double(), SamplingConfig(True, **setting)).double()
    P = PROMPT.shape[1]
    step_p = probs[:, P - 1 : P - 1 + NEW].gather(-1, conts[..., None])[..., 0]
    return {tuple(c): float(p) for c, p in zip(conts.tolist(), step_p.prod(-1).tolist(), strict=True)}


def chi_square_p(samples: torch.Tensor, exact: dict[tuple[int, ...], float]) -> float:
    counts: dict[tuple[int, ...], int] = {}
    for row in samples.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) <= {k for k, p in exact.items() if p > 0}, "sampled a continuation of probability 0"
    n = samples.shape[0]
    obs, exp, rest_obs, rest_exp = [], [], 0, 0.0
    for key, p in exact.items():  # pool the rare continuations so every bin expects >= 5
        if n * p >= 5:
            obs.append(counts.get(key, 0))
            exp.append(n * p)
        else:
            rest_obs += counts.get(key, 0)
            rest_exp += n * p
    if rest_exp > 0:
        obs.append(rest_obs)
        exp.append(rest_exp)
    total = sum(exp)
    return float(chisquare(obs, [e * n / total for e in exp]).pvalue)


MODELS = {"hf-llama": lambda: tiny_llama(vocab=V, init=0.8), "project": lambda: tiny_lm(vocab=V, scale=4.0)}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
@pytest.mark.parametrize("family", list(MODELS))
def test_sampled_distribution_matches_autoregressive(family, method, setting, record_property):
    model = MODELS[family]()
    exact = exact_distribution(model, SETTINGS[setting])
    name, options = METHOD_OPTIONS[method]
    out = mmaccel.generate(
        model,
        PROMPT.expand(SAMPLES, -1),
        name,
        max_new_tokens=NEW,
        seed=1234,
        do_sample=True,  # a transformers model decodes greedily unless told (as transformers does)
        **SETTINGS[setting],
        **options,
    )
    p_value = chi_square_p(out.new_tokens, exact)
    record_property("chi2_p", p_value)
    print(f"chi2 {family} {method} {setting}: p = {p_value:.4f}")
    assert p_value > 0.001

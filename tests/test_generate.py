"""generate(): seeds, row independence, guidance, statistics, and the harness's own power."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chi2_contingency

import mmaccel
from mmaccel.acceptors.base import Acceptance, at_index, leading_true, token_prob
from mmaccel.acceptors.speculative import SpeculativeSampling
from mmaccel.sampling import sample_with

from . import test_exactness as ex
from .conftest import tiny_lm

METHODS = [("ar", {}), ("jacobi", {"window": 3}), ("sjd", {"window": 4}), ("sjd-coupled", {"window": 4})]


@pytest.mark.parametrize(("method", "options"), METHODS)
def test_same_seed_same_output_different_seed_different(method, options):
    model = tiny_lm(vocab=32, scale=1.5)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = mmaccel.generate(model, ids, method, max_new_tokens=24, seed=7, **options)
    b = mmaccel.generate(model, ids, method, max_new_tokens=24, seed=7, **options)
    c = mmaccel.generate(model, ids, method, max_new_tokens=24, seed=8, **options)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences)


@pytest.mark.parametrize(("method", "options"), METHODS)
def test_rows_of_a_batch_are_independent(method, options):
    """Pairs of rows with the same prompt: their first tokens pass a chi-square independence test."""
    model = tiny_lm(vocab=4, scale=1.0)
    out = mmaccel.generate(
        model, torch.tensor([[1, 2]]).expand(6000, -1), method, max_new_tokens=3, seed=0, **options
    )
    tokens = out.new_tokens[:, 1].view(3000, 2)  # second new token: produced by the verify loop
    table = torch.zeros(4, 4)
    table.index_put_((tokens[:, 0], tokens[:, 1]), torch.ones(3000), accumulate=True)
    assert chi2_contingency(table.numpy()).pvalue > 0.001
    assert not torch.equal(tokens[:, 0], tokens[:, 1])


def test_cfg_greedy_equals_reference_guided_decoding():
    model = tiny_lm(vocab=24, scale=2.0)
    cond, uncond, scale = [5, 6, 7, 8], [0], 2.5
    seq_c, seq_u, expected = list(cond), list(uncond), []
    with torch.no_grad():
        for _ in range(16):
            lc = model.full_logits(torch.tensor([seq_c]))[0, -1]
            lu = model.full_logits(torch.tensor([seq_u]))[0, -1]
            tok = int((lu + scale * (lc - lu)).argmax())
            expected.append(tok)
            seq_c.append(tok)
            seq_u.append(tok)
    for method, options in METHODS:
        out = mmaccel.generate(
            model,
            torch.tensor([cond]),
            method,
            max_new_tokens=16,
            do_sample=False,
            cfg_scale=scale,
            uncond_input_ids=torch.tensor([uncond]),
            **options,
        )
        assert out.new_tokens[0].tolist() == expected, method


def test_cfg_sampling_lossless_methods_agree_in_distribution():
    """With guidance, sjd's first two tokens follow the same law as ar's (chi-square homogeneity)."""
    model = tiny_lm(vocab=4, scale=2.0)
    kw = dict(max_new_tokens=2, cfg_scale=1.5, uncond_input_ids=torch.tensor([[0]]).expand(8000, -1))
    ids = torch.tensor([[1, 3, 2]]).expand(8000, -1)
    ar = mmaccel.generate(model, ids, "ar", seed=1, **kw).new_tokens
    sjd = mmaccel.generate(model, ids, "sjd", seed=2, window=2, **kw).new_tokens
    table = torch.stack([torch.bincount(x[:, 0] * 4 + x[:, 1], minlength=16) for x in (ar, sjd)]).float()
    table = table[:, table.sum(0) > 0]
    assert chi2_contingency(table.numpy()).pvalue > 0.001


def test_statistics_and_drafting_really_happens():
    """A model whose greedy continuation is constant: Jacobi drafts hit every time."""
    model = tiny_lm(vocab=16)
    model.head.weight.data.zero_()
    model.head.bias = torch.nn.Parameter(torch.zeros(16))  # logits = this bias: argmax 3 everywhere
    model.head.bias.data[3] = 5.0
    ids = torch.tensor([[1, 2], [3, 4]])
    ar = mmaccel.generate(model, ids, "ar", max_new_tokens=33, do_sample=False)
    assert ar.num_forward_passes == 33 and ar.forward_passes_per_row.tolist() == [33, 33]
    assert ar.accepted_histogram == [0, 66]
    jac = mmaccel.generate(
        model, ids, "jacobi", max_new_tokens=33, do_sample=False, window=7, init="horizontal"
    )
    assert (jac.new_tokens == 3).all()
    assert jac.num_forward_passes == 1 + 4  # prefill emits 1; then 4 steps of 8 tokens
    assert jac.accepted_histogram[8] == 8 and jac.accepted_histogram[1] == 2
    assert jac.tokens_per_forward == pytest.approx(33 / 5)
    # per-step view: token 0 from the prefill, then 8 tokens per verify forward
    assert ar.token_forward_index.tolist() == [list(range(33))] * 2
    assert jac.token_forward_index[0].tolist() == [0] + [f for f in range(1, 5) for _ in range(8)]


class ResampleFromP(SpeculativeSampling):
    """A deliberately wrong rule (rejection redraws from p, not the residual)."""

    def accept(self, drafts_BK, q_BKV, p_BTV, draws):
        r = self._draws(draws, drafts_BK, p_BTV)
        K = drafts_BK.shape[1]
        keep = r["u"] * token_prob(q_BKV, drafts_BK) < token_prob(p_BTV[:, :K], drafts_BK)
        n_B = leading_true(keep)
        return Acceptance(n_B, sample_with(at_index(p_BTV, n_B), r["e"]))


def test_exactness_harness_detects_a_biased_acceptor(monkeypatch):
    """The chi-square harness of test_exactness can fail: a biased rule is caught."""
    import mmaccel.methods

    monkeypatch.setattr(mmaccel.methods, "SJDAcceptor", ResampleFromP)
    model = ex.MODELS["project"]()
    exact = ex.exact_distribution(model, ex.SETTINGS["plain"])
    out = mmaccel.generate(
        model, ex.PROMPT.expand(ex.SAMPLES, -1), "sjd", max_new_tokens=ex.NEW, seed=1234, window=3
    )
    assert ex.chi_square_p(out.new_tokens, exact) < 1e-6

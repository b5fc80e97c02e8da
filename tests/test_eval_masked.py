"""``mmaccel eval`` on a masked-set (MAR) pair: a small random pair (``conftest.tiny_mar_pair``)
stands in for ``fashion-mar``. Method specs that only a MAR model takes pass the early check,
``best`` times nothing (MAR decodes eagerly), CSpD runs report the draft model's forwards and
the acceptance rate (table, JSON), and ``--model fashion-mar`` alone finds its benchmark.
"""

from __future__ import annotations

import json

import pytest

from mmaccel.eval.common import MethodSpec
from mmaccel.eval.compare import compare, to_markdown, write_outputs
from mmaccel.eval.latency import LatencyRow, format_rows, measure_latency
from mmaccel.eval.runner import make_runs, plan_chunks, run_chunks
from tests.conftest import tiny_mar_pair

PROMPTS = ["sneaker", "bag", "trouser"]
METHODS = [MethodSpec("ar", {"num_iter": 4}), MethodSpec("cspd", {"gamma": 2})]


@pytest.fixture(scope="module")
def pair():
    """A pair whose draft is its target, unguided: the first step of every block is kept."""
    from mmaccel.image_ar.mar.fashion_model import FashionMARPair

    random = tiny_mar_pair()
    return FashionMARPair(random.target.mar, random.target.mar, random.vae, latent_scale=1.0, default_guidance=1.0,
                          default_num_iter=8)  # fmt: skip


def test_make_runs_takes_masked_set_options_and_still_checks_them():
    assert [r.label for r in make_runs(METHODS)] == ["ar", "ar:num_iter=4", "cspd:gamma=2"]
    for spec, match in [(MethodSpec("cspd", {"gamma": 0}), "gamma must be an integer >= 1"),
                        (MethodSpec("ar", {"num_iter": 0}), "num_iter must be an integer >= 1"),
                        (MethodSpec("cspd", {"window": 4}), "does not take option"),
                        (MethodSpec("sjd", {"num_iter": 4}), "does not take option")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            make_runs([spec])


def test_naming_fashion_mar_picks_the_fashion_benchmark():
    from mmaccel.eval.benchmarks import benchmark_for

    bench = benchmark_for(None, "fashion-mar")
    assert bench.name == "fashion-mnist" and bench.meant_for == ("fashion-var", "fashion-mar")
    assert benchmark_for(None, "fashion-var").name == "fashion-mnist"  # its first model still finds it
    assert bench.model == "fashion-var"  # what it runs on when no model is named


def test_latency_on_a_mar_pair_reports_draft_forwards_and_acceptance(pair, one_thread):
    rows = measure_latency(METHODS, PROMPTS, pair, repeats=1, batch=2, compile="best", progress=False)
    by = {r.method: r for r in rows}
    assert list(by) == ["ar", "ar:num_iter=4", "cspd:gamma=2"]
    assert by["ar"].forward_passes == 8 and by["ar:num_iter=4"].forward_passes == 4
    assert by["ar"].acceptance_rate is None and by["ar"].draft_forwards is None
    cspd = by["cspd:gamma=2"]
    assert cspd.forward_passes == 5 and cspd.draft_forwards == 6  # 1 prefill step, then blocks of 2 steps
    assert 0 < cspd.acceptance_rate <= 1 and len(cspd.acceptance_per_verify) == 3
    table = format_rows(rows)
    assert all(h in table for h in LatencyRow.DRAFT_HEADERS)
    assert table.splitlines()[2].endswith("| - | - |")  # ar drafts nothing
    assert LatencyRow.DRAFT_HEADERS[0] not in format_rows([by["ar"]])  # no column where no run drafts


def test_best_times_nothing_on_a_mar_pair(pair, monkeypatch, one_thread):
    from mmaccel import images

    real, modes = images.generate_image, []

    def recorded(*args, compile, **kw):
        modes.append(compile)
        return real(*args, compile=compile, **kw)

    monkeypatch.setattr(images, "generate_image", recorded)
    runs, chunks = make_runs(METHODS[1:]), plan_chunks(len(PROMPTS), 2)
    results = run_chunks(runs, PROMPTS, chunks, model=pair, compile="best", progress=False)
    assert len(modes) == len(runs) * (1 + len(chunks))  # a warm-up call per run, then the chunks
    assert set(modes) == {"eager"} and all(r.config.endswith("compile=eager") for r in results)
    cspd = [r for r in results if r.label == "cspd:gamma=2"]
    assert all(r.forwards == {"target": 5, "draft": 6} and r.acceptance_rate is not None for r in cspd)


def test_compare_on_a_mar_pair_writes_acceptance(pair, tmp_path, one_thread):
    methods = METHODS[1:] + [MethodSpec("cspd", {"gamma": 4})]
    comp = compare(methods, PROMPTS, batch=2, model=pair, metrics=("speed",), warmup=False, progress=False)
    s = comp.summary
    assert s["ar"]["forwards_median"] == {"target": 8.0} and "acceptance_rate" not in s["ar"]
    for label, target, draft in (("cspd:gamma=2", 5, 6), ("cspd:gamma=4", 3, 7)):
        assert s[label]["forwards_median"] == {"target": target, "draft": draft}
        assert s[label]["draft_forwards_median"] == draft and 0 < s[label]["acceptance_rate"] <= 1
        assert s[label]["nfe_median"] == target and s[label]["nfe_ratio_vs_ar"] == target / 8
    table = to_markdown(s, comp.meta)
    assert "draft forwards/image (median)" in table and "acceptance (median/call)" in table
    assert "compile=eager" in table
    write_outputs(comp, tmp_path, grid_images=2)
    saved = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert saved["cspd:gamma=4"]["acceptance_per_verify"] == s["cspd:gamma=4"]["acceptance_per_verify"]
    assert (tmp_path / "accepted_histogram.png").exists() and (tmp_path / "samples_cspd_gamma=2.png").exists()

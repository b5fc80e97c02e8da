"""Evaluation plumbing: method specs, the latency table, the CLI's error path."""

from __future__ import annotations

import time

import pytest
import torch

from mmaccel.cli import main
from mmaccel.eval.common import MethodSpec, PeakMemory, markdown_table, parse_method_spec, parse_methods
from mmaccel.eval.latency import format_rows, measure_latency

from .test_generate_image import PROMPTS, pipeline  # noqa: F401  (fixture)


def test_parse_methods():
    specs = parse_methods("ar,sjd:window=8,init=vertical,sjd-coupled;jacobi:window=2")
    assert specs == [MethodSpec("ar"), MethodSpec("sjd", {"window": 8, "init": "vertical"}),
                     MethodSpec("sjd-coupled"), MethodSpec("jacobi", {"window": 2})]  # fmt: skip
    assert specs[1].label == "sjd:window=8,init=vertical"
    with pytest.raises(ValueError, match="expected key=value"):
        parse_method_spec("sjd:window")


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, 0.5]]) == "| a | b |\n|---|---|\n| 1 | 0.500 |"


def test_peak_memory_sees_the_peak_of_live_tensors():
    kept = torch.zeros(2**20)  # live before the block: not counted
    with PeakMemory("cpu") as mem:
        a = torch.ones(16 * 2**20, dtype=torch.uint8)  # 16 MB
        b = a.float()  # + 64 MB -> peak 80 MB
        time.sleep(0.05)  # the meter samples every millisecond
        del a, b
        c = torch.ones(8 * 2**20, dtype=torch.uint8)  # 8 MB, after the peak
    assert 79.5 < mem.peak_mb < 81, mem.peak_mb
    assert kept.numel() and c.numel()


def test_peak_memory_of_an_idle_block_is_near_zero():
    with PeakMemory("cpu") as mem:
        time.sleep(0.02)
    assert abs(mem.peak_mb) < 1


def test_latency_rows_against_ar(pipeline):  # noqa: F811
    rows = measure_latency(
        [MethodSpec("sjd", {"window": 4})], PROMPTS, model=pipeline, repeats=1, progress=False
    )
    assert [r.method for r in rows] == ["ar", "sjd:window=4"]
    ar, sjd = rows
    assert ar.speedup_vs_ar == 1.0 and ar.forward_passes == 64 and ar.tokens_per_forward == 1.0
    assert sjd.forward_passes < 64 and sjd.tokens_per_forward > 1
    assert ar.peak_mem_mb > 0 and sjd.peak_mem_mb > 0  # at least the KV cache
    assert "speed-up vs ar" in format_rows(rows)


def test_cli_reports_bad_method(capsys):
    assert (
        main(["generate-image", "a small red square at the top on a black background", "--method", "zip"])
        == 2
    )
    assert "unknown method 'zip'" in capsys.readouterr().err


def test_cli_lists_methods(capsys):
    assert main(["methods"]) == 0
    assert "sjd-coupled" in capsys.readouterr().out


def test_eval_dispatcher(capsys):
    assert main(["eval", "-h"]) == 0
    assert "compare" in capsys.readouterr().out
    assert main(["eval", "bench"]) == 2
    assert "unknown command 'bench'" in capsys.readouterr().err
    from mmaccel.eval.commands import COMMANDS

    assert COMMANDS["t2i"][:2] == COMMANDS["compare"][:2]  # the former t2i benchmark is compare


def test_eval_compare_reports_bad_method(capsys):
    assert main(["eval", "compare", "--methods", "ar,zip", "--prompts", "2"]) == 2
    assert "unknown method 'zip'" in capsys.readouterr().err

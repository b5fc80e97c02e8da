"""``mmaccel generate-image --model fashion-mar --method cspd``: the MAR options reach the method,
what ran is printed, and an option the method does not take is a clear error. A small random
pair (``conftest.tiny_mar_pair``) stands in for ``fashion-mar`` (its weights may not be here)."""

from __future__ import annotations

import pytest
from PIL import Image

import mmaccel.images
from mmaccel.cli import main
from tests.conftest import tiny_mar_pair


@pytest.fixture(scope="module")
def pair():
    return tiny_mar_pair()


@pytest.fixture
def fashion_mar(monkeypatch, pair, one_thread):
    """``--model fashion-mar`` loads the tiny pair."""
    real = mmaccel.images.load_model
    monkeypatch.setattr(
        mmaccel.images, "load_model", lambda name: pair if name == "fashion-mar" else real(name)
    )


def _run(tmp_path, *args: str) -> int:
    return main(["generate-image", "ankle boot", "--model", "fashion-mar", "--out", str(tmp_path / "x.png"),
                 "--scale", "1", *args])  # fmt: skip


def test_cspd_takes_its_options_and_prints_what_ran(tmp_path, fashion_mar, capsys):
    args = (
        "--method",
        "cspd",
        "--gamma",
        "2",
        "--prefill-ratio",
        "0.25",
        "--num-iter",
        "6",
        "--cspd-kappa",
        "2",
    )
    assert _run(tmp_path, *args) == 0
    out = capsys.readouterr().out
    assert "(cspd, num_iter 6, gamma 2, prefill_ratio 0.25, cspd_kappa 2 (lossy), acceptance " in out
    assert "4 forward passes of the target and 4 of the draft for 16 tokens" in out  # 2 prefill, 2 blocks
    assert Image.open(tmp_path / "x.png").size == (16, 16)


def test_ar_takes_num_iter(tmp_path, fashion_mar, capsys):
    assert _run(tmp_path, "--method", "ar", "--num-iter", "4") == 0
    assert "(ar, num_iter 4: 4 forward passes for 16 tokens" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (("--method", "ar", "--gamma", "2"), "method 'ar' on a MAR model does not take option(s) gamma"),
        (("--method", "cspd", "--draft-scales", "2"), "method 'cspd' on a MAR model does not take option(s) draft_scales"),
        (("--method", "cspd", "--gamma", "0"), "gamma must be an integer >= 1"),
        (("--method", "code"), "the methods that run on it are ar, cspd"),
    ],
)  # fmt: skip
def test_an_option_the_method_does_not_take_is_a_clear_error(tmp_path, fashion_mar, capsys, args, message):
    assert _run(tmp_path, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_mar_options_on_a_raster_model_name_the_method_that_reads_them(tmp_path, capsys):
    code = main(
        [
            "generate-image",
            "a red circle",
            "--method",
            "sjd",
            "--gamma",
            "4",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert (
        code == 2
        and "method 'sjd' does not take option(s) gamma (gamma is read by cspd)" in capsys.readouterr().err
    )

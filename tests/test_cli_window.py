"""``mmaccel generate-image --window``: an integer >= 0 or ``auto``, and the window that ran is printed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

import mmaccel.images
from mmaccel.cli import main
from mmaccel.methods import resolve_method


@pytest.fixture
def calls(monkeypatch):
    """``generate_image`` replaced by a recorder whose output says window 4 ran (what auto chose)."""
    seen = []

    def fake(prompt, method, **kwargs):
        seen.append(kwargs)
        ran = resolve_method(method, {"window": 4}) if method != "ar" else resolve_method(method, {})
        return SimpleNamespace(
            images=[Image.new("RGB", (4, 4))],
            generate_output=SimpleNamespace(method=ran),
            num_forward_passes=64,
            num_tokens=256,
            latency_s=0.5,
        )

    monkeypatch.setattr(mmaccel.images, "generate_image", fake)
    return seen


def _run(tmp_path, *args: str) -> int:
    return main(
        ["generate-image", "a red circle", "--method", "sjd", "--out", str(tmp_path / "x.png"), *args]
    )


@pytest.mark.parametrize("given, passed", [("auto", "auto"), ("AUTO", "auto"), ("0", 0), ("8", 8)])
def test_window_takes_an_integer_or_auto(tmp_path, calls, capsys, given, passed):
    assert _run(tmp_path, "--window", given) == 0
    assert calls[-1]["window"] == passed
    assert "(sjd, window 4: 64 forward passes for 256 tokens" in capsys.readouterr().out


def test_no_window_leaves_the_librarys_default(tmp_path, calls, capsys):
    assert _run(tmp_path) == 0
    assert "window" not in calls[-1]  # the library's default (auto) applies
    assert "window 4" in capsys.readouterr().out  # and the window it chose is printed
    assert _run(tmp_path, "--option", "window=auto") == 0 and calls[-1]["window"] == "auto"


@pytest.mark.parametrize("given", ["fast", "-1", "2.5", ""])
def test_a_bad_window_is_an_argparse_error_naming_it(tmp_path, calls, capsys, given):
    with pytest.raises(SystemExit) as info:
        _run(tmp_path, "--window", given)
    assert info.value.code == 2 and not calls
    err = capsys.readouterr().err
    assert f"argument --window: must be an integer >= 0 or 'auto', got {given!r}" in err


def test_help_says_what_auto_does_and_that_it_is_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["generate-image", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "an integer >= 0 (0: none) or auto (default: time a few steps at the first call" in text
    assert "the most tokens per second" in text


def test_ar_prints_no_window(tmp_path, calls, capsys):
    assert main(["generate-image", "a red circle", "--out", str(tmp_path / "x.png")]) == 0
    assert "(ar: 64 forward passes" in capsys.readouterr().out

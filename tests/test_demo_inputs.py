"""The demo's logic without a server: options per method, defaults, request checks, texts, heat maps."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

import mmaccel
from demos.inputs import (
    MAX_PROMPT_CHARS,
    InputError,
    check_request,
    default_note,
    method_options,
    option_names,
    page_defaults,
)
from demos.report import (
    LOSSLESS,
    compare,
    fidelity,
    options_text,
    summary_markdown,
    timing_words,
    what_it_does,
)
from demos.visualize import heat_maps
from mmaccel import window
from mmaccel.acceptors.lantern import RULES
from mmaccel.methods import METHODS, OPTIONS, method_defaults, resolve_method

# a model that ships its own best options for two methods, as shapes-t2i does
FAKE = SimpleNamespace(
    name="fake-t2i",
    method_defaults={"zipar+sjd": {"zipar_window": 4, "init": "vertical"}, "lantern": {"lantern_delta": 0.8}},
)
PROMPT = "a large red circle at the top left on a blue background"


def test_each_method_offers_exactly_the_options_it_reads():
    specs = method_options()
    assert "grid_width" not in specs and "name" not in specs
    for name in METHODS:
        assert set(option_names(name)) == set(OPTIONS[name]) - {"grid_width"}
        assert {o for o, s in specs.items() if name in s.methods} == set(option_names(name))
    assert option_names("zipar") == ("zipar_window",)  # no window / init / lantern_* for plain ZipAR
    assert not any(o.startswith("lantern_") for o in option_names("zipar+sjd"))
    assert specs["init"].choices == ("random", "horizontal", "vertical")
    assert specs["lantern_rule"].choices == tuple(RULES)  # a choice, not free text


@pytest.mark.parametrize("model", [None, FAKE])
def test_page_defaults_are_the_librarys(model):
    for name in METHODS:
        library = method_defaults(name, model)
        assert page_defaults(name, model) == {o: library[o] for o in option_names(name)}
    assert page_defaults("sjd", None)["window"] == page_defaults("zipar+sjd", FAKE)["window"] == "auto"
    assert page_defaults("zipar+sjd", FAKE)["zipar_window"] == 4
    assert (
        default_note("zipar+sjd", "zipar_window", FAKE)
        == "default for zipar+sjd: 4 (fake-t2i's tuned setting)"
    )
    assert (
        default_note("zipar+sjd", "window", FAKE) == "default for zipar+sjd: auto (the method's own default)"
    )
    assert default_note("lantern", "lantern_lambda", FAKE) == "default for lantern: not set"


def test_the_default_model_ships_the_defaults_the_page_shows():
    model = mmaccel.load_model()
    for name in METHODS:
        for option, value in page_defaults(name, model).items():
            assert getattr(resolve_method(name, {}, model=model), option) == value


def test_a_request_names_only_what_the_user_changed():
    req = check_request(" a red circle ", "sjd-coupled:init=vertical", 3.0, {"window": 8.0})
    assert (req.prompt, req.method, req.options, req.seed) == (
        "a red circle",
        "sjd-coupled",
        {"window": 8, "init": "vertical"},
        3,
    )
    # fields left at the defaults the page showed are not sent: the library applies its own
    shown = page_defaults("lantern", FAKE)
    req = check_request(PROMPT, "lantern", 0, {**shown, "lantern_lambda": 2.0}, shown, FAKE)
    assert req.options == {"lantern_lambda": 2.0}  # and the shipped lantern_delta steps aside
    assert check_request(PROMPT, "lantern", 0, {**shown, "lantern_lambda": None}, shown, FAKE).options == {}
    with pytest.raises(InputError, match="lantern_delta or lantern_lambda, not both"):
        check_request(PROMPT, "lantern", 0, {**shown, "lantern_delta": 0.5, "lantern_lambda": 2}, shown, FAKE)


def test_the_window_field_takes_auto_or_a_whole_number():
    spec = method_options()["window"]
    assert (spec.kind, spec.keywords, spec.suggested, spec.bounds) == (int, ("auto",), window.TIMED, (0, 64))
    shown = page_defaults("sjd", FAKE)
    assert shown["window"] == "auto"
    # left at auto (however it is typed): not named, so the library's own default runs
    for typed in ("auto", " Auto "):
        assert check_request(PROMPT, "sjd", 0, {**shown, "window": typed}, shown, FAKE).options == {}
    with pytest.raises(InputError, match="Option window needs a value."):
        check_request(PROMPT, "sjd", 0, {**shown, "window": ""}, shown, FAKE)
    # a number, typed in the box or picked from the list, is passed on as an int
    for typed, ran in (("8", 8), (" 3 ", 3), ("0", 0), (12, 12), ("16.0", 16)):
        assert check_request(PROMPT, "sjd", 0, {**shown, "window": typed}, shown, FAKE).options == {
            "window": ran
        }
    assert check_request(PROMPT, "sjd:window=auto", 0).options == {"window": "auto"}  # named explicitly
    assert check_request(PROMPT, "zipar+sjd:window=4", 0).options == {"window": 4}


@pytest.mark.parametrize(
    "method, options, seed, message",
    [
        ("sjd", {"window": 2.5}, 0, "Option window must be a whole number, got 2.5."),
        ("sjd:window=2.5", {}, 0, "Option window must be a whole number, got 2.5."),
        ("zipar+sjd", {"zipar_window": "3.5"}, 0, "Option zipar_window must be a whole number, got 3.5."),
        ("sjd", {}, 2.5, "The seed must be a whole number from 0 to 4294967295, got 2.5."),
        ("sjd", {"window": 65}, 0, "Option window must be between 0 and 64 or 'auto', got 65."),
        ("sjd", {"window": "-1"}, 0, "Option window must be between 0 and 64 or 'auto', got -1."),
        ("sjd", {"window": "fast"}, 0, "Option window must be a number or 'auto', got 'fast'."),
        ("sjd:window=fast", {}, 0, "Option window must be a number or 'auto', got 'fast'."),
        ("lantern", {"lantern_k": "auto"}, 0, "Option lantern_k must be a number, got 'auto'."),
        ("lantern", {"lantern_lambda": 0.5}, 0, "Option lantern_lambda must be at least 1, got 0.5."),
        ("lantern", {"lantern_rule": "fast"}, 0, "Option lantern_rule must be one of bounded, paper"),
        ("zipar", {"window": 8}, 0, "Method 'zipar' has no option 'window' (window is read by"),
        ("zipar+sjd", {"lantern_k": 8}, 0, "its options are: zipar_window, window, init."),
    ],
)
def test_bad_options_are_refused_with_the_option_and_value(method, options, seed, message):
    with pytest.raises(InputError) as info:
        check_request(PROMPT, method, seed, options)
    assert message in str(info.value)


def test_a_long_prompt_is_refused_never_cut():
    words = ("a small yellow square at the left and " * 20).strip()
    long = words[: MAX_PROMPT_CHARS + 20]
    with pytest.raises(InputError) as info:
        check_request(long, "sjd", 0)
    assert f"too long: {len(long)} characters, at most {MAX_PROMPT_CHARS}" in str(info.value)
    assert "nothing was cut" in str(info.value)
    assert check_request(words[:MAX_PROMPT_CHARS], "sjd", 0).prompt == words[:MAX_PROMPT_CHARS].strip()


def test_fidelity_says_what_is_true():
    for name in LOSSLESS - {"ar"}:
        lossless, text = fidelity(resolve_method(name, {}), 16)
        assert lossless and "exactly the distribution `ar` samples" in text and "not the picture" in text
    lossless, text = fidelity(
        resolve_method("lantern", {"lantern_rule": "bounded", "lantern_delta": 0.2}), 16
    )
    assert not lossless and "bounded" in text and "<= 0.2" in text
    lossless, text = fidelity(resolve_method("lantern", {"lantern_rule": "paper", "lantern_delta": 0.8}), 16)
    assert not lossless and "not guaranteed" in text
    lossless, text = fidelity(resolve_method("zipar", {"zipar_window": 4}), 16)
    assert not lossless and "no bound" in text and "4 of its 16 tokens" in text
    assert fidelity(resolve_method("zipar+sjd", {"zipar_window": 16}), 16)[0] is True
    assert fidelity(resolve_method("zipar+lantern", {"zipar_window": 4}), 16)[0] is False
    for name in METHODS:  # the library's lossless/lossy tag is replaced by the exact sentence above
        assert not re.search(r"lossless|lossy", what_it_does(name))


def test_timing_is_labelled_by_how_it_was_measured():
    assert timing_words(3) == "the median of 3 timed runs of each method"
    assert "one noisy sample" in timing_words(1)


def test_compare_times_repeats_within_its_budget_and_labels_each_run(one_thread):
    model = mmaccel.load_model()
    labels = []
    req = check_request(PROMPT, "sjd", 0, model=model)
    c = compare(req, model, lambda fraction, desc: labels.append(desc), repeats=3, budget_s=0)
    assert labels == [
        "run 1 of 2: ar",
        "run 2 of 2: sjd",
        "timing 1 of 2: ar (repeat 1 of 1)",
        "timing 2 of 2: sjd (repeat 1 of 1)",
    ]
    s = c.stats
    assert s["wall_clock_repeats"] == 1 and len(s["ar"]["wall_clock_runs_s"]) == 1
    assert s["speedup_wall_clock"] == pytest.approx(
        s["ar"]["wall_clock_s"] / s["accelerated"]["wall_clock_s"], 1e-2
    )
    assert s["options"] == {"window": "auto", "init": "random"} and s["options_named"] == {}
    assert s["lossless"] is True
    # the window that ran: auto's choice, for the shown run and each timed one
    chosen = s["accelerated"]["window"]
    assert chosen == c.accelerated.generate_output.method.window and chosen in window.CANDIDATES
    assert len(s["accelerated"]["wall_clock_windows"]) == 1 and "window" not in s["ar"]
    assert f"`sjd` ran with {options_text(s)}." in summary_markdown(c)
    assert options_text(s).startswith(f"window=auto (default, chose {chosen}")


def test_the_summary_names_the_window_auto_chose():
    def stats(options, named, shown, timed):
        return {
            "options": options,
            "options_named": named,
            "accelerated": {"window": shown, "wall_clock_windows": timed},
        }

    auto = {"window": "auto", "init": "vertical"}
    assert (
        options_text(stats(auto, {}, 4, [4, 4])) == "window=auto (default, chose 4), init=vertical (default)"
    )
    assert (
        options_text(stats(auto, {"window": "auto"}, 4, [6, 4]))
        == "window=auto (chose 4 for the image; the timed runs used 6, 4), init=vertical (default)"
    )
    assert options_text(stats({"window": 8}, {"window": 8}, 8, [8])) == "window=8"


def test_heat_maps_share_one_colour_scale():
    ar_N = np.arange(256)  # one token per forward
    fast_N = np.repeat(np.arange(64), 4)  # four per forward
    both = np.asarray(heat_maps([("", ar_N), ("", fast_N)], cell=4, gap=8, pad=0))
    side = 16 * 4
    left, right = both[:side, :side], both[:side, side + 8 : 2 * side + 8]
    # token 40 was committed by forward 40 in ar and token 160 by forward 40 in the fast run
    r, c = divmod(40, 16)
    r2, c2 = divmod(160, 16)
    assert (left[r * 4 + 2, c * 4 + 2] == right[r2 * 4 + 2, c2 * 4 + 2]).all()
    # the fast run's last forward (63) is not drawn as the brightest colour: the scale ends at 255
    assert (right[side - 2, side - 2] != left[side - 2, side - 2]).any()


def test_the_cli_runs_with_the_defaults_the_page_shows(tmp_path, capsys, one_thread, monkeypatch):
    """One set of defaults: ``mmaccel generate-image`` with no options = the page with untouched fields."""
    from mmaccel.cli import main

    # window="auto" times this machine and may choose differently from call to call; one fixed
    # choice, taken by every call that reached it, keeps the comparison about the defaults
    asked = []
    monkeypatch.setattr(window, "choose", lambda lm, config, *args: asked.append(config.window) or 4)
    model = mmaccel.load_model()
    shown = page_defaults("zipar+sjd", model)
    req = check_request(PROMPT, "zipar+sjd", 0, shown, shown, model)
    assert req.options == {}  # untouched fields send nothing
    page = mmaccel.generate_image(PROMPT, req.method, model=model, seed=0, return_output=True, **req.options)
    explicit = mmaccel.generate_image(PROMPT, "zipar+sjd", model=model, seed=0, return_output=True, **shown)
    assert page.num_forward_passes == explicit.num_forward_passes
    assert page.generate_output.method == explicit.generate_output.method
    argv = [
        "generate-image",
        PROMPT,
        "--method",
        "zipar+sjd",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "x.png"),
    ]
    assert main(argv) == 0
    assert f"zipar+sjd, window 4: {page.num_forward_passes} forward passes" in capsys.readouterr().out
    assert asked == ["auto"] * 3  # the page, the explicit defaults and the CLI all ran window="auto"

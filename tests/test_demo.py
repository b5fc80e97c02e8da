"""The Gradio demo (``demos/app.py``) end to end.

A module fixture starts ``python -m demos.app`` on a free loopback port. Headless Chromium
(the system's, through Playwright, fresh profile) drives the page and checks that it tells the
truth: each method shows only the options it reads, filled with the library's defaults; bad
input (2.5 for an integer, an over-long prompt) gets one readable message and clears the
previous results; one progress bar names each run; the wall-clock ratio is a labelled median;
both heat maps share one stated scale; the window field offers ``auto`` (the default) and takes
a typed number. ``gradio_client`` drives the ``generate`` API endpoint with concurrent
requests, whose results must equal direct ``generate_image`` calls with the same seed and the
window the server reports having run (``auto`` times each process's own machine), and with bad
input, which must come back as a readable error. The logic behind the
page is tested without a server in ``tests/test_demo_inputs.py``.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmaccel
from demos.inputs import MAX_PROMPT_CHARS, check_request, default_note, method_options, page_defaults
from demos.models import offered_methods
from demos.report import timing_words
from mmaccel.acceptors.lantern import RULES
from mmaccel.image_ar.fashion.data import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "outputs" / "test_artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPTS = [
    "a large red circle at the top left on a blue background",
    "a small yellow square at the left and a large white triangle at the bottom right on a green background",
]
STARTUP_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """The demo running in a subprocess on loopback; its log is attached to failures."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("demo") / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    # one torch thread per request, as in the direct calls below: no parallel reductions whose order
    # could differ, so server and test compute bit for bit alike
    cmd = [
        sys.executable,
        "-m",
        "demos.app",
        "--port",
        str(port),
        "--concurrency",
        "2",
        "--threads",
        "1",
        "--no-warmup",
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the demo did not answer within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def model():
    return mmaccel.load_model()


def _shown(value) -> str:
    """How a default appears in its field: a number box shows 16 and 0.8, an empty box nothing."""
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


# records every progress bar the page shows while it works: its label and how many there are at once
WATCH_PROGRESS = """() => {
    window.__progress = []; window.__bars = 0; window.__barsOutsideStatus = 0;
    new MutationObserver(() => {
        const bars = document.querySelectorAll('[role=progressbar]');
        window.__bars = Math.max(window.__bars, bars.length);
        for (const bar of bars) {
            if (!bar.closest('#status')) window.__barsOutsideStatus += 1;
            const label = bar.getAttribute('aria-label');
            if (label && !window.__progress.includes(label)) window.__progress.push(label);
        }
    }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium)"
)
def test_page_in_browser(demo_url, model, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    specs = method_options()
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile every run
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1300},
        )
        try:
            page = browser.new_page()
            page.goto(demo_url)
            # what the page promises: same seed + same method -> same image; same distribution, not picture
            intro = page.locator("#intro")
            expect(intro).to_contain_text("The same seed with the same method always gives the same image")
            expect(intro).to_contain_text("with window=auto, once the window is chosen")
            expect(intro).to_contain_text("sample the same distribution, not the same picture")
            expect(intro).not_to_contain_text("the same image in fewer")
            expect(page.locator("#seed")).to_contain_text(
                "the same seed with the same method gives the same image"
            )

            # the model picker opens on shapes-t2i, offering every method that runs on it (not code)
            expect(page.locator("#model").get_by_role("combobox")).to_have_value(re.compile("^shapes-t2i"))
            expect(page.locator("#method input[type=radio]")).to_have_count(len(offered_methods(model)))
            expect(page.locator("#method").get_by_label("code", exact=True)).to_have_count(0)
            # each method shows exactly the options it reads, filled with the library's defaults
            for name in offered_methods(model):
                page.locator("#method").get_by_label(name, exact=True).check()
                expect(page.locator("#about")).to_contain_text(name)
                defaults = page_defaults(name, model)
                for option in specs:
                    box = page.locator(f"#option-{option}")
                    if option not in defaults:
                        expect(box).to_be_hidden()
                        continue
                    expect(box).to_be_visible()
                    expect(box.locator("input")).to_have_value(_shown(defaults[option]))
                    expect(box).to_contain_text(default_note(name, option, model))

            # the LANTERN rule is a choice of the library's rules, not free text
            page.locator("#method").get_by_label("lantern", exact=True).check()
            rule = page.locator("#option-lantern_rule").get_by_role("combobox")
            expect(rule).to_have_value(page_defaults("lantern", model)["lantern_rule"])
            rule.click()
            expect(page.get_by_role("option")).to_contain_text(list(RULES))
            page.get_by_role("option", name="bounded", exact=True).click()
            expect(rule).to_have_value("bounded")

            # the window: auto by default, a few numbers to pick, any other typed in
            page.locator("#method").get_by_label("sjd", exact=True).check()
            window = page.locator("#option-window")
            expect(window).to_contain_text("default for sjd: auto")
            expect(window.get_by_role("combobox")).to_have_value("auto")
            window.get_by_role("combobox").click()
            offered = ["auto", "0", "1", "2", "4", "8", "16"]  # each shown after a hidden check mark
            expect(page.get_by_role("option")).to_have_text([re.compile(rf"(^|\s){v}$") for v in offered])
            page.keyboard.press("Escape")
            # a non-integer or a word other than auto is refused, naming the option and the value
            status = page.locator("#status")
            for typed, message in (
                ("2.5", "Option window must be a whole number, got 2.5."),
                ("fast", "Option window must be a number or 'auto', got 'fast'."),
            ):
                window.locator("input").fill(typed)
                window.locator("input").press("Enter")
                page.locator("#run").click()
                expect(status).to_contain_text(message, timeout=30_000)

            # a prompt over the limit is refused whole: the box keeps every character, nothing is cut
            long = ("a small yellow square at the left and a large white triangle " * 6)[
                : MAX_PROMPT_CHARS + 25
            ]
            page.locator("#prompt textarea").fill(long)
            expect(page.locator("#prompt textarea")).to_have_value(long)
            page.locator("#run").click()
            expect(status).to_contain_text(
                f"The prompt is too long: {len(long.strip())} characters, at most {MAX_PROMPT_CHARS}.",
                timeout=30_000,
            )
            expect(status).to_contain_text("nothing was cut")

            # a good request: one progress bar, on the status line, labelled with the run
            page.locator("#prompt textarea").fill(PROMPTS[0])
            page.locator("#method").get_by_label("sjd-coupled", exact=True).check()
            # the method's defaults land first (the switch refills the fields), then the user's value
            expect(page.locator("#option-window")).to_contain_text("default for sjd-coupled")
            page.locator("#option-window input").fill("8")
            page.locator("#option-window input").press("Enter")
            page.locator("#seed input").fill("7")
            page.evaluate(WATCH_PROGRESS)
            page.locator("#run").click()
            summary = page.locator("#summary")
            expect(summary).to_contain_text("fewer forward passes", timeout=120_000)
            labels = page.evaluate("window.__progress")
            assert labels[:2] == ["run 1 of 2: ar", "run 2 of 2: sjd-coupled"], labels
            assert re.fullmatch(r"timing 1 of \d: ar \(repeat 1 of \d\)", labels[2]), labels
            assert page.evaluate("window.__bars") == 1 and page.evaluate("window.__barsOutsideStatus") == 0
            expect(status).to_contain_text("Done: ar and sjd-coupled on shapes-t2i with seed 7.")
            for elem in ("ar-image", "method-image", "heat", "filling"):
                img = page.locator(f"#{elem} img").first
                expect(img).to_be_visible()
                assert img.evaluate("i => i.complete && i.naturalWidth > 0"), f"{elem} did not load"
            text = summary.inner_text()
            assert "forward passes\t256" in text  # ar commits one token per forward
            assert "sjd-coupled ran with window=8, init=vertical (default)." in text
            assert "Compared with ar: Lossless: it samples exactly the distribution ar samples." in text
            # the wall-clock ratio is a median of timed repeats, labelled so, and not shown in bold
            n = int(
                re.search(r"wall-clock, median of (\d) timed runs|wall-clock, (1) timed run", text).group(1)
                or 1
            )
            assert f"from {timing_words(n)} after one warm-up run, seed fixed" in text
            bold = summary.locator("strong").all_inner_texts()
            assert any("fewer forward passes" in b for b in bold) and not any("Wall-clock" in b for b in bold)
            # both heat maps in one picture on one scale, whose range the page states
            expect(page.locator("#heat img")).to_have_count(1)
            expect(page.locator("#heat-scale")).to_have_text(
                "Both maps use one colour scale: forward 0 (dark) to forward 255 (bright), the last forward of ar."
            )
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

            # an error: one message, the previous results gone
            page.locator("#prompt textarea").fill("   ")
            page.locator("#run").click()
            expect(status).to_contain_text("Please enter a prompt", timeout=30_000)
            expect(page.locator(".demo-error")).to_have_count(1)
            expect(summary).not_to_contain_text("forward passes")
            for elem in ("ar-image", "method-image", "heat"):
                expect(page.locator(f"#{elem} img")).to_have_count(0)
            expect(page.locator("#heat-scale")).to_have_text("")
            expect(page.locator("#filling img")).to_have_count(0)
            expect(page.locator(".toast-body")).to_have_count(0)
            expect(page.get_by_text("Error", exact=True)).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "demo_error.png"), full_page=True)
        finally:
            browser.close()


def test_concurrent_api_requests_match_direct_generation(demo_url, model, one_thread):
    from gradio_client import Client

    client = Client(demo_url, verbose=False)
    requests = [
        (PROMPTS[(i + seed) % 2], method, seed)
        for i, method in enumerate(("sjd", "sjd-coupled:window=8", "zipar+sjd"))
        for seed in (0, 1)
    ]
    jobs = [client.submit(*request, api_name="/generate") for request in requests]

    # the same generations made here while the server works through its queue; window="auto"
    # times this process's machine, so the method's run is pinned to the window the server ran
    direct, results = [], []
    for job, (prompt, method, seed) in zip(jobs, requests, strict=True):
        req = check_request(prompt, method, seed, model=model)
        ar = mmaccel.generate_image(prompt, "ar", model=model, seed=seed, return_output=True)
        results.append(job.result(timeout=300))
        ran = results[-1][2]["accelerated"]["window"]
        out = mmaccel.generate_image(
            prompt, req.method, model=model, seed=seed, return_output=True, **{**req.options, "window": ran}
        )
        direct.append((req, {"ar": ar, "accelerated": out}))

    for (prompt, _, seed), (req, runs), (ar_path, method_path, stats) in zip(
        requests, direct, results, strict=True
    ):
        assert stats["prompt"] == prompt and stats["seed"] == seed and stats["method"] == req.method
        assert stats["model"] == "shapes-t2i"  # the old call, without a model, runs the default model
        # the options it ran with: the library's defaults for this model under what was named
        defaults = {k: v for k, v in page_defaults(req.method, model).items() if v is not None}
        assert stats["options"] == {**defaults, **req.options} and stats["options_named"] == req.options
        # the window that ran: the one named, else the number auto chose
        window = stats["accelerated"]["window"]
        assert window == req.options.get("window", window) and isinstance(window, int) and window >= 0
        assert len(stats["accelerated"]["wall_clock_windows"]) == stats["wall_clock_repeats"]
        assert "window" not in stats["ar"]
        for key, path in (("ar", ar_path), ("accelerated", method_path)):
            out, got = runs[key], stats[key]
            assert got["forward_passes"] == out.num_forward_passes
            forward_N = out.generate_output.token_forward_index[0].numpy()
            assert got["accepted_per_forward"] == np.bincount(forward_N).tolist()
            assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(out.images[0])), key
            assert len(got["wall_clock_runs_s"]) == stats["wall_clock_repeats"]
            assert got["wall_clock_s"] == pytest.approx(statistics.median(got["wall_clock_runs_s"]), abs=1e-4)
        assert stats["ar"]["forward_passes"] == 256
        assert stats["speedup_forward_passes"] == pytest.approx(
            256 / stats["accelerated"]["forward_passes"], 1e-3
        )
        assert 1 <= stats["wall_clock_repeats"] <= 3 and stats["speedup_wall_clock"] > 0


@pytest.mark.parametrize(
    "prompt, method, seed, message",
    [
        ("   ", "sjd", 0, "Please enter a prompt"),
        (PROMPTS[0], "sjd:window=-1", 0, "Option window must be between 0 and 64 or 'auto', got -1"),
        (PROMPTS[0], "sjd:window=fast", 0, "Option window must be a number or 'auto', got 'fast'"),
        (PROMPTS[0], "sjd:window=2.5", 0, "Option window must be a whole number, got 2.5"),
        (PROMPTS[0], "sjd", 2.5, "seed must be a whole number from 0 to 4294967295, got 2.5"),
        (PROMPTS[1] * 3, "sjd", 0, f"prompt is too long: {len(PROMPTS[1] * 3)} characters, at most 300"),
        (PROMPTS[0], "warp-drive", 0, "Unknown method 'warp-drive'"),
        (PROMPTS[0], "sjd", -3, "seed must be between 0"),
        (PROMPTS[0], "sjd:init=diagonal", 0, "init must be one of random, horizontal, vertical"),
        (PROMPTS[0], "zipar:window=8", 0, "Method 'zipar' has no option 'window'"),
        (PROMPTS[0], "zipar+sjd:lantern_k=8", 0, "Method 'zipar\\+sjd' has no option 'lantern_k'"),
        (PROMPTS[0], "lantern:lantern_rule=fast", 0, "lantern_rule must be one of bounded, paper"),
    ],
)
def test_bad_input_is_a_readable_error(demo_url, prompt, method, seed, message):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message) as info:
        Client(demo_url, verbose=False).predict(prompt, method, seed, api_name="/generate")
    assert "Traceback" not in str(info.value)


# --- the model picker: shapes-t2i and a small random fashion-var pair, injected into an in-process demo ---

WAIT_MS = 20_000  # a page update on a loaded machine
MISSING = {"other-var": "other-var weights missing: /nowhere/other_var.safetensors"}


@pytest.fixture(scope="module")
def pair():
    """A small random VAR pair standing in for fashion-var."""
    from tests.conftest import tiny_var_pair

    return tiny_var_pair()


@pytest.fixture(scope="module")
def catalogue(model, pair):
    from demos.models import Catalogue

    return Catalogue({"shapes-t2i": model, "fashion-var": pair}, dict(MISSING))


@pytest.fixture(scope="module")
def two_models_url(catalogue):
    """The demo with both models, in this process (the random pair cannot reach a subprocess)."""
    from demos.app import CSS, build_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    demo = build_demo(catalogue, repeats=1, budget_s=10)
    demo.queue(default_concurrency_limit=1)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=False,
                quiet=True, css=CSS)  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        torch.set_num_threads(threads)


def _handler(demo, elem_id: str, event: str):
    """The function the page runs on ``event`` of the component ``elem_id``, and its outputs by elem_id."""
    block = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    fn = next(f for f in demo.fns.values() if (block._id, event) in f.targets)
    ids = [getattr(o, "elem_id", None) or f"#{i}" for i, o in enumerate(fn.outputs)]
    return lambda *args: dict(zip(ids, fn.fn(*args), strict=True))


def test_switching_the_model_updates_methods_options_and_prompt(catalogue, model, pair):
    from demos.app import build_demo

    demo = build_demo(catalogue, repeats=1)
    switch = _handler(demo, "model", "change")
    to_var = switch("fashion-var")
    assert to_var["method"]["choices"] == ["code"] and to_var["method"]["value"] == "code"
    # code shows draft_scales, with the pair's validated default and its valid range (4 scales: 1 to 3)
    assert to_var["option-draft_scales"]["visible"] is True and to_var["option-draft_scales"]["value"] == 3
    assert to_var["option-draft_scales"]["label"] == "draft_scales (1 to 3)"
    assert "default for code: 3 (fashion-var's tuned setting)" in to_var["option-draft_scales"]["info"]
    for option in ("window", "init", "zipar_window", "lantern_k"):
        assert to_var[f"option-{option}"]["visible"] is False
    assert to_var["prompt"]["value"] == "sneaker"
    assert to_var["classes"]["visible"] is True and to_var["classes"]["choices"] == list(CLASS_NAMES)
    assert "next-scale" in to_var["intro"] and "lossy" in to_var["intro"]
    assert "other-var is installed but not offered: other-var weights missing" in to_var["model"]["info"]

    back = switch("shapes-t2i")
    offered = offered_methods(model)
    assert "code" not in offered and "ar" not in offered and "sjd" in offered
    assert back["method"]["choices"] == offered
    assert back["method"]["value"] == "sjd"
    assert back["option-window"]["visible"] is True and back["option-window"]["value"] == "auto"
    assert back["option-draft_scales"]["visible"] is False
    assert back["prompt"]["value"] == PROMPTS[0] and back["classes"]["visible"] is False

    # the method picker of fashion-var refills its fields; a method of the other model changes nothing
    pick = _handler(demo, "method", "change")
    assert pick("code", "fashion-var")["option-draft_scales"]["value"] == 3
    assert all(u == {"__type__": "update"} for u in pick("sjd", "fashion-var").values())


def test_a_fashion_var_comparison_reports_forwards_per_model_and_peak_cache(pair, one_thread):
    from demos.report import compare, summary_markdown
    from demos.visualize import comparison_view

    c = compare(check_request("ankle boot", "code", 1, model=pair), pair, repeats=1, budget_s=5)
    s = c.stats
    assert s["ar"]["forwards"] == {"target": 4} and s["accelerated"]["forwards"] == {
        "drafter": 3,
        "refiner": 1,
    }
    assert s["accelerated"]["scale_models"] == ["large model"] * 3 + ["small model"]
    assert s["options"] == {"draft_scales": 3} and s["options_named"] == {} and s["lossless"] is False
    assert s["accelerated"]["peak_cache_mb"] == pytest.approx(c.accelerated.peak_cache_mb, abs=1e-4)
    assert (
        0
        < s["peak_cache_reduction_pct"]
        == pytest.approx(100 * (1 - c.accelerated.peak_cache_mb / c.baseline.peak_cache_mb), abs=0.1)
    )
    text = summary_markdown(c)
    assert "| forward passes, large model (`code`'s drafter) | 4 | 3 |" in text
    assert "| forward passes, small model (`code`'s refiner) | 0 | 1 |" in text
    assert (
        "| peak K/V cache |" in text and f"**{s['peak_cache_reduction_pct']:g}% less peak K/V cache**" in text
    )
    assert "does not save forwards" in text and "fewer forward passes" not in text
    assert "the small model draws the last scale (4x4: 16 of the 30 tokens)" in text
    assert "follow the small model's distribution, not the large model's" in text
    caption, picture, animation = comparison_view(c)  # no token-by-token view: which model drew each scale
    assert "`code`: the large model 1x1 to 3x3, the small model 4x4" in caption
    assert picture.width > 0 and animation == ""


def test_a_fashion_var_api_request_returns_both_images(two_models_url, pair):
    from gradio_client import Client

    ar_path, code_path, stats = Client(two_models_url, verbose=False).predict(
        "sneaker", "code", 2, "fashion-var", api_name="/generate"
    )
    assert stats["model"] == "fashion-var" and stats["method"] == "code"
    assert stats["accelerated"]["forwards"] == {"drafter": 3, "refiner": 1}
    assert stats["ar"]["forwards"] == {"target": 4} and stats["peak_cache_reduction_pct"] > 0
    for method, path in (("ar", ar_path), ("code", code_path)):
        direct = mmaccel.generate_image("sneaker", method, model=pair, seed=2)
        got = Image.open(path)
        assert got.size == direct.size == (8, 8)
        assert np.array_equal(np.asarray(got.convert("L")), np.asarray(direct)), method


@pytest.mark.parametrize(
    "prompt, method, name, message",
    [
        ("sneaker", "sjd", "fashion-var", "Method 'sjd' does not run on fashion-var, a next-scale \\(VAR\\) "
         "model: the methods that run on it are ar, code."),
        (PROMPTS[0], "code", "shapes-t2i", "Method 'code' does not run on shapes-t2i"),
        ("spaceship", "code", "fashion-var", "Unknown Fashion-MNIST class 'spaceship'; the classes are: "
         + ", ".join(CLASS_NAMES)),
        ("sneaker", "code:draft_scales=4", "fashion-var", "Option draft_scales must be between 1 and 3, got 4."),
        ("sneaker", "code", "other-var", "Model 'other-var' cannot be used here: other-var weights missing"),
        ("sneaker", "code", "warp-var", "Unknown model 'warp-var'; the models available here are: "
         "shapes-t2i, fashion-var."),
    ],
)  # fmt: skip
def test_a_request_the_model_cannot_run_is_a_readable_error(two_models_url, prompt, method, name, message):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message) as info:
        Client(two_models_url, verbose=False).predict(prompt, method, 0, name, api_name="/generate")
    assert "Traceback" not in str(info.value)


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium)"
)
def test_picking_fashion_var_in_browser(two_models_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1300},
        )
        try:
            page = browser.new_page()
            page.goto(two_models_url)
            picker = page.locator("#model")
            # a busy machine (two trainings) can take a while to serve the page and each update
            expect(picker).to_contain_text("other-var is installed but not offered", timeout=60_000)
            picker.get_by_role("combobox").click()
            expect(page.get_by_role("option")).to_have_count(2)  # the model that cannot load is not offered
            page.get_by_role("option", name=re.compile("^fashion-var")).click()

            # only code, with draft_scales at the pair's default and its range; the prompt is a class
            expect(page.locator("#method input[type=radio]")).to_have_count(1, timeout=WAIT_MS)
            expect(page.locator("#method").get_by_label("code", exact=True)).to_be_checked()
            box = page.locator("#option-draft_scales")
            expect(box).to_be_visible()
            expect(box.locator("input")).to_have_value("3")
            expect(box).to_contain_text("draft_scales (1 to 3)")
            expect(page.locator("#option-window")).to_be_hidden()
            expect(page.locator("#prompt textarea")).to_have_value("sneaker")
            expect(page.locator("#intro")).to_contain_text("fashion-var")
            expect(page.locator("#about")).to_contain_text("Lossy")
            classes = page.locator("#classes")
            expect(classes.locator("input[type=radio]")).to_have_count(len(CLASS_NAMES))
            classes.get_by_label("ankle boot", exact=True).check()
            expect(page.locator("#prompt textarea")).to_have_value("ankle boot", timeout=WAIT_MS)

            page.locator("#run").click()
            status, summary = page.locator("#status"), page.locator("#summary")
            expect(status).to_contain_text("Done: ar and code on fashion-var with seed 0.", timeout=60_000)
            expect(summary).to_contain_text("forward passes, small model (code's refiner)")
            expect(summary).to_contain_text("less peak K/V cache")
            expect(page.locator("#heat-scale")).to_contain_text("Which model drew each scale")
            for elem, width in (("ar-image", 256), ("method-image", 256), ("heat", 1)):
                img = page.locator(f"#{elem} img").first
                expect(img).to_be_visible()  # the 8x8 images enlarged to 256x256
                assert img.evaluate(f"i => i.complete && i.naturalWidth >= {width}"), elem
            expect(page.locator("#filling img")).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "demo_fashion_var.png"), full_page=True)

            # an unknown class: the model's own message, listing the ten classes, and no results
            page.locator("#prompt textarea").fill("spaceship")
            page.locator("#run").click()
            expect(status).to_contain_text(
                "Unknown Fashion-MNIST class 'spaceship'; the classes are: " + ", ".join(CLASS_NAMES),
                timeout=30_000,
            )
            expect(summary).not_to_contain_text("forward passes")

            # back to shapes-t2i: its methods, the window field, a caption as the prompt, no classes
            picker.get_by_role("combobox").click()
            page.get_by_role("option", name=re.compile("^shapes-t2i")).click()
            expect(page.locator("#method").get_by_label("sjd", exact=True)).to_be_checked(timeout=WAIT_MS)
            expect(page.locator("#method").get_by_label("code", exact=True)).to_have_count(0)
            expect(page.locator("#option-window")).to_be_visible()
            expect(page.locator("#option-draft_scales")).to_be_hidden()
            expect(page.locator("#prompt textarea")).to_have_value(PROMPTS[0])
            expect(classes).to_be_hidden()
        finally:
            browser.close()

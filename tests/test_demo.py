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

import contextlib
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
from PIL import Image

import mmaccel
from demos.inputs import MAX_PROMPT_CHARS, check_request, default_note, method_options, page_defaults
from demos.models import offered_methods
from demos.report import timing_words
from mmaccel.acceptors.lantern import RULES

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


@contextlib.contextmanager
def chromium_page(tmp_path: Path):
    """A page of the system's headless Chromium with a fresh profile (closed on exit)."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile every run
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1300},
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


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
    from playwright.sync_api import expect

    specs = method_options()
    with chromium_page(tmp_path) as page:
        page.goto(demo_url)
        # what the page promises: same seed + same method -> same image; same distribution, not picture
        intro = page.locator("#intro")
        # the first render waits for the front end to load (seconds on a loaded 2-core machine)
        expect(intro).to_contain_text("The same seed with the same method always gives the same image",
                                      timeout=60_000)  # fmt: skip
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
        long = ("a small yellow square at the left and a large white triangle " * 6)[: MAX_PROMPT_CHARS + 25]
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
            re.search(r"wall-clock, median of (\d) timed runs|wall-clock, (1) timed run", text).group(1) or 1
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

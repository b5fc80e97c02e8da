"""The Gradio demo (``demos/app.py``) end to end.

A module fixture starts ``python -m demos.app`` on a free loopback port. Headless Chromium
(the system's, through Playwright) drives the page; ``gradio_client`` drives the ``generate``
API endpoint with concurrent requests, whose results must equal direct ``generate_image``
calls with the same seed, and with bad input, which must come back as a readable error.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmaccel
from demos.inputs import check_request, method_options

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "outputs" / "test_artifacts"
CHROMIUM = Path("/usr/bin/chromium")
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


def test_method_picker_follows_the_registry():
    """Every registered method is offered, and each option lists exactly the methods that take it."""
    specs = method_options()
    assert {"window", "init"} <= set(specs) and "grid_width" not in specs
    for name, cls in mmaccel.METHODS.items():
        fields = {f for f in cls.__dataclass_fields__ if f not in ("name", "grid_width")}
        assert {o for o, s in specs.items() if name in s.methods} == fields
    assert specs["window"].default == 16 and specs["init"].choices == ("random", "horizontal", "vertical")
    req = check_request(" a red circle ", "sjd-coupled:init=vertical", 3.0, {"window": 8.0})
    assert (req.prompt, req.method, req.options, req.seed) == (
        "a red circle",
        "sjd-coupled",
        {"window": 8, "init": "vertical"},
        3,
    )


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium)"
)
def test_page_in_browser(demo_url):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(demo_url)
            for name in mmaccel.METHODS:  # the picker offers every registered method but the baseline
                if name != "ar":
                    expect(page.locator("#method").get_by_label(name, exact=True)).to_be_attached()
            page.locator("#prompt textarea").fill(PROMPTS[0])
            page.locator("#method").get_by_label("sjd-coupled", exact=True).check()
            page.get_by_label("vertical", exact=True).check()
            page.locator("#seed input").fill("7")
            page.locator("#run").click()
            summary = page.locator("#summary")
            expect(summary).to_contain_text("speed-up", timeout=120_000)
            for elem in ("ar-image", "method-image", "ar-heat", "method-heat", "filling"):
                img = page.locator(f"#{elem} img").first
                expect(img).to_be_visible()
                assert img.evaluate("i => i.complete && i.naturalWidth > 0"), f"{elem} did not load"
            text = summary.inner_text()
            assert "sjd-coupled" in text and "init=vertical" in text
            assert "forward passes\t256" in text  # ar commits one token per forward
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

            page.locator("#prompt textarea").fill("   ")
            page.locator("#run").click()
            expect(page.get_by_text("Please enter a prompt")).to_be_visible(timeout=30_000)
            page.wait_for_timeout(500)  # let the error toast finish sliding in
            page.screenshot(path=str(ARTIFACTS / "demo_error.png"))
        finally:
            browser.close()


def test_concurrent_api_requests_match_direct_generation(demo_url, one_thread):
    from gradio_client import Client

    client = Client(demo_url, verbose=False)
    requests = [
        (prompt, method, seed)
        for prompt in PROMPTS
        for seed in (0, 1)
        for method in ("sjd", "sjd-coupled:init=vertical,window=8")
    ]
    jobs = [client.submit(*request, api_name="/generate") for request in requests]

    # the same generations made here while the server works through its queue
    model = mmaccel.load_model()
    direct = []
    for prompt, method, seed in requests:
        req = check_request(prompt, method, seed)
        ar = mmaccel.generate_image(prompt, "ar", model=model, seed=seed, return_output=True)
        out = mmaccel.generate_image(
            prompt, req.method, model=model, seed=seed, return_output=True, **req.options
        )
        direct.append((req, {"ar": ar, "accelerated": out}))

    results = [job.result(timeout=300) for job in jobs]
    for (prompt, _, seed), (req, runs), (ar_path, method_path, stats) in zip(
        requests, direct, results, strict=True
    ):
        assert stats["prompt"] == prompt and stats["seed"] == seed and stats["method"] == req.method
        assert stats["options"] == {"window": 16, "init": "random", **req.options}
        for key, path in (("ar", ar_path), ("accelerated", method_path)):
            out, got = runs[key], stats[key]
            assert got["forward_passes"] == out.num_forward_passes
            forward_N = out.generate_output.token_forward_index[0].numpy()
            assert got["accepted_per_forward"] == np.bincount(forward_N).tolist()
            assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(out.images[0])), key
        assert stats["ar"]["forward_passes"] == 256
        assert stats["speedup_forward_passes"] == pytest.approx(
            256 / stats["accelerated"]["forward_passes"], 1e-3
        )
        assert stats["speedup_wall_clock"] > 0


@pytest.mark.parametrize(
    "prompt, method, seed, message",
    [
        ("   ", "sjd", 0, "Please enter a prompt"),
        (PROMPTS[0], "sjd:window=0", 0, "window must be between 1 and 64"),
        (PROMPTS[0], "warp-drive", 0, "Unknown method 'warp-drive'"),
        (PROMPTS[0], "sjd", -3, "seed must be between 0"),
        (PROMPTS[0], "sjd:init=diagonal", 0, "init must be one of random, horizontal, vertical"),
    ],
)
def test_bad_input_is_a_readable_error(demo_url, prompt, method, seed, message):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message) as info:
        Client(demo_url, verbose=False).predict(prompt, method, seed, api_name="/generate")
    assert "Traceback" not in str(info.value)

"""The Gradio demo's model picker: ``shapes-t2i`` and small random VAR and MAR pairs standing in
for ``fashion-var`` and ``fashion-mar`` (``tests.conftest.tiny_var_pair``, ``tiny_mar_pair``),
injected into an in-process demo (the random pairs cannot reach a subprocess). Switching the
model changes the methods, options and prompt; a fashion-var comparison reports forwards per
model and peak K/V cache, a fashion-mar one forwards of the target and the draft and the
acceptance rate; requests a model cannot run come back as readable errors; and headless
Chromium drives the switch end to end.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import mmaccel
from demos.inputs import check_request
from demos.models import offered_methods
from mmaccel.image_ar.fashion.data import CLASS_NAMES
from tests.test_demo import ARTIFACTS, CHROMIUM, PROMPTS, _free_port, chromium_page


@pytest.fixture(scope="module")
def model():
    return mmaccel.load_model()


WAIT_MS = 20_000  # a page update on a loaded machine
MISSING = {"other-var": "other-var weights missing: /nowhere/other_var.safetensors"}


@pytest.fixture(scope="module")
def pair():
    """A small random VAR pair standing in for fashion-var."""
    from tests.conftest import tiny_var_pair

    return tiny_var_pair()


@pytest.fixture(scope="module")
def mar():
    """A small random MAR pair standing in for fashion-mar (16 tokens, 8 steps by default)."""
    from tests.conftest import tiny_mar_pair

    return tiny_mar_pair()


@pytest.fixture(scope="module")
def catalogue(model, pair, mar):
    from demos.models import Catalogue

    return Catalogue({"shapes-t2i": model, "fashion-var": pair, "fashion-mar": mar}, dict(MISSING))


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


def test_switching_to_fashion_mar_offers_cspd_with_its_options(catalogue, mar):
    from demos.app import build_demo

    demo = build_demo(catalogue, repeats=1)
    to_mar = _handler(demo, "model", "change")("fashion-mar")
    assert to_mar["method"]["choices"] == ["cspd"] and to_mar["method"]["value"] == "cspd"
    fields = {o: to_mar[f"option-{o}"] for o in ("gamma", "prefill_ratio", "num_iter", "cspd_kappa")}
    assert all(f["visible"] is True for f in fields.values())
    assert fields["gamma"]["value"] == 4 and fields["gamma"]["label"] == "gamma (1 to 16)"
    assert fields["prefill_ratio"]["value"] == 0.1
    assert (
        fields["num_iter"]["value"] is None
        and "not set, so fashion-mar's 8 steps" in fields["num_iter"]["info"]
    )
    assert fields["cspd_kappa"]["value"] is None and "lossy" in fields["cspd_kappa"]["label"]
    assert (
        "lossy" in fields["cspd_kappa"]["info"] and "the acceptance is exact" in fields["cspd_kappa"]["info"]
    )
    for option in ("window", "draft_scales", "zipar_window", "lantern_k"):
        assert to_mar[f"option-{option}"]["visible"] is False
    assert to_mar["prompt"]["value"] == "sneaker" and to_mar["classes"]["choices"] == list(CLASS_NAMES)
    assert "masked-set (MAR)" in to_mar["intro"] and "cspd_kappa makes it lossy" in to_mar["intro"]
    assert "Per-forward view" in to_mar["view-note"]
    assert _handler(demo, "method", "change")("cspd", "fashion-mar")["option-gamma"]["value"] == 4


def test_a_fashion_mar_comparison_reports_forwards_of_both_models_and_acceptance(mar, one_thread):
    from demos.report import compare, summary_markdown
    from demos.visualize import comparison_view

    c = compare(
        check_request("ankle boot", "cspd:gamma=2,num_iter=6", 1, model=mar), mar, repeats=1, budget_s=5
    )
    s, a, m = c.stats, c.stats["ar"], c.stats["accelerated"]
    assert a["forwards"] == {"target": 6} and m["forwards"] == {
        "target": 4,
        "draft": 4,
    }  # 1 prefill step, 2 blocks, 1 step
    assert s["baseline_options"] == {"num_iter": 6} and a["num_iter"] == m["num_iter"] == 6  # as many steps
    assert s["options"] == {"gamma": 2, "prefill_ratio": 0.1, "num_iter": 6} and s["lossless"] is False
    assert 0 <= m["acceptance_rate"] <= 1 and len(m["acceptance_per_verify"]) == 2
    assert [v["tokens"] for v in m["verify_steps"]] and sum(v["tokens"] for v in m["verify_steps"]) == 16
    assert [v["drafted"] for v in m["verify_steps"]] == [False, True, True, False]
    assert s["speedup_forward_passes"] == 1.5 and s["speedup_wall_clock"] > 0
    text = summary_markdown(c)
    assert (
        "| forward passes, target model | 6 | 4 |" in text
        and "| forward passes, draft model | 0 | 4 |" in text
    )
    assert (
        "| drafted values kept (acceptance) | – |" in text and "**1.50x fewer target forward passes**" in text
    )
    assert "`ar` with num_iter=6 too" in text and "coarser schedule" in text
    caption, picture, animation = comparison_view(c)
    assert "`cspd`: 4 target forwards, 2 by the target alone, 2 checking a block" in caption
    assert picture.width > 0 and animation == ""


def test_a_fashion_mar_api_request_returns_both_images(two_models_url, mar):
    from gradio_client import Client

    ar_path, cspd_path, stats = Client(two_models_url, verbose=False).predict(
        "sneaker", "cspd:gamma=3", 2, "fashion-mar", api_name="/generate"
    )
    assert stats["model"] == "fashion-mar" and stats["method"] == "cspd"
    assert stats["ar"]["forwards"] == {"target": 8} and stats["accelerated"]["forwards"] == {
        "target": 4,
        "draft": 6,
    }
    assert 0 <= stats["accelerated"]["acceptance_rate"] <= 1
    for method, options, path in (("ar", {}, ar_path), ("cspd", {"gamma": 3}, cspd_path)):
        direct = mmaccel.generate_image("sneaker", method, model=mar, seed=2, **options)
        got = Image.open(path)
        assert got.size == direct.size == (16, 16)
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
         "shapes-t2i, fashion-var, fashion-mar."),
        ("sneaker", "sjd", "fashion-mar", "Method 'sjd' does not run on fashion-mar, a masked-set \\(MAR\\) model "
         "of continuous tokens: the methods that run on it are ar, cspd."),
        (PROMPTS[0], "cspd", "shapes-t2i", "Method 'cspd' does not run on shapes-t2i, a next-token \\(raster\\) "
         "model: cspd runs on masked-set \\(MAR\\) model pairs such as fashion-mar"),
        ("spaceship", "cspd", "fashion-mar", "Unknown Fashion-MNIST class 'spaceship'"),
        ("sneaker", "cspd:gamma=0", "fashion-mar", "Option gamma must be between 1 and 16, got 0."),
        ("sneaker", "cspd:cspd_kappa=0", "fashion-mar", "cspd_kappa must be a number &gt; 0"),  # escaped for HTML
        ("sneaker", "cspd:draft_scales=2", "fashion-mar", "Method 'cspd' has no option 'draft_scales'"),
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
    from playwright.sync_api import expect

    with chromium_page(tmp_path) as page:
        page.goto(two_models_url)
        picker = page.locator("#model")
        # a busy machine (two trainings) can take a while to serve the page and each update
        expect(picker).to_contain_text("other-var is installed but not offered", timeout=60_000)
        picker.get_by_role("combobox").click()
        expect(page.get_by_role("option")).to_have_count(3)  # the model that cannot load is not offered
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

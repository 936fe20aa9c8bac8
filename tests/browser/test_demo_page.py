"""
The demo page in a real browser: `app.py` serves two tiny trained models and a path that does not load, and Debian's
headless Chromium, driven by playwright, uploads an image, asks, and reads the page: both models' answers, their
latency and maps, a second turn, and a message for every bad input, after which the page still answers.

Needs the `chromium` Debian package and `pip install playwright` (no browser download): `make test-browser`, which
`.ci/run` runs; the default `make test` leaves this folder out. A screenshot of the answered page is written to
`$DEMO_SCREENSHOT` (default: the test's temporary folder).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from data.shapes import shapes_scenes
from demo.page import EXAMPLE_SPLIT
from demo_models import example_captions, save_captioner


REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ANSWER_TIMEOUT_MS = 120_000
PROMPT = "Describe the image briefly."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_served(url: str, process: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"app.py did not serve {url} within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo_page")
    scenes = shapes_scenes(2, split=EXAMPLE_SPLIT)
    paths = {f"scene{index}": root / f"scene{index}.png" for index in range(2)}
    for index, scene in enumerate(scenes):
        paths[f"scene{index}"].write_bytes(scene.png)
    paths["broken"] = root / "broken.png"
    paths["broken"].write_bytes(b"\x89PNG this is not a picture")
    paths["mlp"] = save_captioner(root / "mlp", "mlp")
    paths["xattn"] = save_captioner(root / "perceiver_xattn", "perceiver", fusion="cross_attention")
    return paths


@pytest.fixture(scope="module")
def url(files):
    port = free_port()
    command = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)]
    for name in (files["mlp"], files["xattn"], files["mlp"].parent / "missing"):
        command += ["--model", str(name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until_served(f"http://127.0.0.1:{port}/", process)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def page(url):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(url)
        yield page
        browser.close()


def message(page: Page):
    return page.locator("#demo-message")


def send(page: Page, prompt: str) -> None:
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#send").click()


def upload(page: Page, path: Path) -> None:
    """Uploads `path` as a user does: the file already there is cleared (its `x`) first."""
    clear = page.locator("#image-upload button[aria-label='Clear']")
    if clear.count():
        clear.click()
    page.locator("#image-upload input[type=file]").set_input_files(str(path))


def test_a_model_that_does_not_load_is_a_message_and_the_others_are_there(page, files):
    expect(message(page)).to_contain_text(f"Could not load '{files['mlp'].parent / 'missing'}'")
    expect(page.locator("#model-0-summary")).to_contain_text("mlp projector · early fusion · image tokens: 16")
    expect(page.locator("#model-1-summary")).to_contain_text("perceiver projector · cross_attention fusion")
    expect(page.locator("#model-1-summary")).to_contain_text("CIDEr 1.234")
    expect(page.locator("#model-2")).to_be_hidden()


def test_asking_without_an_image_or_a_prompt_says_what_is_missing(page, files):
    send(page, PROMPT)
    expect(message(page)).to_contain_text("No image: upload one or pick an example first.")
    upload(page, files["scene0"])
    expect(page.locator("#preview img")).to_be_visible()
    send(page, "   ")
    expect(message(page)).to_contain_text("Empty prompt")


def test_both_models_answer_side_by_side_with_latency_and_a_map(page, files, tmp_path):
    send(page, PROMPT)
    caption = example_captions()[0]
    for slot in (0, 1):
        expect(page.locator(f"#model-{slot}-chat")).to_contain_text(caption, timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator(f"#model-{slot}-stats")).to_contain_text("tokens/s")
        expect(page.locator(f"#model-{slot}-map img")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(message(page)).to_have_text("")
    screenshot = Path(os.environ.get("DEMO_SCREENSHOT") or tmp_path / "demo_page.png")
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_the_conversation_goes_on(page):
    send(page, "And what colour is it?")
    for slot in (0, 1):
        chat = page.locator(f"#model-{slot}-chat")
        expect(chat).to_contain_text("And what colour is it?", timeout=ANSWER_TIMEOUT_MS)
        expect(chat).to_contain_text(example_captions()[0])
        # Each turn's map is a new file: the second one's shows that this model's reply is complete.
        second_map = re.compile(f"slot{slot}-turn2-")
        expect(page.locator(f"#model-{slot}-map img")).to_have_attribute("src", second_map, timeout=ANSWER_TIMEOUT_MS)


def test_a_prompt_too_long_for_the_models_is_a_message(page):
    send(page, "red " * 600)
    expect(message(page)).to_contain_text("Too long for", timeout=ANSWER_TIMEOUT_MS)
    expect(message(page)).to_contain_text("reads at most 512")


def test_an_unreadable_upload_and_a_model_that_does_not_load_are_messages(page, files):
    upload(page, files["broken"])
    expect(message(page)).to_contain_text("The uploaded file is not an image this page can read")
    page.locator("#path textarea").fill(str(files["mlp"].parent / "nowhere"))
    page.locator("#load").click()
    expect(message(page)).to_contain_text("does not exist; pass a saved model directory")


def test_after_every_bad_input_the_page_still_answers(page, files):
    upload(page, files["scene1"])
    expect(page.locator("#preview img")).to_be_visible()
    send(page, PROMPT)
    for slot in (0, 1):
        expect(page.locator(f"#model-{slot}-chat")).to_contain_text(example_captions()[1], timeout=ANSWER_TIMEOUT_MS)
    expect(message(page)).to_have_text("")

"""Shared fixtures: every test runs offline on tiny models built from configs. The captioning prompt and chat come
from their one home, `captioning.py`; the projector types from `configuration_vlm.py`."""

import os
from importlib.metadata import PackageNotFoundError, version

import pytest
from PIL import Image


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The demo page's browser tests need Debian's Chromium and playwright: `make test-browser` runs them, `make test` not.
collect_ignore = [] if os.environ.get("VLM_BROWSER_TESTS") == "1" else ["browser"]

# Named at the top of every run, so that a failure under the newest releases (`make test-newest`) says which they were.
REPORTED_PACKAGES = (
    "torch", "transformers", "accelerate", "peft", "datasets", "tokenizers", "huggingface_hub", "safetensors", "pillow",
    "numpy",
)  # fmt: skip


def pytest_report_header() -> str:
    versions = []
    for package in REPORTED_PACKAGES:
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return "releases: " + ", ".join(versions)


@pytest.fixture
def images() -> list[Image.Image]:
    """Three distinct RGB images of different sizes."""
    red = Image.new("RGB", (48, 40), (220, 30, 30))
    blue = Image.new("RGB", (32, 64), (20, 40, 230))
    green = Image.new("RGB", (64, 64), (0, 0, 0))
    green.paste((30, 200, 60), (16, 16, 48, 48))
    return [red, blue, green]

"""Shared fixtures: every test runs offline on tiny models built from configs."""

import os

import pytest
from PIL import Image


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECTOR_TYPES = ["linear", "mlp", "qformer", "perceiver"]
CAPTION_PROMPT = "Describe the image briefly."  # eval.CAPTION_PROMPT; eval is not installed in the 4.57 test env


def caption_messages(answer: str | None = None) -> list[dict]:
    """The COCO captioning chat: the image and the prompt as the user turn, optionally the caption as the answer."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


@pytest.fixture
def images() -> list[Image.Image]:
    """Three distinct RGB images of different sizes."""
    red = Image.new("RGB", (48, 40), (220, 30, 30))
    blue = Image.new("RGB", (32, 64), (20, 40, 230))
    green = Image.new("RGB", (64, 64), (0, 0, 0))
    green.paste((30, 200, 60), (16, 16, 48, 48))
    return [red, blue, green]

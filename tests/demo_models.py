"""Tiny models for the demo page's tests: trained in seconds to caption the page's example scenes."""

import io
import json
from pathlib import Path

import PIL.Image
import torch
from model_checks import train_to_answer

from data.shapes import shapes_scenes
from demo.page import EXAMPLE_SPLIT
from evaluation.captioning import caption_messages
from models.tiny import build_tiny_vlm


def example_captions(count: int = 2) -> list[str]:
    """The first reference caption of each of the page's first `count` example scenes."""
    return [scene.captions[0] for scene in shapes_scenes(count, split=EXAMPLE_SPLIT)]


def save_captioner(directory: Path, projector_type: str, steps: int = 80, **overrides) -> Path:
    """
    A tiny model that learnt to caption the page's first two example scenes with [`example_captions`] (greedy
    decoding reproduces them), saved with its processor, a `training_results.json` and a model card with a CIDEr.
    """
    torch.manual_seed(0)
    model, processor = build_tiny_vlm(projector_type, **overrides)
    images = [PIL.Image.open(io.BytesIO(scene.png)).convert("RGB") for scene in shapes_scenes(2, split=EXAMPLE_SPLIT)]
    chats = [caption_messages(caption=caption) for caption in example_captions()]
    train_to_answer(model, processor, images, chats, directory, steps)
    (directory / "training_results.json").write_text(json.dumps({"trainable_parameters": 1234}))
    (directory / "README.md").write_text(MODEL_CARD)
    return directory


MODEL_CARD = """---
model-index:
- name: tiny
  results:
  - task:
      type: image-to-text
    dataset:
      name: shapes
      type: shapes
    metrics:
    - type: cider
      value: 1.2345
      name: CIDEr
---
# tiny
"""

"""Helpers of the training tests: tiny offline runs and what they leave on disk."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from data.captions import make_shapes_dataset
from evaluation.captioning import caption_messages
from training import VLMTrainingArguments


REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"


def tiny_args(tmp_path: Path, **overrides) -> VLMTrainingArguments:
    """A tiny, fast, offline run without evaluation or checkpoints unless `overrides` ask for them."""
    defaults = {
        "model": "tiny",
        "stage": "align",
        "dataset": "shapes",
        "max_train_samples": 48,
        "max_eval_samples": 8,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 3e-3,
        "warmup_ratio": 0.0,
        "eval_strategy": "no",
        "max_new_tokens": 16,
        "save_steps": 0,
        "report_to": "none",
        "output_dir": str(tmp_path / "run"),
        "feature_cache_dir": str(tmp_path / "feature_cache"),
    }
    return VLMTrainingArguments(**{**defaults, **overrides})


def assert_same_weights(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 1e-6
) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=name)


def saved_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def caption_inputs(processor, num_images: int = 2):
    images = [image.convert("RGB") for image in make_shapes_dataset(num_images, split="test")["image"]]
    prompt = processor.apply_chat_template(caption_messages(), add_generation_prompt=True)
    return processor(images=images, text=[prompt] * num_images, return_tensors="pt")

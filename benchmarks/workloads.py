# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
What the benchmarks run on: their settings per size and device, models built from configs (tiny, or real-size
SigLIP-base + Qwen2.5-0.5B shapes with random weights), synthetic 224 px images, and training batches as `train()`
builds them with the feature cache on.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from configuration_vlm import VLMConfig
from data.images import noise_images
from modeling_vlm import VLMForConditionalGeneration
from models.tiny import (
    IMAGE_TOKEN,
    build_siglip_image_processor,
    build_tiny_tokenizer,
    build_tiny_vlm,
    set_tiny_generation_config,
)
from processing_vlm import VLMProcessor, make_chat_template
from training.comparison import ALL_RUNS, TOKENIZED_RUN, run_settings
from training.data import CaptionCollator


SYNTHETIC_CAPTION = "A man riding a wave on top of a surfboard in the ocean."
IMAGE_SIZE = 224
# Chameleon's VQ tokenizer (its default config: 8,192 codes, 4 halvings) at the benchmark's 224 px: 14 x 14 codes, the
# visual budget of SigLIP-base's 196 patches.
REAL_SIZE_VQ_CONFIG = {"model_type": "chameleon_vqgan", "resolution": IMAGE_SIZE}


@dataclass
class BenchmarkSettings:
    """Sizes and repetitions of one benchmark run (see [`benchmark_settings`])."""

    small: bool
    projectors: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    warmup_steps: int
    timed_steps: int
    generation_images: int
    generation_batch_size: int
    max_new_tokens: int
    lever_batch_size: int


def benchmark_settings(
    small: bool, projectors: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None
) -> BenchmarkSettings:
    """
    Defaults per size and device: tiny and quick with `small`, CPU-feasible real size, or the H100 targets.
    `projectors` are run names of `train_accelerate.py --compare` (`perceiver`, `perceiver_xattn`, ...).
    """
    cuda = torch.cuda.is_available()
    if small:
        default_batches, repetitions, generation = (2, 4), (1, 2), (4, 2, 8)
    elif cuda:
        default_batches, repetitions, generation = (32, 128), (3, 10), (512, 128, 32)
    else:
        default_batches, repetitions, generation = (2,), (1, 2), (2, 2, 8)
    return BenchmarkSettings(
        small=small,
        projectors=tuple(projectors or ALL_RUNS),
        batch_sizes=tuple(batch_sizes or default_batches),
        warmup_steps=repetitions[0],
        timed_steps=repetitions[1],
        generation_images=generation[0],
        generation_batch_size=generation[1],
        max_new_tokens=generation[2],
        lever_batch_size=2,
    )


def build_benchmark_model(
    run_name: str, small: bool, **config_overrides: Any
) -> tuple[VLMForConditionalGeneration, VLMProcessor]:
    """
    The model of `run_name` (a projector type, `<projector>_xattn` for cross-attention fusion, or a tiled run of
    `training.comparison.TILED_RUNS`): the tiny VLM of
    `tiny_vlm.py` with `small`, else a real-size one from [`VLMConfig`] defaults (SigLIP-base + Qwen2.5-0.5B shapes,
    random weights; cross-attention before every 4th decoder layer; Chameleon's VQ tokenizer at 224 px for the
    tokenized run) with SigLIP's 224 px preprocessing and the tiny offline tokenizer. `config_overrides` are
    [`VLMConfig`] arguments of the real-size model.
    """
    if small:
        return build_tiny_vlm(**run_settings(run_name))
    tokenizer = build_tiny_tokenizer(IMAGE_TOKEN)
    if run_name == TOKENIZED_RUN:
        config_overrides = {"vision_config": REAL_SIZE_VQ_CONFIG, **config_overrides}
    config = VLMConfig(
        **run_settings(run_name),
        image_token=IMAGE_TOKEN,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **config_overrides,
    )
    torch.manual_seed(0)
    model = VLMForConditionalGeneration(config)
    set_tiny_generation_config(model, tokenizer)
    processor = VLMProcessor(
        image_processor=build_siglip_image_processor(IMAGE_SIZE),
        tokenizer=tokenizer,
        chat_template=make_chat_template(IMAGE_TOKEN),
        num_image_tokens=config.num_image_tokens,
        image_token=IMAGE_TOKEN,
        max_tiles=config.max_tiles,
        fusion=config.fusion,
    )
    return model.eval(), processor


def synthetic_images(count: int, seed: int = 0, size: int = IMAGE_SIZE) -> list[Image.Image]:
    """`count` random-noise RGB images of `size` x `size` pixels."""
    return noise_images(count, size, size, seed)


def training_batch(
    model: VLMForConditionalGeneration, processor: VLMProcessor, batch_size: int, device: torch.device
) -> dict[str, Any]:
    """A training batch as `train()` sees it with the feature cache on: `CaptionCollator` over cached features."""
    pixel_values = processor.image_processor(synthetic_images(batch_size), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        features = model.get_vision_features(pixel_values.to(device))
    features = features.float() if features.is_floating_point() else features  # a VQ tokenizer's codes stay indices
    examples = [
        {"image_id": str(i), "caption": SYNTHETIC_CAPTION, "vision_features": features[i].clone()}
        for i in range(batch_size)
    ]
    batch = CaptionCollator(processor)(examples)
    batch.pop("num_skipped_images")
    return {name: value.to(device) for name, value in batch.items()}



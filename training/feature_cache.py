# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The on-disk cache of a frozen vision tower's features: computed once per dataset, tower and preprocessing, then read
by every epoch and by every run of a comparison instead of running the tower again.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from datasets import Dataset
from datasets import Image as ImageFeature
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from data.captions import open_image
from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import VLMProcessor

from .integrity import hash_tensors


@dataclass
class VisionFeatures:
    """
    Vision-tower features of the rows of a dataset: `features` `(num_readable, num_patches, dim)`, and `row_index`
    `(num_rows,)` such that `features[row_index[row]]` is the output of row `row` (-1 where the image is unreadable).
    """

    features: torch.Tensor
    row_index: torch.Tensor
    cache_hit: bool

    @property
    def readable_rows(self) -> list[int]:
        return (self.row_index >= 0).nonzero().flatten().tolist()


def vision_features_cache_key(
    vlm: VLMForConditionalGeneration, processor: VLMProcessor, dataset: Dataset, precision: str
) -> str:
    """
    Identity of the features of `dataset` under `vlm`'s vision tower: the dataset fingerprint, the tower's config and
    a hash of its weights, the feature layer and tokens, the image preprocessing and the mixed precision they are
    computed in.
    """
    digest = hashlib.sha256()
    parts = (
        dataset._fingerprint,
        json.dumps(vlm.config.vision_config.to_dict(), sort_keys=True, default=str),
        str(vlm.config.vision_feature_layer),
        str(vlm.config.num_patches),  # a class token kept or dropped (`vision_feature_select_strategy`)
        json.dumps(processor.image_processor.to_dict(), sort_keys=True, default=str),
        precision,
    )
    for part in parts:
        digest.update(part.encode() + b"\0")
    hash_tensors(digest, sorted(vlm.vision_tower.state_dict().items()))
    return digest.hexdigest()[:32]


def load_or_compute_vision_features(
    vlm: VLMForConditionalGeneration,
    processor: VLMProcessor,
    dataset: Dataset,
    accelerator: Accelerator,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
) -> VisionFeatures:
    """
    The vision-tower features of every row of `dataset`, read from `cache_dir` or computed in batches on the
    accelerator (in its mixed precision) and written there as safetensors. The file is named by
    [`vision_features_cache_key`] and written atomically, so runs of other projectors on the same data and tower reuse
    it. Call it on the local main process first: the others then find the file.
    """
    precision = str(accelerator.mixed_precision)
    path = Path(cache_dir) / f"{vision_features_cache_key(vlm, processor, dataset, precision)}.safetensors"
    if path.exists():
        tensors = load_file(path)
        return VisionFeatures(tensors["features"], tensors["row_index"], cache_hit=True)

    features, row_index = compute_vision_features(vlm, processor, dataset, accelerator, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.tmp-{os.getpid()}")
    save_file({"features": features.contiguous(), "row_index": row_index}, str(temporary))
    os.replace(temporary, path)
    return VisionFeatures(features, row_index, cache_hit=False)


def compute_vision_features(
    vlm: VLMForConditionalGeneration,
    processor: VLMProcessor,
    dataset: Dataset,
    accelerator: Accelerator,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `(features, row_index)` of every readable row of `dataset`: features `(num_readable, num_patches, dim)` on the
    CPU, and `row_index` `(len(dataset),)` giving each row's index into them (-1 where the image is unreadable).
    """
    images = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    row_index = torch.full((len(dataset),), -1, dtype=torch.long)
    chunks = []
    vision_tower_device = vlm.vision_tower.device
    vlm.vision_tower.to(accelerator.device)
    for start in tqdm(
        range(0, len(dataset), batch_size),
        desc="caching vision features",
        disable=not accelerator.is_local_main_process,
    ):
        opened = [(row, open_image(value)) for row, value in enumerate(images[start : start + batch_size], start)]
        readable = [(row, image) for row, image in opened if image is not None]
        if not readable:
            continue
        pixel_values = processor.image_processor([image for _, image in readable], return_tensors="pt")["pixel_values"]
        with torch.no_grad(), accelerator.autocast():
            chunks.append(vlm.get_vision_features(pixel_values.to(accelerator.device)).cpu())
        first = sum(len(chunk) for chunk in chunks[:-1])
        row_index[[row for row, _ in readable]] = torch.arange(first, first + len(readable))
    vlm.vision_tower.to(vision_tower_device)
    if not chunks:
        config = vlm.config
        return torch.empty(0, config.num_patches, config.vision_config.hidden_size), row_index
    return torch.cat(chunks), row_index

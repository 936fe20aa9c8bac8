# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The on-disk cache of a frozen vision tower's features: computed once per dataset, tower and preprocessing, then read
by every epoch and by every run of a comparison instead of running the tower again.
"""

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from datasets import Dataset
from datasets import Image as ImageFeature
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from data.images import open_image
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


def feature_selection(vlm: torch.nn.Module) -> tuple[str, str]:
    """
    Which of the tower's outputs `vlm` reads: a layer's tokens (a class token kept or dropped, see
    `vision_feature_select_strategy`), or a dual encoder's one pooled feature per image.
    """
    if getattr(vlm, "reads_pooled_vision_features", False):
        return "pooled", "1"
    return str(vlm.config.vision_feature_layer), str(vlm.config.num_patches)


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
        *feature_selection(vlm),
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

    def compute() -> dict[str, torch.Tensor]:
        features, row_index = compute_vision_features(vlm, processor, dataset, accelerator, batch_size)
        return {"features": features, "row_index": row_index}

    tensors, hit = load_or_save(path, compute)
    return VisionFeatures(tensors["features"], tensors["row_index"], cache_hit=hit)


def load_or_save(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], bool]:
    """
    `(tensors, cache hit)`: the tensors of the safetensors file `path`, or those `compute` returns, then written to
    `path` atomically (a run that stops half-way leaves no file another would read).
    """
    if path.exists():
        return load_file(path), True
    tensors = {name: tensor.contiguous() for name, tensor in compute().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.tmp-{os.getpid()}")
    save_file(tensors, str(temporary))
    os.replace(temporary, path)
    return tensors, False


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
    vision_tower_device, training = vlm.vision_tower.device, vlm.vision_tower.training
    vlm.vision_tower.to(accelerator.device).eval()  # no dropout in a cached feature (SigLIP and CLIP have none)
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
    vlm.vision_tower.to(vision_tower_device).train(training)
    if not chunks:
        config = vlm.config
        if getattr(config, "is_vq_tokenizer", False):  # one code per latent cell
            return torch.empty(0, config.num_patches, dtype=torch.long), row_index
        tokens = () if getattr(vlm, "reads_pooled_vision_features", False) else (config.num_patches,)
        return torch.empty(0, *tokens, config.vision_config.hidden_size), row_index
    return torch.cat(chunks), row_index

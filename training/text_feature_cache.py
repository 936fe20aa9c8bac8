# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The on-disk cache of a locked text encoder's pooled features (stage contrastive with `lock_text`, LiT's locked text):
every reference of the training split encoded once, then read by every epoch, whichever reference it draws, and by
every run with the same encoder, texts and precision.
"""

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from contrastive_pretraining import ContrastiveDualEncoder

from .feature_cache import load_or_save
from .integrity import hash_tensors


@dataclass
class TextFeatures:
    """
    Pooled text features of every reference of a caption split: `features` `(num_references, text_hidden_size)`, the
    references row after row, and `first` `(num_rows,)`, the index of each row's first reference in them.
    """

    features: torch.Tensor
    first: torch.Tensor
    cache_hit: bool

    def of(self, row: int, reference: int) -> torch.Tensor:
        """The features of reference `reference` of row `row`, `(text_hidden_size,)`."""
        return self.features[int(self.first[row]) + reference]


def load_or_compute_text_features(
    model: ContrastiveDualEncoder,
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
    references: list[list[str]],
    accelerator: Accelerator,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
) -> TextFeatures:
    """
    The [`TextFeatures`] of `references` (each row's list), tokenized by `tokenize` as training batches are, read from
    `cache_dir` or computed in batches on the accelerator (in its mixed precision) and written there. The file is named
    by a hash of the texts' token ids, the encoder's weights and the precision. Call it on the local main process first.
    """
    texts = [text for row in references for text in row]
    batches = [tokenize(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
    digest = hashlib.sha256(f"pooled first token\0{accelerator.mixed_precision}\0".encode())
    hash_tensors(digest, sorted(model.text_model.state_dict().items()))
    # Each text's tokens, without the padding: the batch size does not change the file.
    masks = [batch["attention_mask"].bool() for batch in batches]
    lengths = torch.cat([mask.sum(dim=1) for mask in masks])
    tokens = torch.cat([batch["input_ids"][mask] for batch, mask in zip(batches, masks)])
    hash_tensors(digest, [("lengths", lengths), ("tokens", tokens)])
    path = Path(cache_dir) / f"text-{digest.hexdigest()[:32]}.safetensors"

    def compute() -> dict[str, torch.Tensor]:
        features, text_model_device, training = [], model.text_model.device, model.text_model.training
        model.text_model.to(accelerator.device).eval()  # as a locked encoder runs in training: no dropout
        for batch in tqdm(batches, desc="caching text features", disable=not accelerator.is_local_main_process):
            batch = {name: tensor.to(accelerator.device) for name, tensor in batch.items()}
            with torch.no_grad(), accelerator.autocast():
                features.append(model.pooled_text_features(batch["input_ids"], batch["attention_mask"]).cpu())
        model.text_model.to(text_model_device).train(training)
        counts = torch.tensor([0] + [len(row) for row in references[:-1]], dtype=torch.long)
        return {"features": torch.cat(features), "first": counts.cumsum(0)}

    tensors, hit = load_or_save(path, compute)
    return TextFeatures(tensors["features"], tensors["first"], cache_hit=hit)

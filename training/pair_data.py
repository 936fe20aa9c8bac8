# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The data of a pair stage's run (BLIP-2's stage 1, or stage contrastive): image-text pairs from the same caption
datasets, one reference per image and epoch ([`PairCollator`] tokenizes them with the BERT tokenizer; a locked text
encoder's cached features ride along), and the validation split as a retrieval set ([`RetrievalEvalSet`]: every image
against every reference).
"""

from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader

from data.images import readable_rows
from qformer_pretraining import QFormerForPretraining, QFormerPretrainingProcessor

from .arguments import VLMTrainingArguments
from .data import CaptionExamples, RunData, length_grouped_sampler, load_splits_and_features, training_loader
from .feature_cache import VisionFeatures
from .text_feature_cache import load_or_compute_text_features


SPECIAL_TOKENS_PER_TEXT = 2  # [CLS] ... [SEP]


@dataclass
class PairCollator:
    """
    Batches [`~training.data.CaptionExamples`] items into stage-1 inputs: the captions as `input_ids` and
    `attention_mask` `(batch_size, text_length)` (`[CLS] caption [SEP]`, cut to `max_caption_tokens` caption tokens),
    and `pixel_values` `(batch_size, 3, image_size, image_size)` or `vision_features` `(batch_size, num_patches,
    vision_dim)`. Unreadable images are dropped and counted in `num_skipped_images`.
    """

    processor: QFormerPretrainingProcessor
    max_caption_tokens: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        kept = [e for e in examples if e.get("image", e.get("vision_features")) is not None]
        batch: dict[str, Any] = {"num_skipped_images": len(examples) - len(kept)}
        if not kept:
            return batch
        batch.update(self.tokenize([e["caption"] for e in kept]))
        if "text_features" in kept[0]:  # a locked text encoder's, cached: they replace its pass over the tokens
            batch["text_features"] = torch.stack([e["text_features"] for e in kept])
        if "vision_features" in kept[0]:
            batch["vision_features"] = torch.stack([e["vision_features"] for e in kept])
        else:
            batch.update(self.processor(images=[e["image"] for e in kept]))
        return batch

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.processor(text=texts, max_length=self.max_caption_tokens + SPECIAL_TOKENS_PER_TEXT)


@dataclass
class RetrievalEvalSet:
    """
    The validation split of a stage-1 run: `pair_loader` (prepared: each process reads its share) gives every readable
    image once, with one of its references, in row order; `input_ids` / `attention_mask` `(num_texts, text_length)`
    are all their references, `text_image` `(num_texts,)` the image (in that order) each describes; `features` the
    cached vision features (what matching re-ranking reads) and `feature_rows` each image's row in them.
    """

    pair_loader: DataLoader
    input_ids: torch.LongTensor
    attention_mask: torch.Tensor
    text_image: torch.LongTensor
    features: VisionFeatures | None
    feature_rows: list[int]
    references: dict[str, list[str]]
    num_skipped_images: int


def build_retrieval_eval_set(
    accelerator: Accelerator,
    eval_data: Dataset,
    features: VisionFeatures | None,
    collator: PairCollator,
    seed: int,
    batch_size: int,
) -> RetrievalEvalSet:
    """The readable rows of `eval_data` as a [`RetrievalEvalSet`]; `seed` draws the reference paired with each image."""
    rows = readable_rows(eval_data) if features is None else features.readable_rows
    image_ids, references = list(eval_data["image_id"]), list(eval_data["captions"])
    texts = [(index, caption) for index, row in enumerate(rows) for caption in references[row]]
    tokens = collator.tokenize([caption for _, caption in texts])
    examples = CaptionExamples(eval_data, rows, seed, features, redraw_each_epoch=False)
    pair_loader = DataLoader(examples, batch_size=batch_size, collate_fn=collator)
    return RetrievalEvalSet(
        pair_loader=accelerator.prepare_data_loader(pair_loader),
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        text_image=torch.tensor([index for index, _ in texts], dtype=torch.long),
        features=features,
        feature_rows=[] if features is None else [int(features.row_index[row]) for row in rows],
        references={image_ids[row]: references[row] for row in rows},
        num_skipped_images=len(eval_data) - len(rows),
    )


def prepare_pair_data(
    args: VLMTrainingArguments,
    accelerator: Accelerator,
    model: QFormerForPretraining,
    processor: QFormerPretrainingProcessor,
) -> RunData:
    """
    The splits of a pair stage's run (Q-Former stage 1 or contrastive): the training pairs' loader (shuffled once
    prepared) and the retrieval set.
    """
    text_config = getattr(model.config, "qformer_config", None) or model.config.text_config  # the BERT's
    max_positions = text_config.max_position_embeddings
    if args.max_caption_tokens + SPECIAL_TOKENS_PER_TEXT > max_positions:
        raise ValueError(
            f"max_caption_tokens={args.max_caption_tokens} (+ [CLS] and [SEP]) exceeds the text encoder's "
            f"max_position_embeddings ({max_positions}, BERT's): lower max_caption_tokens."
        )
    if args.retrieval_rerank_k and not args.cache_vision_features:
        raise ValueError("retrieval_rerank_k re-ranks with the cached vision features: set cache_vision_features.")
    train_data, eval_data, features = load_splits_and_features(args, accelerator, model, processor)
    collator = PairCollator(processor, args.max_caption_tokens)
    text_features = None
    if args.lock_text and args.cache_vision_features:  # the one switch of both feature caches
        with accelerator.local_main_process_first():
            text_features = load_or_compute_text_features(
                model, collator.tokenize, list(train_data["captions"]), accelerator, args.feature_cache_dir,
                args.per_device_eval_batch_size,
            )  # fmt: skip
    train_examples = CaptionExamples(
        train_data, seed=args.seed, vision_features=features["train"], text_features=text_features
    )
    batch_size, num_workers = args.per_device_train_batch_size, args.dataloader_num_workers
    sampler = None
    if args.group_by_length:
        tokenizer, max_tokens = processor.tokenizer, args.max_caption_tokens
        sampler = length_grouped_sampler(train_examples, tokenizer, max_tokens, batch_size, args.seed)
    train_loader = training_loader(train_examples, collator, batch_size, num_workers, sampler)
    eval_set = build_retrieval_eval_set(
        accelerator, eval_data, features["eval"], collator, args.seed, args.per_device_eval_batch_size
    )
    if not eval_set.references:
        raise ValueError(f"No image of the {args.eval_split!r} split of {args.dataset!r} could be read.")
    if args.lock_text:  # a locked text encoder's features: cached, or (caching off) not
        features = {**features, "train texts": text_features}
    return RunData(train_examples, train_loader, eval_set, features)

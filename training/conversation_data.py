# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Conversations in a training run (seed 001's third stage): [`ConversationExamples`] gives each conversation with its
images (or their cached features), [`MixedExamples`] puts them after the caption examples, and [`ChatCollator`] turns
either kind into model inputs with the loss on the answers only (each answer and its end-of-turn token, read off the
chat template's `{% generation %}` markers: `data.conversations.encode_conversation`).
"""

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset, Features, List
from datasets import Image as ImageFeature
from torch.utils.data import ConcatDataset

from data.captions import SHAPES_SPLIT_SIZES
from data.conversations import (
    ConversationDataError,
    answer_marking_template,
    encode_conversation,
    load_llava_conversations,
    load_messages_dataset,
)
from data.images import open_image
from data.shapes import SHAPES_STYLES
from data.shapes_vqa import make_shapes_conversations
from evaluation.captioning import CAPTION_PROMPT, caption_messages
from evaluation.vqa_metrics import VQA_SHORT_ANSWER_PROMPT
from processing_vlm import IGNORE_INDEX, VLMProcessor

from .arguments import VLMTrainingArguments
from .data import CaptionExamples, truncate_caption
from .feature_cache import VisionFeatures, load_or_compute_vision_features


def load_conversations(args: VLMTrainingArguments, on_invalid) -> Dataset:
    """
    The run's conversation data, `args.conversations` (or a conversation-only run's `args.dataset`), the first
    `args.max_train_conversations`: `"shapes"` (the questions of the training scenes, dealt to multi-turn
    conversations; by default as many scenes as captions), a LLaVA JSON file (images under `args.image_root`), or a
    dataset of the messages format.
    """
    source = args.dataset if args.conversations_only else args.conversations
    limit = args.max_train_conversations
    if source in SHAPES_STYLES:
        num_images = limit or args.max_train_samples or SHAPES_SPLIT_SIZES[args.train_split]
        style = asdict(SHAPES_STYLES[source])
        return make_shapes_conversations(
            num_images, VQA_SHORT_ANSWER_PROMPT, seed=args.seed, split=args.train_split, **style
        )
    if source.endswith(".json"):
        return load_llava_conversations(source, args.image_root, limit, on_invalid)
    return load_messages_dataset(source, args.train_split, limit, on_invalid)


def flat_images(conversations: Dataset) -> tuple[Dataset, list[list[int]]]:
    """
    Every image of `conversations` as one row of a dataset with an undecoded `image` column (what the feature cache
    reads), and for each conversation the rows of its images, in order.
    """
    undecoded = conversations.cast_column("images", List(ImageFeature(decode=False)))["images"]
    images, rows = [], []
    for sample_images in undecoded:
        rows.append(list(range(len(images), len(images) + len(sample_images))))
        images += sample_images
    return Dataset.from_dict({"image": images}, features=Features({"image": ImageFeature(decode=False)})), rows


class ConversationExamples(torch.utils.data.Dataset):
    """
    The conversations of a dataset of `CONVERSATION_FEATURES`: `{"id", "messages", "images"}` with the images opened
    (`None` where one is unreadable), or `"vision_features"` (a list, `None` where unreadable) from the cache of
    [`flat_images`].
    """

    def __init__(self, conversations: Dataset, vision_features: VisionFeatures | None = None):
        self.ids = list(conversations["id"])
        self.messages = list(conversations["messages"])
        self.images, self.image_rows = flat_images(conversations)
        self.vision_features = vision_features

    def set_epoch(self, epoch: int) -> None:
        """Conversations are the same every epoch (the order is the loader's)."""

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = {"id": self.ids[index], "messages": self.messages[index]}
        rows = self.image_rows[index]
        if self.vision_features is None:
            example["images"] = [open_image(self.images[row]["image"]) for row in rows]
        else:
            positions = [int(self.vision_features.row_index[row]) for row in rows]
            example["vision_features"] = [self.vision_features.features[p] if p >= 0 else None for p in positions]
        return example


class MixedExamples(ConcatDataset):
    """The caption examples, then the conversation examples, as one dataset; the epoch reaches both."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            part.set_epoch(epoch)



@dataclass
class ChatCollator:
    """
    Batches caption examples (`image_id`, `caption`, `image` or `vision_features`) and conversation examples (`id`,
    `messages`, `images` or `vision_features` lists) into model inputs: `input_ids`, `attention_mask`, `labels` and
    `position_ids` `(batch_size, sequence_length)`, left padded, the labels on the answers only; and every image of
    the batch in order as `pixel_values` `(num_images, 3, size, size)` (tiled: with `num_tiles`, see
    `VLMProcessor.tile_images`) or `vision_features` `(num_images, num_patches, vision_dim)` (neither when no example
    has an image). A caption is the answer to `prompt`, cut to
    `max_caption_tokens`. Examples with an unreadable image are dropped and counted in `num_skipped_images`; a
    conversation longer than `max_length` raises, naming it.
    """

    processor: VLMProcessor
    prompt: str = CAPTION_PROMPT
    max_caption_tokens: int = 64
    max_length: int | None = None
    template: str = field(init=False)

    def __post_init__(self) -> None:
        self.template = answer_marking_template(self.processor)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        chats = [self.as_chat(example) for example in examples]
        kept = [chat for chat in chats if all(image is not None for image in chat[2])]
        batch: dict[str, Any] = {"num_skipped_images": len(chats) - len(kept)}
        if not kept:
            return batch
        images = [image for _, _, sample_images in kept for image in sample_images]
        if images and isinstance(images[0], torch.Tensor):
            batch["vision_features"] = torch.stack(images)
        elif images and self.processor.max_tiles > 1:
            batch.update(self.processor.tile_images(images))
        elif images:
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        counts = iter(batch["num_tiles"].tolist()) if "num_tiles" in batch else None
        encoded = [
            encode_conversation(self.processor, messages, self.template, sample_id, self.max_length,
                                None if counts is None else [next(counts) for _ in sample_images])
            for sample_id, messages, sample_images in kept
        ]  # fmt: skip
        batch.update(left_padded(encoded, self.processor.tokenizer.pad_token_id))
        return batch

    def as_chat(self, example: dict[str, Any]) -> tuple[str, list[dict], list]:
        """`(id, messages, images or their features)` of either kind of example."""
        if "messages" in example:
            return example["id"], example["messages"], example.get("images", example.get("vision_features"))
        caption = truncate_caption(self.processor.tokenizer, example["caption"], self.max_caption_tokens)
        image = example.get("image", example.get("vision_features"))
        return example["image_id"], caption_messages(self.prompt, caption), [image]


def conversation_lengths(examples: ConversationExamples, processor: VLMProcessor) -> list[int]:
    """
    About how many tokens each conversation takes, for length grouping: its texts tokenized one after the other, and
    `num_image_tokens` per image (the chat template's own tokens left out).
    """
    texts = [" ".join(p["text"] for m in messages for p in m["content"] if p["text"]) for messages in examples.messages]
    token_ids = processor.tokenizer(texts, add_special_tokens=False).input_ids
    images = [len(rows) * processor.num_image_tokens for rows in examples.image_rows]
    return [len(ids) + num_image_tokens for ids, num_image_tokens in zip(token_ids, images)]


def left_padded(encoded: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask`, `labels` and `position_ids` of `(input_ids, labels)` pairs, padded on the left."""
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(encoded):
        input_ids[row, length - len(ids) :] = torch.tensor(ids)
        labels[row, length - len(ids) :] = torch.tensor(row_labels)
        attention_mask[row, length - len(ids) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "position_ids": position_ids}


def conversation_examples(
    args: VLMTrainingArguments,
    accelerator: Accelerator,
    vlm: torch.nn.Module,
    processor: VLMProcessor,
    cache_features: bool,
) -> tuple[ConversationExamples, VisionFeatures | None, list[str]]:
    """
    The run's [`ConversationExamples`], with their images' features from the cache when `cache_features`; and the
    errors of the samples left out (with `args.skip_invalid_conversations`; otherwise the first one raises).
    """
    refused: list[ConversationDataError] = []
    with accelerator.main_process_first():
        conversations = load_conversations(args, refused.append if args.skip_invalid_conversations else None)
    if not len(conversations):
        source = args.dataset if args.conversations_only else args.conversations
        raise ConversationDataError(f"No conversation of {source!r} can be trained on.")
    examples = ConversationExamples(conversations)
    if cache_features:  # the features of the examples' own image table, row for row
        with accelerator.local_main_process_first():
            examples.vision_features = load_or_compute_vision_features(
                vlm, processor, examples.images, accelerator, args.feature_cache_dir, args.per_device_eval_batch_size
            )
    return examples, examples.vision_features, [str(error) for error in refused]


def mixed_examples(captions: CaptionExamples, conversations: ConversationExamples) -> MixedExamples:
    """The caption examples, then the conversations, with a check that both give images in the same form."""
    if (captions.vision_features is None) != (conversations.vision_features is None):
        raise ValueError("Caption and conversation examples must both read cached features, or both read images.")
    return MixedExamples([captions, conversations])

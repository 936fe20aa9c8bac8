# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The data of a training run, COCO captioning protocol: [`CaptionExamples`] draws one reference per image and epoch,
[`CaptionCollator`] turns them into model inputs (unreadable images are dropped and counted), and [`prepare_data`]
builds the training loader and the evaluation set of a run, with the frozen tower's features from the cache.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from datasets import Image as ImageFeature
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from data.captions import load_captions, merge_repeated_ids
from data.images import open_image, readable_rows
from evaluation.captioning import CAPTION_PROMPT, caption_messages, caption_prompt
from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import VLMProcessor

from .arguments import DEFAULT_MAX_CAPTION_TOKENS, VLMTrainingArguments
from .feature_cache import VisionFeatures, load_or_compute_vision_features
from .length_grouping import EpochLengthGroupedSampler
from .text_feature_cache import TextFeatures


DATA_SEED_SPREAD = 1_000_003
"""`args.seed` times this seeds the training data order (see `loop.make_accelerator` and `length_grouped_sampler`)."""


class CaptionExamples(torch.utils.data.Dataset):
    """
    Examples of a caption dataset for the captioning loss: the image (or its cached vision features, `None` when it is
    unreadable) and one of its references, drawn deterministically from `seed` and, for training, the epoch (see
    `set_epoch`).

    Args:
        dataset (`datasets.Dataset`): rows with `image_id`, `image` and `captions`.
        rows (`list[int]`, *optional*): the rows to use, in order (all by default).
        seed (`int`): seed of the reference drawn for each row and epoch.
        vision_features ([`VisionFeatures`], *optional*): cached features used instead of the images.
        text_features ([`~training.text_feature_cache.TextFeatures`], *optional*): cached features of the references
            (a locked text encoder's), given with each caption as `text_features`.
        redraw_each_epoch (`bool`, *optional*, defaults to `True`): draw another reference every epoch; without it
            (evaluation), every pass sees the same references, whatever epoch a data loader sets.
    """

    def __init__(
        self,
        dataset: Dataset,
        rows: list[int] | None = None,
        seed: int = 0,
        vision_features: VisionFeatures | None = None,
        redraw_each_epoch: bool = True,
        text_features: TextFeatures | None = None,
    ):
        self.images = dataset.select_columns(["image"]).cast_column("image", ImageFeature(decode=False))
        self.image_ids = list(dataset["image_id"])
        self.captions = list(dataset["captions"])
        self.rows = list(range(len(dataset))) if rows is None else list(rows)
        self.seed = seed
        self.epoch = 0
        self.vision_features = vision_features
        self.redraw_each_epoch = redraw_each_epoch
        self.text_features = text_features

    def set_epoch(self, epoch: int) -> None:
        # Accelerate's prepared loaders set the epoch of their dataset at every pass, evaluation loaders included.
        if self.redraw_each_epoch:
            self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def reference_index(self, row: int, epoch: int) -> int:
        """Which of `row`'s references the examples give in `epoch` (with `redraw_each_epoch`; epoch 0 otherwise)."""
        return random.Random(f"{self.seed}/{epoch}/{row}").randrange(len(self.captions[row]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        reference = self.reference_index(row, self.epoch)
        example = {"image_id": self.image_ids[row], "caption": self.captions[row][reference]}
        if self.text_features is not None:
            example["text_features"] = self.text_features.of(row, reference)
        if self.vision_features is None:
            example["image"] = open_image(self.images[row]["image"])
        else:
            feature_index = int(self.vision_features.row_index[row])
            example["vision_features"] = self.vision_features.features[feature_index] if feature_index >= 0 else None
        return example


@dataclass
class CaptionCollator:
    """
    Batches [`CaptionExamples`] items into model inputs: the chat-formatted prompt and caption, left padded, as
    `input_ids` and `attention_mask` `(batch_size, sequence_length)`; `labels` of the same shape on the caption and its
    end-of-turn only (-100 elsewhere); `position_ids` that skip the padding (as `generate` computes them); and
    `pixel_values` `(batch_size, 3, image_size, image_size)` or `vision_features` `(batch_size, num_patches,
    vision_dim)`. Captions longer than `max_caption_tokens` are cut. Examples whose image is unreadable are dropped and
    counted in `num_skipped_images`; a batch where every image is unreadable has no `input_ids`.
    """

    processor: VLMProcessor
    prompt: str = CAPTION_PROMPT
    max_caption_tokens: int = DEFAULT_MAX_CAPTION_TOKENS

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        kept = [e for e in examples if e.get("image", e.get("vision_features")) is not None]
        batch: dict[str, Any] = {"num_skipped_images": len(examples) - len(kept)}
        if not kept:
            return batch
        texts = [
            self.processor.apply_chat_template(caption_messages(self.prompt, self.truncate(e["caption"])))
            for e in kept
        ]
        if "vision_features" in kept[0]:
            # No images to hand the processor: only the placeholders are needed.
            texts = [self.processor.expand_image_tokens(text) for text in texts]
            batch.update(self.processor.tokenizer(texts, padding=True, return_tensors="pt"))
            batch["vision_features"] = torch.stack([e["vision_features"] for e in kept])
        else:
            batch.update(self.processor(images=[e["image"] for e in kept], text=texts, return_tensors="pt"))
        batch["labels"] = self.processor.build_labels(batch["input_ids"])
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return batch

    def truncate(self, caption: str) -> str:
        """`caption` cut after a token boundary of the original text so that it has at most `max_caption_tokens`."""
        return truncate_caption(self.processor.tokenizer, caption, self.max_caption_tokens)


def truncate_caption(tokenizer: PreTrainedTokenizerBase, caption: str, max_tokens: int) -> str:
    """`caption` cut after a token boundary of the original text so that it has at most `max_tokens` tokens."""
    keep = max_tokens
    # One token more than is kept tells whether the caption is longer, without tokenizing all of it.
    encoding = tokenizer(
        caption, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=keep + 1
    )
    offsets = encoding["offset_mapping"]
    if len(offsets) <= keep:
        return caption

    def num_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    # A cut inside a word can re-tokenize into more pieces than the word had in the whole caption: cut earlier then.
    while keep > 1 and num_tokens(caption[: offsets[keep - 1][1]]) > max_tokens:
        keep -= 1
    return caption[: offsets[keep - 1][1]]


def collate_images(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Batches dataset rows for captioning: `{"image_id": [...], "image": [PIL images]}`."""
    return {"image_id": [row["image_id"] for row in rows], "image": [row["image"] for row in rows]}


@dataclass
class EvalSet:
    """
    The evaluation split of a run, ready for [`~training.evaluation.evaluate`]: both loaders are prepared by the
    accelerator (each process reads its share), and `references` holds every readable image's references.
    """

    loss_loader: DataLoader | None  # `None` in a conversation-only run (no captions)
    caption_loader: DataLoader | None
    references: dict[str, list[str]]
    num_skipped_images: int
    questions: Any = None  # `question_evaluation.QuestionEvalSet`: VQA / POPE questions answered at every evaluation


@dataclass
class RunData:
    """
    The data of a run: the training examples and their loader (prepared by `train()` together with the model, as
    DeepSpeed needs), the prepared evaluation set, the cached vision features of both splits (`None` where the
    tower's features are not cached), and how many conversations the examples hold (and which were left out).
    """

    train_examples: CaptionExamples  # or, with conversations, `conversation_data.MixedExamples`
    train_loader: DataLoader
    eval_set: Any  # `EvalSet`, or for Q-Former stage 1 `pair_data.RetrievalEvalSet`
    features: dict[str, VisionFeatures | TextFeatures | None]  # per split; "train texts": a locked encoder's
    num_conversations: int = 0
    refused_conversations: list[str] = field(default_factory=list)  # the errors of those left out


def load_split(args: VLMTrainingArguments, split: str, max_samples: int | None) -> Dataset:
    """One split of the run's dataset, with the columns of `data.captions.CAPTION_FEATURES`."""
    return load_captions(
        args.dataset,
        split,
        image_root=args.image_root,
        max_samples=max_samples,
        seed=args.seed,
        image_column=args.image_column,
        caption_column=args.caption_column,
        id_column=args.id_column,
    )


def prepare_data(
    args: VLMTrainingArguments, accelerator: Accelerator, vlm: VLMForConditionalGeneration, processor: VLMProcessor
) -> RunData:
    """
    Loads both splits, caches the vision features when the tower is frozen, and builds the training loader (shuffled
    once prepared by an accelerator with the seedable sampler) and the prepared evaluation set.
    """
    generates = args.predict_with_generate and args.eval_strategy != "no"
    check_sequences_fit(
        processor, args.prompt, args.max_caption_tokens, vlm.config.text_config.max_position_embeddings,
        args.max_new_tokens if generates else 0,
    )  # fmt: skip
    train_data, eval_data, features = load_splits_and_features(args, accelerator, vlm, processor)
    collator = CaptionCollator(processor, args.prompt, args.max_caption_tokens)
    train_examples = CaptionExamples(train_data, seed=args.seed, vision_features=features["train"])
    batch_size, num_workers = args.per_device_train_batch_size, args.dataloader_num_workers
    sampler = None
    if args.group_by_length:
        tokenizer, max_tokens = processor.tokenizer, args.max_caption_tokens
        sampler = length_grouped_sampler(train_examples, tokenizer, max_tokens, batch_size, args.seed)
    train_loader = training_loader(train_examples, collator, batch_size, num_workers, sampler)
    eval_set = build_eval_set(
        accelerator,
        eval_data,
        features["eval"],
        collator,
        seed=args.seed,
        batch_size=args.per_device_eval_batch_size,
        num_workers=args.dataloader_num_workers,
    )
    if not eval_set.references:
        raise ValueError(f"No image of the {args.eval_split!r} split of {args.dataset!r} could be read.")
    return RunData(train_examples, train_loader, eval_set, features)


def load_splits_and_features(
    args: VLMTrainingArguments, accelerator: Accelerator, model: nn.Module, processor: ProcessorMixin
) -> tuple[Dataset, Dataset, dict[str, VisionFeatures | None]]:
    """
    Both splits of the run, and the vision features of each (`{"train": ..., "eval": ...}`) from the cache when
    `model`'s tower is frozen, its images untiled and caching on (`None` otherwise).
    """
    with accelerator.main_process_first():
        train_data = load_split(args, args.train_split, args.max_train_samples)
        eval_data = merge_repeated_ids(load_split(args, args.eval_split, args.max_eval_samples))
    features: dict[str, VisionFeatures | None] = {"train": None, "eval": None}
    frozen = not any(p.requires_grad for p in model.vision_tower.parameters())
    # Tiles are cut per image at load time (their number varies with the aspect ratio): they are read, not cached.
    if args.cache_vision_features and frozen and getattr(model.config, "max_tiles", 1) == 1:
        with accelerator.local_main_process_first():
            for name, data in (("train", train_data), ("eval", eval_data)):
                features[name] = load_or_compute_vision_features(
                    model, processor, data, accelerator, args.feature_cache_dir, args.per_device_eval_batch_size
                )
    return train_data, eval_data, features


def training_loader(
    examples: CaptionExamples,
    collator: Callable[[list[dict]], dict],
    batch_size: int,
    num_workers: int,
    sampler: EpochLengthGroupedSampler | None = None,
) -> DataLoader:
    """
    The training loader of `examples`, shuffled once prepared by accelerate's seedable sampler (see
    `make_accelerator`), or in the order of `sampler`: the order depends on the seed and the epoch only, the same on
    every process and after a resume.
    """
    return DataLoader(
        examples,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collator,
        num_workers=num_workers,
        # Its own generator: starting an epoch draws a seed, which must not come from the global generator, whose
        # state a checkpoint restores where the training steps (dropout, sampling) left it.
        generator=torch.Generator(),
    )


def length_grouped_sampler(
    examples: CaptionExamples, tokenizer: PreTrainedTokenizerBase, max_caption_tokens: int, batch_size: int, seed: int
) -> EpochLengthGroupedSampler:
    """
    The `group_by_length` order of `examples`: by the token length (up to `max_caption_tokens`) of the reference each
    example gives in the epoch; every reference is tokenized once, here.
    """
    lengths_of_epoch = caption_lengths(examples, tokenizer, max_caption_tokens)
    return EpochLengthGroupedSampler(len(examples), lengths_of_epoch, batch_size, seed * DATA_SEED_SPREAD)


def caption_lengths(
    examples: CaptionExamples, tokenizer: PreTrainedTokenizerBase, max_caption_tokens: int
) -> Callable[[int], list[int]]:
    """The token length (up to `max_caption_tokens`) of the reference each example gives in a given epoch."""
    references = [examples.captions[row] for row in examples.rows]
    token_ids = tokenizer([caption for captions in references for caption in captions], add_special_tokens=False)
    flat_lengths = [min(len(ids), max_caption_tokens) for ids in token_ids.input_ids]
    lengths, start = [], 0
    for captions in references:
        lengths.append(flat_lengths[start : start + len(captions)])
        start += len(captions)

    def lengths_of_epoch(epoch: int) -> list[int]:
        return [lengths[index][examples.reference_index(row, epoch)] for index, row in enumerate(examples.rows)]

    return lengths_of_epoch


def num_tokens(processor: VLMProcessor, text: str) -> int:
    """Tokens of a chat-formatted `text` as the model reads it, each image token expanded to its placeholders."""
    return len(processor.tokenizer(processor.expand_image_tokens(text)).input_ids)


def caption_chat_tokens(processor: VLMProcessor, prompt: str) -> int:
    """Tokens of a caption chat before its caption: the prompt with its image, the turns' framing."""
    return num_tokens(processor, processor.apply_chat_template(caption_messages(prompt, "")))


def check_sequences_fit(
    processor: VLMProcessor, prompt: str, max_caption_tokens: int, max_positions: int, max_new_tokens: int = 0
) -> None:
    """
    Raises `ValueError`, giving the lengths, when the longest training sequence (the chat with its image placeholders,
    then a caption of `max_caption_tokens`) or, with `max_new_tokens`, the evaluation's captioning (the prompt, then
    up to `max_new_tokens` generated) does not fit the language model's `max_positions`.
    """

    chat_tokens = caption_chat_tokens(processor, prompt)
    if chat_tokens + max_caption_tokens > max_positions:
        raise ValueError(
            f"The longest training sequence has {chat_tokens + max_caption_tokens} tokens ({chat_tokens} for the "
            f"chat with its image tokens and the prompt, up to {max_caption_tokens} for the caption), more than the "
            f"language model's max_position_embeddings ({max_positions}). Shorten the prompt or lower "
            "max_caption_tokens."
        )
    prompt_tokens = num_tokens(processor, caption_prompt(processor, prompt))
    if max_new_tokens and prompt_tokens + max_new_tokens > max_positions:
        raise ValueError(
            f"Captioning the evaluation images could reach {prompt_tokens + max_new_tokens} tokens ({prompt_tokens} "
            f"for the prompt, up to {max_new_tokens} new ones), more than the language model's "
            f"max_position_embeddings ({max_positions}). Lower max_new_tokens or shorten the prompt."
        )


def build_eval_set(
    accelerator: Accelerator,
    eval_data: Dataset,
    features: VisionFeatures | None,
    collator: CaptionCollator,
    seed: int,
    batch_size: int,
    num_workers: int,
) -> EvalSet:
    """
    The readable rows of `eval_data` as two prepared loaders: caption-loss batches (from `features` when cached; `seed`
    draws each image's reference) and image batches to caption. Accelerate completes the last batch of a process with
    duplicates so that every process runs the same forwards; the evaluation leaves them out (`gather_for_metrics`).
    """
    rows = readable_rows(eval_data) if features is None else features.readable_rows
    image_ids, references = list(eval_data["image_id"]), list(eval_data["captions"])
    loss_loader = DataLoader(
        CaptionExamples(eval_data, rows, seed, features, redraw_each_epoch=False),
        batch_size=batch_size,
        collate_fn=collator,
        num_workers=num_workers,
    )
    # Its own generator: iterating a loader draws a seed, which must not come from the training's global generator.
    caption_loader = DataLoader(
        eval_data.select(rows),
        batch_size=batch_size,
        collate_fn=collate_images,
        num_workers=num_workers,
        generator=torch.Generator(),
    )
    return EvalSet(
        loss_loader=accelerator.prepare_data_loader(loss_loader),
        caption_loader=accelerator.prepare_data_loader(caption_loader),
        references={image_ids[row]: references[row] for row in rows},
        num_skipped_images=len(eval_data) - len(rows),
    )

# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
[`prepare_run_data`]: the data of a run as its arguments ask: image-text pairs for the Q-Former's stage 1; otherwise
the captions (`data.prepare_data`), with the conversations mixed in after them (`args.conversations`) and the question
sets answered at every evaluation (`args.eval_vqa`, `args.eval_pope`).
"""

from dataclasses import replace

from accelerate import Accelerator

from modeling_vlm import VLMForConditionalGeneration
from processing_vlm import VLMProcessor

from .arguments import PAIR_STAGES, VLMTrainingArguments
from .conversation_data import ChatCollator, MixedExamples, conversation_examples, conversation_lengths, mixed_examples
from .data import (
    DATA_SEED_SPREAD,
    EvalSet,
    RunData,
    caption_chat_tokens,
    caption_lengths,
    prepare_data,
    training_loader,
)
from .length_grouping import EpochLengthGroupedSampler
from .pair_data import prepare_pair_data
from .question_evaluation import build_question_eval_set


def prepare_run_data(
    args: VLMTrainingArguments, accelerator: Accelerator, vlm: VLMForConditionalGeneration, processor: VLMProcessor
) -> RunData:
    """The training examples and loader, the prepared evaluation set and the cached features of the run."""
    if args.stage in PAIR_STAGES:
        return prepare_pair_data(args, accelerator, vlm, processor)
    if args.conversations_only:
        return prepare_conversation_data(args, accelerator, vlm, processor)
    data = prepare_data(args, accelerator, vlm, processor)
    data = replace(data, eval_set=replace(data.eval_set, questions=build_question_eval_set(args, accelerator)))
    if not args.conversations:
        return data
    cache_features = data.features["train"] is not None
    conversations, features, refused = conversation_examples(args, accelerator, vlm, processor, cache_features)
    examples = mixed_examples(data.train_examples, conversations)
    sampler = mixed_length_sampler(args, processor, examples) if args.group_by_length else None
    loader = training_loader(examples, chat_collator(args, vlm, processor), *loader_settings(args), sampler)
    return replace(
        data, train_examples=examples, train_loader=loader, features={**data.features, "conversations": features},
        num_conversations=len(conversations), refused_conversations=refused,
    )  # fmt: skip


def prepare_conversation_data(
    args: VLMTrainingArguments, accelerator: Accelerator, vlm: VLMForConditionalGeneration, processor: VLMProcessor
) -> RunData:
    """
    A conversation-only run (LLaVA-1.5's stage 2 on `args.dataset`): the conversations, their images' features from
    the cache when the tower is frozen, and an evaluation set of the run's questions alone (no captions, no loss).
    """
    frozen = not any(p.requires_grad for p in vlm.vision_tower.parameters())
    cache = args.cache_vision_features and frozen
    conversations, features, refused = conversation_examples(args, accelerator, vlm, processor, cache)
    sampler = None
    if args.group_by_length:
        lengths = conversation_lengths(conversations, processor)
        seed = args.seed * DATA_SEED_SPREAD
        sampler = EpochLengthGroupedSampler(len(lengths), lambda _: lengths, args.per_device_train_batch_size, seed)
    loader = training_loader(conversations, chat_collator(args, vlm, processor), *loader_settings(args), sampler)
    questions = build_question_eval_set(args, accelerator)
    eval_set = EvalSet(None, None, references={}, num_skipped_images=0, questions=questions)
    return RunData(
        conversations, loader, eval_set, {"conversations": features}, len(conversations), refused_conversations=refused
    )


def chat_collator(
    args: VLMTrainingArguments, vlm: VLMForConditionalGeneration, processor: VLMProcessor
) -> ChatCollator:
    """The run's [`ChatCollator`]: conversations up to `args.max_length` (default: the language model's positions)."""
    max_length = args.max_length or vlm.config.text_config.max_position_embeddings
    return ChatCollator(processor, args.prompt, args.max_caption_tokens, max_length)


def loader_settings(args: VLMTrainingArguments) -> tuple[int, int]:
    return args.per_device_train_batch_size, args.dataloader_num_workers


def mixed_length_sampler(
    args: VLMTrainingArguments, processor: VLMProcessor, examples: MixedExamples
) -> EpochLengthGroupedSampler:
    """
    The `group_by_length` order of the mixture: captions by their chat's length (the prompt with its image, then the
    epoch's reference), conversations by theirs, so that the long conversations mostly fill batches of their own.
    """
    captions, conversations = examples.datasets
    chat_tokens = caption_chat_tokens(processor, args.prompt)
    references = caption_lengths(captions, processor.tokenizer, args.max_caption_tokens)
    fixed = conversation_lengths(conversations, processor)

    def lengths_of_epoch(epoch: int) -> list[int]:
        return [chat_tokens + length for length in references(epoch)] + fixed

    batch_size = args.per_device_train_batch_size
    return EpochLengthGroupedSampler(len(examples), lengths_of_epoch, batch_size, args.seed * DATA_SEED_SPREAD)

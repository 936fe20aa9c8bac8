# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Visual question answering and hallucination during training: at every evaluation each process answers its share of
the run's question sets (VQA: `args.eval_vqa`, POPE: `args.eval_pope`) with LLaVA-1.5's short-answer prompt, and the
main process scores the gathered answers as `eval.py --task vqa|pope` does. The metrics are named `VQA/<metric>`
and `POPE/<split>/<metric>`.
"""

from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from datasets import Image as ImageFeature
from torch.utils.data import DataLoader

from data.captions import SHAPES_SPLIT_SIZES
from data.images import open_image
from data.questions import load_pope_questions, load_vqa_questions
from data.shapes import SHAPES_STYLES
from evaluation.captioning import generate_replies
from evaluation.question_answering import (
    DEFAULT_MAX_ANSWER_TOKENS,
    question_keys,
    question_prompt,
    score_pope_answers,
    score_vqa_answers,
)
from processing_vlm import VLMProcessor

from .arguments import VLMTrainingArguments


TASK_PREFIXES = {"vqa": "VQA", "pope": "POPE"}
SCORERS = {"vqa": score_vqa_answers, "pope": score_pope_answers}


class QuestionRows(torch.utils.data.Dataset):
    """
    The rows of a question set as `{"key", "question", "image_id", "image"}`; an image that does not open raises,
    naming the question.
    """

    def __init__(self, questions: Dataset):
        self.keys = question_keys(questions)
        self.questions = list(questions["question"])
        self.image_ids = list(questions["image_id"])
        self.images = questions.cast_column("image", ImageFeature(decode=False))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = open_image(self.images[index]["image"])
        if image is None:
            raise ValueError(
                f"The image of question {self.keys[index]!r} does not open; repair it or leave the question out of the "
                "question set."
            )
        return {"key": self.keys[index], "question": self.questions[index], "image_id": self.image_ids[index],
                "image": image}  # fmt: skip


def collate_questions(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in ("key", "question", "image_id", "image")}


@dataclass
class QuestionEvalSet:
    """The run's question sets by task (`"vqa"`, `"pope"`) and their prepared loaders (each process its share)."""

    questions: dict[str, Dataset]
    loaders: dict[str, DataLoader]


def load_question_sets(args: VLMTrainingArguments) -> dict[str, Dataset]:
    """
    The question sets of `args.eval_vqa` and `args.eval_pope`, the first `args.max_eval_questions` (per POPE split).
    The synthetic ones (`"shapes"`, `"shapes-small"`) ask about the run's evaluation scenes; their POPE negatives count
    the objects of its training scenes.
    """
    sets = {}
    if args.eval_vqa:
        sets["vqa"] = load_vqa_questions(args.eval_vqa, args.eval_split, args.max_eval_questions, args.seed)
    if args.eval_pope:
        statistics_images = args.max_train_samples or SHAPES_SPLIT_SIZES["train"]  # the scenes the counts come from
        shapes = {"split": args.eval_split, "statistics_images": statistics_images}
        sets["pope"] = load_pope_questions(
            args.eval_pope, max_samples=args.max_eval_questions, seed=args.seed,
            **(shapes if args.eval_pope in SHAPES_STYLES else {}),
        )  # fmt: skip
    return sets


def build_question_eval_set(args: VLMTrainingArguments, accelerator: Accelerator) -> QuestionEvalSet | None:
    """The run's [`QuestionEvalSet`], or `None` when it scores no questions."""
    with accelerator.main_process_first():
        sets = load_question_sets(args)
    if not sets:
        return None
    loaders = {
        task: accelerator.prepare_data_loader(
            DataLoader(
                QuestionRows(questions), batch_size=args.per_device_eval_batch_size, collate_fn=collate_questions,
                num_workers=args.dataloader_num_workers, generator=torch.Generator(),
            )  # fmt: skip
        )
        for task, questions in sets.items()
    }
    return QuestionEvalSet(sets, loaders)


def evaluate_questions(
    accelerator: Accelerator, model: torch.nn.Module, processor: VLMProcessor, question_set: QuestionEvalSet
) -> dict[str, float]:
    """
    Answers every question set on every process (each its share, gathered without the duplicates that even out the
    last batches) with the unwrapped `model`, and returns the scores on the main process (`{}` elsewhere).
    """
    metrics = {}
    for task, loader in question_set.loaders.items():
        answers = {}
        for batch in loader:
            texts = [question_prompt(processor, question) for question in batch["question"]]
            with accelerator.autocast():
                replies = generate_replies(
                    model, processor, batch["image"], texts, len(texts), DEFAULT_MAX_ANSWER_TOKENS,
                    image_keys=batch["image_id"],
                )  # fmt: skip
            answers.update(accelerator.gather_for_metrics(list(zip(batch["key"], replies)), use_gather_object=True))
        if accelerator.is_main_process:
            scores = SCORERS[task](question_set.questions[task], answers)
            metrics.update({f"{TASK_PREFIXES[task]}/{name}": value for name, value in scores.items()})
    return metrics

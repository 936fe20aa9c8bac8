# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Evaluation during training: the validation loss per labelled token and, with generation, the COCO caption metrics of
greedy captions and the scores of the answers to the run's questions (`question_evaluation`). Every process evaluates
its share of the prepared [`~training.data.EvalSet`]; `gather_for_metrics` combines the shares and drops the
duplicates that even out the processes' last batches.
"""

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from evaluation.caption_metrics import score_captions
from evaluation.captioning import generate_captions
from processing_vlm import IGNORE_INDEX, VLMProcessor

from .data import EvalSet
from .fsdp import whole_model
from .question_evaluation import evaluate_questions


def evaluate(
    accelerator: Accelerator,
    model: nn.Module,
    processor: VLMProcessor,
    eval_set: EvalSet,
    predict_with_generate: bool,
    max_new_tokens: int,
    prompt: str,
) -> tuple[dict[str, float], dict[str, str]]:
    """
    The validation loss (per labelled token, over every process) and, with `predict_with_generate`, the COCO caption
    metrics of greedy captions and the scores of the answers to the run's question sets (`eval_set.questions`). Every
    process returns the same metrics; the captions `{image_id: caption}` come back on the main process only.
    """
    model.eval()
    metrics = {}
    if eval_set.loss_loader is not None:  # a conversation-only run has neither captions nor a validation loss
        metrics["loss"] = validation_loss(accelerator, model, eval_set.loss_loader)
    captions: dict[str, str] = {}
    if predict_with_generate:
        with whole_model(accelerator, model) as whole:
            if eval_set.caption_loader is not None:
                loader = eval_set.caption_loader
                captions = caption_images(accelerator, whole, processor, loader, max_new_tokens, prompt)
            if eval_set.questions is not None:
                metrics.update(evaluate_questions(accelerator, whole, processor, eval_set.questions))
        if accelerator.is_main_process and captions:
            metrics.update(score_captions(captions, {i: eval_set.references[i] for i in captions}))
        metrics = broadcast_object_list([metrics])[0]
    model.train()
    return metrics, captions if accelerator.is_main_process else {}


def validation_loss(accelerator: Accelerator, model: nn.Module, loader: DataLoader) -> float:
    """
    Cross-entropy per labelled token over the [`~training.data.CaptionCollator`] batches of `loader` (`labels`
    `(batch_size, sequence_length)`) on every process, the duplicates that even out the last batches left out.
    """
    totals = torch.zeros(2, device=accelerator.device)
    with torch.no_grad():
        for batch in loader:
            check_still_readable(batch.pop("num_skipped_images"))
            labels = batch["labels"]
            labels[~real_examples(accelerator, labels.shape[0])] = IGNORE_INDEX
            # num_items_in_batch=1 turns the mean into a sum over the labelled tokens.
            totals[0] += model(**batch, num_items_in_batch=1).loss.float()
            totals[1] += (labels[:, 1:] != IGNORE_INDEX).sum()
    totals = accelerator.reduce(totals, reduction="sum")
    return (totals[0] / totals[1].clamp(min=1)).item()


def check_still_readable(num_skipped_images: int) -> None:
    """
    Raises when an evaluation batch lost images: its rows were checked when the run started, and a batch that lost
    rows would no longer line up with the other processes' batches (see [`real_examples`]).
    """
    if num_skipped_images:
        raise RuntimeError(
            "An evaluation image that opened when the run started no longer opens: the dataset changed on disk "
            "during training. Restore it, or restart the run so that the unreadable image is left out."
        )


def real_examples(accelerator: Accelerator, batch_size: int) -> torch.BoolTensor:
    """
    `(batch_size,)`: which examples of this process's current evaluation batch are real rather than the duplicates
    accelerate adds to even out the last batches. `gather_for_metrics` keeps exactly the real examples of the batches
    concatenated in process order, so the positions it keeps are this process's real ones.
    """
    positions = torch.arange(batch_size, device=accelerator.device) + accelerator.process_index * batch_size
    return torch.isin(positions, accelerator.gather_for_metrics(positions))


def caption_images(
    accelerator: Accelerator,
    model: nn.Module,
    processor: VLMProcessor,
    loader: DataLoader,
    max_new_tokens: int,
    prompt: str,
) -> dict[str, str]:
    """Greedy captions `{image_id: caption}` of every image of `loader`, gathered from every process."""
    captions = {}
    progress = tqdm(loader, desc="captioning the evaluation images", disable=not accelerator.is_local_main_process)
    for batch in progress:
        with accelerator.autocast():
            texts = generate_captions(model, processor, batch["image"], len(batch["image"]), max_new_tokens, prompt)
        pairs = list(zip(batch["image_id"], texts))
        captions.update(accelerator.gather_for_metrics(pairs, use_gather_object=True))
    return captions

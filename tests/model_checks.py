"""Helpers of the model tests that run under every transformers release (torch and the Hub files only)."""

import torch
from torch import nn

from evaluation.captioning import caption_messages


def prompt_batch(processor, images, texts=None) -> dict[str, torch.Tensor]:
    """`images` with `texts` (by default the captioning prompt, one per image), as the processor batches them."""
    texts = texts or [processor.apply_chat_template(caption_messages(), add_generation_prompt=True)] * len(images)
    return processor(images=images, text=texts, return_tensors="pt")


def labelled_caption_batch(processor, images, captions=("red.", "blue.")) -> dict[str, torch.Tensor]:
    """A training batch: `images` with `captions` (one each) in the chat, labels on the captions."""
    texts = [processor.apply_chat_template(caption_messages(caption=caption)) for caption in captions]
    batch = processor(images=images, text=texts, return_tensors="pt")
    batch["labels"] = processor.build_labels(batch["input_ids"])
    return batch


def gradients_without_and_with_checkpointing(
    model: nn.Module, batch: dict[str, torch.Tensor], module: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The gradients of `module`'s parameters from `model`'s loss on `batch`, then again with gradient checkpointing."""

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(**batch).loss.backward()
        return {name: parameter.grad.clone() for name, parameter in module.named_parameters()}

    model.train()
    reference = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return reference, gradients()

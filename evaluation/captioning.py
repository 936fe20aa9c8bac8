# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The captioning protocol shared by training, evaluation and the benchmarks: the prompt, its chat messages, batched
greedy caption generation, and loading a captioning model by name.

It imports torch, transformers and the model files only (no datasets, no metrics), so the tests of the Hub-side code
can use it under transformers 4.57 too.
"""

import os
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from configuration_vlm import PROJECTOR_TYPES
from models.tiny import build_tiny_vlm

from .shared_images import generate_with_shared_prefill, shared_image_inputs


CAPTION_PROMPT = "Describe the image briefly."
"""The user turn of the common COCO-Karpathy captioning protocol; the image comes first."""


def caption_messages(prompt: str = CAPTION_PROMPT, caption: str | None = None) -> list[dict]:
    """The COCO captioning chat: the image then `prompt` as the user turn, and `caption` as the answer if given."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if caption is not None:
        messages.append({"role": "assistant", "content": caption})
    return messages


def caption_prompt(processor: ProcessorMixin, prompt: str = CAPTION_PROMPT) -> str:
    """The chat-formatted captioning prompt, ending with the assistant header."""
    return processor.apply_chat_template(caption_messages(prompt), add_generation_prompt=True)


def generate_captions(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    prompt: str = CAPTION_PROMPT,
    progress: bool = False,
) -> list[str]:
    """
    Greedy captions of `images`, generated in batches (left padding, KV cache), one string per image. The images go
    to the model's device and dtype; a lazily decoded `datasets` column is read one batch at a time.
    """
    texts = [caption_prompt(processor, prompt)] * len(images)
    return generate_replies(model, processor, images, texts, batch_size, max_new_tokens, "captioning", progress)


def generate_replies(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence,
    texts: Sequence[str],
    batch_size: int,
    max_new_tokens: int,
    description: str = "generating",
    progress: bool = False,
    image_keys: Sequence[str] | None = None,
    share_prefill: bool = True,
) -> list[str]:
    """
    The greedy replies to chat-formatted `texts`, each holding one image token for its image of `images` (in order),
    generated in batches (left padding, KV cache) on the model's device and dtype; stripped of surrounding spaces.
    With `image_keys` (one per text, e.g. image ids), texts about the same image in a batch share its vision features
    and, with `share_prefill`, the prefill of the chat up to its image (`evaluation.shared_images`).
    """
    if getattr(model.config, "max_tiles", 1) > 1:
        image_keys = None  # tiled images: each row's own tiles (the sharing reads one untiled image's features)
    replies = []
    for start in tqdm(range(0, len(texts), batch_size), desc=description, disable=not progress):
        chunk_texts = list(texts[start : start + batch_size])
        new_tokens = None
        if image_keys is not None and share_prefill:
            new_tokens = generate_with_shared_prefill(
                model, processor, images, chunk_texts, image_keys, start, max_new_tokens
            )
        if new_tokens is None:
            if image_keys is None:
                chunk = list(images[start : start + len(chunk_texts)])
                inputs = processor(images=chunk, text=chunk_texts, return_tensors="pt").to(model.device)
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            else:
                inputs = shared_image_inputs(model, processor, images, chunk_texts, image_keys, start)
            with torch.inference_mode():
                generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        replies += [reply.strip() for reply in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return replies


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a model can be evaluated in, by name (`eval.py --dtype`)."""


def default_device(dtype: str = "auto") -> tuple[str, torch.dtype]:
    """CUDA when there is a GPU, else the CPU, with the dtype named `dtype` (`"auto"`: bf16 on a GPU, fp32 else)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        return device, torch.bfloat16 if device == "cuda" else torch.float32
    return device, DTYPES[dtype]


def model_name_problem(name: str) -> str | None:
    """
    Why the model `name` cannot be loaded, found before anything is: `tiny:` with an unknown projector, or a local
    path (starting with `/`, `.` or `~`, with more `/` than a Hub id's `user/name`, or the platform's separator) that
    is not a directory. `None` when nothing is wrong that far.
    """
    if name.startswith("tiny:"):
        projector = name.removeprefix("tiny:")
        if projector in PROJECTOR_TYPES:
            return None
        choices = ", ".join(f"tiny:{choice}" for choice in PROJECTOR_TYPES)
        return f"unknown projector {projector!r}; choose one of {choices}."
    separators = {os.sep, os.altsep} - {None, "/"}
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or any(sep in name for sep in separators)
    path = os.path.expanduser(name)
    if not looks_local or os.path.isdir(path):
        return None
    problem = "is not a directory" if os.path.exists(path) else "does not exist"
    return f"{path} {problem}; pass a saved model directory, a Hub id like user/name, or tiny:<projector>."


def load_captioning_model(
    name: str, device: str | torch.device, dtype: torch.dtype
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    A model and processor from a directory or Hub id (loaded in `dtype`, which keeps the rotary frequencies in float32,
    as every transformers loader does), or `tiny:<projector_type>` for an untrained tiny model (cast to `dtype`).
    """
    if name.startswith("tiny:"):
        model, processor = build_tiny_vlm(name.split(":", 1)[1])
        model = model.to(dtype=dtype)
    else:
        model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=True, dtype=dtype)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    return model.to(device=device).eval(), processor

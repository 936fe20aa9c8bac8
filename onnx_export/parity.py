# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Does an export generate what its PyTorch model does? Greedy captions of the same images from both, compared token by
token, and each step's next-token logits compared by their largest absolute difference.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from transformers import PreTrainedModel, ProcessorMixin

from evaluation.captioning import CAPTION_PROMPT, caption_prompt

from .runtime import OnnxVLM


@dataclass
class ParityReport:
    """
    torch_tokens / onnx_tokens: each side's generated tokens `(batch, num_steps)`.
    max_logit_diff: the largest absolute difference of the next-token logits over the steps both ran.
    """

    torch_tokens: np.ndarray
    onnx_tokens: np.ndarray
    max_logit_diff: float

    @property
    def tokens_match(self) -> bool:
        return np.array_equal(self.torch_tokens, self.onnx_tokens)


def torch_greedy(
    model: PreTrainedModel, inputs: dict[str, torch.Tensor], max_new_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """`generate(..., do_sample=False)`'s new tokens `(batch, num_steps)` and raw logits `(batch, num_steps, vocab)`."""
    with torch.inference_mode():
        outputs = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            return_dict_in_generate=True,
            output_logits=True,
        )
    tokens = outputs.sequences[:, inputs["input_ids"].shape[1] :]
    return tokens.numpy(), torch.stack(outputs.logits, dim=1).float().numpy()


def check_parity(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    onnx_model: OnnxVLM,
    images: Sequence[PIL.Image.Image],
    max_new_tokens: int = 20,
    prompt: str = CAPTION_PROMPT,
) -> ParityReport:
    """Greedy captions of `images` (one batch, left-padded) from `model` and from its export `onnx_model`."""
    texts = [caption_prompt(processor, prompt)] * len(images)
    inputs = dict(processor(images=list(images), text=texts, return_tensors="pt"))
    torch_tokens, torch_logits = torch_greedy(model, inputs, max_new_tokens)
    output = onnx_model.generate(
        **{name: tensor.numpy() for name, tensor in inputs.items()}, max_new_tokens=max_new_tokens, output_logits=True
    )
    steps = min(torch_logits.shape[1], output.logits.shape[1])
    difference = np.abs(torch_logits[:, :steps] - output.logits[:, :steps]).max()
    return ParityReport(torch_tokens, output.sequences, float(difference))

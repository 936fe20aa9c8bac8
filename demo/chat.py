# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
One model's side of the demo page's conversation: the checks on what the user sent, the chat it makes of the turns
so far, its reply streamed token by token (greedy, KV cache) with its latency, and the picture of where it looked.
"""

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import PIL.Image
import torch
from transformers import BatchFeature, TextIteratorStreamer

from data.images import read_image
from evaluation.visualize import save_model_picture

from .models import DemoModel


DEFAULT_MAX_NEW_TOKENS = 64
STREAM_TIMEOUT_S = 600.0
"""How long the page waits for a model's next token before it gives up on the reply."""


class DemoInputError(ValueError):
    """Something the user sent that a model cannot answer; its message is shown on the page."""


@dataclass
class ReplyProgress:
    """A reply as far as it has streamed: its text, tokens, and seconds since the request (to the first token too)."""

    text: str
    tokens: int
    seconds: float
    first_token_s: float | None

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second of the whole reply so far, prefill included."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """One line for the page, e.g. `first token 0.05 s · 12 tokens · 96.1 tokens/s`."""
        first = "-" if self.first_token_s is None else f"{self.first_token_s:.2f} s"
        return f"first token {first} · {self.tokens} tokens · {self.tokens_per_s:.1f} tokens/s"


class _TimingStreamer(TextIteratorStreamer):
    """A [`TextIteratorStreamer`] that also notes when each new (non-prompt) token arrives."""

    def __init__(self, tokenizer, timeout: float) -> None:
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        self.token_times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.token_times.append(time.perf_counter())
        super().put(value)


def open_image(path: str | None) -> PIL.Image.Image:
    """
    The RGB image at `path` (an upload), read as training and evaluation read images ([`data.images.read_image`]:
    EXIF orientation, 16-bit and float pixels scaled), or [`DemoInputError`] when there is none or it cannot be read.
    """
    if not path:
        raise DemoInputError("No image: upload one or pick an example first.")
    try:
        return read_image(path)
    # Pillow reports broken data through many exception types (see `read_image`).
    except Exception as error:
        raise DemoInputError(
            f"The uploaded file is not an image this page can read ({type(error).__name__}); upload a PNG, JPEG or "
            "WebP picture."
        ) from error


def check_prompt(prompt: str | None) -> str:
    """`prompt` without surrounding spaces, or [`DemoInputError`] when it is empty."""
    if not prompt or not prompt.strip():
        raise DemoInputError("Empty prompt: type a question or an instruction, e.g. 'Describe the image briefly.'")
    return prompt.strip()


def chat_messages(turns: Sequence[tuple[str, str]], prompt: str) -> list[dict]:
    """The chat of the earlier `(prompt, reply)` turns and the new `prompt`; the image opens the first user turn."""
    messages = []
    for index, (question, answer) in enumerate([*turns, (prompt, None)]):
        image = [{"type": "image"}] if index == 0 else []
        messages.append({"role": "user", "content": [*image, {"type": "text", "text": question}]})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    return messages


def reply_inputs(
    demo_model: DemoModel, image: PIL.Image.Image, turns: Sequence[tuple[str, str]], prompt: str, max_new_tokens: int
) -> BatchFeature:
    """
    The model's inputs for answering `prompt` after `turns` (`input_ids` `(1, length)`, `pixel_values` on the model's
    device and dtype), or [`DemoInputError`] when the conversation and the answer would not fit its positions.
    """
    processor, model = demo_model.processor, demo_model.model
    text = processor.apply_chat_template(chat_messages(turns, prompt), add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    length, max_positions = inputs["input_ids"].shape[1], model.config.text_config.max_position_embeddings
    if length + max_new_tokens > max_positions:
        raise DemoInputError(
            f"Too long for {demo_model.name}: the conversation takes {length} tokens with the image, and the model "
            f"reads at most {max_positions}, {max_new_tokens} of them kept for its answer. Shorten the prompt or "
            "clear the conversation."
        )
    return inputs


def stream_reply(
    demo_model: DemoModel,
    image: PIL.Image.Image,
    turns: Sequence[tuple[str, str]],
    prompt: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Iterator[ReplyProgress]:
    """
    The greedy reply to `prompt` as it streams; the last item holds the whole reply, decoded from the generated tokens
    exactly as `evaluation.captioning.generate_replies` decodes them (so the page shows what evaluation scores).
    """
    inputs = reply_inputs(demo_model, image, turns, prompt, max_new_tokens)
    streamer = _TimingStreamer(demo_model.processor.tokenizer, STREAM_TIMEOUT_S)
    outcome: dict = {}

    def generate() -> None:
        try:
            with torch.inference_mode():
                outcome["sequences"] = demo_model.model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, streamer=streamer
                )
        except Exception as error:  # re-raised in the page's thread, where it becomes a message
            outcome["error"] = error
            streamer.end()

    start = time.perf_counter()
    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    text = ""
    for chunk in streamer:
        text += chunk
        yield _progress(text, streamer.token_times, start)
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    new_tokens = outcome["sequences"][0, inputs["input_ids"].shape[1] :]
    reply = demo_model.processor.decode(new_tokens, skip_special_tokens=True).strip()
    yield _progress(reply, streamer.token_times, start)


def _progress(text: str, token_times: list[float], start: float) -> ReplyProgress:
    last = token_times[-1] if token_times else time.perf_counter()
    first = token_times[0] - start if token_times else None
    return ReplyProgress(text=text, tokens=len(token_times), seconds=last - start, first_token_s=first)


def save_reply_map(demo_model: DemoModel, image: PIL.Image.Image, prompt: str, reply: str, path: str) -> str | None:
    """
    The PNG at `path` of where the model looked for `reply` to `prompt`, asked on its own with the image
    (`evaluation.visualize.save_model_picture`: cross-attention, projector attention or gradient saliency, whichever
    fits the model); `None` for an empty reply.
    """
    if not reply:
        return None
    model, processor = demo_model.model, demo_model.processor
    save_model_picture(model, processor, demo_model.short_name, "upload", image, reply, path, prompt)
    return path

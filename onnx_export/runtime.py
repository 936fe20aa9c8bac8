# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Greedy generation over the exported graphs with onnxruntime and numpy only (no torch), as transformers.js runs a
LLaVA-style model: embed the prompt's tokens, encode the images, write the image features over the image placeholders
(row after row, as the PyTorch model's `merge_image_embeds` does), then decode with the key/value cache, starting
from an empty one. Decoding follows `generate(..., do_sample=False)`: positions count the attended tokens, the
generation config's `suppress_tokens` never win, and a row that produced an end token pads until every row has.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .layout import (
    DECODER,
    EMBED_TOKENS,
    GRAPHS,
    IMAGE_POSITIONS,
    ONNX_FOLDER,
    PAST_PREFIX,
    PRESENT_PREFIX,
    VISION_ENCODER,
)


@dataclass
class GreedyOutput:
    """
    sequences: the generated tokens `(batch, num_steps)`, without the prompt; rows that ended early are padded.
    logits: with `output_logits=True`, each step's next-token logits `(batch, num_steps, vocab)`, before suppression.
    """

    sequences: np.ndarray
    logits: np.ndarray | None = None


def session_options(num_threads: int | None) -> ort.SessionOptions:
    """
    onnxruntime options with `num_threads` intra-op threads; by default `OMP_NUM_THREADS` when it is set (which torch
    follows and onnxruntime does not), else onnxruntime's own choice (one per physical core).
    """
    options = ort.SessionOptions()
    if num_threads is None:
        num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    return options


class OnnxVLM:
    """The three graphs of an export directory (see `onnx_export.export`) and its config and generation config."""

    def __init__(self, directory: str | Path, num_threads: int | None = None, providers: list[str] | None = None):
        directory = Path(directory)
        options = session_options(num_threads)
        self.sessions = {
            name: ort.InferenceSession(
                str(directory / ONNX_FOLDER / f"{name}.onnx"), options, providers=providers or ["CPUExecutionProvider"]
            )
            for name in GRAPHS
        }
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        generation_file = directory / "generation_config.json"
        generation = json.loads(generation_file.read_text(encoding="utf-8")) if generation_file.exists() else {}
        self.image_token_id: int = config["image_token_id"]
        eos = generation.get("eos_token_id", config["text_config"].get("eos_token_id"))
        self.eos_token_ids: list[int] = [] if eos is None else [int(token) for token in np.atleast_1d(eos)]
        pad = generation.get("pad_token_id")
        # generate() pads finished rows with the first end token when no pad token is set.
        self.pad_token_id: int = pad if pad is not None else (self.eos_token_ids or [0])[0]
        self.suppress_tokens: list[int] = list(generation.get("suppress_tokens") or [])
        self.decoder_inputs = {node.name: node for node in self.sessions[DECODER].get_inputs()}
        self.decoder_outputs = [node.name for node in self.sessions[DECODER].get_outputs()]

    def image_features(self, pixel_values: np.ndarray, num_tiles: np.ndarray | None = None) -> np.ndarray:
        """
        `image_features` `(num_images, tokens, dim)` of `pixel_values` `(num_images, channels, height, width)`; tiled
        ones `(num_images, max_count, channels, height, width)` with `num_tiles` are first flattened to their tiles.
        """
        pixel_values = np.asarray(pixel_values, dtype=np.float32)
        if pixel_values.ndim == 5:
            if num_tiles is None:
                raise ValueError("Tiled pixel_values (5 dimensions) need the processor's num_tiles.")
            present = np.arange(pixel_values.shape[1])[None, :] < np.asarray(num_tiles)[:, None]
            pixel_values = pixel_values[present]
        return self.sessions[VISION_ENCODER].run(None, {"pixel_values": pixel_values})[0]

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """`inputs_embeds` `(batch, sequence, dim)` of `input_ids` `(batch, sequence)`."""
        return self.sessions[EMBED_TOKENS].run(None, {"input_ids": np.asarray(input_ids, dtype=np.int64)})[0]

    def prompt_embeds(
        self, input_ids: np.ndarray, pixel_values: np.ndarray | None = None, num_tiles: np.ndarray | None = None
    ) -> np.ndarray:
        """The prompt's embeddings `(batch, sequence, dim)`, image features over the image placeholders."""
        embeds = self.embed(input_ids)
        placeholders = np.asarray(input_ids) == self.image_token_id
        if pixel_values is None:
            if placeholders.any():
                raise ValueError("The prompt has image placeholders but no pixel_values were given.")
            return embeds
        features = self.image_features(pixel_values, num_tiles)
        if placeholders.sum() != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"The prompt has {int(placeholders.sum())} image placeholders but the images give {features.shape[0]} "
                f"x {features.shape[1]} features; build the inputs with the exported processor."
            )
        embeds[placeholders] = features.reshape(-1, features.shape[-1])
        return embeds

    def empty_cache(self, batch_size: int) -> dict[str, np.ndarray]:
        """A cache of length 0 for each `past_key_values.*` input: `(batch, kv_heads, 0, head_dim)`."""
        return {
            name: np.zeros((batch_size, node.shape[1], 0, node.shape[3]), dtype=np.float32)
            for name, node in self.decoder_inputs.items()
            if name.startswith(PAST_PREFIX)
        }

    def first_feeds(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        pixel_values: np.ndarray | None,
        num_tiles: np.ndarray | None,
    ) -> dict[str, np.ndarray]:
        """The decoder's inputs for the prompt: its embeddings, mask, positions and an empty cache."""
        position_ids = np.where(attention_mask == 0, 0, attention_mask.cumsum(-1) - 1)
        placeholders = input_ids == self.image_token_id
        feeds = {
            "inputs_embeds": self.prompt_embeds(input_ids, pixel_values, num_tiles),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            **self.empty_cache(len(input_ids)),
        }
        if IMAGE_POSITIONS in self.decoder_inputs:
            feeds[IMAGE_POSITIONS] = placeholders if pixel_values is not None else np.zeros_like(placeholders)
        return feeds

    def next_feeds(
        self, feeds: dict[str, np.ndarray], outputs: list[np.ndarray], next_tokens: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The decoder's inputs for one step: the new tokens `(batch,)` after the cache the last run returned."""
        cache = {
            name.replace(PRESENT_PREFIX, PAST_PREFIX, 1): value
            for name, value in zip(self.decoder_outputs, outputs)
            if name.startswith(PRESENT_PREFIX)
        }
        attention_mask = feeds["attention_mask"]
        new = {
            "inputs_embeds": self.embed(next_tokens[:, None]),
            "attention_mask": np.concatenate([attention_mask, np.ones_like(attention_mask[:, :1])], axis=1),
            "position_ids": feeds["position_ids"][:, -1:] + 1,
            **cache,
        }
        if IMAGE_POSITIONS in self.decoder_inputs:
            new[IMAGE_POSITIONS] = np.zeros((len(next_tokens), 1), dtype=bool)
        return new

    def generate(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        pixel_values: np.ndarray | None = None,
        num_tiles: np.ndarray | None = None,
        max_new_tokens: int = 64,
        output_logits: bool = False,
    ) -> GreedyOutput:
        """
        Greedy decoding of up to `max_new_tokens` after `input_ids` `(batch, sequence)` (left-padded where
        `attention_mask` is 0), with the images of `pixel_values` in their placeholders.
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        feeds = self.first_feeds(input_ids, mask, pixel_values, num_tiles)
        unfinished = np.ones(len(input_ids), dtype=bool)
        tokens, step_logits = [], []
        for _ in range(max_new_tokens):
            outputs = self.sessions[DECODER].run(None, feeds)
            logits = outputs[0][:, -1].astype(np.float32)
            scores = logits.copy()
            scores[:, self.suppress_tokens] = -np.inf
            next_tokens = np.where(unfinished, scores.argmax(-1), self.pad_token_id)
            tokens.append(next_tokens)
            if output_logits:
                step_logits.append(logits)
            unfinished &= ~np.isin(next_tokens, self.eos_token_ids)
            if not unfinished.any():
                break
            feeds = self.next_feeds(feeds, outputs, next_tokens)
        return GreedyOutput(
            sequences=np.stack(tokens, axis=1),
            logits=np.stack(step_logits, axis=1) if output_logits else None,
        )

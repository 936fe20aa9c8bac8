# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The VLM's side of generation ([`VLMGenerationMixin`]): the images go in at the step that starts a sequence only
(afterwards their keys and values are in the cache); a prompt or a `max_length` beyond the language model's positions
is refused before any step runs; and when `generate` expands a batch (beam search, `num_return_sequences`), each row's
copies get that row's images — transformers repeats every tensor of the inputs in place, image after image, which
gives the copies of a row with several images the wrong ones ([`expand_image_inputs`] repeats them row by row). The
key/value cache is taken under both of its names ([`CACHE_NAME`]).
"""

from typing import Any

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast


try:
    from .configuration_vlm import MARKER_FUSIONS, SEQUENCE_FUSIONS, VLMConfig
except ImportError:  # imported as a local module rather than as remote code
    from configuration_vlm import MARKER_FUSIONS, SEQUENCE_FUSIONS, VLMConfig


# transformers 5.25 renamed the key/value cache `past_key_values` -> `cache` in model outputs, model forwards and
# generation; this is the name the installed release uses, read off its own output class.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def resolve_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The key/value cache passed under either name: `cache` (transformers >= 5.25) or `past_key_values` (before)."""
    if cache is not None and past_key_values is not None:
        raise ValueError(
            "Got the key/value cache twice, as `cache` and as `past_key_values`; pass it once (either name works)."
        )
    return cache if cache is not None else past_key_values


# The inputs that hold one entry per image (not per row).
IMAGE_INPUTS = ("pixel_values", "vision_features", "num_tiles")


def placeholders_per_image(
    config: VLMConfig, num_images: int, num_tiles: torch.LongTensor | None, device: torch.device
) -> torch.LongTensor:
    """
    The image tokens each image occupies in the text `(num_images,)`: one marker (cross-attention, adapter), its
    thumbnail's placeholders (hybrid), or its tiles' placeholders (early, visual-expert and tokenized fusion).
    """
    if config.fusion in MARKER_FUSIONS:
        return torch.ones(num_images, dtype=torch.long, device=device)
    per_image = torch.full((num_images,), config.num_image_tokens, dtype=torch.long, device=device)
    if config.fusion in SEQUENCE_FUSIONS and num_tiles is not None:
        return per_image * num_tiles.to(device)
    return per_image


def expand_image_inputs(
    config: VLMConfig, input_ids: torch.LongTensor, expand_size: int, image_inputs: dict[str, torch.Tensor | None]
) -> dict[str, torch.Tensor | None]:
    """
    `image_inputs` (see `IMAGE_INPUTS`, one entry per image in the order of their image tokens in `input_ids`
    `(batch, seq)`) for `input_ids` with each row repeated `expand_size` times: each row's images, `expand_size` times.
    Inputs whose images do not add up to the text's image tokens are returned as they are (the forward pass names the
    mismatch).
    """
    images = next((value for value in image_inputs.values() if value is not None), None)
    if images is None or expand_size == 1:
        return image_inputs
    per_image = placeholders_per_image(config, len(images), image_inputs.get("num_tiles"), input_ids.device)
    per_row = (input_ids == config.image_token_id).sum(dim=1)
    if int(per_image.sum()) != int(per_row.sum()):
        return image_inputs
    image_row = torch.searchsorted(per_row.cumsum(0), per_image.cumsum(0))  # the row whose tokens each image ends in
    order = torch.cat([torch.nonzero(image_row == row).flatten().repeat(expand_size) for row in range(len(per_row))])
    return {name: value[order.to(value.device)] if value is not None else None for name, value in image_inputs.items()}


class VLMGenerationMixin(GenerationMixin):
    """
    `GenerationMixin` for [`VLMForConditionalGeneration`]: image inputs at the first step only, each expanded row with
    its own images, and sequence lengths checked against `config.text_config.max_position_embeddings`.
    """

    def _check_sequence_length(self, num_new_tokens: int, num_cached_tokens: int = 0) -> None:
        """
        Raises `ValueError` for an empty input, which the language model's attention cannot reshape, and for a sequence
        longer than `text_config.max_position_embeddings`, which it would run past its trained positions silently.
        """
        if num_new_tokens == 0:
            raise ValueError(
                "The input is empty (0 tokens); pass a prompt of at least one token, e.g. built with "
                "processor.apply_chat_template(...) and the processor."
            )
        max_positions = self.config.text_config.max_position_embeddings
        length = num_cached_tokens + num_new_tokens
        if length > max_positions:
            cached = f" ({num_cached_tokens} cached + {num_new_tokens} new)" if num_cached_tokens else ""
            raise ValueError(
                f"The input is {length} tokens long{cached} but the language model handles at most {max_positions} "
                f"(text_config.max_position_embeddings); shorten the text or pass fewer images (each takes "
                f"{self.config.num_image_tokens} tokens)."
            )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: Cache | None = None,
        pixel_values: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = None,
        past_key_values: Cache | None = None,
        num_tiles: torch.LongTensor | None = None,
        **kwargs,
    ) -> dict:
        """
        `GenerationMixin`'s inputs of one step, with the images only at a step that starts a sequence; afterwards their
        keys and values are in the cache. A step starts a sequence when `generate` says so (`is_first_iteration`, passed
        by transformers 5.x at the prefill, also of a continued cache) or when the cache holds nothing yet (every
        release: 4.57 passes no flag; without a cache every step re-reads the whole sequence).
        """
        cache = resolve_cache(cache, past_key_values)
        starts_sequence = bool(is_first_iteration) or cache is None or cache.get_seq_length() == 0
        if starts_sequence and kwargs.get("inputs_embeds") is None:
            # transformers 4.x's preparation below fails on an empty prompt with a bare IndexError.
            self._check_sequence_length(num_new_tokens=input_ids.shape[1])
        if is_first_iteration is not None:  # 4.57's preparation would forward it to the model as an unknown input
            kwargs["is_first_iteration"] = is_first_iteration
        model_inputs = super().prepare_inputs_for_generation(input_ids, **{CACHE_NAME: cache}, **kwargs)
        if starts_sequence:
            model_inputs["pixel_values"] = pixel_values
            model_inputs["vision_features"] = vision_features
            model_inputs["num_tiles"] = num_tiles
        return model_inputs

    def _expand_inputs_for_generation(
        self,
        expand_size: int = 1,
        is_encoder_decoder: bool = False,
        input_ids: torch.LongTensor | None = None,
        **model_kwargs,
    ) -> tuple[torch.LongTensor, dict[str, Any]]:
        """
        `GenerationMixin`'s expansion of the batch for beam search and `num_return_sequences` (a static method in
        transformers 4.x, a method in 5.x), with each row's images repeated with the row ([`expand_image_inputs`]).
        """
        image_inputs = {name: model_kwargs.pop(name, None) for name in IMAGE_INPUTS}
        if input_ids is not None:
            image_inputs = expand_image_inputs(self.config, input_ids, expand_size, image_inputs)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        return input_ids, {**model_kwargs, **{name: value for name, value in image_inputs.items() if value is not None}}

    def _validate_generated_length(
        self, generation_config: GenerationConfig, input_ids_length: int, has_default_max_length: bool
    ) -> None:
        """
        `GenerationMixin`'s length checks (the same hook in transformers 4.x and 5.x), and a refusal, before any step
        runs, of a `max_length` (prompt + `max_new_tokens`) beyond `text_config.max_position_embeddings`.
        """
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)
        max_length, max_positions = generation_config.max_length, self.config.text_config.max_position_embeddings
        if max_length > max_positions:
            fix = (
                f"set max_new_tokens to at most {max_positions - input_ids_length}"
                if input_ids_length < max_positions
                else "shorten the prompt"
            )
            raise ValueError(
                f"Generation could reach {max_length} tokens (a {input_ids_length}-token prompt and up to "
                f"{max_length - input_ids_length} new tokens) but the language model handles at most {max_positions} "
                f"(text_config.max_position_embeddings); {fix}."
            )

# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Several questions about one image, answered together (VQAv2 asks about five per image, POPE six): each image goes
through the vision tower once per batch ([`shared_image_inputs`]), and the chat up to and including its image tokens
(or, with cross-attention, its marker, the blocks' keys and values with it), the same for all its questions, is
prefilled once into the KV cache and copied to each of them ([`generate_with_shared_prefill`]), so that the language
model reads each question's own tokens only.
"""

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, ProcessorMixin

from cross_attention_vlm import IMAGE_CACHE_ATTRIBUTE
from modeling_vlm import CACHE_NAME
from processing_vlm import to_rgb_image


def shared_image_inputs(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence,
    texts: list[str],
    image_keys: Sequence[str],
    start: int,
) -> dict[str, torch.Tensor]:
    """
    The model inputs of `texts` (rows `start`... of `images` and `image_keys`): their tokens with the image
    placeholders, and `vision_features` of each row computed once per distinct key.
    """
    features, rows = distinct_image_features(model, processor, images, image_keys, start, len(texts))
    expanded = [processor.expand_image_tokens(text) for text in texts]
    inputs = processor.tokenizer(expanded, padding=True, return_tensors="pt").to(model.device)
    inputs["vision_features"] = features[rows]
    return inputs


def distinct_image_features(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence,
    image_keys: Sequence[str],
    start: int,
    count: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The vision features `(num_distinct, num_patches, vision_dim)` of the distinct keys of rows `start`... `start +
    count` of `image_keys` (each image of `images` decoded and run through the tower once), and for each of those rows
    the index of its image among them.
    """
    keys = list(image_keys[start : start + count])
    distinct = list(dict.fromkeys(keys))
    opened = [to_rgb_image(images[start + keys.index(key)]) for key in distinct]
    pixel_values = processor.image_processor(opened, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        features = model.get_vision_features(pixel_values.to(model.device, model.dtype))
    return features, torch.tensor([distinct.index(key) for key in keys], device=model.device)


def shared_prefix_length(token_ids: list[list[int]], image_token_id: int) -> int | None:
    """
    How many leading tokens every row shares up to and including its last image token (its prefix, the chat up to
    the image), or `None` when the rows' prefixes differ or a row has no image.
    """
    lengths = {len(ids) - ids[::-1].index(image_token_id) if image_token_id in ids else None for ids in token_ids}
    if len(lengths) != 1 or None in lengths:
        return None
    length = lengths.pop()
    return length if all(ids[:length] == token_ids[0][:length] for ids in token_ids) else None


def generate_with_shared_prefill(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    images: Sequence,
    texts: list[str],
    image_keys: Sequence[str],
    start: int,
    max_new_tokens: int,
) -> torch.LongTensor | None:
    """
    The greedy new tokens `(len(texts), num_new)` of `texts` (rows `start`... of `images` and `image_keys`; any fusion):
    each distinct image's prefix (the chat up to and including its image tokens, or its marker) is prefilled once,
    its KV cache (and with cross-attention its blocks' keys and values) copied to the rows about that image, and each
    row's own tokens follow it, padded between prefix and question (masked out, positions continuing after the
    prefix). `None` when the rows do not share one prefix.
    """
    expanded = [processor.expand_image_tokens(text) for text in texts]
    token_ids = processor.tokenizer(expanded)["input_ids"]
    length = shared_prefix_length(token_ids, processor.image_token_id)
    if length is None:
        return None
    features, rows = distinct_image_features(model, processor, images, image_keys, start, len(texts))
    prefix = torch.tensor([token_ids[0][:length]] * len(features), device=model.device)
    with torch.inference_mode():
        cache = model(input_ids=prefix, vision_features=features, use_cache=True)[CACHE_NAME]
    cache.batch_select_indices(rows)
    images = getattr(cache, IMAGE_CACHE_ATTRIBUTE, None)  # cross-attention's keys and values of each image
    if images is not None:
        setattr(cache, IMAGE_CACHE_ATTRIBUTE, images.select_rows(torch.as_tensor(rows, device=model.device)))
    suffixes = [ids[length:] for ids in token_ids]
    width = max(map(len, suffixes))
    pad = processor.tokenizer.pad_token_id
    input_ids = torch.tensor([token_ids[0][:length] + [pad] * (width - len(s)) + s for s in suffixes])
    attention_mask = torch.tensor([[1] * length + [0] * (width - len(s)) + [1] * len(s) for s in suffixes])
    with torch.inference_mode():
        generated = model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, **{CACHE_NAME: cache},
        )  # fmt: skip
    return generated[:, length + width :]

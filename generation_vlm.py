# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The images' side of generation: when `generate` expands a batch (beam search, `num_return_sequences`), each row's
copies need that row's images. transformers repeats every tensor of the inputs in place, image after image, which
gives the copies of a row with several images the wrong ones ([`expand_image_inputs`] repeats them row by row).
"""

import torch


try:
    from .configuration_vlm import MARKER_FUSIONS, SEQUENCE_FUSIONS, VLMConfig
except ImportError:  # imported as a local module rather than as remote code
    from configuration_vlm import MARKER_FUSIONS, SEQUENCE_FUSIONS, VLMConfig


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

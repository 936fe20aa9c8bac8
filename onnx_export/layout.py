# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""The names of the exported files and of the decoder's inputs, shared by the exporter and the torch-free runtime."""

ONNX_FOLDER = "onnx"
VISION_ENCODER, EMBED_TOKENS, DECODER = "vision_encoder", "embed_tokens", "decoder_model_merged"
GRAPHS = (VISION_ENCODER, EMBED_TOKENS, DECODER)
PAST_PREFIX, PRESENT_PREFIX = "past_key_values", "present"
# fusion="visual_expert" only: where the new tokens are image tokens, `(batch, sequence)` booleans.
IMAGE_POSITIONS = "image_positions"


def cache_names(num_layers: int, prefix: str) -> list[str]:
    """`{prefix}.{i}.key`, `{prefix}.{i}.value` for each layer: the decoder's cache inputs or outputs, in order."""
    return [f"{prefix}.{layer}.{kind}" for layer in range(num_layers) for kind in ("key", "value")]

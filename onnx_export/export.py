# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
A VLM as the three ONNX graphs that transformers.js and onnxruntime users load for LLaVA-style models, in `onnx/`:

- `vision_encoder.onnx`: `pixel_values` `(num_images, channels, height, width)` -> `image_features` `(num_images,
  num_image_tokens, text_hidden_size)`, the vision tower and the projector (a VQ tokenizer and its code embeddings
  with tokenized fusion);
- `embed_tokens.onnx`: `input_ids` `(batch, sequence)` -> `inputs_embeds` `(batch, sequence, text_hidden_size)`;
- `decoder_model_merged.onnx`: `inputs_embeds`, `attention_mask` `(batch, past + sequence)`, `position_ids` `(batch,
  sequence)` and `past_key_values.{i}.key` / `.value` `(batch, kv_heads, past, head_dim)` -> `logits` `(batch,
  sequence, vocab)` and `present.{i}.key` / `.value` `(batch, kv_heads, past + sequence, head_dim)`. One graph serves
  the prompt (a past of length 0) and the decoding steps, as recent optimum / transformers.js exports do, rather than
  an If-node merging two graphs. With `fusion="visual_expert"` it takes `image_positions` `(batch, sequence)` too.

The graphs come from `torch.onnx.export(..., dynamo=True)` (torch.export), with dynamic batch, sequence, past and
image-count axes; the config, generation config and processor are saved beside them.
"""

import copy
import json
import warnings
from pathlib import Path

import onnx_ir
import torch
from PIL import Image
from torch import nn
from transformers import ProcessorMixin
from transformers.cache_utils import DynamicCache

from configuration_vlm import VLMConfig
from modeling_vlm import CACHE_NAME, VLMForConditionalGeneration

from .layout import (
    DECODER,
    EMBED_TOKENS,
    GRAPHS,
    IMAGE_POSITIONS,
    ONNX_FOLDER,
    PAST_PREFIX,
    PRESENT_PREFIX,
    VISION_ENCODER,
    cache_names,
)


EXPORTED_FUSIONS = ("early", "visual_expert", "tokenized")
REFUSED_FUSIONS = {
    "cross_attention": "its gated cross-attention blocks read the image tokens inside the decoder layers (each text "
    "token attends to the image of the most recent marker before it, and the images' keys and values are cached "
    "beside the text's), so the decoder graph would need the image features, each token's image and the image "
    "cache as extra inputs and outputs, which no transformers.js or optimum decoder carries",
    "hybrid": "its tiles reach the decoder layers through gated cross-attention blocks, as with "
    "fusion='cross_attention', so the decoder graph would need the image features and the image cache as extra "
    "inputs and outputs, which no transformers.js or optimum decoder carries",
    "adapter": "its adaption prompts add the image tokens to the self-attention of the top decoder layers at every "
    "step, so the decoder graph would need the image features and each token's image as extra inputs, which no "
    "transformers.js or optimum decoder carries",
}
# One .onnx file holds at most 2 GiB (protobuf); above this the weights go to `<graph>.onnx_data`, as transformers.js
# names external data.
EXTERNAL_DATA_BYTES = 1_800_000_000


class UnsupportedExportError(ValueError):
    """The model's fusion cannot be expressed in the three-graph layout."""


def check_exportable(config: VLMConfig) -> None:
    """Raises `UnsupportedExportError` naming the fusion and why when `config`'s model cannot be exported."""
    if config.fusion not in EXPORTED_FUSIONS:
        reason = REFUSED_FUSIONS.get(config.fusion, "this exporter does not know it")
        raise UnsupportedExportError(
            f"fusion={config.fusion!r} cannot be exported to the vision_encoder / embed_tokens / decoder_model_merged "
            f"layout: {reason}. Exported fusions: {', '.join(EXPORTED_FUSIONS)}."
        )


class VisionEncoder(nn.Module):
    """`pixel_values` `(num_images, channels, height, width)` -> `image_features` `(num_images, tokens, dim)`."""

    def __init__(self, model: VLMForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values).image_embeds


class TokenEmbedder(nn.Module):
    """`input_ids` `(batch, sequence)` -> `inputs_embeds` `(batch, sequence, dim)`."""

    def __init__(self, model: VLMForConditionalGeneration):
        super().__init__()
        self.embed_tokens = model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class Decoder(nn.Module):
    """
    The language model with its key/value cache passed as tensors: `past_key_values` holds each layer's key and value
    `(batch, kv_heads, past, head_dim)`, layer after layer; returns the logits `(batch, sequence, vocab)` and the
    updated keys and values `(batch, kv_heads, past + sequence, head_dim)` in the same order.
    """

    def __init__(self, model: VLMForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: tuple[torch.Tensor, ...],
        image_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        pairs = zip(past_key_values[0::2], past_key_values[1::2])
        experts = getattr(self.model, "visual_experts", None)  # absent from models saved before the fusion existed
        if experts is not None:
            experts.image_positions = image_positions
        try:
            outputs = self.model.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{CACHE_NAME: DynamicCache(list(pairs))},
            )
        finally:
            if experts is not None:
                experts.image_positions = None
        present = [tensor for layer in getattr(outputs, CACHE_NAME).layers for tensor in (layer.keys, layer.values)]
        return (outputs.logits, *present)


def sample_pixel_values(processor: ProcessorMixin, num_images: int = 2) -> torch.Tensor:
    """`(num_images, channels, height, width)` pixels of blank images, as the processor prepares them."""
    pixels = processor.image_processor(Image.new("RGB", (64, 48)), return_tensors="pt")["pixel_values"]
    return pixels.repeat(num_images, 1, 1, 1)


def save_program(program: torch.onnx.ONNXProgram, path: Path) -> bool:
    """Saves an exported graph, its weights in `<path>_data` when too large for one file; returns whether they are."""
    weight_bytes = sum(value.const_value.nbytes for value in program.model.graph.initializers.values())
    external = weight_bytes > EXTERNAL_DATA_BYTES
    onnx_ir.save(program.model, path, external_data=f"{path.name}_data" if external else None)
    return external


def export_program(module: nn.Module, args: tuple, **options) -> torch.onnx.ONNXProgram:
    """`torch.onnx.export` with torch.export (dynamo), quiet about its own notes that need no action."""
    with warnings.catch_warnings():
        # Naming one torch.export.Dim on several inputs (how equal axes are declared) and torch's own deprecations.
        warnings.filterwarnings("ignore", message="# The axis name")
        warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
        return torch.onnx.export(module.eval(), args, dynamo=True, verbose=False, **options)


def export_vision_encoder(model: VLMForConditionalGeneration, processor: ProcessorMixin, path: Path) -> bool:
    """Writes `vision_encoder.onnx` (dynamic number of images); returns whether its weights are external."""
    num_images = torch.export.Dim("num_images")
    program = export_program(
        VisionEncoder(model),
        (sample_pixel_values(processor),),
        input_names=["pixel_values"],
        output_names=["image_features"],
        dynamic_shapes=({0: num_images},),
    )
    return save_program(program, path)


def export_embed_tokens(model: VLMForConditionalGeneration, path: Path) -> bool:
    """Writes `embed_tokens.onnx` (dynamic batch and sequence); returns whether its weights are external."""
    batch, sequence = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    program = export_program(
        TokenEmbedder(model),
        (torch.full((2, 3), model.config.image_token_id, dtype=torch.long),),
        input_names=["input_ids"],
        output_names=["inputs_embeds"],
        dynamic_shapes=({0: batch, 1: sequence},),
    )
    return save_program(program, path)


def sample_decoder_inputs(model: VLMForConditionalGeneration) -> tuple:
    """
    Decoder inputs of a batch of 2 with 3 new tokens after 4 cached ones (no axis at 0 or 1, which torch.export
    would specialise): the cache is the language model's own for 4 random embeddings.
    """
    batch, past, new = 2, 4, 3
    language_model = model.language_model
    embeds = torch.randn(batch, past + new, model.config.text_config.hidden_size, dtype=language_model.dtype)
    with torch.no_grad():
        cache = getattr(language_model(inputs_embeds=embeds[:, :past], use_cache=True), CACHE_NAME)
    past_key_values = tuple(tensor for layer in cache.layers for tensor in (layer.keys, layer.values))
    attention_mask = torch.ones(batch, past + new, dtype=torch.long)
    position_ids = torch.arange(past, past + new).expand(batch, -1)
    inputs = (embeds[:, past:], attention_mask, position_ids, past_key_values)
    if getattr(model, "visual_experts", None) is not None:
        inputs += (torch.tensor([[True, True, False], [False, True, True]]),)
    return inputs


def export_decoder(model: VLMForConditionalGeneration, path: Path) -> bool:
    """Writes `decoder_model_merged.onnx` (dynamic batch, sequence, past); returns whether its weights are external."""
    inputs = sample_decoder_inputs(model)
    num_layers = len(inputs[3]) // 2
    batch, sequence = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    past, total = torch.export.Dim("past_sequence_length"), torch.export.Dim("total_sequence_length")
    dynamic_shapes = [{0: batch, 1: sequence}, {0: batch, 1: total}, {0: batch, 1: sequence}]
    dynamic_shapes.append(tuple({0: batch, 2: past} for _ in range(2 * num_layers)))
    input_names = ["inputs_embeds", "attention_mask", "position_ids", *cache_names(num_layers, PAST_PREFIX)]
    if len(inputs) > 4:  # visual experts: where the image tokens are
        dynamic_shapes.append({0: batch, 1: sequence})
        input_names.append(IMAGE_POSITIONS)
    program = export_program(
        Decoder(model),
        inputs,
        input_names=input_names,
        output_names=["logits", *cache_names(num_layers, PRESENT_PREFIX)],
        dynamic_shapes=tuple(dynamic_shapes),
    )
    return save_program(program, path)


def save_configs(
    model: VLMForConditionalGeneration, processor: ProcessorMixin, output_dir: Path, external: list[str]
) -> None:
    """
    Writes config.json (its `auto_map` naming only the config and processor: there are no PyTorch weights here),
    generation_config.json, the processor (with preprocessor_config.json, where transformers.js reads the image
    processor) and, for graphs with external weights, transformers.js's `use_external_data_format`.
    """
    config = copy.deepcopy(model.config)
    config.auto_map = {"AutoConfig": "configuration_vlm.VLMConfig", "AutoProcessor": "processing_vlm.VLMProcessor"}
    config.register_for_auto_class()
    config.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    processor.image_processor.save_pretrained(output_dir)
    if external:
        config_file = output_dir / "config.json"
        config_dict = json.loads(config_file.read_text(encoding="utf-8"))
        config_dict["transformers.js_config"] = {"use_external_data_format": {f"{name}.onnx": 1 for name in external}}
        config_file.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_onnx(
    model: VLMForConditionalGeneration, processor: ProcessorMixin, output_dir: str | Path
) -> dict[str, Path]:
    """
    Exports the float32 `model` (in eval mode) to
    `output_dir/onnx/{vision_encoder,embed_tokens,decoder_model_merged}.onnx` and saves the config, generation config
    and processor in `output_dir`; returns each graph's path. Raises `UnsupportedExportError` for a fusion the layout
    cannot express ([`check_exportable`]).
    """
    check_exportable(model.config)
    if model.dtype != torch.float32:
        raise ValueError(f"The model is in {model.dtype}; export it in float32 (load it with dtype=torch.float32).")
    model.eval()
    onnx_dir = Path(output_dir) / ONNX_FOLDER
    onnx_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: onnx_dir / f"{name}.onnx" for name in GRAPHS}
    external = {
        VISION_ENCODER: export_vision_encoder(model, processor, paths[VISION_ENCODER]),
        EMBED_TOKENS: export_embed_tokens(model, paths[EMBED_TOKENS]),
        DECODER: export_decoder(model, paths[DECODER]),
    }
    save_configs(model, processor, Path(output_dir), [name for name, is_external in external.items() if is_external])
    return paths

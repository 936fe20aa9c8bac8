# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
What a captioning model looks at, over the vision tower's patch grid:

- [`projector_attention_maps`]: where each Q-Former query / Perceiver latent attends;
- [`cross_attention_maps`]: with cross-attention fusion, where the caption's tokens attend in each gated block;
- [`saliency_map`]: the gradient saliency of a caption, for models without attention to show.

[`visualize`] draws them.
"""

import math

import PIL.Image
import torch
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

from .captioning import CAPTION_PROMPT, caption_messages


PROJECTORS_WITH_ATTENTION_MAPS = ("qformer", "perceiver")
# The fusions whose gated layers attend over each image's visual tokens, one map per layer: the cross-attention blocks
# and the adaption prompts.
CROSS_ATTENTION_MAP_FUSIONS = ("cross_attention", "adapter")


def projector_attention_maps(model: PreTrainedModel, processor: ProcessorMixin, image: PIL.Image.Image) -> torch.Tensor:
    """
    Where each Q-Former query / Perceiver latent looks: `(num_layers + 1, num_image_tokens, grid, grid)`, the
    cross-attention of every attending layer averaged over heads, then the mean over layers. Each map is a
    distribution over the patch grid (sums to 1); the Perceiver's attention to the latents themselves is left out
    and its patch part renormalised.
    """
    pixel_values = processor.image_processor([image], return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
    with torch.no_grad():
        attentions = model.get_image_features(pixel_values, output_attentions=True).cross_attentions
    if not attentions:
        raise ValueError(f"projector_type={model.config.projector_type!r} has no attention maps; use saliency_map.")
    num_patches = model.config.num_patches
    per_layer = torch.stack([attention[0].float().mean(0)[:, :num_patches] for attention in attentions])
    per_layer = per_layer / per_layer.sum(-1, keepdim=True)
    maps = torch.cat([per_layer, per_layer.mean(0, keepdim=True)])
    grid = math.isqrt(num_patches)
    return maps.reshape(maps.shape[0], maps.shape[1], grid, grid).cpu()


def attending_layers(config: PretrainedConfig) -> list[int]:
    """The 1-based projector layers whose cross-attention [`projector_attention_maps`] returns, in order."""
    if config.projector_type == "qformer":
        # transformers' Blip2QFormerLayer cross-attends where layer_idx % cross_attention_frequency == 0.
        return list(range(1, config.qformer_num_layers + 1, config.qformer_cross_attention_frequency))
    return list(range(1, config.perceiver_num_layers + 1))


def saliency_map(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    image: PIL.Image.Image,
    caption: str,
    prompt: str = CAPTION_PROMPT,
) -> torch.Tensor:
    """
    Gradient saliency of `caption` (the answer to `prompt`) over the patch grid, `(grid, grid)` summing to 1: the norm
    of the gradient of the caption's log-likelihood with respect to each patch token of the vision tower (with a VQ
    tokenizer, to the embedding of each code of its grid).
    """
    text = processor.apply_chat_template(caption_messages(prompt, caption))
    inputs = processor(images=[image], text=[text], return_tensors="pt").to(model.device)
    with torch.no_grad():
        vision_features = model.get_vision_features(inputs.pop("pixel_values").to(model.dtype))
    labels = processor.build_labels(inputs["input_ids"])
    if not vision_features.is_floating_point():  # a VQ tokenizer's codes: the gradient at their embeddings
        with torch.no_grad():
            embeddings = model.get_image_features(vision_features=vision_features).image_embeds
        embeddings.requires_grad_(True)
        leaf = model.multi_modal_projector.register_forward_hook(lambda module, args, output: type(output)(embeddings))
        try:
            loss = model(**inputs, vision_features=vision_features, labels=labels).loss
        finally:
            leaf.remove()
        (gradient,) = torch.autograd.grad(loss, embeddings)
    else:
        vision_features.requires_grad_(True)
        loss = model(**inputs, vision_features=vision_features, labels=labels).loss
        (gradient,) = torch.autograd.grad(loss, vision_features)
    saliency = gradient[0].float().norm(dim=-1)
    saliency = saliency / saliency.sum()
    grid = math.isqrt(saliency.numel())
    return saliency.reshape(grid, grid).cpu()


def cross_attention_maps(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    image: PIL.Image.Image,
    caption: str,
    prompt: str = CAPTION_PROMPT,
) -> torch.Tensor:
    """
    With `fusion="cross_attention"` (or `"adapter"`), where the tokens of `caption` (the answer to `prompt`) look in
    each gated cross-attention block (or adaption prompt): `(num_blocks + 1, grid, grid)`, each block's attention of
    the caption tokens over the image tokens (heads and tokens averaged), then the mean over blocks. Image tokens that
    are patches (linear, mlp) are the grid; learned queries or latents are carried onto it by the projector's own mean
    attention map ([`projector_attention_maps`]). Each map sums to 1.
    """
    if model.config.fusion not in CROSS_ATTENTION_MAP_FUSIONS:
        raise ValueError(
            f"fusion={model.config.fusion!r} has no cross-attention blocks or adaption prompts; use the projector's "
            "maps."
        )
    text = processor.apply_chat_template(caption_messages(prompt, caption))
    inputs = processor(images=[image], text=[text], return_tensors="pt").to(model.device)
    caption_tokens = processor.build_labels(inputs["input_ids"])[0] != -100
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).cross_attentions
    per_block = torch.stack([attention[0].float().mean(0)[caption_tokens].mean(0) for attention in attentions])
    if model.config.projector_type in PROJECTORS_WITH_ATTENTION_MAPS:
        token_maps = projector_attention_maps(model, processor, image)[-1]  # (num_visual_tokens, grid, grid)
        per_block = per_block @ token_maps.flatten(1).to(per_block)
    maps = torch.cat([per_block, per_block.mean(0, keepdim=True)])
    maps = maps / maps.sum(-1, keepdim=True)
    grid = math.isqrt(model.config.num_patches)
    return maps.reshape(-1, grid, grid).cpu()

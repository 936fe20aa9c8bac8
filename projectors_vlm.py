# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The VLM's projectors, the bridge from the vision tower's patch tokens `(num_images, num_patches, vision_dim)` to image
embeddings in the language model's width `(num_images, num_visual_tokens, text_dim)`, chosen by
`config.projector_type` ([`PROJECTOR_CLASSES`]): a Linear and LLaVA-1.5's MLP keep every patch token; BLIP-2's
Q-Former and Flamingo's Perceiver Resampler read them into a fixed number of learned queries or latents.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput


try:
    from .configuration_vlm import VLMConfig
except ImportError:  # imported as a local module rather than as remote code
    from configuration_vlm import VLMConfig


@dataclass
class VLMProjectorOutput(ModelOutput):
    r"""
    image_embeds (`torch.FloatTensor` of shape `(num_images, num_image_tokens, text_hidden_size)`):
        Image embeddings in the language model's input space.
    cross_attentions (`tuple[torch.FloatTensor]`, *optional*):
        Q-Former / Perceiver attention of the queries or latents, one tensor per layer that attends to the patches,
        of shape `(num_images, num_heads, num_image_tokens, num_keys)`; `num_keys` is `num_patches` for the Q-Former
        and `num_patches + num_latents` (patches first) for the Perceiver. Returned with `output_attentions=True`.
    """

    image_embeds: torch.FloatTensor | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


class VLMLinearProjector(nn.Module):
    """One Linear from the vision width to the language-model width; keeps every patch token."""

    def __init__(self, config: VLMConfig):
        super().__init__()
        self.linear = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)

    def forward(self, vision_features: torch.Tensor, output_attentions: bool = False) -> VLMProjectorOutput:
        return VLMProjectorOutput(image_embeds=self.linear(vision_features))


class VLMMLPProjector(nn.Module):
    """LLaVA-1.5 projector: Linear(vision -> text), GELU, Linear(text -> text); keeps every patch token."""

    def __init__(self, config: VLMConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size)

    def forward(self, vision_features: torch.Tensor, output_attentions: bool = False) -> VLMProjectorOutput:
        return VLMProjectorOutput(image_embeds=self.linear_2(self.act(self.linear_1(vision_features))))


class VLMQFormerProjector(nn.Module):
    """
    BLIP-2 Q-Former: `qformer_num_queries` learned queries of the Q-Former width (`qformer_hidden_size`, the vision
    width by default) pass through `qformer_num_layers` post-norm BERT layers (self-attention, cross-attention to the
    patch tokens every `qformer_cross_attention_frequency` layers, FFN), then a Linear maps them to the language-model
    width.

    The layers are transformers' `Blip2QFormerModel`, whose parameter names follow BERT's: BLIP-2's stage 1
    (`qformer_pretraining`) initialises them from BERT and trains them on image-text pairs before this projector
    loads them.
    """

    def __init__(self, config: VLMConfig):
        super().__init__()
        width = config.qformer_width
        qformer_config = Blip2QFormerConfig(
            hidden_size=width,
            num_hidden_layers=config.qformer_num_layers,
            num_attention_heads=config.qformer_num_heads,
            intermediate_size=config.qformer_ffn_width,
            hidden_act=config.projector_hidden_act,
            hidden_dropout_prob=config.projector_dropout,
            attention_probs_dropout_prob=config.projector_dropout,
            cross_attention_frequency=config.qformer_cross_attention_frequency,
            encoder_hidden_size=config.vision_config.hidden_size,
            # Eager attention returns the cross-attention maps; with 32 queries SDPA would save next to nothing.
            attn_implementation="eager",
        )
        self.query_tokens = nn.Parameter(torch.zeros(1, config.qformer_num_queries, width))
        self.qformer = Blip2QFormerModel(qformer_config)
        self.linear = nn.Linear(width, config.text_config.hidden_size)

    def forward(self, vision_features: torch.Tensor, output_attentions: bool = False) -> VLMProjectorOutput:
        query_embeds = self.query_tokens.expand(vision_features.shape[0], -1, -1)
        outputs = self.qformer(
            query_embeds=query_embeds,
            encoder_hidden_states=vision_features,
            output_attentions=output_attentions,
            return_dict=True,
        )
        image_embeds = self.linear(outputs.last_hidden_state.to(self.linear.weight.dtype))
        return VLMProjectorOutput(image_embeds=image_embeds, cross_attentions=outputs.cross_attentions)


class VLMPerceiverAttention(nn.Module):
    """Multi-head attention of the latents (queries) over `[patch tokens; latents]` (keys and values)."""

    def __init__(self, config: VLMConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.num_heads = config.perceiver_num_heads
        self.head_dim = dim // self.num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(
        self, latents: torch.Tensor, keys_values: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`latents`: `(batch, num_latents, dim)`; `keys_values`: `(batch, num_keys, dim)`."""
        batch_size, num_latents, dim = latents.shape
        query = self.q_proj(latents).view(batch_size, num_latents, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(keys_values).view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(keys_values).view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        if output_attentions:
            attn_weights = (query @ key.transpose(-1, -2) * self.head_dim**-0.5).softmax(dim=-1)
            attn_output = attn_weights @ value
        else:
            attn_weights = None
            attn_output = F.scaled_dot_product_attention(query, key, value)
        attn_output = attn_output.transpose(1, 2).reshape(batch_size, num_latents, dim)
        return self.o_proj(attn_output), attn_weights


class VLMPerceiverLayer(nn.Module):
    """Flamingo's resampler layer: pre-norm attention of the latents over `[patches; latents]`, pre-norm FFN."""

    def __init__(self, config: VLMConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.vision_norm = nn.LayerNorm(dim)
        self.latent_norm = nn.LayerNorm(dim)
        self.attention = VLMPerceiverAttention(config)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim * config.projector_ffn_multiplier),
            ACT2FN[config.projector_hidden_act],
            nn.Linear(dim * config.projector_ffn_multiplier, dim),
        )

    def forward(
        self, latents: torch.Tensor, vision_features: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        normed_latents = self.latent_norm(latents)
        keys_values = torch.cat([self.vision_norm(vision_features), normed_latents], dim=1)
        attn_output, attn_weights = self.attention(normed_latents, keys_values, output_attentions)
        latents = latents + attn_output
        latents = latents + self.ffn(self.ffn_norm(latents))
        return latents, attn_weights


class VLMPerceiverResampler(nn.Module):
    """
    Flamingo Perceiver Resampler: `perceiver_num_latents` learned latents of the vision width, `perceiver_num_layers`
    [`VLMPerceiverLayer`]s, a final LayerNorm and a Linear to the language-model width.
    """

    def __init__(self, config: VLMConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.latents = nn.Parameter(torch.zeros(1, config.perceiver_num_latents, dim))
        self.layers = nn.ModuleList(VLMPerceiverLayer(config) for _ in range(config.perceiver_num_layers))
        self.final_norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, config.text_config.hidden_size)

    def forward(self, vision_features: torch.Tensor, output_attentions: bool = False) -> VLMProjectorOutput:
        latents = self.latents.expand(vision_features.shape[0], -1, -1)
        cross_attentions = ()
        for layer in self.layers:
            latents, attn_weights = layer(latents, vision_features, output_attentions)
            cross_attentions += (attn_weights,)
        return VLMProjectorOutput(
            image_embeds=self.linear(self.final_norm(latents)),
            cross_attentions=cross_attentions if output_attentions else None,
        )


PROJECTOR_CLASSES = {
    "linear": VLMLinearProjector,
    "mlp": VLMMLPProjector,
    "qformer": VLMQFormerProjector,
    "perceiver": VLMPerceiverResampler,
}

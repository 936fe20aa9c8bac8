# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Cross-attention fusion (Flamingo): gated cross-attention blocks that run before chosen decoder layers of a frozen
language model, through forward pre-hooks, so that the text after an image marker attends to that image's projected
tokens; and what they read in one forward pass ([`VLMCrossAttentionContext`]) and keep for the decoding steps
([`VLMImageCache`]).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache


try:
    from .configuration_vlm import VLMConfig
    from .tiling_vlm import pad_tiles
except ImportError:  # imported as a local module rather than as remote code
    from configuration_vlm import VLMConfig
    from tiling_vlm import pad_tiles


@dataclass
class VLMImageCache:
    r"""
    What cross-attention fusion keeps of a batch's images for the decoding steps, attached to the language model's
    cache at the prefill step so that the keys and values are computed once per sequence.

    keys_values (`dict[int, tuple[torch.FloatTensor, torch.FloatTensor]]`):
        Per decoder layer with a block before it, the block's `(key, value)`, each of shape
        `(batch_size, num_heads, num_slots * num_visual_tokens, head_dim)`: the visual tokens of each row's images in
        the order of their markers, padded to the row with the most images (`num_slots`).
    key_slots (`torch.LongTensor` of shape `(num_slots * num_visual_tokens,)`):
        The image slot of each key.
    last_slots (`torch.LongTensor` of shape `(batch_size,)`):
        Each row's last image slot, the one every new token attends to (`-1`: the row has no image).
    key_valid (`torch.BoolTensor` of shape `(batch_size, num_slots * num_visual_tokens)`, *optional*):
        With tiled images, which keys hold a tile (an image's tokens are its tiles', padded to the batch's most).
    """

    keys_values: dict[int, tuple[torch.FloatTensor, torch.FloatTensor]]
    key_slots: torch.LongTensor
    last_slots: torch.LongTensor
    key_valid: torch.BoolTensor | None = None

    def select_rows(self, rows: torch.LongTensor) -> "VLMImageCache":
        """The images of batch rows `rows` (in order, repeats allowed), as the KV cache's `batch_select_indices`."""
        return VLMImageCache(
            keys_values={layer: (key[rows], value[rows]) for layer, (key, value) in self.keys_values.items()},
            key_slots=self.key_slots,
            last_slots=self.last_slots[rows],
            key_valid=self.key_valid[rows] if self.key_valid is not None else None,
        )


@dataclass
class VLMCrossAttentionContext:
    r"""
    What the gated cross-attention blocks read during one forward pass of the language model.

    images ([`VLMImageCache`]):
        The batch's images; the blocks fill `images.keys_values` when `visual_states` is given.
    visual_states (`torch.FloatTensor` of shape `(batch_size, num_slots * num_visual_tokens, text_hidden_size)`):
        Projected image tokens per row, from which the blocks compute their keys and values; `None` at a decoding
        step, whose keys and values come from `images.keys_values`.
    attention_mask (`torch.BoolTensor` of shape `(batch_size, 1, sequence_length, num_slots * num_visual_tokens)`):
        `True` where a text token may attend to a key: the tokens of the most recent image at or before it.
    has_image (`torch.BoolTensor` of shape `(batch_size, sequence_length, 1)`):
        Whether an image precedes the token; the blocks leave the other tokens exactly as they are.
    attentions (`dict[int, torch.FloatTensor]`, *optional*):
        Filled with each block's attention weights `(batch_size, num_heads, sequence_length, num_keys)` when asked.
    """

    images: VLMImageCache
    visual_states: torch.FloatTensor | None
    attention_mask: torch.BoolTensor
    has_image: torch.BoolTensor
    attentions: dict[int, torch.FloatTensor] | None = None


class VLMCrossAttention(nn.Module):
    """Multi-head attention of the text hidden states (queries) over projected image tokens (keys and values)."""

    def __init__(self, config: VLMConfig):
        super().__init__()
        dim = config.text_config.hidden_size
        self.num_heads = config.text_config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def project_keys_values(self, visual_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`visual_states` `(batch, num_keys, dim)` -> key and value `(batch, num_heads, num_keys, head_dim)`."""
        return self._split_heads(self.k_proj(visual_states)), self._split_heads(self.v_proj(visual_states))

    def forward(
        self,
        hidden_states: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.BoolTensor,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`hidden_states` `(batch, seq, dim)`; `attention_mask` `(batch, 1, seq, num_keys)`, `True` = attend."""
        query = self._split_heads(self.q_proj(hidden_states))
        if output_attentions:
            scores = query @ key.transpose(-1, -2) * self.head_dim**-0.5
            attn_weights = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min).softmax(dim=-1)
            attn_output = attn_weights @ value
        else:
            attn_weights = None
            attn_output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        attn_output = attn_output.transpose(1, 2).reshape(hidden_states.shape)
        return self.o_proj(attn_output), attn_weights


class VLMGatedCrossAttentionBlock(nn.Module):
    """
    Flamingo's GATED XATTN-DENSE block, inserted before a frozen decoder layer: pre-norm cross-attention to the image
    tokens, then a pre-norm FFN, each added to the residual stream scaled by `tanh(gate)`. The gates start at 0, so
    an untrained block leaves the language model exactly as it was. Tokens with no image before them are left
    untouched (as Llama 3.2 Vision masks them).
    """

    def __init__(self, config: VLMConfig):
        super().__init__()
        dim = config.text_config.hidden_size
        self.attention_norm = nn.LayerNorm(dim)
        self.cross_attn = VLMCrossAttention(config)
        self.attention_gate = nn.Parameter(torch.zeros(1))
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim * config.projector_ffn_multiplier),
            ACT2FN[config.projector_hidden_act],
            nn.Linear(dim * config.projector_ffn_multiplier, dim),
        )
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.BoolTensor,
        has_image: torch.BoolTensor,
        visual_states: torch.Tensor | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """
        `hidden_states` `(batch, seq, dim)` of the language model; the keys and values from `visual_states`
        `(batch, num_keys, dim)`, or precomputed in `key_value`. Returns the new hidden states, the `(key, value)` used
        and, with `output_attentions`, the attention weights `(batch, num_heads, seq, num_keys)`.
        """
        dtype = self.attention_gate.dtype
        hidden = hidden_states.to(dtype)
        if visual_states is not None:
            key_value = self.cross_attn.project_keys_values(visual_states.to(dtype))
        normed = self.attention_norm(hidden)
        attn_output, attn_weights = self.cross_attn(normed, *key_value, attention_mask, output_attentions)
        hidden = hidden + self.attention_gate.tanh() * attn_output
        hidden = hidden + self.ffn_gate.tanh() * self.ffn(self.ffn_norm(hidden))
        return torch.where(has_image, hidden.to(hidden_states.dtype), hidden_states), key_value, attn_weights


def build_cross_attention_blocks(config: VLMConfig) -> nn.ModuleDict:
    """A [`VLMGatedCrossAttentionBlock`] per decoder layer of `config.cross_attention_layer_indices`, keyed by layer."""
    return nn.ModuleDict(
        {str(layer): VLMGatedCrossAttentionBlock(config) for layer in config.cross_attention_layer_indices}
    )


# Where causal language models keep their decoder layers, relative to their base model.
DECODER_LAYER_PATHS = ("layers", "h", "decoder.layers", "blocks")

# The attribute of the language model's cache that holds a batch's [`VLMImageCache`] with cross-attention fusion.
IMAGE_CACHE_ATTRIBUTE = "vlm_image_cache"

def find_decoder_layers(language_model: PreTrainedModel, fusion: str = "cross_attention") -> nn.ModuleList:
    """
    The decoder layers of a causal language model (`layers` in Llama, Qwen2, Mistral, Gemma; `h` in GPT-2;
    `decoder.layers` in OPT): the `nn.ModuleList` of `num_hidden_layers` modules under its base model. `fusion` (the
    one that needs them) is named in the `ValueError` raised when they cannot be found.
    """
    base_model, num_layers = language_model.base_model, language_model.config.num_hidden_layers
    for path in DECODER_LAYER_PATHS:
        module = base_model
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(
        f"fusion={fusion!r} works on the decoder layers, but the language model "
        f"{type(language_model).__name__} has no nn.ModuleList of its {num_layers} layers at any of "
        f"{', '.join(f'{type(base_model).__name__}.{path}' for path in DECODER_LAYER_PATHS)}; use fusion='early' "
        "with this model, or a language model with one of those layouts."
    )


def check_fusion_batch(batch_shape: tuple[int, ...], hidden_states: torch.Tensor, layer: int, reader: str) -> None:
    """
    Raises `RuntimeError` when decoder layer `layer` gets hidden states of another `(batch, seq)` than the `batch_shape`
    the fusion's `reader` (blocks, prompts, experts) was given its inputs for: the language model was called alone.
    """
    if tuple(hidden_states.shape[:2]) != tuple(batch_shape):
        raise RuntimeError(
            f"The {reader}' inputs are for a {tuple(batch_shape)} batch but decoder layer {layer} got hidden states of "
            f"shape {tuple(hidden_states.shape)}: call the VLM, not its language_model, to run images through it."
        )


def cross_attention_context(
    config: VLMConfig,
    input_ids: torch.LongTensor | None,
    input_shape: tuple[int, int],
    image_embeds: torch.FloatTensor | None,
    cache: Cache | None,
    output_attentions: bool = False,
    num_tiles: torch.LongTensor | None = None,
) -> VLMCrossAttentionContext | None:
    """
    What the cross-attention blocks (or the adaption prompts) read for an input of `input_shape` `(batch, seq)`: the
    `image_embeds` `(num_images, num_visual_tokens, dim)` of a first call (or of every tile, `(total_tiles,
    num_visual_tokens, dim)`, with `num_tiles` per image), or the images cached at the prefill step of `cache`. `None`
    when no image precedes any token.
    """
    is_decoding = cache is not None and cache.get_seq_length() > 0
    if is_decoding and image_embeds is not None:
        raise ValueError(
            f"With fusion={config.fusion!r}, images are read at the first call of a sequence (the prefill step); "
            "this call continues a cached sequence. Start a new sequence with all its images instead."
        )
    if is_decoding:
        images, visual_states = getattr(cache, IMAGE_CACHE_ATTRIBUTE, None), None
        if images is None:
            return None
        token_slots = images.last_slots[:, None].expand(input_shape)
    elif image_embeds is None or len(image_embeds) == 0:
        return None
    else:
        images, visual_states, token_slots = arrange_images(config, input_ids, image_embeds, num_tiles)
    has_image = token_slots >= 0
    attention_mask = token_slots[:, None, :, None] == images.key_slots
    if images.key_valid is not None:
        attention_mask = attention_mask & images.key_valid[:, None, None, :]
    # A token with no image attends everywhere (a fully masked row would give NaN); the block then skips it.
    attention_mask = attention_mask | ~has_image[:, None, :, None]
    return VLMCrossAttentionContext(
        images=images,
        visual_states=visual_states,
        attention_mask=attention_mask,
        has_image=has_image.unsqueeze(-1),
        attentions={} if output_attentions else None,
    )

def arrange_images(
    config: VLMConfig,
    input_ids: torch.LongTensor,
    image_embeds: torch.FloatTensor,
    num_tiles: torch.LongTensor | None = None,
) -> tuple[VLMImageCache, torch.FloatTensor, torch.LongTensor]:
    """
    The images of each row in slots, in the order of their markers: a [`VLMImageCache`] without keys and values
    yet, the visual states `(batch, num_slots * num_visual_tokens, dim)`, and each token's slot `(batch, seq)`
    (the count of markers up to and including it, minus one). With `num_tiles`, an image's visual tokens are all its
    tiles' ([`group_tiles`]).
    """
    markers = input_ids == config.image_token_id
    if config.fusion == "hybrid":  # an image's run of placeholders: its first one marks it
        markers = markers & ((markers.cumsum(dim=1) - 1) % config.num_image_tokens == 0)
    counts = markers.sum(dim=1)
    key_valid = None
    if num_tiles is not None:
        image_embeds, key_valid = group_tiles(image_embeds, num_tiles)
    num_images, tokens_per_image = image_embeds.shape[:2]
    if int(counts.sum()) != num_images:
        raise ValueError(
            f"The input has {int(counts.sum())} image marker tokens ({config.image_token!r}, id "
            f"{config.image_token_id}) but {num_images} image(s) were given. With fusion={config.fusion!r} "
            f"each image is one {config.image_token!r} in the text (VLMProcessor writes it so); pass exactly "
            "one image per marker, in order."
        )
    slots = torch.arange(int(counts.max()), device=input_ids.device)
    first_image = counts.cumsum(0) - counts
    image_index = (first_image[:, None] + slots).clamp(max=num_images - 1)  # padded slots repeat a real image
    visual_states = image_embeds[image_index].flatten(1, 2)
    images = VLMImageCache(
        keys_values={},
        key_slots=slots.repeat_interleave(tokens_per_image),
        last_slots=counts - 1,
        key_valid=key_valid[image_index].flatten(1, 2) if key_valid is not None else None,
    )
    return images, visual_states, markers.cumsum(dim=1) - 1


def group_tiles(
    tile_embeds: torch.FloatTensor, num_tiles: torch.LongTensor
) -> tuple[torch.FloatTensor, torch.BoolTensor]:
    """
    The projected tiles `(total_tiles, num_visual_tokens, dim)`, image after image, as each image's tokens `(num_images,
    max_count * num_visual_tokens, dim)` (its tiles in order, zero-padded to the image with the most), and which of
    them hold a tile `(num_images, max_count * num_visual_tokens)`.
    """
    grouped, present = pad_tiles(tile_embeds, num_tiles)
    return grouped.flatten(1, 2), present.repeat_interleave(tile_embeds.shape[1], dim=1)


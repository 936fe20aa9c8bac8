# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
LLaMA-Adapter V2's multimodal path (`fusion="adapter"`, deep fusion through custom layers): in the top
`adapter_num_layers` decoder layers, a learned adaption prompt, to which an image's projected visual tokens are added,
becomes extra keys and values of the layer's self-attention through the layer's own frozen key and value projections.
The text after the image attends to them with its rotated queries in a softmax of their own, scaled per head by a
zero-initialised gate (`tanh`), and the result joins the attention's output through its output projection: with the
gates at 0 the model is the language model exactly. Each image is one marker token in the sequence, as with
cross-attention fusion, whose per-sequence image context ([`VLMCrossAttentionContext`]) and cache of keys and values
([`VLMImageCache`]) it shares. Forward hooks on the attention modules add the prompts' part, so the language model's
code, weights and state-dict keys are untouched. (peft's `AdaptionPrompt` has the text path only, for a few model
types; this reads the same frozen projections for any layer with Llama's attention layout.)
"""

import functools

import torch
from torch import nn
from transformers import PreTrainedModel


try:
    from .configuration_vlm import VLMConfig
    from .cross_attention_vlm import VLMCrossAttentionContext, check_fusion_batch, find_decoder_layers
except ImportError:  # imported as a local module rather than as remote code
    from configuration_vlm import VLMConfig
    from cross_attention_vlm import VLMCrossAttentionContext, check_fusion_batch, find_decoder_layers


# The attention module of a decoder layer (Llama's, Qwen2's, Mistral's layout) and the projections the prompts use.
ATTENTION_PATH = "self_attn"
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
# What an attention does to its queries and keys beyond Llama's (Qwen3's and OLMo2's norms, Gemma 2's score capping),
# which the prompts' path would leave out.
UNSUPPORTED_ATTENTION_PARTS = ("q_norm", "k_norm")
UNSUPPORTED_TEXT_SETTINGS = ("attn_logit_softcapping",)


def adapted_attentions(language_model: PreTrainedModel, layers: list[int]) -> dict[int, nn.Module]:
    """
    The attention module of each decoder layer in `layers`. Raises `ValueError` when the language model's decoder
    layers, their attention or its projections cannot be found, or when its attention does more to the queries and
    keys than Llama's (the prompts' path would compute another attention than the layer's).
    """
    decoder_layers = find_decoder_layers(language_model, fusion="adapter")
    settings = [name for name in UNSUPPORTED_TEXT_SETTINGS if getattr(language_model.config, name, None) is not None]
    attentions = {}
    for layer in layers:
        attention = getattr(decoder_layers[layer], ATTENTION_PATH, None)
        missing = [name for name in ATTENTION_PROJECTIONS if not isinstance(getattr(attention, name, None), nn.Module)]
        if missing:
            path = ATTENTION_PATH if attention is None else f"{ATTENTION_PATH}.{missing[0]}"
            raise ValueError(
                f"fusion='adapter' runs the adaption prompts through each adapted decoder layer's "
                f"{ATTENTION_PATH}.{{{','.join(ATTENTION_PROJECTIONS)}}}, but layer {layer} of "
                f"{type(language_model).__name__} has no `{path}`; use another fusion with this model."
            )
        extra = [f"{ATTENTION_PATH}.{name}" for name in UNSUPPORTED_ATTENTION_PARTS if hasattr(attention, name)]
        if extra or settings:
            raise ValueError(
                f"fusion='adapter' computes the prompts' attention as Llama's, but layer {layer} of "
                f"{type(language_model).__name__} also applies {', '.join(extra + settings)}; use another fusion "
                "with this model."
            )
        attentions[layer] = attention
    return attentions


def rotate_queries(query: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """RoPE on `query` `(batch, heads, seq, head_dim)` with the layer's `(cos, sin)`, each `(batch, seq, head_dim)`."""
    cos, sin = (part.unsqueeze(1).to(query.dtype) for part in position_embeddings)
    half = query.shape[-1] // 2
    rotated_half = torch.cat((-query[..., half:], query[..., :half]), dim=-1)
    return query * cos + rotated_half * sin


class VLMAdaptionPrompt(nn.Module):
    r"""
    One decoder layer's adaption prompt `(num_visual_tokens, text_hidden_size)`, which an image's visual tokens are
    added to, and its gate `(num_attention_heads,)`, zero at initialisation.
    """

    def __init__(self, config: VLMConfig):
        super().__init__()
        text_config = config.text_config
        self.num_heads = text_config.num_attention_heads
        self.head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // self.num_heads
        self.prompt = nn.Parameter(torch.empty(config.num_visual_tokens, text_config.hidden_size))
        self.gate = nn.Parameter(torch.zeros(self.num_heads))

    def split_heads(self, states: torch.Tensor) -> torch.Tensor:
        """`(batch, length, heads * head_dim)` -> `(batch, heads, length, head_dim)`."""
        return states.view(*states.shape[:2], -1, self.head_dim).transpose(1, 2)

    def repeat_heads(self, states: torch.Tensor) -> torch.Tensor:
        """Key/value heads `(batch, num_key_value_heads, length, head_dim)` repeated to each query head's."""
        return states.repeat_interleave(self.num_heads // states.shape[1], dim=1)

    def keys_values(
        self, attention: nn.Module, visual_states: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Key and value `(batch, num_key_value_heads, num_keys, head_dim)` of the prompt plus `visual_states` `(batch,
        num_keys, dim)` (each image's tokens, or its tiles' one after the other) through `attention`'s frozen
        projections; kept per sequence before the heads are repeated.
        """
        prompts = self.prompt.repeat(visual_states.shape[1] // len(self.prompt), 1)
        states = (visual_states + prompts).to(dtype)
        return self.split_heads(attention.k_proj(states)), self.split_heads(attention.v_proj(states))

    def forward(
        self,
        attention: nn.Module,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.BoolTensor,
        visual_states: torch.Tensor | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """
        The gated attention of `hidden_states` `(batch, seq, dim)`, through `attention`'s query projection and the
        layer's RoPE `position_embeddings`, over the prompt's keys and values (from `visual_states`, or precomputed in
        `key_value`), with `attention_mask` `(batch, 1, seq, num_keys)` (`True` = attend) in a float32 softmax of its
        own. Returns the output `(batch, seq, num_heads * head_dim)` before the output projection, the `(key, value)`
        used and the softmax weights `(batch, num_heads, seq, num_keys)`.
        """
        if visual_states is not None:
            key_value = self.keys_values(attention, visual_states, hidden_states.dtype)
        key, value = (self.repeat_heads(states) for states in key_value)
        query = self.split_heads(attention.q_proj(hidden_states))
        if position_embeddings[0].shape[-1] != self.head_dim:
            raise ValueError(
                f"fusion='adapter' rotates whole query heads ({self.head_dim} wide), but the language model's rotary "
                f"embeddings are {position_embeddings[0].shape[-1]} wide (partial rotary); use another fusion."
            )
        query = rotate_queries(query, position_embeddings)
        scaling = getattr(attention, "scaling", self.head_dim**-0.5)  # the layer's own, as its softmax uses
        scores = (query @ key.transpose(-1, -2)).float() * scaling
        weights = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min).softmax(dim=-1)
        gated = self.gate.tanh()[:, None, None].float() * weights
        output = gated.to(value.dtype) @ value
        return output.transpose(1, 2).flatten(2), key_value, weights


class VLMAdaptionPrompts(nn.Module):
    r"""
    The adaption prompts of a language model's decoder layers `config.adapter_layer_indices` (`layers[str(layer)]`),
    and the forward hooks on those layers' attention modules that add the prompts' gated attention to their output,
    at the tokens with an image before them.

    context ([`VLMCrossAttentionContext`], *optional*):
        Set by the VLM around its language model's forward pass: the images of the batch and which tokens see which.
        `None` (text only) leaves every attention output as the language model computes it.
    """

    def __init__(self, config: VLMConfig, language_model: PreTrainedModel):
        super().__init__()
        attentions = adapted_attentions(language_model, config.adapter_layer_indices)
        self.layers = nn.ModuleDict({str(layer): VLMAdaptionPrompt(config) for layer in attentions})
        self.context: VLMCrossAttentionContext | None = None
        self._hooks = [
            attention.register_forward_hook(functools.partial(self._add_prompts, layer), with_kwargs=True)
            for layer, attention in attentions.items()
        ]

    def detach_hooks(self) -> None:
        """Removes the hooks from the language model (before prompts are built for another one)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _add_prompts(self, layer: int, attention: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple | None:
        """Forward hook of decoder layer `layer`'s attention: its output, plus the prompts' part after an image."""
        context = self.context
        if context is None:
            return None
        hidden_states = args[0] if args else kwargs["hidden_states"]
        check_fusion_batch(context.has_image.shape[:2], hidden_states, layer, "adaption prompts")
        position_embeddings = args[1] if len(args) > 1 else kwargs.get("position_embeddings")
        if position_embeddings is None:
            raise ValueError(
                f"fusion='adapter' rotates the queries as the language model does, but decoder layer {layer}'s "
                f"{type(attention).__name__} got no `position_embeddings` (cos, sin): the adapter needs a language "
                "model with rotary position embeddings (Llama, Qwen2, Mistral); use another fusion with this one."
            )
        prompt = self.layers[str(layer)]  # looked up per call: PEFT may have wrapped it
        prompt_output, key_value, weights = prompt(
            attention,
            hidden_states,
            position_embeddings,
            context.attention_mask,
            visual_states=context.visual_states,  # a first call: the keys and values are made here and kept
            key_value=context.images.keys_values.get(layer),
        )
        context.images.keys_values[layer] = key_value
        if context.attentions is not None:
            context.attentions[layer] = weights
        added = attention.o_proj(prompt_output)
        if getattr(attention.o_proj, "bias", None) is not None:  # the bias is in the attention's output already
            added = added - attention.o_proj.bias
        attn_output = torch.where(context.has_image, output[0] + added, output[0])
        return (attn_output, *output[1:])

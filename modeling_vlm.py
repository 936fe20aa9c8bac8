# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""PyTorch VLM: a vision tower, a projector chosen by `config.projector_type` and a causal language model.

An image goes pixels -> `vision_tower` patch tokens `(num_images, num_patches, vision_dim)` -> `multi_modal_projector`
image embeddings `(num_images, num_visual_tokens, text_dim)` -> written over the image placeholder embeddings of the
prompt (`fusion="early"`), or read by gated cross-attention blocks before some decoder layers (`"cross_attention"`),
or both (`"hybrid"`: the whole image in the prompt, its tiles through the blocks), or written over the placeholders
and read by visual experts in the decoder layers (`"visual_expert"`), or added to adaption prompts that the
self-attention of the top decoder layers reads (`"adapter"`) -> `language_model` -> logits of the next tokens. With `config.max_tiles > 1` each image is first cut into tiles and a thumbnail (`tiling_vlm`).
"""

import functools
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput


try:
    from transformers import initialization as init
except ImportError:  # transformers < 5
    from torch.nn import init

try:
    from .adapter_vlm import VLMAdaptionPrompt, VLMAdaptionPrompts
    from .configuration_vlm import CODEBOOK, KEY_VALUE_FUSIONS, SEQUENCE_FUSIONS, VLMConfig
    from .cross_attention_vlm import (
        IMAGE_CACHE_ATTRIBUTE,
        VLMCrossAttentionContext,
        VLMGatedCrossAttentionBlock,
        build_cross_attention_blocks,
        check_fusion_batch,
        cross_attention_context,
        find_decoder_layers,
    )
    from .generation_vlm import CACHE_NAME, VLMGenerationMixin, resolve_cache
    from .loading_vlm import (
        TOWERS_WITH_VISION_MODEL_LEVEL_IN_TRANSFORMERS_4,
        build_vision_tower,
        check_weights_fill_model,
        load_image_processor,
        load_vision_tower,
        register_auto_classes,
    )
    from .loss_vlm import causal_lm_loss
    from .processing_vlm import IS_TRANSFORMERS_4, VLMProcessor, make_chat_template
    from .projectors_vlm import PROJECTOR_CLASSES, VLMPerceiverResampler, VLMProjectorOutput, VLMQFormerProjector
    from .tiling_vlm import flatten_tiles, split_thumbnails
    from .tokenized_vlm import VLMCodeEmbedding, vq_codes
    from .visual_expert_vlm import VLMVisualExperts
except ImportError:  # imported as a local module rather than as remote code
    from adapter_vlm import VLMAdaptionPrompt, VLMAdaptionPrompts
    from configuration_vlm import CODEBOOK, KEY_VALUE_FUSIONS, SEQUENCE_FUSIONS, VLMConfig
    from cross_attention_vlm import (
        IMAGE_CACHE_ATTRIBUTE,
        VLMCrossAttentionContext,
        VLMGatedCrossAttentionBlock,
        build_cross_attention_blocks,
        check_fusion_batch,
        cross_attention_context,
        find_decoder_layers,
    )
    from generation_vlm import CACHE_NAME, VLMGenerationMixin, resolve_cache
    from loading_vlm import (
        TOWERS_WITH_VISION_MODEL_LEVEL_IN_TRANSFORMERS_4,
        build_vision_tower,
        check_weights_fill_model,
        load_image_processor,
        load_vision_tower,
        register_auto_classes,
    )
    from loss_vlm import causal_lm_loss
    from processing_vlm import IS_TRANSFORMERS_4, VLMProcessor, make_chat_template
    from projectors_vlm import PROJECTOR_CLASSES, VLMPerceiverResampler, VLMProjectorOutput, VLMQFormerProjector
    from tiling_vlm import flatten_tiles, split_thumbnails
    from tokenized_vlm import (
        VLMCodeEmbedding,
        vq_codes,
    )
    from visual_expert_vlm import VLMVisualExperts


# What `projector_type` builds: the four projectors, and tokenized fusion's code embeddings.
BRIDGE_CLASSES = {**PROJECTOR_CLASSES, CODEBOOK: VLMCodeEmbedding}


@dataclass
class VLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is provided):
        Next-token cross-entropy averaged over the labelled positions (labels != -100).
    logits (`torch.FloatTensor` of shape `(batch_size, num_kept_positions, vocab_size)`, *optional*):
        Next-token scores at the positions kept by `logits_to_keep` (all positions by default; none when `labels`
        is given and `logits_to_keep` is not, because the loss never needs the full logits).
    cache (`Cache`, *optional*):
        Key/value cache of the language model. The field has the installed transformers' name ([`CACHE_NAME`]):
        `cache` from 5.25 on, `past_key_values` before.
    hidden_states (`tuple[torch.FloatTensor]`, *optional*):
        Language model hidden states, returned with `output_hidden_states=True`.
    attentions (`tuple[torch.FloatTensor]`, *optional*):
        Language model attention weights, returned with `output_attentions=True`.
    image_hidden_states (`torch.FloatTensor` of shape `(num_images, num_image_tokens, text_hidden_size)`, *optional*):
        Projected image embeddings that were written into the prompt.
    projector_attentions (`tuple[torch.FloatTensor]`, *optional*):
        The projector's `cross_attentions` (see [`VLMProjectorOutput`]), returned with `output_attentions=True`.
    cross_attentions (`tuple[torch.FloatTensor]`, *optional*):
        With `fusion="cross_attention"` (or `"adapter"`) and `output_attentions=True`, the attention of the text tokens
        over the image tokens in each gated cross-attention block (or adaption prompt; before the gate), in layer order,
        of shape
        `(batch_size, num_heads, sequence_length, num_slots * num_visual_tokens)`: a row's images in slots, in the
        order of their markers. Tokens with no image before them attend uniformly and are not used.
    """

    image_hidden_states: torch.FloatTensor | None = None
    projector_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


def vision_tower_features(
    vision_tower: nn.Module, pixel_values: torch.FloatTensor, layer: int, drop_class_token: bool = False
) -> torch.FloatTensor:
    """
    Tokens `(num_images, num_patches, vision_hidden_size)` of `vision_tower`'s layer `layer` (see
    `VLMConfig.vision_feature_layer`) for `pixel_values` `(num_images, num_channels, image_size, image_size)`, without
    the first (class) token with `drop_class_token`.
    """
    pixel_values = pixel_values.to(vision_tower.dtype)
    if layer == -1:
        # `last_hidden_state` is after SigLIP's post-LayerNorm in every transformers version; `hidden_states[-1]`
        # is not (transformers 4.x applies the norm, 5.x does not).
        features = vision_tower(pixel_values=pixel_values).last_hidden_state
    else:
        features = vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[layer]
    return features[:, 1:] if drop_class_token else features


class VLMPreTrainedModel(PreTrainedModel):
    config_class = VLMConfig
    base_model_prefix = "vlm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VLMQFormerProjector):
            init.normal_(module.query_tokens, mean=0.0, std=std)
        elif isinstance(module, VLMPerceiverResampler):
            init.normal_(module.latents, mean=0.0, std=std)
        elif isinstance(module, VLMGatedCrossAttentionBlock):
            init.zeros_(module.attention_gate)
            init.zeros_(module.ffn_gate)
        elif isinstance(module, VLMCodeEmbedding):
            init.normal_(module.embed_codes.weight, mean=0.0, std=std)
        elif isinstance(module, VLMAdaptionPrompt):
            init.normal_(module.prompt, mean=0.0, std=std)
            init.zeros_(module.gate)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        if IS_TRANSFORMERS_4 and "key_mapping" not in kwargs:
            config = kwargs.get("config")
            if not isinstance(config, PretrainedConfig):
                config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
            if config.vision_config.model_type in TOWERS_WITH_VISION_MODEL_LEVEL_IN_TRANSFORMERS_4:
                # Checkpoints saved by transformers 5.x lack the level; without the mapping the tower would be re-initialised.
                kwargs["key_mapping"] = {r"^vision_tower\.(?!vision_model\.)": "vision_tower.vision_model."}
        with_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        check_weights_fill_model(info, pretrained_model_name_or_path)
        if isinstance(model, VLMForConditionalGeneration):
            model.suppress_image_token()  # also for a generation_config.json saved before it was suppressed
        return (model, info) if with_info else model


class VLMForConditionalGeneration(VLMPreTrainedModel, VLMGenerationMixin):
    """
    Vision tower + projector + causal language model. With `config.fusion="early"`, projected image embeddings replace
    the embeddings of the `config.image_token_id` placeholders (LLaVA-style), `config.num_image_tokens` placeholders
    per image. With `"cross_attention"`, each image is one marker token, and the text after it attends to the
    image's projected tokens through [`VLMGatedCrossAttentionBlock`]s (`cross_attention_blocks`, keyed by decoder
    layer) that forward pre-hooks run before the chosen decoder layers: the language model's code, weights and
    state-dict keys are untouched. With `"hybrid"` (NVLM-H), the whole image (its thumbnail, with tiles) fills its
    placeholders as with early fusion, and the text from the image on reads its high-resolution tiles through the
    blocks. With `"visual_expert"` (CogVLM), the images fill their placeholders as with early fusion, and in the
    decoder layers of `config.visual_expert_layer_indices` the image positions go through [`VLMVisualExperts`]
    (copies of the layer's attention projections and MLP) instead of the language model's own. With `"adapter"`
    (LLaMA-Adapter V2), each image is one marker token, and the text after it also attends, in the top decoder layers,
    to [`VLMAdaptionPrompts`] plus the image's projected tokens, through zero-initialised gates.
    """

    def __init__(self, config: VLMConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config)
        self.multi_modal_projector = BRIDGE_CLASSES[config.projector_type](config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.cross_attention_blocks = build_cross_attention_blocks(config)
        self._cross_attention_context: VLMCrossAttentionContext | None = None
        self._cross_attention_hooks: list = []
        self.attach_cross_attention_blocks()
        self.visual_experts = self.build_visual_experts()
        self.adaption_prompts = self.build_adaption_prompts()
        self.post_init()
        if self.visual_experts is not None:  # the experts start as the language model's own weights
            self.visual_experts.copy_from(self.language_model)
        self.suppress_image_token()

    def build_visual_experts(self) -> VLMVisualExperts | None:
        """
        The visual experts of `language_model`, copies of its current weights (`None` but with
        `fusion="visual_expert"`); the hooks of experts built for an earlier language model are removed first.
        Raises `ValueError` when its decoder layers or their projections cannot be found.
        """
        if getattr(self, "visual_experts", None) is not None:
            self.visual_experts.detach_hooks()
        layers = self.config.visual_expert_layer_indices
        return VLMVisualExperts(self.language_model, layers) if layers else None

    def build_adaption_prompts(self) -> VLMAdaptionPrompts | None:
        """
        The adaption prompts of `language_model`, newly made (`None` but with `fusion="adapter"`); the hooks of prompts
        built for an earlier language model are removed first. Raises `ValueError` when its decoder layers or their
        attention projections cannot be found.
        """
        if getattr(self, "adaption_prompts", None) is not None:
            self.adaption_prompts.detach_hooks()
        return VLMAdaptionPrompts(self.config, self.language_model) if self.config.adapter_layer_indices else None

    def attach_cross_attention_blocks(self) -> None:
        """
        Registers the forward pre-hooks that run `cross_attention_blocks` before their decoder layers of
        `language_model` (again, after the language model was replaced). Raises `ValueError` when its decoder layers
        cannot be found.
        """
        for handle in self._cross_attention_hooks:
            handle.remove()
        self._cross_attention_hooks = []
        if not self.config.cross_attention_layer_indices:
            return
        layers = find_decoder_layers(self.language_model, self.config.fusion)
        for layer in self.config.cross_attention_layer_indices:
            hook = functools.partial(self._run_cross_attention_block, layer)
            self._cross_attention_hooks.append(layers[layer].register_forward_pre_hook(hook, with_kwargs=True))

    def _run_cross_attention_block(self, layer: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        """Forward pre-hook of decoder layer `layer`: its hidden states through the block before it."""
        context = self._cross_attention_context
        if context is None:
            return None
        hidden_states = args[0] if args else kwargs["hidden_states"]
        check_fusion_batch(context.has_image.shape[:2], hidden_states, layer, "cross-attention blocks")
        block = self.cross_attention_blocks[str(layer)]  # looked up per call: PEFT may have wrapped it
        hidden_states, key_value, attn_weights = block(
            hidden_states,
            context.attention_mask,
            context.has_image,
            visual_states=context.visual_states,
            key_value=context.images.keys_values.get(layer),
            output_attentions=context.attentions is not None,
        )
        context.images.keys_values[layer] = key_value
        if context.attentions is not None:
            context.attentions[layer] = attn_weights
        if args:
            return (hidden_states, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden_states}

    def suppress_image_token(self) -> None:
        """
        Adds `config.image_token_id` to `generation_config.suppress_tokens`, which `save_pretrained` writes to
        generation_config.json. The placeholder only marks where image embeddings go: a generated one would leave the
        next step with a placeholder and no image. Call it again after replacing `generation_config`.
        """
        suppress_tokens = list(self.generation_config.suppress_tokens or [])
        if self.config.image_token_id not in suppress_tokens:
            self.generation_config.suppress_tokens = suppress_tokens + [self.config.image_token_id]

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_vision_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """
        Tokens of `config.vision_feature_layer` (with `config.vision_feature_select_strategy`): `(num_images,
        num_patches, vision_hidden_size)` from
        `pixel_values` of shape `(num_images, num_channels, image_size, image_size)`; with a VQ image tokenizer
        (tokenized fusion), its codes `(num_images, num_patches)`. These are what the training feature cache stores
        when the tower is frozen.
        """
        if self.config.is_vq_tokenizer:
            return vq_codes(self.vision_tower, pixel_values)
        return vision_tower_features(
            self.vision_tower, pixel_values, self.config.vision_feature_layer, self.config.drops_class_token
        )

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        output_attentions: bool = False,
    ) -> VLMProjectorOutput:
        """
        Projected image embeddings `(num_images, num_image_tokens, text_hidden_size)`, from `pixel_values` or from
        precomputed `vision_features` (the output of [`~VLMForConditionalGeneration.get_vision_features`]).
        """
        if vision_features is None:
            vision_features = self.get_vision_features(pixel_values)
        if vision_features.is_floating_point():  # a VQ tokenizer's codes are indices
            vision_features = vision_features.to(next(self.multi_modal_projector.parameters()).dtype)
        return self.multi_modal_projector(vision_features, output_attentions=output_attentions)

    def merge_image_embeds(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.FloatTensor, image_embeds: torch.FloatTensor
    ) -> torch.FloatTensor:
        """Writes `image_embeds` `(num_images, num_image_tokens, dim)` over the placeholder positions of `inputs_embeds`."""
        placeholder_mask = input_ids == self.config.image_token_id
        num_placeholders = int(placeholder_mask.sum())
        num_images, tokens_per_image = image_embeds.shape[:2]
        if num_placeholders != num_images * tokens_per_image:
            raise ValueError(
                f"The input has {num_placeholders} image placeholder tokens ({self.config.image_token!r}, id "
                f"{self.config.image_token_id}) but {num_images} image(s) x {tokens_per_image} tokens per image = "
                f"{num_images * tokens_per_image} image features. Build the inputs with VLMProcessor, which expands each "
                f"{self.config.image_token!r} in the text into {tokens_per_image} placeholders, and pass exactly one "
                "image per image token."
            )
        placeholder_mask = placeholder_mask.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(placeholder_mask, image_embeds.to(inputs_embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        num_tiles: torch.LongTensor | None = None,
        **kwargs,
    ) -> VLMCausalLMOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids, with `num_image_tokens` image placeholders per image (as built by [`VLMProcessor`]).
        pixel_values (`torch.FloatTensor` of shape `(num_images, num_channels, image_size, image_size)`, *optional*):
            The images, in the order of their placeholders in the batch; with `config.max_tiles > 1`, of shape
            `(num_images, max_count, num_channels, image_size, image_size)`: each image's tiles and thumbnail.
        cache (`Cache`, *optional*):
            Key/value cache of the language model; `past_key_values` is the same argument under its name before
            transformers 5.25 (either name works with every release).
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Target ids, `-100` where no loss is wanted; shifted inside the model, as for any causal LM.
        vision_features (`torch.FloatTensor` of shape `(num_images, num_patches, vision_hidden_size)`, *optional*):
            Precomputed vision-tower features, used instead of `pixel_values` (feature cache of a frozen tower).
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Keep logits of the last `logits_to_keep` positions (`0`: all), or of the given positions. Defaults to all
            positions without `labels` and to none with `labels`.
        num_items_in_batch (`int`, *optional*):
            Labelled tokens of the whole (accumulated) batch; the loss is then the sum over this batch divided by it.
        num_tiles (`torch.LongTensor` of shape `(num_images,)`, *optional*):
            With tiled `pixel_values`, how many of each image's entries are tiles (the thumbnail included); the rest
            is padding. [`VLMProcessor`] returns it.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        cache = resolve_cache(cache, past_key_values)
        num_cached_tokens = cache.get_seq_length() if cache is not None else 0
        self._check_sequence_length(
            num_new_tokens=(input_ids if input_ids is not None else inputs_embeds).shape[1],
            num_cached_tokens=num_cached_tokens,
        )
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        inputs_embeds, image_outputs, deep_embeds, deep_tiles = self._embed_images(
            input_ids, inputs_embeds, pixel_values, vision_features, num_tiles, bool(output_attentions)
        )

        context = None
        if self.config.fusion in KEY_VALUE_FUSIONS:
            context = cross_attention_context(
                self.config, input_ids, inputs_embeds.shape[:2], deep_embeds, cache, bool(output_attentions), deep_tiles
            )
        image_positions = None  # where the visual experts take over
        if self.visual_experts is not None and image_outputs is not None:
            image_positions = input_ids == self.config.image_token_id
        outputs = self._run_language_model(
            context,
            num_cached_tokens,
            image_positions,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state

        loss = None
        if labels is not None:
            chunk_size = self.config.loss_chunk_size
            loss = causal_lm_loss(hidden_states, labels, self.get_output_embeddings(), chunk_size, num_items_in_batch)
        if logits_to_keep is None:
            logits_to_keep = None if labels is not None else 0
        logits = None
        if logits_to_keep is not None:
            positions = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.get_output_embeddings()(hidden_states[:, positions])

        return VLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_outputs.image_embeds if image_outputs is not None else None,
            projector_attentions=image_outputs.cross_attentions if image_outputs is not None else None,
            cross_attentions=tuple(context.attentions[layer] for layer in sorted(context.attentions))
            if context is not None and context.attentions is not None
            else None,
        )

    def _embed_images(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        pixel_values: torch.FloatTensor | None,
        vision_features: torch.FloatTensor | None,
        num_tiles: torch.LongTensor | None,
        output_attentions: bool,
    ) -> tuple[torch.FloatTensor, VLMProjectorOutput | None, torch.FloatTensor | None, torch.LongTensor | None]:
        """
        The images of a forward pass through the projector, written over their placeholders in `inputs_embeds` `(batch,
        seq, dim)` where the fusion puts them in the sequence. Returns the embeddings, the projector's output, and what
        the cross-attention blocks read: the image embeddings `(num_images, num_image_tokens, dim)` (with hybrid fusion,
        the tiles only) and the tiles per image.
        """
        image_outputs, deep_embeds, deep_tiles = None, None, num_tiles
        if pixel_values is not None or vision_features is not None:
            if input_ids is None:
                raise ValueError("Images need `input_ids` to locate their placeholders; got `inputs_embeds` instead.")
            if pixel_values is not None:
                pixel_values = flatten_tiles(pixel_values, num_tiles, self.config.max_tiles)
            image_outputs = self.get_image_features(pixel_values, vision_features, output_attentions=output_attentions)
            deep_embeds = image_outputs.image_embeds
            if self.config.fusion in SEQUENCE_FUSIONS:
                inputs_embeds = self.merge_image_embeds(input_ids, inputs_embeds, image_outputs.image_embeds)
            elif self.config.fusion == "hybrid":  # the whole images into the sequence; their tiles read by the blocks
                whole_images, deep_embeds, deep_tiles = split_thumbnails(image_outputs.image_embeds, num_tiles)
                inputs_embeds = self.merge_image_embeds(input_ids, inputs_embeds, whole_images)
        elif input_ids is not None and (input_ids == self.config.image_token_id).any():
            raise ValueError(
                f"The input has image placeholder tokens ({self.config.image_token!r}) but no `pixel_values` or "
                "`vision_features`; pass the images the processor returned."
            )
        return inputs_embeds, image_outputs, deep_embeds, deep_tiles

    def _run_language_model(
        self,
        context: VLMCrossAttentionContext | None,
        num_cached_tokens: int,
        image_positions: torch.BoolTensor | None,
        **model_kwargs,
    ) -> ModelOutput:
        """
        The language model's base model on `model_kwargs`, its cross-attention blocks or adaption prompts (if any)
        reading `context` and its visual experts (if any) taking over at `image_positions` `(batch_size,
        sequence_length)`; the images of a first call (`num_cached_tokens == 0`) are attached to the returned cache for
        the decoding steps.
        """
        self._set_fusion_inputs(context, image_positions)
        try:
            outputs = self.language_model.base_model(**model_kwargs)
        finally:
            # Gradient checkpointing re-runs the layers in backward, so a training step keeps what they read until the
            # next one.
            if not (self.training and self._is_checkpointing_activations()):
                self._set_fusion_inputs(None, None)
        cache = getattr(outputs, CACHE_NAME)
        if self.config.fusion in KEY_VALUE_FUSIONS and cache is not None and num_cached_tokens == 0:
            setattr(cache, IMAGE_CACHE_ATTRIBUTE, context.images if context is not None else None)
        return outputs

    def _set_fusion_inputs(
        self, context: VLMCrossAttentionContext | None, image_positions: torch.BoolTensor | None
    ) -> None:
        """What the hooks in the language model read during its forward pass (`None`: the language model alone)."""
        self._cross_attention_context = context
        if self.visual_experts is not None:
            self.visual_experts.image_positions = image_positions
        if self.adaption_prompts is not None:
            self.adaption_prompts.context = context

    def _is_checkpointing_activations(self) -> bool:
        """Whether the language model recomputes its layers in backward (the property's name differs in 4.x)."""
        lm = self.language_model
        return lm.is_gradient_checkpointing if IS_TRANSFORMERS_4 else lm.is_activation_checkpointing

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Saves safetensors weights, the config with an `auto_map` for every Auto class, and the remote-code files."""
        register_auto_classes(self)
        super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def from_pretrained_backbones(
        cls,
        vision: str | os.PathLike,
        text: str | os.PathLike,
        projector_type: str | None = None,
        image_token: str = "<image>",
        dtype: torch.dtype | None = None,
        **config_kwargs,
    ) -> tuple["VLMForConditionalGeneration", VLMProcessor]:
        """
        A new model whose vision tower and language model are loaded from pretrained checkpoints (Hub ids or local
        directories) and whose projector (and, with `fusion="cross_attention"`, gated cross-attention blocks) is
        freshly initialised (and, with `fusion="visual_expert"`, visual experts copied from the language model; with
        `"adapter"`, adaption prompts), with
        the matching [`VLMProcessor`]. `config_kwargs` are further [`VLMConfig`] settings.

        The vision checkpoint may be a vision-only model or a dual encoder (e.g. `google/siglip-base-patch16-224`),
        whose vision half is used. `image_token` is added to the tokenizer and the embeddings are resized if needed.
        """
        vision_tower = load_vision_tower(vision, dtype)
        language_model = AutoModelForCausalLM.from_pretrained(text, dtype=dtype)

        tokenizer = AutoTokenizer.from_pretrained(text, padding_side="left")
        tokenizer.add_tokens([image_token], special_tokens=True)
        if len(tokenizer) > language_model.config.vocab_size:
            language_model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)

        config = VLMConfig(
            vision_config=vision_tower.config,
            text_config=language_model.config,
            projector_type=projector_type,
            image_token=image_token,
            image_token_id=tokenizer.convert_tokens_to_ids(image_token),
            **config_kwargs,
        )
        with torch.device("meta"):
            model = cls(config)
        model.vision_tower = vision_tower
        model.language_model = language_model
        model.multi_modal_projector = BRIDGE_CLASSES[config.projector_type](config)
        model.multi_modal_projector.apply(model._init_weights)
        model.multi_modal_projector.to(dtype or torch.float32)
        model.cross_attention_blocks = build_cross_attention_blocks(config)
        model.cross_attention_blocks.apply(model._init_weights)
        model.cross_attention_blocks.to(dtype or torch.float32)
        model.attach_cross_attention_blocks()
        model.visual_experts = model.build_visual_experts()
        model.adaption_prompts = model.build_adaption_prompts()
        if model.adaption_prompts is not None:
            model.adaption_prompts.apply(model._init_weights)
            model.adaption_prompts.to(dtype or torch.float32)
        model.generation_config = language_model.generation_config
        model.suppress_image_token()
        model.tie_weights()

        processor = VLMProcessor(
            image_processor=load_image_processor(vision),
            tokenizer=tokenizer,
            num_image_tokens=config.num_image_tokens,
            image_token=image_token,
            chat_template=make_chat_template(image_token),
            max_tiles=config.max_tiles,
            fusion=config.fusion,
        )
        return model, processor


__all__ = ["VLMPreTrainedModel", "VLMForConditionalGeneration"]

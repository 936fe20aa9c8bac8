# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""Configuration of BLIP-2's stage 1: a frozen vision tower and a Q-Former with a text branch."""

from typing import Any

from transformers import AutoConfig, Blip2QFormerConfig, PretrainedConfig

from configuration_vlm import DEFAULT_VISION_CONFIG, build_sub_config


OBJECTIVES = ("itc", "itm", "itg")


class QFormerPretrainingConfig(PretrainedConfig):
    r"""
    Configuration of [`QFormerForPretraining`]: BLIP-2's stage 1, where learned queries read a frozen vision tower's
    patch tokens through a Q-Former that shares its self-attention with a BERT text branch, trained on image-text pairs
    with three objectives.

    Args:
        vision_config (`dict` or `PretrainedConfig`, *optional*):
            Vision tower config (SigLIP-base-patch16-224 by default), as in [`VLMConfig`].
        qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            The Q-Former: BERT's shape (width, layers, heads, FFN width, vocabulary, positions), a cross-attention to
            the patch tokens every `cross_attention_frequency` layers reading `encoder_hidden_size` (the vision width),
            and `use_qformer_text_input=True` (a text FFN beside the queries' FFN in every layer).
        num_query_tokens (`int`, *optional*, defaults to 32):
            Learned queries: the tokens the VLM's `qformer` projector makes of an image.
        image_text_hidden_size (`int`, *optional*, defaults to 256):
            Width of the joint space of the image-text contrastive objective.
        vision_feature_layer (`int`, *optional*, defaults to -1):
            Vision layer whose patch tokens the Q-Former reads (see [`VLMConfig`]); stage 2 must read the same one.
        itc_weight, itm_weight, itg_weight (`float`, *optional*, defaults to 1.0):
            Weights of the image-text contrastive, matching and generation losses in `loss`; 0 switches one off.
        label_smoothing (`float`, *optional*, defaults to 0.1):
            Label smoothing of the contrastive and generation cross-entropies (BLIP-2's value).
        decoder_token_id (`int`, *optional*):
            Id of the `[DEC]` token that replaces `[CLS]` as the first text token of the generation objective.
    """

    model_type = "vlm_qformer_pretraining"
    sub_configs = {"vision_config": AutoConfig, "qformer_config": Blip2QFormerConfig}

    def __init__(
        self,
        vision_config: dict | PretrainedConfig | None = None,
        qformer_config: dict | Blip2QFormerConfig | None = None,
        num_query_tokens: int = 32,
        image_text_hidden_size: int = 256,
        vision_feature_layer: int = -1,
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        itg_weight: float = 1.0,
        label_smoothing: float = 0.1,
        decoder_token_id: int | None = None,
        **kwargs,
    ):
        self.vision_config = build_sub_config(vision_config, DEFAULT_VISION_CONFIG, "vision_config")
        if isinstance(qformer_config, dict) or qformer_config is None:
            qformer_config = Blip2QFormerConfig(**(qformer_config or {}))
        qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        qformer_config.use_qformer_text_input = True
        self.qformer_config = qformer_config
        self.num_query_tokens = num_query_tokens
        self.image_text_hidden_size = image_text_hidden_size
        self.vision_feature_layer = vision_feature_layer
        self.itc_weight = itc_weight
        self.itm_weight = itm_weight
        self.itg_weight = itg_weight
        self.label_smoothing = label_smoothing
        self.decoder_token_id = decoder_token_id
        super().__init__(**kwargs)
        self.validate_objectives()

    def validate_objectives(self) -> None:
        """Raises `ValueError` naming the weight when one is negative, or when every objective is switched off."""
        weights = self.objective_weights
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"{name}_weight={weight!r} is invalid; it must be a number >= 0 (0 switches it off).")
        if not any(weights.values()):
            raise ValueError("itc_weight, itm_weight and itg_weight are all 0: switch on at least one objective.")

    @property
    def objective_weights(self) -> dict[str, float]:
        """`{"itc": ..., "itm": ..., "itg": ...}`."""
        return {name: getattr(self, f"{name}_weight") for name in OBJECTIVES}

    @property
    def active_objectives(self) -> tuple[str, ...]:
        """The objectives switched on (weight above 0), in the order of [`OBJECTIVES`]."""
        return tuple(name for name, weight in self.objective_weights.items() if weight)

    @property
    def num_patches(self) -> int:
        """Patch tokens the vision tower returns per image."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["qformer_config"] = self.qformer_config.to_dict()
        return output

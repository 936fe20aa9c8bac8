# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Loading and saving the VLM's parts: a vision tower built from its config or loaded from a checkpoint (a vision-only
model, the vision half of a dual encoder, a Chameleon model's VQ image tokenizer) with its image processor; the check
that a saved model's weights fill the model its config builds; and the `auto_map` that lets the Auto classes load a
saved model as remote code.
"""

import os
from typing import Any

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PretrainedConfig, PreTrainedModel


try:
    from .configuration_vlm import VQ_TOKENIZER_CONFIGS, VLMConfig
    from .processing_vlm import IS_TRANSFORMERS_4
    from .tokenized_vlm import build_vq_tokenizer, load_vq_tokenizer, vq_tokenizer_config
except ImportError:  # imported as a local module rather than as remote code
    from configuration_vlm import VQ_TOKENIZER_CONFIGS, VLMConfig
    from processing_vlm import IS_TRANSFORMERS_4
    from tokenized_vlm import build_vq_tokenizer, load_vq_tokenizer, vq_tokenizer_config


# The config fields that decide each module's parameters: named when a saved model's weights leave one unfilled.
CONFIG_FIELDS_OF_MODULES = {
    "multi_modal_projector": "projector_type and its projector settings",
    "cross_attention_blocks": "fusion, cross_attention_every and cross_attention_layers",
    "visual_experts": "fusion and visual_expert_every",
    "adaption_prompts": "fusion and adapter_num_layers",
    "vision_tower": "vision_config",
    "language_model": "text_config",
}

# Vision towers that transformers 4.x nests under `vision_model.` and 5.x saves without that level.
TOWERS_WITH_VISION_MODEL_LEVEL_IN_TRANSFORMERS_4 = {"siglip_vision_model", "clip_vision_model"}


def check_weights_fill_model(loading_info: dict[str, Any], source: Any) -> None:
    """
    Raises `ValueError` when the weights of `source` left parameters of the model unfilled (transformers would
    initialise them at random and only warn): it names the modules and the config fields that made them, so that a
    `config.json` edited to another projector or fusion than its weights were trained with cannot load.
    """
    missing = sorted(loading_info.get("missing_keys") or ())
    if not missing:
        return
    modules = sorted({key.split(".")[0] for key in missing})
    fields = [CONFIG_FIELDS_OF_MODULES.get(module, "its config") for module in modules]
    unexpected = sorted(loading_info.get("unexpected_keys") or ())
    unused = f", and {len(unexpected)} saved ones unused (e.g. {unexpected[0]})" if unexpected else ""
    raise ValueError(
        f"The weights of {source} do not fill this model: {len(missing)} parameters of {', '.join(modules)} are "
        f"missing (e.g. {missing[0]}){unused}. They are made by the config's {'; '.join(fields)}: the config.json "
        "does not match the weights saved with it. Restore the config the model was saved with."
    )


def build_vision_tower(config: VLMConfig) -> PreTrainedModel:
    """A vision tower of `config.vision_config` with random weights: its `AutoModel`, or a VQ image tokenizer."""
    if config.is_vq_tokenizer:  # no AutoModel builds one (transformers 4.57 and 5.x alike)
        return build_vq_tokenizer(config.vision_config)
    return AutoModel.from_config(config.vision_config)


def load_vision_tower(vision: str | os.PathLike, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """
    The vision tower of a pretrained checkpoint (Hub id or directory), without its pooling head: a vision-only model,
    the vision half of a dual encoder such as `google/siglip-base-patch16-224`, or the VQ image tokenizer of a
    Chameleon model (e.g. `facebook/chameleon-7b`) for tokenized fusion.
    """
    vision_config = load_vision_tower_config(vision)
    if vision_config.model_type in VQ_TOKENIZER_CONFIGS:
        return load_vq_tokenizer(vision, vision_config, dtype)
    return AutoModel.from_pretrained(vision, config=vision_config, dtype=dtype)


def load_vision_tower_config(vision: str | os.PathLike) -> PretrainedConfig:
    """
    The config of [`load_vision_tower`]'s tower: the checkpoint's vision config, without a pooling head (or a
    Chameleon model's VQ tokenizer config).
    """
    vq_config = vq_tokenizer_config(vision)
    if vq_config is not None:
        return vq_config
    vision_config = AutoConfig.from_pretrained(vision)
    vision_config = getattr(vision_config, "vision_config", vision_config)
    if hasattr(vision_config, "vision_use_head"):
        vision_config.vision_use_head = False  # the pooling head is unused: the projector reads patch tokens
    return vision_config


def load_image_processor(vision: str | os.PathLike):
    """The image processor of a vision checkpoint, on the PIL backend in every transformers version."""
    # 4.x's "slow" processor, the same pixels in 5.x with or without torchvision.
    pil_backend = {"use_fast": False} if IS_TRANSFORMERS_4 else {"backend": "pil"}
    return AutoImageProcessor.from_pretrained(vision, **pil_backend)


def register_auto_classes(model: PreTrainedModel) -> None:
    """
    Writes the `auto_map` that lets every Auto class load this model with `trust_remote_code=True`.

    `AutoModelForVision2Seq` (transformers 4.x) is written into the config directly: transformers 5.x has no such
    class and `register_for_auto_class` refuses it there.
    """
    model.__class__.register_for_auto_class("AutoModelForImageTextToText")
    model_ref = f"{model.__class__.__module__.split('.')[-1]}.{model.__class__.__name__}"
    config_ref = f"{model.config.__class__.__module__.split('.')[-1]}.{model.config.__class__.__name__}"
    model.config.auto_map = {
        "AutoConfig": config_ref,
        "AutoModel": model_ref,
        "AutoModelForCausalLM": model_ref,
        "AutoModelForImageTextToText": model_ref,
        "AutoModelForVision2Seq": model_ref,
        "AutoProcessor": "processing_vlm.VLMProcessor",
    }

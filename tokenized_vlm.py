# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Tokenized early fusion (Chameleon, Emu3; `fusion="tokenized"`): a frozen VQ image tokenizer (transformers'
`ChameleonVQVAE`) turns each image into a grid of discrete codes, and a trainable embedding per code
([`VLMCodeEmbedding`], `projector_type="codebook"`) makes each code one language-model embedding that fills one image
placeholder, as with early fusion. The language model's own embeddings and vocabulary are untouched: the model reads
image tokens and writes text only (generating image tokens, as Chameleon does, is out of scope).
"""

import os

import torch
from torch import nn
from transformers import AutoConfig, ChameleonVQVAE, ChameleonVQVAEConfig, PretrainedConfig


try:
    from .configuration_vlm import VQ_TOKENIZER_CONFIGS, VLMConfig
    from .processing_vlm import IS_TRANSFORMERS_4
    from .projectors_vlm import VLMProjectorOutput
except ImportError:  # imported as a local module rather than as remote code
    from configuration_vlm import VQ_TOKENIZER_CONFIGS, VLMConfig
    from processing_vlm import IS_TRANSFORMERS_4
    from projectors_vlm import VLMProjectorOutput


# Where a full Chameleon checkpoint keeps its VQ tokenizer's weights, and what they become: transformers 4.x drops
# the leading `model.` (the base model's prefix) after mapping the keys, and skips every key without it.
CHAMELEON_VQ_KEYS = {r"^model\.vqmodel\.": "model." if IS_TRANSFORMERS_4 else ""}


def build_vq_tokenizer(vq_config: PretrainedConfig) -> ChameleonVQVAE:
    """A VQ image tokenizer of `vq_config` (random weights), frozen in eval mode as Chameleon keeps it."""
    return ChameleonVQVAE(vq_config).eval()


def vq_tokenizer_config(source: str | os.PathLike) -> PretrainedConfig | None:
    """
    The VQ tokenizer's config of a checkpoint: a Chameleon model's `vq_config`, or a VQ tokenizer's own config (read
    without `AutoConfig`, which does not know it in transformers 4.57); `None` for any other checkpoint.
    """
    config_dict, _ = PretrainedConfig.get_config_dict(source)
    if config_dict.get("model_type") in VQ_TOKENIZER_CONFIGS:
        return ChameleonVQVAEConfig.from_pretrained(source)
    if config_dict.get("model_type") == "chameleon":
        return AutoConfig.from_pretrained(source).vq_config
    return None


def load_vq_tokenizer(
    source: str | os.PathLike, vq_config: PretrainedConfig, dtype: torch.dtype | None = None
) -> ChameleonVQVAE:
    """
    The VQ tokenizer of a checkpoint (Hub id or directory) whose [`vq_tokenizer_config`] is `vq_config`: of a full
    Chameleon model (e.g. `facebook/chameleon-7b`, whose language model's weights are left unread), or a VQ tokenizer
    saved on its own.
    """
    tokenizer, info = ChameleonVQVAE.from_pretrained(
        source,
        config=vq_config,
        key_mapping=CHAMELEON_VQ_KEYS,
        dtype=dtype,
        output_loading_info=True,
    )
    if info["missing_keys"]:  # transformers would leave them random and only warn
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"{source} holds no VQ image tokenizer weights where a Chameleon checkpoint keeps them (`model.vqmodel.*`) "
            f"or a tokenizer saved on its own does: {len(missing)} are missing (e.g. {missing[0]})."
        )
    return tokenizer.eval()


def vq_codes(tokenizer: ChameleonVQVAE, pixel_values: torch.FloatTensor) -> torch.LongTensor:
    """
    The codes `(num_images, latent_height * latent_width)` of `pixel_values` `(num_images, 3, resolution, resolution)`:
    the encoder and its 1x1 convolution (in the tokenizer's dtype, autocast off) and the nearest codebook entry, as
    `ChameleonVQVAE.encode` computes them (whose return type differs between transformers 4.x and 5.x).
    """
    with torch.autocast(pixel_values.device.type, enabled=False):  # the same codes in training and at inference
        hidden_states = tokenizer.quant_conv(tokenizer.encoder(pixel_values.to(tokenizer.dtype)))
        # The nearest codebook entry in float32: in bf16 the distances of near-equal entries tie and the codes drift.
        latents = hidden_states.float().permute(0, 2, 3, 1).flatten(0, 2)
        codebook = tokenizer.quantize.embedding.weight.float()
        distances = latents.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * latents @ codebook.T
    return distances.argmin(dim=1).view(len(pixel_values), -1)


class VLMCodeEmbedding(nn.Module):
    """
    Tokenized fusion's bridge: a trainable embedding `(num_codes, text_hidden_size)` per code of the VQ tokenizer's
    codebook, in the language model's input space.
    """

    def __init__(self, config: VLMConfig):
        super().__init__()
        self.embed_codes = nn.Embedding(config.vision_config.num_embeddings, config.text_config.hidden_size)

    def forward(self, codes: torch.LongTensor, output_attentions: bool = False) -> VLMProjectorOutput:
        """`codes` `(num_images, num_codes)` -> image embeddings `(num_images, num_codes, text_hidden_size)`."""
        return VLMProjectorOutput(image_embeds=self.embed_codes(codes))

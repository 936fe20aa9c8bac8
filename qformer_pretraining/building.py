# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
A new stage-1 model: a vision tower, and a Q-Former of BERT's shape initialised from BERT (`bert_init`), with the
processor that goes with it.
"""

from transformers import Blip2QFormerConfig, PreTrainedModel, PreTrainedTokenizerBase

from .bert_init import initialise_from_bert
from .configuration import QFormerPretrainingConfig
from .modeling import QFormerForPretraining
from .processing import DECODER_TOKEN, QFormerPretrainingProcessor


SHAPE_SETTINGS = {
    "qformer_num_layers": "num_hidden_layers",
    "qformer_hidden_size": "hidden_size",
    "qformer_num_heads": "num_attention_heads",
    "qformer_intermediate_size": "intermediate_size",
}
"""The VLM's Q-Former settings that fix the shape BERT must have -> `Blip2QFormerConfig` field."""


def qformer_config_from_bert(
    bert_config, vision_width: int, vocab_size: int, cross_attention_frequency: int, shape: dict[str, int]
) -> Blip2QFormerConfig:
    """
    A Q-Former with BERT's shape, vocabulary (`vocab_size`, `[DEC]` included), positions, activation and dropout,
    cross-attention to `vision_width` every `cross_attention_frequency` layers. `shape` (the VLM's `qformer_*` shape
    settings, see [`SHAPE_SETTINGS`]) overrides BERT's shape, which [`initialise_from_bert`] then refuses.
    """
    fields = {field: getattr(bert_config, field) for field in SHAPE_SETTINGS.values()}
    fields.update({SHAPE_SETTINGS[name]: value for name, value in shape.items() if value is not None})
    return Blip2QFormerConfig(
        **fields,
        vocab_size=vocab_size,
        max_position_embeddings=bert_config.max_position_embeddings,
        hidden_act=bert_config.hidden_act,
        hidden_dropout_prob=bert_config.hidden_dropout_prob,
        attention_probs_dropout_prob=bert_config.attention_probs_dropout_prob,
        layer_norm_eps=bert_config.layer_norm_eps,
        pad_token_id=bert_config.pad_token_id,
        cross_attention_frequency=cross_attention_frequency,
        encoder_hidden_size=vision_width,
        use_qformer_text_input=True,
    )


def build_qformer_pretraining(
    vision_tower: PreTrainedModel,
    image_processor,
    bert: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    bert_source: str,
    vision_feature_layer: int = -1,
    num_query_tokens: int = 32,
    cross_attention_frequency: int = 2,
    shape: dict[str, int] | None = None,
    **config_kwargs,
) -> tuple[QFormerForPretraining, QFormerPretrainingProcessor]:
    """
    The stage-1 model on `vision_tower` (kept as given: frozen, and the one stage 2 uses), its Q-Former initialised
    from `bert` (named `bert_source` in errors), and its processor. `[DEC]` is added to `tokenizer`.
    `config_kwargs` are further [`QFormerPretrainingConfig`] settings (objective weights, `image_text_hidden_size`).
    """
    tokenizer.add_special_tokens({"bos_token": DECODER_TOKEN})
    qformer_config = qformer_config_from_bert(
        bert.config, vision_tower.config.hidden_size, len(tokenizer), cross_attention_frequency, shape or {}
    )
    config = QFormerPretrainingConfig(
        vision_config=vision_tower.config,
        qformer_config=qformer_config,
        num_query_tokens=num_query_tokens,
        vision_feature_layer=vision_feature_layer,
        decoder_token_id=tokenizer.convert_tokens_to_ids(DECODER_TOKEN),
        **config_kwargs,
    )
    model = QFormerForPretraining(config)
    initialise_from_bert(model, bert, bert_source)
    model.vision_tower = vision_tower
    return model, QFormerPretrainingProcessor(image_processor=image_processor, tokenizer=tokenizer)

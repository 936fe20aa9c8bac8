# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
BLIP-2 initialises its Q-Former from BERT: the embeddings, every layer's self-attention, and both feed-forward blocks
(the text's, and the queries' own copy) come from a BERT-family checkpoint; the cross-attention layers, the query
tokens and the heads of the three objectives start fresh. [`bert_parameter_map`] says which BERT tensor goes where;
[`initialise_from_bert`] checks the shapes and copies them.
"""

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .modeling import QFormerForPretraining


LAYER_MAP = {
    "attention.self.query": "attention.attention.query",
    "attention.self.key": "attention.attention.key",
    "attention.self.value": "attention.attention.value",
    "attention.output.dense": "attention.output.dense",
    "attention.output.LayerNorm": "attention.output.LayerNorm",
    "intermediate.dense": ("intermediate.dense", "intermediate_query.dense"),
    "output.dense": ("output.dense", "output_query.dense"),
    "output.LayerNorm": ("output.LayerNorm", "output_query.LayerNorm"),
}
"""A BERT layer's modules -> the Q-Former layer's: both FFNs start as BERT's FFN."""
EMBEDDING_MAP = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.LayerNorm": "qformer.layernorm",  # `Blip2QFormerModel` norms the embeddings itself
}
SHAPE_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")


def bert_parameter_map(num_layers: int) -> dict[str, tuple[str, ...]]:
    """BERT parameter name -> the [`QFormerForPretraining`] parameters it initialises (weights and biases)."""
    modules = {bert: (ours,) for bert, ours in EMBEDDING_MAP.items()}
    for index in range(num_layers):
        for bert, ours in LAYER_MAP.items():
            ours = ours if isinstance(ours, tuple) else (ours,)
            modules[f"encoder.layer.{index}.{bert}"] = tuple(f"qformer.encoder.layer.{index}.{o}" for o in ours)
    return {
        f"{bert}.{kind}": tuple(f"{o}.{kind}" for o in ours)
        for bert, ours in modules.items()
        for kind in ("weight", "bias")
        if bert not in ("embeddings.word_embeddings", "embeddings.position_embeddings") or kind == "weight"
    }


def describe_shape(config: PretrainedConfig) -> str:
    """`12 layers of width 768 (12 heads, FFN 3072)`."""
    return (
        f"{config.num_hidden_layers} layers of width {config.hidden_size} ({config.num_attention_heads} heads, "
        f"FFN {config.intermediate_size})"
    )


def check_bert_fits(bert_config: PretrainedConfig, qformer_config: PretrainedConfig, source: str) -> None:
    """Raises `ValueError` naming both shapes when the BERT checkpoint `source` cannot initialise the Q-Former."""
    mismatched = [f for f in SHAPE_FIELDS if getattr(bert_config, f, None) != getattr(qformer_config, f)]
    if mismatched:
        raise ValueError(
            f"The BERT checkpoint {source!r} has {describe_shape(bert_config)}, but the Q-Former is configured with "
            f"{describe_shape(qformer_config)} ({', '.join(mismatched)} differ). Leave the Q-Former's shape to the "
            "checkpoint (drop qformer_num_layers / qformer_hidden_size / qformer_num_heads / "
            "qformer_intermediate_size from model_config), or pick a BERT of the configured shape."
        )


def initialise_from_bert(model: QFormerForPretraining, bert: PreTrainedModel, source: str) -> list[str]:
    """
    Copies `bert`'s embeddings, self-attention and FFN weights into `model` as [`bert_parameter_map`] says, after
    [`check_bert_fits`]. The word embeddings may have more rows than BERT's (`[DEC]` added): BERT's fill the first
    ones. Returns the names of `model`'s parameters that were set.
    """
    check_bert_fits(bert.config, model.config.qformer_config, source)
    bert_state = bert.state_dict()
    parameters = dict(model.named_parameters())
    mapping = bert_parameter_map(bert.config.num_hidden_layers)
    missing = sorted(name for name in mapping if name not in bert_state)
    if missing:
        raise ValueError(
            f"{source!r} is not a BERT-like model: it lacks {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}. Use a BERT-family checkpoint (BertModel's parameter names)."
        )
    set_names = []
    for bert_name, names in mapping.items():
        for name in names:
            _copy_into(parameters[name], bert_state[bert_name], f"{source}:{bert_name} -> {name}")
            set_names.append(name)
    return set_names


def _copy_into(target: nn.Parameter, value, what: str) -> None:
    if target.shape == value.shape:
        target.data.copy_(value)
    elif target.ndim == 2 and target.shape[1:] == value.shape[1:] and target.shape[0] >= value.shape[0]:
        target.data[: value.shape[0]].copy_(value)
    else:
        raise ValueError(f"{what}: shape {tuple(value.shape)} does not fit {tuple(target.shape)}.")

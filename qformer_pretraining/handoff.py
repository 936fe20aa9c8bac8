# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Stage 1 -> stage 2: the VLM's `qformer` projector takes the stage-1 Q-Former's shape ([`vlm_qformer_settings`]) and
its query path ([`load_stage1_qformer`]: query tokens, self- and cross-attention, the queries' FFN); the text branch
and the objectives' heads stay behind. The projector's output Linear to the language model starts fresh.
"""

import os

import torch
from torch import nn

from .configuration import QFormerPretrainingConfig
from .modeling import QFormerForPretraining


def vlm_qformer_settings(config: QFormerPretrainingConfig) -> dict[str, int | str]:
    """The [`VLMConfig`] settings under which the VLM's Q-Former has the stage-1 Q-Former's shape and inputs."""
    qformer = config.qformer_config
    return {
        "qformer_num_queries": config.num_query_tokens,
        "qformer_num_layers": qformer.num_hidden_layers,
        "qformer_num_heads": qformer.num_attention_heads,
        "qformer_cross_attention_frequency": qformer.cross_attention_frequency,
        "qformer_hidden_size": qformer.hidden_size,
        "qformer_intermediate_size": qformer.intermediate_size,
        "projector_hidden_act": qformer.hidden_act,
        "vision_feature_layer": config.vision_feature_layer,
    }


def check_same_vision_tower(vision_tower: nn.Module, stage1_tower: nn.Module, directory: str | os.PathLike) -> None:
    """Raises `ValueError` when the VLM's vision tower is not the one whose features stage 1 learned to read."""
    ours, theirs = vision_tower.state_dict(), stage1_tower.state_dict()
    if ours.keys() != theirs.keys():
        raise ValueError(
            f"The stage-1 Q-Former in {directory} was trained on another kind of vision tower than this model's. "
            "Run stage 2 with the vision_model stage 1 used."
        )
    for name, tensor in ours.items():
        if tensor.shape != theirs[name].shape or not torch.equal(tensor.cpu(), theirs[name].to(tensor.dtype).cpu()):
            raise ValueError(
                f"The stage-1 Q-Former in {directory} was trained on the features of a different vision tower (its "
                f"{name} differs from this model's). Run stage 2 with the vision_model (and, for model: tiny, the "
                "seed) stage 1 used."
            )


def load_stage1_qformer(vlm: nn.Module, directory: str | os.PathLike) -> list[str]:
    """
    Loads the stage-1 Q-Former saved in `directory` into `vlm.multi_modal_projector` (a `qformer` projector of the
    shape [`vlm_qformer_settings`] gives) after checking that both share the vision tower. Returns the loaded names.
    """
    stage1 = QFormerForPretraining.from_pretrained(directory)
    check_same_vision_tower(vlm.vision_tower, stage1.vision_tower, directory)
    projector = vlm.multi_modal_projector
    wanted = projector.state_dict()
    stage1_state = stage1.state_dict()
    loaded = {name: stage1_state[name] for name in wanted if name in stage1_state}
    missing = sorted(name for name in wanted if name not in loaded and not name.startswith("linear."))
    if missing:
        raise ValueError(
            f"The stage-1 checkpoint in {directory} lacks the projector's {', '.join(missing[:4])}: it is not a "
            "Q-Former of this shape."
        )
    for name, tensor in loaded.items():
        if tensor.shape != wanted[name].shape:
            raise ValueError(
                f"{directory}: {name} has shape {tuple(tensor.shape)}, the projector's is {tuple(wanted[name].shape)}."
            )
    projector.load_state_dict(loaded, strict=False)
    return sorted(loaded)

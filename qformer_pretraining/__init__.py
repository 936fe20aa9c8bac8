# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
BLIP-2's stage 1 for the VLM's `qformer` projector: a Q-Former initialised from BERT and trained on image-text pairs
with ITC, ITM and ITG before it meets the language model. One job per module:

- `configuration`: [`QFormerPretrainingConfig`];
- `masks`: the uni-modal, bi-directional and multimodal causal self-attention masks;
- `objectives`: gathering contrastive negatives across processes, query-text similarity, hard negatives;
- `modeling`: [`QFormerForPretraining`] and its three losses;
- `processing`: [`QFormerPretrainingProcessor`] (image processor + BERT tokenizer with `[DEC]`);
- `bert_init`: which BERT weights initialise which Q-Former parameters;
- `building`: a new stage-1 model from a vision tower and a BERT;
- `retrieval`: Recall@K and matching re-ranking;
- `handoff`: loading the stage-1 Q-Former into the VLM's projector.
"""

from .building import build_qformer_pretraining
from .configuration import QFormerPretrainingConfig
from .handoff import load_stage1_qformer, vlm_qformer_settings
from .modeling import QFormerForPretraining
from .processing import QFormerPretrainingProcessor


__all__ = [
    "QFormerForPretraining",
    "QFormerPretrainingConfig",
    "QFormerPretrainingProcessor",
    "build_qformer_pretraining",
    "load_stage1_qformer",
    "vlm_qformer_settings",
]

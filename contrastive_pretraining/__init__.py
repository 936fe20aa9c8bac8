# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Seed 001's first stage, contrastive vision-language pre-training (`stage: contrastive`): `losses` (CLIP's symmetric
InfoNCE and SigLIP's pairwise sigmoid loss over the global batch) and `modeling` (the dual encoder, built on
transformers' `VisionTextDualEncoderModel`, its pair processor, and the hand-off of its tower to a new VLM).
"""

from .modeling import ContrastiveDualEncoder, ContrastivePairProcessor, build_dual_encoder, load_contrastive_tower


__all__ = ["ContrastiveDualEncoder", "ContrastivePairProcessor", "build_dual_encoder", "load_contrastive_tower"]

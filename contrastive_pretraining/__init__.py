# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
Seed 001's first stage, contrastive vision-language pre-training (in progress, issue 22): `losses` holds CLIP's
symmetric InfoNCE and SigLIP's pairwise sigmoid loss over the global batch.
"""

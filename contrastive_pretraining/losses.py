# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The two contrastive image-text losses, over the global batch: every process's images and texts are the negatives
of every other's (gathered with `qformer_pretraining.objectives.gather_with_local_grad`, gradients flowing into this
process's rows), so the effective batch is the global one.

- [`clip_loss`]: CLIP's symmetric InfoNCE, `L = ½(L_image→text + L_text→image)`, with a learned temperature
  (`logit_scale`, the log of its inverse, initialised at log(1/0.07) and clamped at log 100 as CLIP does).
- [`sigmoid_loss`]: SigLIP's pairwise sigmoid loss, `-1/|B| Σ_i Σ_j log σ(z_ij (t x_i·y_j + b))` with `z_ij = 1` for a
  matching pair and `-1` otherwise, `t = exp(logit_scale)` and bias `b` (initialised at log 10 and -10).

Both take the projected, not yet normalised, embeddings `(batch_size, dim)` of this process's pairs, row `i` of one
matching row `i` of the other; transformers' `CLIPModel` and `SiglipModel` compute the same on one process.
"""

import math

import torch
import torch.nn.functional as F

from qformer_pretraining.objectives import contrastive_cross_entropy, gather_with_local_grad


CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)
CLIP_LOGIT_SCALE_MAX = math.log(100.0)
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
SIGLIP_LOGIT_BIAS_INIT = -10.0


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """
    CLIP's symmetric InfoNCE of this process's pairs against the global batch; `logit_scale` `()` is clamped at
    log 100 (in the loss, with the gradient of the clamp), as CLIP clamps its learned temperature.
    """
    if len(image_embeds) != len(text_embeds):
        raise ValueError(f"{len(image_embeds)} images but {len(text_embeds)} texts: the loss pairs row i with row i.")
    image_embeds, text_embeds = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    all_images, real, start = gather_with_local_grad(image_embeds)
    all_texts, _, _ = gather_with_local_grad(text_embeds)
    if int(real.sum()) < 2:
        raise ValueError("A contrastive batch of one pair has no negatives: use a global batch of at least 2 pairs.")
    scale = logit_scale.clamp(max=CLIP_LOGIT_SCALE_MAX).exp()
    targets = torch.arange(len(image_embeds), device=image_embeds.device) + start
    image_to_text = contrastive_cross_entropy(scale * image_embeds @ all_texts.T, targets, real, 0.0)
    text_to_image = contrastive_cross_entropy(scale * text_embeds @ all_images.T, targets, real, 0.0)
    return (image_to_text + text_to_image) / 2


def sigmoid_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """
    SigLIP's pairwise sigmoid loss of this process's images against the texts of the global batch, summed over the
    texts and averaged over this process's images (SigLIP's per-device normalisation, so that the processes' mean is
    the loss of the global batch).
    """
    if len(image_embeds) != len(text_embeds):
        raise ValueError(f"{len(image_embeds)} images but {len(text_embeds)} texts: the loss pairs row i with row i.")
    image_embeds, text_embeds = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    all_texts, real, start = gather_with_local_grad(text_embeds)
    if int(real.sum()) < 2:
        raise ValueError("A contrastive batch of one pair has no negatives: use a global batch of at least 2 pairs.")
    logits = (image_embeds @ all_texts.T).float() * logit_scale.exp() + logit_bias
    signs = -torch.ones_like(logits)
    rows = torch.arange(len(image_embeds), device=logits.device)
    signs[rows, rows + start] = 1.0
    pair_losses = -F.logsigmoid(signs * logits).masked_fill(~real, 0.0)
    return pair_losses.sum(dim=-1).mean()

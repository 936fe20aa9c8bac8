# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The pieces of BLIP-2's stage-1 losses that are not the Q-Former itself: gathering the contrastive negatives across
processes with gradients for the local part, the query-text similarities, and sampling hard negatives for matching.
"""

import torch
from accelerate.state import PartialState
from accelerate.utils import gather, pad_across_processes


def gather_with_local_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.BoolTensor, int]:
    """
    `tensor` `(batch_size, ...)` of every process, concatenated in process order, as `accelerate`'s `gather` does,
    but with this process's rows being `tensor` itself, so gradients flow into them (the others' are constants).
    Processes may hold different batch sizes: they are padded to the largest. Returns the gathered tensor
    `(num_processes * max_batch_size, ...)`, which of its rows are real `(num_processes * max_batch_size,)`, and where
    this process's rows start.
    """
    state = PartialState()
    if state.num_processes == 1:
        return tensor, torch.ones(len(tensor), dtype=torch.bool, device=tensor.device), 0
    sizes = gather(torch.tensor([len(tensor)], device=tensor.device))
    largest = int(sizes.max())
    gathered = gather(pad_across_processes(tensor.detach(), dim=0))
    start = state.process_index * largest
    gathered = torch.cat([gathered[:start], tensor, gathered[start + len(tensor) :]])
    real = (torch.arange(largest, device=tensor.device)[None, :] < sizes[:, None]).flatten()
    return gathered, real, start


def query_text_similarity(image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """
    BLIP-2's image-text similarity: the highest cosine between any query of an image and the text. `image_feats`
    `(num_images, num_queries, dim)` and `text_feats` `(num_texts, dim)` are L2-normalised; returns
    `(num_images, num_texts)`.
    """
    return torch.einsum("iqd,td->itq", image_feats, text_feats).amax(dim=-1)


def sample_hard_negatives(similarity: torch.Tensor, excluded: torch.BoolTensor) -> torch.LongTensor:
    """
    For each row of `similarity` `(num_rows, num_candidates)`, one candidate drawn with probability softmax(similarity)
    among those not `excluded` `(num_rows, num_candidates)` (its own positive, identical texts): hard negatives, as
    BLIP-2 samples them for matching. A row with no candidate left gets -1.
    """
    weights = torch.softmax(similarity.float().masked_fill(excluded, float("-inf")), dim=-1)
    usable = ~excluded.all(dim=-1)
    drawn = torch.full((len(similarity),), -1, dtype=torch.long, device=similarity.device)
    if usable.any():
        drawn[usable] = torch.multinomial(weights[usable], 1).squeeze(-1)
    return drawn


def contrastive_cross_entropy(
    logits: torch.Tensor, targets: torch.LongTensor, real: torch.BoolTensor, label_smoothing: float
) -> torch.Tensor:
    """
    `F.cross_entropy(logits, targets, label_smoothing=...)` over the `real` columns only `(num_columns,)`: the padding
    that evens out the processes' batches gets neither probability nor a share of the smoothing.
    """
    log_probs = torch.log_softmax(logits.float().masked_fill(~real, float("-inf")), dim=-1)
    nll = -log_probs.gather(1, targets[:, None]).squeeze(1)
    uniform = -log_probs.masked_fill(~real, 0.0).sum(dim=-1) / real.sum()
    return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()

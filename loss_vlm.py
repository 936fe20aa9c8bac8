# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The VLM's training loss: next-token cross-entropy computed from the language model's last hidden states, with the LM
head run only where a label is (and, with `config.loss_chunk_size`, a chunk of those positions at a time).
"""

import torch
import torch.nn.functional as F
from torch import nn


def causal_lm_loss(
    hidden_states: torch.FloatTensor,
    labels: torch.LongTensor,
    output_embeddings: nn.Linear,
    chunk_size: int | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.FloatTensor:
    """
    Next-token cross-entropy from `hidden_states` `(batch, seq, dim)` against `labels` `(batch, seq)` (`-100`: no
    loss), shifted inside; `output_embeddings` (the LM head) runs only on the positions whose next token is labelled,
    so the `(batch, seq, vocab)` logits are never materialised (with `chunk_size`, not even those of all labelled
    positions at once). The summed loss is divided by `num_items_in_batch` (the labelled tokens of an accumulated
    batch), by default by this batch's labelled tokens.
    """
    next_token_labels = labels[:, 1:].to(hidden_states.device)
    labelled = next_token_labels != -100
    hidden_states, targets = hidden_states[:, :-1][labelled], next_token_labels[labelled]
    if chunk_size is None:
        loss = F.cross_entropy(output_embeddings(hidden_states).float(), targets, reduction="sum")
    else:
        loss = chunked_cross_entropy(hidden_states, output_embeddings, targets, chunk_size)
    if num_items_in_batch is None:
        num_items_in_batch = labelled.sum()
    return loss / num_items_in_batch


def chunked_cross_entropy(
    hidden_states: torch.FloatTensor, output_embeddings: nn.Linear, labels: torch.LongTensor, chunk_size: int
) -> torch.FloatTensor:
    """
    Summed cross-entropy of `output_embeddings(hidden_states)` against `labels` `(num_positions,)`, `chunk_size` rows
    at a time. With gradients, torch's `F.linear_cross_entropy` computes each chunk's logits `(chunk_size, vocab_size)`
    and their gradient in the forward and keeps only the gradient of `hidden_states` `(num_positions, dim)` (and of
    the weight when it trains); under autocast it runs in the autocast dtype, as the LM head does, and returns the loss
    in that dtype (its gradients accumulate in fp32).
    """
    if not hasattr(F, "linear_cross_entropy"):
        raise RuntimeError(
            f"config.loss_chunk_size={chunk_size} needs torch.nn.functional.linear_cross_entropy (torch >= 2.13, "
            f"this is {torch.__version__}): upgrade torch, or set config.loss_chunk_size = None."
        )
    weight, bias = output_embeddings.weight, output_embeddings.bias
    if not torch.is_grad_enabled() or not (hidden_states.requires_grad or weight.requires_grad):
        # Nothing to differentiate (evaluation): a plain loop has no gradient to keep, and its logits are fp32.
        pieces = zip(hidden_states.split(chunk_size), labels.split(chunk_size))
        losses = (F.cross_entropy(output_embeddings(h).float(), y, reduction="sum") for h, y in pieces)
        return sum(losses, hidden_states.new_zeros((), dtype=torch.float32))
    device_type = hidden_states.device.type
    if torch.is_autocast_enabled(device_type):
        # Autocast does not cast this op: do what it does for the unchunked path's LM head.
        dtype = torch.get_autocast_dtype(device_type)
        hidden_states, weight = hidden_states.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk_size, chunking_method=None)
    return F.linear_cross_entropy(hidden_states, weight, labels, linear_bias=bias, reduction="sum", options=options)

# Copyright 2026 The VLM authors. Licensed under the Apache License, Version 2.0.
"""
The three self-attention masks of BLIP-2's stage 1 over the sequence `[queries; text]`. One Q-Former runs all three
objectives; only the mask says who sees whom:

- `unimodal` (contrastive): queries see the queries, text sees the text; neither sees the other.
- `bidirectional` (matching): every position sees every query and every text token.
- `multimodal_causal` (generation): queries see the queries only; a text token sees every query and the text tokens
  up to itself.

Text padding is never seen. Masks are boolean `(batch_size, num_queries + text_length, num_queries + text_length)`,
`True` where the row position may attend to the column position; [`qformer_attention_mask`] turns one into what
`Blip2QFormerModel` takes.
"""

import torch

from processing_vlm import IS_TRANSFORMERS_4


MASK_KINDS = ("unimodal", "bidirectional", "multimodal_causal")


def attention_pattern(kind: str, num_queries: int, text_attention_mask: torch.Tensor) -> torch.BoolTensor:
    """
    The `kind` mask (one of [`MASK_KINDS`]) for `num_queries` queries followed by text whose padding mask is
    `text_attention_mask` `(batch_size, text_length)` (1 for tokens, 0 for padding). Returns `(batch_size, length,
    length)` with `length = num_queries + text_length`.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"Unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}.")
    batch_size, text_length = text_attention_mask.shape
    length = num_queries + text_length
    device = text_attention_mask.device
    position = torch.arange(length, device=device)
    row_is_query = (position < num_queries)[:, None]
    column_is_query = (position < num_queries)[None, :]
    if kind == "unimodal":
        pattern = row_is_query == column_is_query
    elif kind == "bidirectional":
        pattern = torch.ones(length, length, dtype=torch.bool, device=device)
    else:
        causal = position[None, :] <= position[:, None]
        pattern = column_is_query | (~row_is_query & causal)
    column_is_token = torch.cat(
        [torch.ones(batch_size, num_queries, dtype=torch.bool, device=device), text_attention_mask.bool()], dim=1
    )
    return pattern[None] & column_is_token[:, None, :]


def qformer_attention_mask(pattern: torch.BoolTensor, dtype: torch.dtype) -> torch.Tensor:
    """
    `pattern` `(batch_size, length, length)` as `Blip2QFormerModel`'s `attention_mask`: the additive
    `(batch_size, 1, length, length)` mask of `dtype` that transformers 5.x passes through as given, or the 0/1
    `(batch_size, length, length)` mask that 4.x extends itself.
    """
    if IS_TRANSFORMERS_4:
        return pattern.long()
    additive = torch.zeros(pattern.shape, dtype=dtype, device=pattern.device)
    return additive.masked_fill(~pattern, torch.finfo(dtype).min)[:, None]
